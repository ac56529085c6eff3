"""One run per film, a checkpoint in the way, and a stderr that holds only layerfilm's own lines
(issue #23): real checkpoint folders, the real command in its own process."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from layerfilm.errors import CheckpointError
from layerfilm.progress import Quiet

from conftest import ROOT, SAMPLE, decode, write_run

# layerfilm's own stderr lines start with one of these; anything else is someone else's noise.
OWN = ("layerfilm: ", "warning: ", "note: ")


def layerfilm(*args, cwd=None) -> subprocess.CompletedProcess:
    """The command in a process of its own, with the default warning filters (what a user sees),
    so a library's warning on stderr shows up as it would in a terminal."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "layerfilm", *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=600)


def foreign(stderr: str) -> list[str]:
    """The stderr lines that are not layerfilm's own."""
    return [line for line in stderr.splitlines() if not line.startswith(OWN)]


def test_a_sample_render_writes_nothing_to_stderr(tmp_path):
    done = layerfilm("render", SAMPLE, tmp_path / "f.webm", "--size", "160x96", "--fps", "2",
                     "--loss-strip", "--drift")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert done.stdout.startswith(f"wrote {tmp_path / 'f.webm'}")


def _nonfinite_run(folder):
    """A run whose later checkpoints hold NaN and +-Inf in one block and a whole matrix of Inf in
    another (inf - inf between keyframes, panels with every point hidden)."""
    run = write_run(folder, n=4)
    for path in sorted(run.glob("*.safetensors"))[1:]:
        sd = load_file(str(path))
        w = sd["transformer.h.0.mlp.c_fc.weight"]
        w[:5], w[5:9], w[9:12] = np.nan, np.inf, -np.inf
        sd["transformer.h.1.attn.c_proj.weight"][:] = np.inf
        save_file(sd, str(path))
    return run


def _all_nan_block_run(folder):
    """A run one of whose blocks is NaN from the first checkpoint on: no point of it is drawn."""
    run = write_run(folder, n=4)
    for path in sorted(run.glob("*.safetensors")):
        sd = load_file(str(path))
        for name in sd:
            if name.startswith("transformer.h.1."):
                sd[name][:] = np.nan
        save_file(sd, str(path))
    return run


def test_nonfinite_weights_leave_only_layerfilm_lines_on_stderr(tmp_path):
    for run in (_nonfinite_run(tmp_path / "nonfinite"), _all_nan_block_run(tmp_path / "nan-block")):
        for args in (["render", run, tmp_path / f"{run.name}.webm", "--size", "160x96", "--fps", "2",
                      "--drift"],
                     ["render", run, tmp_path / f"{run.name}.gif", "--size", "160x96", "--fps", "2",
                      "--projection", "umap", "--order", "settle"],
                     ["info", run],
                     ["stats", run, "--out", tmp_path / f"stats-{run.name}", "--layouts"]):
            done = layerfilm(*args)
            assert done.returncode == 0, (args, done.stderr)
            assert foreign(done.stderr) == [], (args, done.stderr)
            if args[0] == "render":  # the hidden points are still reported, by layerfilm
                assert done.stderr.startswith("warning: ") and "NaN/Inf weights" in done.stderr


def test_layer_names_the_font_lacks_leave_stderr_empty(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    rng = np.random.default_rng(0)
    for k in range(3):
        save_file({f"层{i}🙂.weight": rng.normal(size=(8, 6)).astype(np.float32) for i in range(3)},
                  str(run / f"step_{k}.safetensors"))
    pattern = r"(.*)\.weight"
    for args in (["render", run, tmp_path / "f.webm", "--size", "160x96", "--fps", "2",
                  "--layer-pattern", pattern, "--title", "标题", "--stills", tmp_path / "stills"],
                 ["stats", run, "--out", tmp_path / "stats", "--layer-pattern", pattern]):
        done = layerfilm(*args)
        assert done.returncode == 0, (args, done.stderr)
        assert done.stderr == "", (args, done.stderr)


# ---- a checkpoint in the way ---------------------------------------------------------------------

def test_a_half_written_newest_checkpoint_names_itself_and_the_way_past_it(tmp_path):
    run = write_run(tmp_path / "run", n=5)
    newest = run / "step_000400.safetensors"
    newest.write_bytes(newest.read_bytes()[:-100])  # what a run still saving it leaves
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    args = ["render", run, out_dir / "f.gif", "--size", "160x96", "--fps", "2", "-q"]
    done = layerfilm(*args)
    assert done.returncode == 1 and done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"layerfilm: error: {newest}: truncated: tensor ")
    assert line.endswith("-byte data section; it is the newest checkpoint, which a run may still be "
                         "writing: --skip-bad leaves it out")
    assert list(out_dir.iterdir()) == []
    done = layerfilm(*args, "--skip-bad")
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith(f"warning: skipped {newest}: truncated: ")
    assert decode(out_dir / "f.gif").shape[0] == 3 * 2 + 1  # steps 0..300


def test_an_older_bad_checkpoint_is_not_called_the_newest(tmp_path):
    run = write_run(tmp_path / "run", n=5)
    bad = run / "step_000200.safetensors"
    bad.write_bytes(b"")
    for command in (["render", run, tmp_path / "f.gif"], ["info", run], ["stats", run, "--out", tmp_path]):
        done = layerfilm(*command)
        assert done.returncode == 1
        assert done.stderr == (f"layerfilm: error: {bad}: not a safetensors file: empty file; "
                               "--skip-bad leaves it out\n")
    assert not (tmp_path / "f.gif").exists()


class DeleteOnceLoading(Quiet):
    """A progress reporter that deletes ``path`` when the first stage starts: after discovery
    and planning, as a trainer rotating its checkpoints would."""

    def __init__(self, path):
        self.path = path

    @contextlib.contextmanager
    def stage(self, name, total):
        self.path.unlink(missing_ok=True)
        yield lambda n=1: None


def test_a_checkpoint_deleted_mid_render_names_itself(tmp_path):
    from layerfilm import pipeline
    from layerfilm.config import RenderConfig, StatsConfig

    run = write_run(tmp_path / "run", n=5)
    gone = run / "step_000300.safetensors"
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    config = RenderConfig(checkpoints=run, output=out_dir / "f.webm", size=(160, 96), fps=2)
    with pytest.raises(CheckpointError) as error:
        pipeline.render(config, DeleteOnceLoading(gone))
    assert str(error.value) == f"{gone}: no longer there: deleted or moved after it was listed"
    assert list(out_dir.iterdir()) == []
    write_run(tmp_path / "run", n=5)  # the same files again
    with pytest.raises(CheckpointError) as error:
        pipeline.measure(StatsConfig(checkpoints=run, out=out_dir), DeleteOnceLoading(gone))
    assert str(error.value) == f"{gone}: no longer there: deleted or moved after it was listed"
