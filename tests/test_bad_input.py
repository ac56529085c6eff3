"""Bad checkpoints: one line naming the file and the problem, a non-zero exit and no output;
``--skip-bad`` films past them with a warning.  And the keyframe options (--steps,
--timeline, --layer-pattern) with their validation."""

import json
import os

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from typer.testing import CliRunner

from layerfilm.checkpoints import CheckpointRef, select_steps
from layerfilm.cli import app
from layerfilm.extract import read_layer

from conftest import Evil, decode, gpt_state, plan_of, write_run

runner = CliRunner()
FPS = 2


def _zero_bytes(run):
    p = run / "step_000200.safetensors"
    p.write_bytes(b"")
    return p


def _truncated(run):
    p = run / "step_000200.safetensors"
    p.write_bytes(p.read_bytes()[:-100])
    return p


def _corrupt_header(run):
    p = run / "step_000200.safetensors"
    p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json" + p.read_bytes()[20:])
    return p


def _first_is_empty(run):
    p = run / "step_000000.safetensors"
    p.write_bytes(b"")
    return p


def _width_changed(run):
    p = run / "step_000200.safetensors"
    save_file(gpt_state(np.random.default_rng(9), d=12), str(p))
    return p


def _same_step(run):
    p = run / "zz_iter_200.safetensors"  # listed after step_000200, so it is the one refused
    p.write_bytes((run / "step_000200.safetensors").read_bytes())
    return p


def _pickle_without_tensors(run):
    torch = pytest.importorskip("torch")
    (run / "step_000200.safetensors").unlink()
    p = run / "step_000200.pt"
    torch.save({"note": "hello", "epoch": 3}, p)
    return p


def _truncated_pickle(run):
    torch = pytest.importorskip("torch")
    (run / "step_000200.safetensors").unlink()
    p = run / "step_000200.pt"
    torch.save({k: torch.from_numpy(v) for k, v in gpt_state(np.random.default_rng(0)).items()}, p)
    p.write_bytes(p.read_bytes()[:-300])
    return p


def _malicious_pickle(run):
    import pickle

    torch = pytest.importorskip("torch")
    (run / "step_000200.safetensors").unlink()
    p = run / "step_000200.pt"
    torch.save({"w": torch.zeros(2, 2), "x": Evil(run.parent / "pwned")}, p, pickle_module=pickle)
    return p


def _unreadable(run):
    p = run / "step_000200.safetensors"
    p.chmod(0)
    return p


@pytest.fixture
def permissions_enforced(monkeypatch):
    """Root reads a chmod-000 file anyway: there, refuse opening files without read permission
    the way the kernel does for everyone else."""
    if os.geteuid() != 0:
        return
    import builtins
    import stat

    real_open = builtins.open

    def open_as_a_user(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.path.exists(file) \
                and not os.stat(file).st_mode & stat.S_IRUSR:
            raise PermissionError(13, "Permission denied", os.fspath(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", open_as_a_user)


# (corrupt the run, the problem printed, keyframes filmed with --skip-bad)
CASES = {
    "zero-byte": (_zero_bytes, "not a safetensors file: empty file", 4),
    "truncated": (_truncated, "truncated: tensor", 4),
    "corrupt header": (_corrupt_header, "corrupt safetensors header", 4),
    "first checkpoint empty": (_first_is_empty, "not a safetensors file: empty file", 4),
    "width changed": (_width_changed, "which no longer fits the layout planned from the first", 4),
    "same step": (_same_step, "has the same step (200) as", 5),
    "pickle without tensors": (_pickle_without_tensors, "contains no tensors", 4),
    "truncated pickle": (_truncated_pickle, "cannot load:", 4),
    "malicious pickle": (_malicious_pickle, "refused: this pickle needs code execution", 4),
    "unreadable": (_unreadable, "cannot read: Permission denied", 4),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_checkpoint_one_line_or_skipped(tmp_path, case, request):
    corrupt, problem, kept = CASES[case]
    run = write_run(tmp_path / "run", n=5)
    bad = corrupt(run)
    if case == "unreadable":
        request.getfixturevalue("permissions_enforced")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "film.gif"
    args = ["render", str(run), str(out), "--size", "160x96", "--fps", str(FPS), "-q"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert lines[0].startswith(f"layerfilm: error: {bad}: ") and problem in lines[0], lines[0]
    assert list(out_dir.iterdir()) == []  # no film, no .part
    result = runner.invoke(app, args + ["--skip-bad"])
    assert result.exit_code == 0, result.output
    assert f"warning: skipped {bad}: " in result.output and problem in result.output
    assert result.output.index("warning: skipped") < result.output.index("wrote ")  # said up front
    assert decode(out).shape[0] == (kept - 1) * FPS + 1
    assert sorted(p.name for p in out_dir.iterdir()) == ["film.gif", "film.gif.json"]
    listed = [f["path"] for f in json.loads((out_dir / "film.gif.json").read_text())["checkpoints"]["files"]]
    assert len(listed) == kept and bad.name not in listed  # the manifest holds what was filmed
    assert not (tmp_path / "pwned").exists()
    info = runner.invoke(app, ["info", str(run), "--skip-bad"])
    assert info.exit_code == 0 and f"skipped     {bad}: " in info.output
    assert f"keyframes   {kept} checkpoints" in info.output


def test_too_few_good_checkpoints_is_still_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    one = write_run(tmp_path / "one", n=1)
    two = write_run(tmp_path / "two", n=2)
    (two / "step_000100.safetensors").write_bytes(b"")
    for folder, message in ((tmp_path / "empty", "no checkpoints found"),
                            (one, "only one checkpoint (step_000000.safetensors)"),
                            (two, "only 1 of 2 checkpoints could be read (skipped "
                                  f"{two / 'step_000100.safetensors'}: not a safetensors file: empty file)")):
        out = tmp_path / "f.gif"
        result = runner.invoke(app, ["render", str(folder), str(out), "--skip-bad", "-q"])
        assert result.exit_code == 1 and message in result.output, result.output
        assert not out.exists()


def test_a_bad_checkpoint_late_in_the_run_stops_it_before_any_projection(tmp_path, monkeypatch):
    from layerfilm import project

    run = write_run(tmp_path / "run", n=8)
    last = run / "step_000700.safetensors"
    last.write_bytes(last.read_bytes()[:-50])
    projected = []
    original = project.project_keyframe
    monkeypatch.setattr(project, "project_keyframe", lambda *a: projected.append(1) or original(*a))
    result = runner.invoke(app, ["render", str(run), str(tmp_path / "f.gif"), "-q"])
    assert result.exit_code == 1 and f"{last}: truncated" in result.output
    assert projected == []


def test_a_lone_checkpoint_beside_a_damaged_one_names_the_damage(tmp_path):
    run = write_run(tmp_path / "run", n=1)
    (run / "shard-00001-of-00002.safetensors").write_bytes(b"x")  # a shard without its index
    result = runner.invoke(app, ["info", str(run)])
    assert result.exit_code == 1 and "only one checkpoint (step_000000.safetensors)" in result.output
    assert "shard-00001-of-00002.safetensors was left out: a shard without its index" in result.output


def test_grown_vocabulary_keeps_identity_of_the_rows_that_persist(tmp_path):
    run = write_run(tmp_path / "run", n=3, vocab=40)
    path = run / "step_000200.safetensors"
    sd = load_file(str(path))
    grown = np.concatenate([sd["transformer.wte.weight"],
                            np.random.default_rng(5).normal(size=(7, 16)).astype(np.float32)])
    sd["transformer.wte.weight"] = grown
    save_file(sd, str(path))
    plan = plan_of(run)
    embed = plan.layers[0]
    assert embed.label == "embed" and embed.n_points == 40
    from layerfilm.checkpoints import open_checkpoint

    ckpt = open_checkpoint(path)
    np.testing.assert_array_equal(read_layer(ckpt, embed, ckpt.shapes()), grown[:40])
    result = runner.invoke(app, ["render", str(run), str(tmp_path / "f.gif"), "--size", "160x96",
                                 "--fps", "2", "-q"])
    assert result.exit_code == 0, result.output


def _refs(*steps):
    return [CheckpointRef(None, s) for s in steps]


def test_select_steps():
    refs = _refs(0, 100, 200, 300, 400, 500, 600)
    pick = lambda *a: [r.step for r in select_steps(refs, *a)]  # noqa: E731
    assert pick(100, 400, None) == [100, 200, 300, 400]  # both ends included
    assert pick(None, None, 200) == [0, 200, 400, 600]
    assert pick(300, None, None) == [300, 400, 500, 600]
    # Uneven spacing: each kept step is at least EVERY after the previous one.
    uneven = _refs(0, 1, 2, 4, 8, 16, 32, 64, 128)
    assert [r.step for r in select_steps(uneven, None, None, 10)] == [0, 16, 32, 64, 128]


def _uneven_run(folder):
    run = write_run(folder, n=4)  # steps 0..300
    (run / "step_000300.safetensors").rename(run / "step_001200.safetensors")
    return run


def test_steps_option_picks_keyframes(tmp_path, headers):
    run = write_run(tmp_path / "run", n=6)  # 0..500
    out = tmp_path / "f.gif"
    result = runner.invoke(app, ["render", str(run), str(out), "--steps", "100:400:200", "--fps", "2",
                                 "--size", "160x96", "-q"])
    assert result.exit_code == 0, result.output
    assert decode(out).shape[0] == 3 and headers == [100, 200, 300]
    info = runner.invoke(app, ["info", str(run), "--steps", "::200"])
    assert "3 checkpoints, steps 0 .. 400 (every 200)" in info.output
    result = runner.invoke(app, ["render", str(run), str(out), "--steps", "450:"])
    assert result.exit_code == 1
    assert "--steps 450:: keeps 1 of the 6 checkpoints (steps 0..500)" in result.output


@pytest.mark.parametrize("timeline", ["keyframe", "step"])
def test_timeline(tmp_path, headers, timeline):
    run = _uneven_run(tmp_path / "run")  # steps 0, 100, 200, 1200
    out = tmp_path / "f.gif"
    result = runner.invoke(app, ["render", str(run), str(out), "--timeline", timeline, "--fps", "4",
                                 "--size", "160x96", "-q"])
    assert result.exit_code == 0, result.output
    assert len(headers) == 13 and decode(out).shape[0] == 13  # the same length either way
    if timeline == "keyframe":  # every checkpoint gets 4 frames
        assert [headers[i] for i in (0, 4, 8, 12)] == [0, 100, 200, 1200]
    else:  # frames in proportion to training steps: 100 steps a frame
        assert headers == [100 * f for f in range(13)]
    info = runner.invoke(app, ["info", str(run)])
    assert "gaps 100..1000" in info.output and "--timeline step" in info.output


def test_step_timeline_puts_every_checkpoint_on_a_frame(tmp_path, headers):
    """Steps 0, 100, 200, 1200 at 5 frames per keyframe: true-time positions 0, 1.25, 2.5 and 15
    are fractional; each checkpoint gets the nearest frame of its own, and that frame shows its
    real step and its own layout (the stills' tiles are those frames)."""
    from layerfilm import interpolate, stills

    run = _uneven_run(tmp_path / "run")
    out = tmp_path / "f.mkv"
    result = runner.invoke(app, ["render", str(run), str(out), "--timeline", "step", "--fps", "5",
                                 "--size", "160x96", "--stills", str(tmp_path / "s"),
                                 "--stills-every", "1", "-q"])
    assert result.exit_code == 0, result.output
    times = interpolate.step_times(np.array([0, 100, 200, 1200]), 5)
    exact = np.array([0, 100, 200, 1200]) / 1200 * 15
    assert times.tolist() == [0, 1, 2, 15] and np.abs(times - exact).max() <= 0.5
    assert [headers[int(t)] for t in times] == [0, 100, 200, 1200]
    film = decode(out)
    sheet = decode(tmp_path / "s" / "contact_sheet.png")[0]
    for i, t in enumerate(times.astype(int)):
        x, y = stills.tile_origin(i, 4, (160, 96))
        assert np.array_equal(sheet[y:y + 96, x:x + 160], film[t]), t
    # Crowded steps still get a frame each, strictly increasing, the film's length unchanged.
    crowded = interpolate.step_times(np.array([0, 1, 2, 3, 1000]), 1)
    assert crowded.tolist() == [0, 1, 2, 3, 4]
    rng = np.random.default_rng(0)
    for _ in range(200):
        steps = np.cumsum(rng.integers(1, 1000, size=rng.integers(2, 12)))
        t = interpolate.step_times(steps, int(rng.integers(1, 6)))
        assert (np.diff(t) >= 1).all() and t[0] == 0 and (t == np.round(t)).all()


def _conv_run(folder):
    rng = np.random.default_rng(0)
    folder.mkdir()
    for k in range(3):
        sd = {f"features.{i}.weight": rng.normal(size=(8, 6)).astype(np.float32) for i in (0, 3, 10)}
        sd["classifier.weight"] = rng.normal(size=(4, 6)).astype(np.float32)
        save_file(sd, str(folder / f"step_{k}.safetensors"))
    return folder


def test_unknown_naming_asks_for_layer_pattern(tmp_path):
    run = _conv_run(tmp_path / "run")
    result = runner.invoke(app, ["info", str(run)])
    assert result.exit_code == 1
    line = result.output.strip()
    assert "\n" not in line and "step_0.safetensors: no layers recognised" in line
    assert "prefixes found: classifier, features.N" in line and "--layer-pattern REGEX" in line
    for pattern in (r"^features\.(\d+)\.", r"(?P<layer>features\.\d+)"):
        result = runner.invoke(app, ["info", str(run), "--layer-pattern", pattern])
        assert result.exit_code == 0, result.output
        labels = [line.split()[0] for line in result.output.splitlines() if line.startswith("  ")][1:]
        assert labels == (["L0", "L3", "L10"] if "(\\d+)" in pattern
                          else ["features.0", "features.3", "features.10"])
    plan = plan_of(run, layer_pattern=r"^features\.(\d+)\.")
    assert all(l.n_points == 8 and l.dim == 6 for l in plan.layers)
    out = tmp_path / "f.gif"
    result = runner.invoke(app, ["render", str(run), str(out), "--layer-pattern", r"^features\.(\d+)\.",
                                 "--fps", "2", "--size", "160x96", "-q"])
    assert result.exit_code == 0 and decode(out).shape[0] == 5
    result = runner.invoke(app, ["info", str(run), "--layer-pattern", "^nothing"])
    assert result.exit_code == 1 and "--layer-pattern '^nothing' matches no 2-D tensor" in result.output


@pytest.mark.parametrize("args, message", [
    (["--steps", "a:b"], "--steps must look like START:STOP:EVERY"),
    (["--steps", "500:100"], "--steps START must not exceed STOP, got 500:100"),
    (["--steps", "::0"], "--steps EVERY must be at least 1, got 0"),
    (["--timeline", "wall"], "--timeline must be one of keyframe, step, got 'wall'"),
    (["--layer-pattern", "(h"], "--layer-pattern '(h' is not a valid regular expression"),
])
def test_option_validation(tmp_path, run_dir, args, message):
    out = tmp_path / "f.gif"
    result = runner.invoke(app, ["render", str(run_dir), str(out), *args])
    assert result.exit_code == 2 and not out.exists()
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.output


def test_new_options_reach_the_config(tmp_path, run_dir, seen):
    from layerfilm.config import RenderConfig

    runner.invoke(app, ["render", str(run_dir), str(tmp_path / "x.gif"), "--steps", "100::200",
                        "--timeline", "step", "--layer-pattern", r"h\.(\d+)", "--skip-bad"])
    assert seen == [RenderConfig(checkpoints=run_dir, output=tmp_path / "x.gif", steps="100::200",
                                 timeline="step", layer_pattern=r"h\.(\d+)", skip_bad=True)]


def test_new_options_in_a_config_file(tmp_path, run_dir, headers, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "layerfilm.toml").write_text('steps = "::200"\ntimeline = "step"\nskip-bad = true\n'
                                             'layer_pattern = "h\\\\.(\\\\d+)\\\\."\n')
    printed = runner.invoke(app, ["render", str(run_dir), "f.gif", "--print-config"]).output
    for line in ('steps = "::200"', 'timeline = "step"', "skip_bad = true", r'layer_pattern = "h\\.(\\d+)\\."'):
        assert line in printed, (line, printed)
    result = runner.invoke(app, ["render", str(run_dir), "f.gif", "--fps", "2", "--size", "160x96", "-q"])
    assert result.exit_code == 0, result.output
    assert headers == [0, 100, 200]  # keyframes 0 and 200 only
    doc = json.loads((tmp_path / "f.gif.json").read_text())
    assert doc["options"]["steps"] == "::200" and doc["options"]["layer_pattern"] == r"h\.(\d+)\."
