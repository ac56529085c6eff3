"""layerfilm stats with render's checkpoint selection (--steps, --layer-pattern, --skip-bad) and
render's config files: the numbers checked against numpy on the keyframes that were selected."""

import csv
import dataclasses
import inspect
import typing

import numpy as np
import pytest
from safetensors.numpy import load_file
from typer.testing import CliRunner

from layerfilm import cli, config
from layerfilm.cli import app
from layerfilm.config import RenderConfig, StatsConfig

from conftest import write_run
from test_stats import _freezing_run, flat_layers

runner = CliRunner()


def mlp_layers(path):
    """``--layer-pattern 'h\\.(\\d+)\\.mlp\\.'``: per block, c_fc (rows) and c_proj (columns),
    i.e. every element of both, as one flat float64 vector."""
    sd = load_file(str(path))
    return {f"L{i}": np.concatenate([sd[f"transformer.h.{i}.mlp.{n}.weight"].astype(np.float64).ravel()
                                     for n in ("c_fc", "c_proj")]) for i in range(2)}


@np.errstate(divide="ignore", invalid="ignore")  # 0/0 (a layer that stopped) is NaN, as in the CSV
def expected_rows(paths, steps, layers, threshold=None, fraction=0.25):
    """The CSV's weight columns computed with numpy from the files at ``paths`` alone (settled
    from the first keyframe after which the rate stays below ``threshold`` when given, else
    below ``fraction`` of the layer's early pace (the highest mean of three neighbouring
    intervals in the first quarter), with at least three intervals after it).  The
    keyframes are evenly spaced, so the rate is the change per 100 steps as it is."""
    W = [layers(p) for p in paths]
    out = {}
    for label in W[0]:
        w = [x[label] for x in W]
        rate = [np.nan] + [np.linalg.norm(w[k] - w[k - 1]) / np.linalg.norm(w[k - 1]) * 100
                           / (steps[k] - steps[k - 1]) for k in range(1, len(w))]
        early = rate[1:1 + max(3, int(np.ceil((len(w) - 1) / 4)))]  # the first quarter, >= 3
        peak = (max(np.mean(early[i:i + 3]) for i in range(len(early) - 2)) if len(early) >= 3
                else np.nanmax(rate))  # mean of three intervals, where there are three
        limit = threshold if threshold is not None else fraction * peak
        calm = next(k for k in range(len(w)) if all(r < limit for r in rate[k + 1:]))
        settle = steps[calm] if len(w) - 1 - calm >= 3 else None
        for k, step in enumerate(steps):
            row = {"weight_norm": np.linalg.norm(w[k]),
                   "rel_change_first": np.linalg.norm(w[k] - w[0]) / np.linalg.norm(w[0]),
                   "mean_abs_change_first": np.mean(np.abs(w[k] - w[0])),
                   "rel_change_per_100": rate[k], "rel_change_prev": np.nan, "update_cosine": np.nan,
                   "settle_step": "" if settle is None else str(settle)}
            if k >= 1:
                row["rel_change_prev"] = np.linalg.norm(w[k] - w[k - 1]) / np.linalg.norm(w[k - 1])
            if k >= 2:
                a, b = w[k] - w[k - 1], w[k - 1] - w[k - 2]
                row["update_cosine"] = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
            out[step, label] = row
    labels = list(W[0])
    return {key: out[key] for key in sorted(out, key=lambda sl: (sl[0], labels.index(sl[1])))}


def check_csv(path, expected):
    rows = list(csv.DictReader(open(path)))
    assert [(int(r["step"]), r["layer"]) for r in rows] == list(expected)
    for r in rows:
        want = expected[int(r["step"]), r["layer"]]
        assert r["settle_step"] == want.pop("settle_step"), r
        for col, value in want.items():
            if np.isnan(value):
                assert r[col] == "", (col, r)
            else:
                np.testing.assert_allclose(float(r[col]), value, rtol=1e-8, err_msg=col)
    return rows


def stats(*args):
    return runner.invoke(app, ["stats", *map(str, args), "-q"])


def test_threshold_rule_settles_where_change_stays_below_it(tmp_path):
    """With --settle-threshold 0.01 a layer settles once its change stays below 0.01 per 100
    steps (checked against numpy on a run whose L1 slows from ~5 % to ~0.5 % after step 300);
    by default, once its rate stays below a quarter of its peak: the others keep their pace and
    are still moving."""
    from conftest import odd_block_run

    run = odd_block_run(tmp_path / "run", 8, blocks=2, odd=1, rate=0.05, odd_rate=0.005, odd_from=4)
    result = stats(run, "--out", tmp_path / "s", "--settle-threshold", "0.01")
    assert result.exit_code == 0, result.output
    steps = list(range(0, 700, 100))
    paths = [run / f"step_{s:06d}.safetensors" for s in steps]
    rows = check_csv(tmp_path / "s" / "layer_stats.csv", expected_rows(paths, steps, flat_layers, 0.01))
    assert {r["layer"]: r["settle_step"] for r in rows}["L1"] == "300"
    result = stats(run, "--out", tmp_path / "s")
    assert result.exit_code == 0, result.output
    rows = check_csv(tmp_path / "s" / "layer_stats.csv", expected_rows(paths, steps, flat_layers))
    assert {r["layer"]: r["settle_step"] for r in rows} == {"embed": "", "L0": "", "L1": "300"}


def test_steps_pick_the_keyframes_measured(tmp_path):
    run = write_run(tmp_path / "run", n=6)
    out = tmp_path / "s"
    result = stats(run, "--out", out, "--steps", "100:500:200", "--settle-threshold", "0.45")
    assert result.exit_code == 0, result.output
    assert f"wrote {out / 'layer_stats.csv'} (9 rows)" in result.output
    steps = [100, 300, 500]  # W_0 is step 100's; rates are per 100 steps over gaps of 200
    paths = [run / f"step_{s:06d}.safetensors" for s in steps]
    check_csv(out / "layer_stats.csv", expected_rows(paths, steps, flat_layers, 0.45))
    # Too few keyframes left: render's one line.
    result = stats(run, "--out", tmp_path / "t", "--steps", "450:")
    assert result.exit_code == 1 and result.output.strip() == (
        f"layerfilm: error: {run}: --steps 450:: keeps 1 of the 6 checkpoints (steps 0..500); "
        "a film needs at least two")
    assert not (tmp_path / "t").exists()


def test_layer_pattern_groups_the_panels_measured(tmp_path):
    run = write_run(tmp_path / "run", n=4)
    out = tmp_path / "s"
    result = stats(run, "--out", out, "--layer-pattern", r"h\.(\d+)\.mlp\.")
    assert result.exit_code == 0, result.output
    steps = [0, 100, 200, 300]
    paths = [run / f"step_{s:06d}.safetensors" for s in steps]
    rows = check_csv(out / "layer_stats.csv", expected_rows(paths, steps, mlp_layers))
    assert {r["points"] for r in rows} == {"128"}  # 64 c_fc rows + 64 c_proj columns, 16 wide
    result = stats(run, "--out", tmp_path / "t", "--layer-pattern", "^nothing")
    assert result.exit_code == 1 and "--layer-pattern '^nothing' matches no 2-D tensor" in result.output


@pytest.mark.parametrize("damage, problem", [
    (lambda p: p.write_bytes(p.read_bytes()[:-100]), "truncated: tensor"),
    (lambda p: p.write_bytes(b""), "not a safetensors file: empty file"),
])
def test_skip_bad_measures_past_bad_checkpoints(tmp_path, damage, problem):
    run = write_run(tmp_path / "run", n=5)
    bad = run / "step_000200.safetensors"
    damage(bad)
    out = tmp_path / "s"
    result = stats(run, "--out", out)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"layerfilm: error: {bad}: ") and problem in lines[0]
    assert not out.exists()
    result = stats(run, "--out", out, "--skip-bad")
    assert result.exit_code == 0, result.output
    assert [line for line in result.output.splitlines() if line.startswith("warning:")] == [
        next(line for line in result.output.splitlines() if line.startswith(f"warning: skipped {bad}: "))]
    assert problem in result.output
    steps = [0, 100, 300, 400]
    paths = [run / f"step_{s:06d}.safetensors" for s in steps]
    check_csv(out / "layer_stats.csv", expected_rows(paths, steps, flat_layers))


@pytest.mark.parametrize("args, message", [
    (["--steps", "a:b"], "--steps must look like START:STOP:EVERY"),
    (["--steps", "500:100"], "--steps START must not exceed STOP, got 500:100"),
    (["--steps", "::0"], "--steps EVERY must be at least 1, got 0"),
    (["--layer-pattern", "(h"], "--layer-pattern '(h' is not a valid regular expression"),
])
def test_selection_options_are_validated_as_for_render(tmp_path, run_dir, args, message):
    lines = {}
    for command in (["render", run_dir, tmp_path / "f.gif"], ["stats", run_dir, "--out", tmp_path / "s"]):
        result = runner.invoke(app, [*map(str, command), *args])
        assert result.exit_code == 2, result.output
        lines[command[0]] = result.output.strip().splitlines()
    assert lines["stats"] == lines["render"] and len(lines["stats"]) == 1
    assert message in lines["stats"][0]
    assert not (tmp_path / "s").exists()


# ---- config files --------------------------------------------------------------------------


def test_shared_options_are_stats_parameters_with_render_defaults_and_types():
    names = config.option_names(StatsConfig)
    assert names == ["settle_threshold", "settle_fraction", "rebel_z", "projection", "fourier_ref",
                     "prompt", "prompts", "max_new_tokens",
                     "scheduler", "points", "tensor", "max_points", "seed", "steps", "layer_pattern", "skip_bad",
                     "run", "revisions", "keep_downloads", "storage_options", "max_memory",
                     "probe", "probe_positions", "model_config", "tokenizer"]
    names = [n for n in names if n not in config.FILE_ONLY]
    params = inspect.signature(cli.stats).parameters
    render, stats_ = typing.get_type_hints(RenderConfig), typing.get_type_hints(StatsConfig)
    fields = {f.name: f for f in dataclasses.fields(StatsConfig)}
    defaults = {f.name: f.default for f in dataclasses.fields(RenderConfig)}
    for name in names:
        assert name in params, name
        assert stats_[name] == render[name] and fields[name].default == defaults[name], name


def test_file_values_under_the_command_line(tmp_path, run_dir, seen_stats, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # Render-only keys (fps, size, cmap, timeline, frames_dir, ...) are read but not used.
    (tmp_path / "layerfilm.toml").write_text(
        'fps = 3\nsize = "200x100"\ncmap = "viridis"\ntimeline = "step"\nframes_dir = "pngs"\n'
        'steps = "::200"\nmax-points = 50\nseed = 4\nsettle_threshold = 0.5\nskip_bad = true\n'
        'layer_pattern = "h\\\\.(\\\\d+)\\\\."\nprojection = "umap"\npoints = "rows"\n'
        'tensor = "mlp"\n')
    result = runner.invoke(app, ["stats", str(run_dir), "--seed", "0", "--steps", "100:"])
    assert result.exit_code == 0, result.output
    # --seed 0 equals the default and still wins over the file.
    assert seen_stats[-1] == StatsConfig(checkpoints=run_dir, steps="100:", max_points=50, seed=0, settle_threshold=0.5,
                                   skip_bad=True, layer_pattern=r"h\.(\d+)\.", projection="umap",
                                   points="rows", tensor="mlp")


def test_pyproject_table_and_config_option(tmp_path, run_dir, seen_stats, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pyproject.toml").write_text('[tool.layerfilm]\nseed = 7\nsize = [320, 200]\n')
    runner.invoke(app, ["stats", str(run_dir)])
    assert seen_stats[-1] == StatsConfig(checkpoints=run_dir, seed=7)
    (tmp_path / "layerfilm.toml").write_text("max_points = 9\n")  # layerfilm.toml wins, alone
    runner.invoke(app, ["stats", str(run_dir)])
    assert seen_stats[-1] == StatsConfig(checkpoints=run_dir, max_points=9)
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "s.toml").write_text('steps = ":200"\n')  # --config replaces both
    runner.invoke(app, ["stats", str(run_dir), "--config", "conf/s.toml"])
    assert seen_stats[-1] == StatsConfig(checkpoints=run_dir, steps=":200")


def test_steps_and_threshold_from_the_config_file_are_measured(tmp_path, monkeypatch):
    run = _freezing_run(tmp_path / "run")  # L1 stops changing after step 200, embed after 300
    monkeypatch.chdir(tmp_path)
    (tmp_path / "layerfilm.toml").write_text(
        'steps = "300:"\nsettle_threshold = 1e-6\nfps = 2\ncmap = "magma"\nsize = "64x64"\n')
    result = stats(run, "--out", "s")
    assert result.exit_code == 0, result.output
    assert "settles first: embed, L1 (step 300)" in result.output  # the film starts at 300
    steps = [300, 400, 500, 600]
    paths = [run / f"step_{s:06d}.safetensors" for s in steps]
    rows = check_csv(tmp_path / "s" / "layer_stats.csv", expected_rows(paths, steps, flat_layers, 1e-6))
    assert {r["layer"]: r["settle_step"] for r in rows} == {"embed": "300", "L0": "", "L1": "300"}
    # The command line overrides the file: all keyframes, L1 settles at 200.
    result = stats(run, "--out", "s", "--steps", "::")
    assert result.exit_code == 0 and "settles first: L1 (step 200)" in result.output
    steps = list(range(0, 700, 100))
    paths = [run / f"step_{s:06d}.safetensors" for s in steps]
    check_csv(tmp_path / "s" / "layer_stats.csv", expected_rows(paths, steps, flat_layers, 1e-6))


def test_print_config_round_trips_and_render_reads_it(tmp_path, monkeypatch, seen_stats):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "layerfilm.toml").write_text('steps = "::500"\nfps = 5\n')
    first = runner.invoke(app, ["stats", "--print-config", "--seed", "3", "--skip-bad"])
    assert first.exit_code == 0, first.output
    assert not seen_stats  # nothing measured, no CHECKPOINTS needed
    lines = first.output.splitlines()
    assert lines[0].startswith("# layerfilm ") and "stats options (defaults < layerfilm.toml < " \
        "command line)" in lines[0]
    assert lines[1:] == ["# settle_threshold is not set", "settle_fraction = 0.25", "rebel_z = 3.0",
                         'projection = "pca"', "# fourier_ref is not set", "prompt = []",
                         "# prompts is not set", "max_new_tokens = 12", "# scheduler is not set",
                         'points = "neurons"',
                         "# tensor is not set", "max_points = 2000", "seed = 3", 'steps = "::500"',
                         "# layer_pattern is not set", "skip_bad = true", "# run is not set",
                         "# revisions is not set", "keep_downloads = false",
                         "# storage_options is not set", "# max_memory is not set",
                         "# probe is not set", 'probe_positions = "all"', "# model_config is not set",
                         "# tokenizer is not set"]
    (tmp_path / "saved.toml").write_text(first.output)
    (tmp_path / "layerfilm.toml").unlink()
    again = runner.invoke(app, ["stats", "--print-config", "--config", "saved.toml"])
    assert again.output.splitlines()[1:] == lines[1:]
    render = runner.invoke(app, ["render", "--print-config", "--config", "saved.toml"])
    assert render.exit_code == 0 and "seed = 3" in render.output and "fps = 25" in render.output
    result = runner.invoke(app, ["stats"])
    assert result.exit_code == 2 and result.output.strip() == \
        "layerfilm: error: Missing argument 'CHECKPOINTS' (see layerfilm stats --help)"


@pytest.mark.parametrize("text, message", [
    ("fsp = 3\n", "layerfilm.toml: unknown key 'fsp'; did you mean 'fps'?"),
    ('out = "x"\n', "layerfilm.toml: unknown key 'out'"),  # not a render option either
    ("layouts = true\n", "layerfilm.toml: unknown key 'layouts'"),
    ('fps = "fast"\n', "layerfilm.toml: fps: expected a whole number, got 'fast'"),
    ("max_points = 1\n", "layerfilm.toml: max_points: --max-points must be at least 3, got 1"),
    ("seed = -1\n", "layerfilm.toml: seed: --seed must be 0 or more, got -1"),  # numpy would raise
    ('steps = "5:1"\n', "layerfilm.toml: steps: --steps START must not exceed STOP, got 5:1"),
    ('layer-pattern = "("\n', "layerfilm.toml: layer_pattern: --layer-pattern '(' is not a valid"),
    ("settle_threshold = 0\n", "layerfilm.toml: settle_threshold: --settle-threshold must be"),
    ('points = "dots"\n', "layerfilm.toml: points: --points must be one of"),
])
def test_bad_file_is_one_line_naming_file_and_key(tmp_path, run_dir, seen_stats, monkeypatch, text, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "layerfilm.toml").write_text(text)
    result = runner.invoke(app, ["stats", str(run_dir), "--out", "s"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"layerfilm: error: {message}"), result.output
    assert not seen_stats and not (tmp_path / "s").exists()


def test_render_only_values_are_not_checked_by_stats(tmp_path, run_dir, seen_stats, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "layerfilm.toml").write_text('fps = 0\ncmap = "nosuch"\nmetrics = "missing.jsonl"\n')
    assert runner.invoke(app, ["stats", str(run_dir)]).exit_code == 0 and seen_stats == [StatsConfig(checkpoints=run_dir)]
    result = runner.invoke(app, ["render", str(run_dir), "f.gif"])
    assert result.exit_code == 2 and "layerfilm.toml: fps: --fps must be between" in result.output


def test_bad_value_on_the_command_line_is_not_blamed_on_the_file(tmp_path, run_dir, seen_stats, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "layerfilm.toml").write_text("seed = 1\n")
    result = runner.invoke(app, ["stats", str(run_dir), "--max-points", "1"])
    assert result.exit_code == 2 and result.output.strip() == \
        "layerfilm: error: --max-points must be at least 3, got 1"
