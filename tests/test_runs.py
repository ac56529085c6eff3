"""One run per film, a checkpoint in the way (issue #23) and a stderr that holds only layerfilm's
own lines (#29 item 9): real checkpoint folders, and the real command in a process of its own
wherever stderr is what is tested."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from typer.testing import CliRunner

from layerfilm.cli import app
from layerfilm.errors import CheckpointError
from layerfilm.progress import Quiet

from conftest import ROOT, SAMPLE, decode, gpt_state, plan_of, write_run

# layerfilm's own stderr lines start with one of these; anything else is someone else's noise.
OWN = ("layerfilm: ", "warning: ", "note: ")
runner = CliRunner()
FILM = ["--size", "160x96", "--fps", "2", "-q"]


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


def test_the_sample_writes_nothing_to_stderr(tmp_path):
    done = layerfilm("render", SAMPLE, tmp_path / "f.webm", "--size", "160x96", "--fps", "2",
                     "--loss-strip", "--drift")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert done.stdout.startswith(f"wrote {tmp_path / 'f.webm'}")
    for args in (["info", SAMPLE], ["stats", SAMPLE, "--out", tmp_path / "stats"]):
        done = layerfilm(*args)
        assert done.returncode == 0 and done.stdout, (args, done.stderr)
        assert done.stderr == "", (args, done.stderr)


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


# ---- one run per film ----------------------------------------------------------------------------

def _shift(folder, by):
    """Move a run's steps ``by`` later: its files (or checkpoint folders) renamed, ``by`` past
    its last step, so no new name is taken."""
    for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        step = re.search(r"(?:step_?|checkpoint-)(\d+)$", path.stem)
        if step is not None:
            later = str(int(step.group(1)) + by).zfill(len(step.group(1)))
            path.rename(path.with_name(path.stem[:step.start(1)] + later + path.suffix))


def _layer_counts(folder):
    """A 4-block run (runA, steps 0..300) and a 6-block one (runB, 50..350) in one folder."""
    write_run(folder, n=4, blocks=4, name="runA-step{step}.safetensors")
    write_run(folder / "b", n=4, blocks=6, seed=1, name="runB-step{step}.safetensors")
    _shift(folder / "b", 50)
    for path in (folder / "b").iterdir():
        path.rename(folder / path.name)
    (folder / "b").rmdir()
    return ("runA-step0.safetensors (4 checkpoints, steps 0..300) and runB-step50.safetensors "
            "(4 checkpoints, steps 50..350) have different tensors (10 tensors only in "
            "runB-step50.safetensors, e.g. 'transformer.h.4.attn.c_attn.weight')", "runA", "runB")


def _shapes(folder):
    """Two runs of one depth and another width, in run1/ and run2/, their steps interleaved."""
    write_run(folder / "run1", n=4, d=16)
    write_run(folder / "run2", n=4, d=24, seed=1)
    _shift(folder / "run2", 50)
    return ("run1/step_000000.safetensors (4 checkpoints, steps 0..300) and "
            "run2/step_000050.safetensors (4 checkpoints, steps 50..350) have different shapes "
            "('transformer.h.0.attn.c_attn.weight' is [48, 16] and [72, 24])", "run1", "run2")


def _configs(folder):
    """Two Hugging Face runs of one architecture, other hyper-parameters (config.json), steps
    that follow one another (as a run resumed into a new folder would)."""
    for run, dropout, seed in (("run1", 0.0, 0), ("run2", 0.1, 1)):
        write_run(folder / run, n=4, seed=seed, name="checkpoint-{step}/model.safetensors")
        for ckpt in (folder / run).iterdir():
            (ckpt / "config.json").write_text(json.dumps(
                {"n_layer": 2, "dropout": dropout, "transformers_version": f"4.{seed}"}))
    _shift(folder / "run2", 400)
    return ("run1/checkpoint-0/model.safetensors (4 checkpoints, steps 0..300) and "
            "run2/checkpoint-400/model.safetensors (4 checkpoints, steps 400..700) have different "
            "config.json ('dropout' is 0.0 and 0.1)", "run1", "run2")


@pytest.mark.parametrize("make", [_layer_counts, _shapes, _configs])
def test_two_runs_in_one_folder_are_refused_and_run_picks_each(tmp_path, make):
    folder = tmp_path / "ckpts"
    why, first, second = make(folder)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for command in (["render", folder, out_dir / "f.gif", *FILM], ["info", folder],
                    ["stats", folder, "--out", out_dir / "stats"], ["render", folder, out_dir / "f.gif",
                                                                   "--skip-bad", *FILM]):
        result = runner.invoke(app, list(map(str, command)))
        assert result.exit_code == 1, result.output
        assert result.output.splitlines() == [
            f"layerfilm: error: {folder}: holds two training runs, not one: {why}; film one with "
            f"--run {first} or --run {second}"]
        assert list(out_dir.iterdir()) == []
    for run in (first, second):
        film = out_dir / f"{run}.gif"
        result = runner.invoke(app, ["render", str(folder), str(film), "--run", run, *FILM])
        assert result.exit_code == 0, result.output
        assert decode(film).shape[0] == 3 * 2 + 1
        filmed = json.loads(film.with_name(film.name + ".json").read_text())["checkpoints"]["files"]
        assert len(filmed) == 4 and all(f["path"].startswith(run) for f in filmed), filmed
        info = runner.invoke(app, ["info", str(folder), "--run", run])
        assert info.exit_code == 0 and "keyframes   4 checkpoints" in info.output, info.output
        stats = runner.invoke(app, ["stats", str(folder), "--run", run, "--out",
                                    str(tmp_path / f"stats-{run}"), "-q"])
        assert stats.exit_code == 0, stats.output
        rows = (tmp_path / f"stats-{run}" / "layer_stats.csv").read_text().splitlines()
        assert len(rows) == 1 + 4 * len(plan_of(folder, run=run).layers)  # 4 keyframes a layer


def test_two_models_under_one_name_are_refused_with_where_to_put_them(tmp_path):
    """The run of issue #23: a 4-block and a 6-block run saved as step_N into one folder."""
    folder = write_run(tmp_path / "ckpts", n=4, blocks=4)
    write_run(tmp_path / "other", n=4, blocks=6, seed=1)
    _shift(tmp_path / "other", 50)
    for path in (tmp_path / "other").iterdir():
        path.rename(folder / path.name)
    result = runner.invoke(app, ["render", str(folder), str(tmp_path / "f.gif"), *FILM])
    assert result.exit_code == 1 and not (tmp_path / "f.gif").exists()
    assert result.output.splitlines() == [
        f"layerfilm: error: {folder}: holds two training runs, not one: step_000000.safetensors "
        "(4 checkpoints, steps 0..300) and step_000050.safetensors (4 checkpoints, steps 50..350) "
        "have different tensors (10 tensors only in step_000050.safetensors, e.g. "
        "'transformer.h.4.attn.c_attn.weight'); they share a folder and a name: move one run's "
        "checkpoints into a folder of its own"]


def test_a_run_resumed_into_a_new_folder_is_one_run(tmp_path):
    """Lightning resumes into version_1/: the same model, its steps after version_0's."""
    write_run(tmp_path / "logs" / "version_0", n=3)
    write_run(tmp_path / "logs" / "version_1", n=3, seed=1)
    _shift(tmp_path / "logs" / "version_1", 300)
    plan = plan_of(tmp_path / "logs")
    assert [r.step for r in plan.refs] == [0, 100, 200, 300, 400, 500]
    assert [r.run for r in plan.refs] == ["version_0"] * 3 + ["version_1"] * 3
    assert [r.step for r in plan_of(tmp_path / "logs", run="version_1/").refs] == [300, 400, 500]


def test_a_vocabulary_that_grows_is_one_run(tmp_path):
    run = write_run(tmp_path / "run", n=4)
    for k, path in enumerate(sorted(run.glob("*.safetensors"))):
        sd = load_file(str(path))
        extra = np.random.default_rng(k).normal(size=(3 * k, 16)).astype(np.float32)
        sd["transformer.wte.weight"] = np.concatenate([sd["transformer.wte.weight"], extra])
        sd["lm_head.weight"] = sd["transformer.wte.weight"] * 0.5
        save_file(sd, str(path))
    result = runner.invoke(app, ["render", str(run), str(tmp_path / "f.gif"), *FILM])
    assert result.exit_code == 0, result.output
    assert decode(tmp_path / "f.gif").shape[0] == 3 * 2 + 1


def test_a_lone_checkpoint_of_another_model_is_a_bad_checkpoint(tmp_path):
    """Its drawn tensors fit (two more blocks), so only the run check sees it: --skip-bad
    leaves it out, as any bad checkpoint."""
    run = write_run(tmp_path / "run", n=5, blocks=2)
    odd = run / "step_000200.safetensors"
    save_file(gpt_state(np.random.default_rng(3), blocks=4), str(odd))
    result = runner.invoke(app, ["render", str(run), str(tmp_path / "f.gif"), *FILM])
    assert result.exit_code == 1 and not (tmp_path / "f.gif").exists()
    assert result.output.splitlines() == [
        f"layerfilm: error: {odd}: not the model of the other 4 checkpoints: different tensors "
        "(10 tensors only in step_000200.safetensors, e.g. 'transformer.h.2.attn.c_attn.weight'); "
        "--skip-bad leaves it out"]
    result = runner.invoke(app, ["render", str(run), str(tmp_path / "f.gif"), "--skip-bad", *FILM])
    assert result.exit_code == 0 and f"warning: skipped {odd}: not the model" in result.output
    assert decode(tmp_path / "f.gif").shape[0] == 3 * 2 + 1


def test_two_runs_on_one_step_are_told_how_to_pick_one(tmp_path):
    write_run(tmp_path / "ckpts", n=3, name="runA-step{step}.safetensors")
    write_run(tmp_path / "ckpts", n=3, seed=1, name="runB-step{step}.safetensors")
    result = runner.invoke(app, ["info", str(tmp_path / "ckpts")])
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        f"layerfilm: error: {tmp_path / 'ckpts' / 'runB-step0.safetensors'}: has the same step (0) "
        f"as {tmp_path / 'ckpts' / 'runA-step0.safetensors'}; if they are two runs, film one with "
        "--run runA or --run runB, else --skip-bad leaves this one out"]
    result = runner.invoke(app, ["info", str(tmp_path / "ckpts"), "--run", "runB"])
    assert result.exit_code == 0 and "first/last  runB-step0.safetensors .. runB-step200" in result.output


def test_run_option_in_config_files_and_its_check(tmp_path, monkeypatch):
    folder = tmp_path / "ckpts"
    _shapes(folder)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "layerfilm.toml").write_text('run = "run2"\n')
    printed = runner.invoke(app, ["render", str(folder), "f.gif", "--print-config"]).output
    assert 'run = "run2"' in printed
    info = runner.invoke(app, ["info", str(folder)])
    assert info.exit_code == 0 and "run2/step_000050.safetensors .. run2/step_000350" in info.output
    result = runner.invoke(app, ["info", str(folder), "--run", "run3"])
    assert result.exit_code == 1
    assert result.output.strip() == (f"layerfilm: error: {folder}: --run run3 picks no checkpoint; "
                                     "the runs here: run1, run2")
    result = runner.invoke(app, ["info", str(folder), "--run", " / "])
    assert result.exit_code == 2 and "--run needs a run's name" in result.output


@pytest.mark.parametrize("path, step_in_name, run", [
    ("step_000100.safetensors", True, ""),
    ("epoch=1-step=100.ckpt", True, ""),  # Lightning's counters are not a run's name
    ("val_loss=0.32-step=100.ckpt", True, ""),
    ("ckpt_100.pth", True, ""),
    ("runB-step150.safetensors", True, "runB"),
    ("gpt2-small_iter_500.pt", True, "gpt2-small"),
    ("run1/checkpoint-50/model.safetensors", True, "run1"),
    ("run1/300/model.safetensors", True, "run1"),
    ("lightning_logs/version_0/checkpoints/epoch=0-step=50.ckpt", True,
     "lightning_logs/version_0/checkpoints"),
    ("lightning_logs/version_0/checkpoints/last.ckpt", False, "lightning_logs/version_0/checkpoints"),
    ("run2/final/model.safetensors", False, "run2"),  # step from trainer_state.json
    ("step1000-tokens4B/model.safetensors", True, ""),
])
def test_run_names(path, step_in_name, run):
    from pathlib import PurePosixPath

    from layerfilm.checkpoints.discover import in_run, run_name

    root = PurePosixPath("/ckpts")
    assert run_name(root / path, root, step_in_name) == run
    assert in_run(run, run or ".") and in_run(run, run.split("/")[0] or ".")
    assert not in_run(run, "elsewhere")
