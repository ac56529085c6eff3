"""Options from layerfilm.toml / pyproject.toml / --config, under the command line."""

import inspect
import typing
from pathlib import Path

import pytest
from typer.testing import CliRunner

from layerfilm import cli, config
from layerfilm.config import RenderConfig

runner = CliRunner()


def test_every_option_is_a_render_parameter_of_the_same_name():
    params = inspect.signature(cli.render).parameters
    for name in set(config.option_names()) - set(config.FILE_ONLY):
        assert name in params, f"RenderConfig.{name} has no render parameter named {name!r}"


def test_file_values_under_the_command_line(tmp_path, run_dir, seen, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "layerfilm.toml").write_text(
        'fps = 3\nsize = "200x100"\ncmap = "viridis"\nframes-per-keyframe = 2\ncache = false\n')
    # --fps 25 equals the default and still wins over the file.
    result = runner.invoke(cli.app, ["render", str(run_dir), "o.gif", "--fps", "25", "--cmap", "magma"])
    assert result.exit_code == 0, result.output
    assert seen[-1] == RenderConfig(checkpoints=run_dir, output=Path("o.gif"), fps=25, frames_per_keyframe=2,
                                    size=(200, 100), cmap="magma", cache=False)


def test_pyproject_table_and_precedence(tmp_path, run_dir, seen, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    runner.invoke(cli.app, ["render", str(run_dir), "o.gif"])
    assert seen[-1] == RenderConfig(checkpoints=run_dir, output=Path("o.gif"))  # no [tool.layerfilm]: defaults
    (tmp_path / "pyproject.toml").write_text('[tool.layerfilm]\nseed = 7\nsize = [320, 200]\n')
    runner.invoke(cli.app, ["render", str(run_dir), "o.gif"])
    assert (seen[-1].seed, seen[-1].size) == (7, (320, 200))
    (tmp_path / "layerfilm.toml").write_text("seed = 9\n")  # layerfilm.toml wins, alone
    runner.invoke(cli.app, ["render", str(run_dir), "o.gif"])
    assert (seen[-1].seed, seen[-1].size) == (9, (1280, 720))


def test_config_option_replaces_the_discovered_file_and_paths_are_relative_to_it(
        tmp_path, run_dir, seen, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "layerfilm.toml").write_text("seed = 9\n")
    other = tmp_path / "conf"
    other.mkdir()
    (other / "film.toml").write_text('max_points = 50\nframes_dir = "pngs"\n')
    result = runner.invoke(cli.app, ["render", str(run_dir), "o.gif", "--config", "conf/film.toml"])
    assert result.exit_code == 0, result.output
    assert seen[-1] == RenderConfig(checkpoints=run_dir, output=Path("o.gif"), max_points=50, frames_dir=Path("conf/pngs"))


def test_print_config_round_trips(tmp_path, seen, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "layerfilm.toml").write_text('projection = "umap"\ncolor-scale = "linear"\n')
    first = runner.invoke(cli.app, ["render", "--print-config", "--jobs", "3", "--size", "640x360"])
    assert first.exit_code == 0, first.output
    assert not seen  # nothing rendered, no arguments needed
    lines = first.output.splitlines()
    assert lines[0].startswith("# layerfilm ") and "layerfilm.toml" in lines[0]
    assert 'projection = "umap"' in lines and 'color_scale = "linear"' in lines
    assert "jobs = 3" in lines and "size = [640, 360]" in lines and "fps = 25" in lines
    assert "# frames_per_keyframe is not set" in lines
    (tmp_path / "saved.toml").write_text(first.output)
    (tmp_path / "layerfilm.toml").unlink()
    again = runner.invoke(cli.app, ["render", "--print-config", "--config", "saved.toml"])
    assert again.output.splitlines()[1:] == lines[1:]


@pytest.mark.parametrize("text, message", [
    ("fsp = 3\n", "layerfilm.toml: unknown key 'fsp'; did you mean 'fps'?"),
    ('output = "x.webm"\n', "layerfilm.toml: unknown key 'output'; give OUTPUT on the command line"),
    ('fps = "fast"\n', "layerfilm.toml: fps: expected a whole number, got 'fast'"),
    ("fps = 0\n", "layerfilm.toml: fps: --fps must be between 1 and 240, got 0"),
    ("cache = 1\n", "layerfilm.toml: cache: expected true or false, got 1"),
    ('size = "big"\n', "layerfilm.toml: size: expected [WIDTH, HEIGHT]"),
    ("size = [10, 10]\n", "layerfilm.toml: size: --size must be between 64x64"),
    ('cmap = "nosuch"\n', "layerfilm.toml: cmap: --cmap 'nosuch' is not a matplotlib colormap"),
    ("fps = 3\nfps = 4\n", "layerfilm.toml: not valid TOML"),
    ("fps = 3\n[extra]\nx = 1\n", "layerfilm.toml: unknown key 'extra'"),
])
def test_bad_file_is_one_line_naming_file_and_key(tmp_path, run_dir, seen, monkeypatch, text, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "layerfilm.toml").write_text(text)
    result = runner.invoke(cli.app, ["render", str(run_dir), "o.webm"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"layerfilm: error: {message}"), result.output
    assert not seen and not list(tmp_path.glob("o.*"))


def test_bad_value_on_the_command_line_is_not_blamed_on_the_file(tmp_path, run_dir, seen, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "layerfilm.toml").write_text("seed = 1\n")
    result = runner.invoke(cli.app, ["render", str(run_dir), "o.webm", "--fps", "0"])
    assert result.exit_code == 2 and result.output.strip() == \
        "layerfilm: error: --fps must be between 1 and 240, got 0"


def test_missing_config_file_and_table(tmp_path, run_dir, seen, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(cli.app, ["render", str(run_dir), "o.webm", "--config", "nope.toml"])
    assert result.exit_code == 2 and "nope.toml: no such config file" in result.output
    (tmp_path / "pyproject.toml").write_text("[tool.other]\n")
    result = runner.invoke(cli.app, ["render", str(run_dir), "o.webm", "--config", "pyproject.toml"])
    assert result.exit_code == 2 and "pyproject.toml: has no [tool.layerfilm] table" in result.output


@pytest.mark.parametrize("tp, value, expected", [
    (int, 3, 3),
    (float, 2, 2.0),
    (float | None, 0.5, 0.5),
    (str | None, "x", "x"),
    (tuple[int, int], [4, 5], (4, 5)),
    (tuple[int, int], "4x5", (4, 5)),
    (tuple[str, ...], ["a", "b"], ("a", "b")),
    (list[int], [1, 2], [1, 2]),
    (typing.Literal["a", "b"], "b", "b"),
    (Path | None, "sub/d", Path("/base/sub/d")),
    (Path, "/abs", Path("/abs")),
])
def test_values_are_converted_by_the_field_type(tp, value, expected):
    """New options of any of these types load from files with no extra code."""
    assert config.files._coerce(value, tp, Path("/base"), nullable=False) == expected


@pytest.mark.parametrize("tp, value, message", [
    (int, True, "expected a whole number"),
    (float, "1", "expected a number"),
    (tuple[int, int], [1, 2, 3], "expected an array of 2 values"),
    (tuple[str, ...], ["a", 1], "expected a string"),
    (typing.Literal["a", "b"], "c", "expected one of 'a', 'b'"),
    (int | None, None, "expected a whole number"),
])
def test_wrong_kinds_of_value_are_named(tp, value, message):
    with pytest.raises(ValueError, match=message):
        config.files._coerce(value, tp, Path("/base"), nullable=False)
    assert config.files._coerce(None, int | None, Path("/base"), nullable=True) is None


def test_output_options_are_the_path_typed_ones():
    out = config.output_options()
    assert "frames_dir" in out and not {"fps", "size", "cmap", "cache", "frames_per_keyframe"} & set(out)


def test_info_takes_seed_and_metrics_as_render_does(tmp_path, run_dir, monkeypatch):
    from layerfilm import info

    loss = tmp_path / "loss.csv"
    loss.write_text("step,loss\n0,2.5\n100,2.0\n200,1.5\n")
    result = runner.invoke(cli.app, ["info", str(run_dir), "--metrics", str(loss)])
    assert result.exit_code == 0, result.output
    assert f"3 values from {loss}" in result.output
    seen = []
    monkeypatch.setattr(info, "report", lambda config: seen.append(config) or [])
    result = runner.invoke(cli.app, ["info", str(run_dir), "--seed", "7", "--metrics", str(loss)])
    assert result.exit_code == 0, result.output
    assert (seen[-1].seed, seen[-1].metrics) == (7, loss)


def test_info_reads_the_same_config_file_as_render(tmp_path, run_dir, monkeypatch):
    # write_run's steps are 0, 100, 200, 300; the file picks two, the command line overrides.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "layerfilm.toml").write_text('steps = "100:300:200"\nfps = 4\nmax-points = 5\n')
    result = runner.invoke(cli.app, ["info", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert "2 checkpoints, steps 100 .. 300 (every 200)" in result.output
    assert "5 frames, 1.2 s at 4 fps" in result.output
    assert all(line.split()[1] == "5" for line in result.output.splitlines() if line.startswith("  L"))
    result = runner.invoke(cli.app, ["info", str(run_dir), "--steps", "::100", "--fps", "2"])
    assert result.exit_code == 0, result.output
    assert "4 checkpoints, steps 0 .. 300 (every 100)" in result.output and "at 2 fps" in result.output
    (tmp_path / "bad.toml").write_text("max-points = 0\n")
    result = runner.invoke(cli.app, ["info", str(run_dir), "--config", "bad.toml"])
    assert result.exit_code == 2 and "bad.toml: max_points" in result.output, result.output
