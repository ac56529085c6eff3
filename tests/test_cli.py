"""The command line, end to end: films decode bit-exact to the frames sent; bad input is one line."""

import dataclasses
import json
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from layerfilm import config, encode, grid
from layerfilm.text import text_mask
from layerfilm.cli import app
from layerfilm.config import RenderConfig

from conftest import SAMPLE, decode, densest_pixel, write_run

runner = CliRunner()


@pytest.mark.parametrize("suffix", [".webm", ".gif"])
def test_sample_film_is_bit_exact(tmp_path, sent, suffix):
    out = tmp_path / f"sample{suffix}"
    result = runner.invoke(app, ["render", str(SAMPLE), str(out), "--size", "320x180",
                                 "--frames-per-keyframe", "2", "--quiet"])
    assert result.exit_code == 0, result.output
    n_keys = len(list(SAMPLE.glob("step_*.safetensors")))
    assert len(sent) == 2 * (n_keys - 1) + 1
    got = decode(out)
    assert got.shape == (len(sent), 180, 320, 3)
    for i, frame in enumerate(sent):
        assert np.array_equal(got[i], frame), f"frame {i} differs"
    assert f"{len(sent)} frames" in result.output


def _ink_contains(ink: np.ndarray, text: str, px: int, dim: bool = False) -> bool:
    """Whether the exact glyph coverage of ``text`` at ``px`` pixels (what is left of it on the
    palette's 15-level grey ramp, dimmed as dim text is) appears in the bool image ``ink``
    (non-background pixels)."""
    from layerfilm import shade

    coverage = text_mask(text, px)[0]
    if dim:
        coverage = (coverage.astype(np.uint16) * 150 // 255).astype(np.uint8)
    mask = shade.text_index(coverage) > 0
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    mask = mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]  # the glyphs' bounding box
    h, w = mask.shape
    for y in range(ink.shape[0] - h + 1):
        for x in range(ink.shape[1] - w + 1):
            if np.array_equal(ink[y:y + h, x:x + w], mask):
                return True
    return False


def test_film_shows_motion_labels_and_header(tmp_path, run_dir, sent, headers):
    out = tmp_path / "f.gif"
    assert runner.invoke(app, ["render", str(run_dir), str(out), "--size", "400x240", "--fps", "4",
                               "-q"]).exit_code == 0
    first, last = sent[0], sent[-1]
    assert len(sent) == 13 and not np.array_equal(first, last)
    # Consecutive frames differ (points move every frame, no frozen stretches) ...
    assert all(not np.array_equal(a, b) for a, b in zip(sent, sent[1:]))
    # ... the header shows the run's name, the step and the loss of each frame, glyph for glyph
    layout = grid.arrange(grid.FrameSpec((400, 240), ("embed", "L0", "L1")))
    ink = lambda frame: frame[:layout.header - 2].any(axis=2)  # noqa: E731  (above the progress line)
    assert headers[0] == 0 and headers[-1] == 300
    for frame, texts in ((first, ["run", "step 0", "loss 4"]), (last, ["run", "step 300", "loss 1"])):
        for text in texts:
            assert _ink_contains(ink(frame), text, layout.font), text
    assert not _ink_contains(ink(first), "step 300", layout.font)
    # ... and frames showing the same step and loss have the same header.
    same = [i for i, s in enumerate(headers) if s == headers[1]]
    assert len(same) >= 1 and all(np.array_equal(ink(sent[i]), ink(sent[same[0]])) for i in same)


def test_color_range_fixed_for_the_whole_film(tmp_path, run_dir):
    """The span is the densest pixel of any frame, keyframes and every frame between them
    (computed here with the numpy twins of interpolation and splatting, on a film prepared
    here through the public stages), recorded in the manifest, and the same for every frame:
    the legend that shows it is the same pixels in every decoded frame."""
    from layerfilm import film as film_stage, layouts, plan
    from layerfilm.config import RenderConfig

    out = tmp_path / "f.gif"
    assert runner.invoke(app, ["render", str(run_dir), str(out), "--fps", "3",
                               "--size", "320x180", "-q"]).exit_code == 0
    recorded = json.loads(out.with_name("f.gif.json").read_text())["drawing"]["color_span"]
    cfg = RenderConfig(checkpoints=run_dir, output=out, fps=3, size=(320, 180)).validated()
    made = plan.make_plan(cfg)
    keys = layouts.keyframe_layouts(made)
    here = film_stage.prepare(made, keys, film_stage.FilmSpec.of(cfg))
    densest = densest_pixel(keys.P, here.times, here.n_frames, here.rasterizer(), (180, 320))
    assert recorded == pytest.approx(max(densest, 1.0), rel=1e-6)
    x0, y0, x1, y1 = here.grid.legend
    frames = decode(out)
    assert len(frames) == here.n_frames == 10 and x1 > x0 and y1 > y0
    legend = frames[:, y0:y1, x0:x1]
    assert (legend == legend[0]).all() and legend[0].std() > 0


def test_options_reach_the_config(tmp_path, run_dir, seen):
    runner.invoke(app, ["render", str(run_dir), str(tmp_path / "x.gif"), "--fps", "50",
                        "--frames-per-keyframe", "10", "--size", "640x360", "--projection", "umap",
                        "--max-points", "77", "--seed", "5", "--cmap", "viridis",
                        "--color-scale", "linear", "--jobs", "2"])
    assert seen == [RenderConfig(checkpoints=run_dir, output=tmp_path / "x.gif", fps=50,
                                 frames_per_keyframe=10, size=(640, 360), projection="umap",
                                 max_points=77, seed=5, cmap="viridis", color_scale="linear", jobs=2)]


def test_parameters_become_config_fields_by_name():
    """A command's parameters are its config's fields by name (parsed where named), its own
    ones left out; a parameter that names no field is a mistake, not silently dropped."""
    from layerfilm.cli.common import _config_of
    from layerfilm.config import parse_size

    params = {"size": "64x32", "fps": 9, "quiet": True}
    assert (_config_of(RenderConfig, params, ("quiet",), size=parse_size)
            == RenderConfig(size=(64, 32), fps=9))
    with pytest.raises(TypeError, match="fsp"):
        _config_of(RenderConfig, {"fsp": 9}, ())


# The config each command builds (a command not here builds none): checked against typer's own
# list of commands, so a new command is placed here or the test below fails.
_CONFIGS = {"render": config.RenderConfig, "info": config.InfoConfig, "stats": config.StatsConfig,
            "publish": config.PublishConfig, "cache": None,
            "watch": None,  # watch: its own options; the render options through render's parser
            "view": None}  # view: a manifest and --out


def _shown(text: str) -> str:
    """Help as a reader sees it: rich's box lines gone, every run of spaces one space."""
    return " ".join(re.sub(r"[\u2500-\u257f]", " ", text).split())


@pytest.mark.parametrize("name", sorted(_CONFIGS))
def test_help_documents_every_option_of_every_command(name):
    """Every field of the command's config is one of its parameters (a config-file-only field
    aside), and every parameter is in its --help under its own name, with its whole help text
    (none empty, none eaten by rich markup)."""
    import typer

    commands = typer.main.get_command(app).commands
    assert set(commands) == set(_CONFIGS)
    params = {p.name: p for p in commands[name].params}
    fields = {f.name for f in dataclasses.fields(_CONFIGS[name])} if _CONFIGS[name] else set()
    assert fields - set(config.FILE_ONLY) <= set(params), fields - set(config.FILE_ONLY) - set(params)
    shown = _shown(runner.invoke(app, [name, "--help"], env={"COLUMNS": "200"}).output)
    eaten = set()
    for p in params.values():
        assert (p.help or "").strip(), f"{name} {p.name}: no help text"
        for opt in p.opts + p.secondary_opts:
            assert re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", shown), f"{name} {opt}: not in --help"
        if _shown(p.help.replace("\\[", "[")) not in shown:
            eaten.add(p.name)
    assert not eaten, eaten  # rich reads "[default: ...]" as a style tag: write "(...)" or "\\["


def test_info_on_sample():
    result = runner.invoke(app, ["info", str(SAMPLE)])
    assert result.exit_code == 0, result.output
    assert "embed" in result.output and "L0" in result.output and "L3" in result.output
    assert "transformer.wte.weight R" in result.output
    assert "loss" in result.output and "none found" not in result.output


def _bad_inputs(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    one = write_run(tmp_path / "one", n=1)
    corrupt = write_run(tmp_path / "corrupt", n=3)
    (corrupt / "step_000100.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    truncated = write_run(tmp_path / "trunc", n=3)
    p = truncated / "step_000200.safetensors"
    p.write_bytes(p.read_bytes()[:-100])
    return [
        (["render", str(tmp_path / "nope"), "o.webm"], "nope: no such folder"),
        (["render", str(empty), "o.webm"], "no checkpoints found"),
        (["render", str(one), "o.webm"], "only one checkpoint"),
        (["render", str(corrupt), "o.webm"], "step_000100.safetensors: corrupt safetensors header"),
        (["render", str(truncated), "o.webm"], "step_000200.safetensors: truncated"),
        (["render", str(one), "o.avi"], "unknown output format '.avi'"),
        (["render", str(one), "o.webm", "--size", "big"], "--size must look like"),
        (["render", str(one), "o.webm", "--cmap", "nosuch"], "'nosuch' is not a matplotlib colormap"),
        (["render", str(one), "o.webm", "--fps", "0"], "--fps must be between"),
        (["info", str(empty)], "no checkpoints found"),
    ]


def test_bad_input_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for args, message in _bad_inputs(tmp_path):
        result = runner.invoke(app, args)
        assert result.exit_code != 0, args
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("layerfilm: error: "), result.output
        assert message in lines[0], (message, lines[0])
        assert "Traceback" not in result.output
        assert not list(tmp_path.glob("o.*")) and not list(tmp_path.glob(".o.*"))


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_ctrl_c_kills_ffmpeg_and_leaves_no_file(tmp_path, signame):
    import signal
    import subprocess
    import sys
    import time

    run = write_run(tmp_path / "run", n=6)
    out = tmp_path / "out" / "film.webm"
    out.parent.mkdir()
    # Its own session, so only layerfilm gets the SIGINT: it must stop ffmpeg itself.
    proc = subprocess.Popen([sys.executable, "-m", "layerfilm", "render", str(run), str(out),
                             "--fps", "200", "--size", "1280x720", "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            # A shell's background job inherits SIGINT ignored: restore the default.
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 60
    while not list(out.parent.glob(".film.webm.*.part")) and time.time() < deadline \
            and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.5)  # mid-film
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(getattr(signal, signame))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.decode().strip() == "layerfilm: error: interrupted; no output was written"
    assert list(out.parent.iterdir()) == []
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(out.parent) not in ps  # no ffmpeg still writing there


@pytest.mark.parametrize("suffix", [".webm", ".gif", ".mp4", ".mkv"])
def test_jobs_join_chunks_into_one_bit_exact_stream(tmp_path, run_dir, sent_by_file, suffix):
    out = tmp_path / f"film{suffix}"
    result = runner.invoke(app, ["render", str(run_dir), str(out), "--size", "256x144", "--fps", "7",
                                 "--jobs", "3", "-q"])
    assert result.exit_code == 0, result.output
    assert "3 jobs" in result.output
    names = sorted(sent_by_file)
    assert names == [f"chunk{j}{suffix}" for j in range(3)]
    sent = [f for name in names for f in sent_by_file[name]]
    assert len(sent) == 3 * 7 + 1
    got = decode(out)
    assert got.shape[0] == len(sent)
    for i, frame in enumerate(sent):
        assert np.array_equal(got[i], frame), f"frame {i}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["film" + suffix, f"film{suffix}.json", "run"]


def test_jobs_fall_back_to_one_for_webp(tmp_path, run_dir):
    result = runner.invoke(app, ["render", str(run_dir), str(tmp_path / "f.webp"), "--size", "128x96",
                                 "--fps", "2", "--jobs", "2", "-q"])
    assert result.exit_code == 0 and "used 1 job" in result.output
    assert decode(tmp_path / "f.webp").shape[0] == 7


def test_a_failing_job_leaves_nothing(tmp_path, run_dir, monkeypatch):
    original = encode.FilmWriter.write

    def write(self, frame):
        if self.path.name.endswith("chunk1.gif") and self.frames_written == 2:
            raise encode.EncodeError("disk full", self.path)
        original(self, frame)

    monkeypatch.setattr(encode.FilmWriter, "write", write)
    out = tmp_path / "out"
    out.mkdir()
    result = runner.invoke(app, ["render", str(run_dir), str(out / "f.gif"), "--size", "128x96",
                                 "--fps", "9", "--jobs", "2", "-q"])
    assert result.exit_code == 1 and "disk full" in result.output
    assert list(out.iterdir()) == []


def test_layout_cache_skips_loading_and_is_invalidated(tmp_path, run_dir, monkeypatch):
    import os

    from layerfilm import layouts
    from layerfilm.checkpoints import CheckpointRef
    from layerfilm.config import Selection
    from layerfilm.plan import make_plan

    opened = []
    original = CheckpointRef.open
    monkeypatch.setattr(CheckpointRef, "open", lambda ref: opened.append(ref.path) or original(ref))
    plan = lambda: make_plan(Selection(checkpoints=run_dir))  # noqa: E731
    first = layouts.cached_keyframe_layouts(plan())
    assert len(opened) == 4 + 4  # the plan checks every header, then one read per keyframe
    opened.clear()
    again = layouts.cached_keyframe_layouts(plan())
    assert len(opened) == 4 and np.array_equal(first.P, again.P)  # the plan's checks only
    # The first film measures each layer's drift (for its cues) once, reading the keyframes
    # but projecting nothing, and hashing the drawn bytes as it reads them (its manifest opens
    # nothing again; the digests are remembered for the next); then another colormap / size /
    # format reads no keyframe at all.
    opened.clear()
    args = ["render", str(run_dir), str(tmp_path / "a.gif"), "--fps", "2", "-q"]
    assert runner.invoke(app, args).exit_code == 0
    assert len(opened) == 4 + 4
    opened.clear()
    assert runner.invoke(app, args + ["--cmap", "viridis", "--size", "320x200"]).exit_code == 0
    assert len(opened) == 4
    # Other layout options, a touched checkpoint, or --no-cache: read again.
    opened.clear()
    layouts.cached_keyframe_layouts(plan(), seed=1)
    assert len(opened) == 8
    ckpt = run_dir / "step_000200.safetensors"
    os.utime(ckpt, ns=(ckpt.stat().st_atime_ns, ckpt.stat().st_mtime_ns + 10**9))
    opened.clear()
    layouts.cached_keyframe_layouts(plan())
    assert len(opened) == 8
    opened.clear()
    assert runner.invoke(app, args + ["--no-cache"]).exit_code == 0
    assert len(opened) == 4 + 4  # the manifest's digests made as the layouts read (no memo)


def test_corrupt_cache_is_ignored(tmp_path, run_dir):
    from layerfilm import cache, layouts
    from layerfilm.config import Selection
    from layerfilm.plan import make_plan

    keys = layouts.cached_keyframe_layouts(make_plan(Selection(checkpoints=run_dir)))
    entries = list(cache.cache_dir().glob("*.lfc"))
    assert [p.name.split("-")[0] for p in entries] == ["chunk"]  # the film's one run of keyframes
    for f in entries:
        f.write_bytes(b"garbage")
    again = layouts.cached_keyframe_layouts(make_plan(Selection(checkpoints=run_dir)))
    assert np.array_equal(keys.P, again.P)


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_png_frames_equal_the_film(tmp_path, run_dir, sent, jobs):
    import imageio_ffmpeg  # noqa: F401  (decode below uses it)

    pngs = tmp_path / "frames"
    result = runner.invoke(app, ["render", str(run_dir), str(tmp_path / "f.mkv"), "--size", "160x96",
                                 "--fps", "3", "--frames", str(pngs), "--jobs", jobs, "-q"])
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in pngs.glob("*.png"))
    assert names == [f"frame_{i:06d}.png" for i in range(10)]
    assert sorted(p.name for p in pngs.iterdir()) == names + ["manifest.json"]
    film = decode(tmp_path / "f.mkv")
    for i, name in enumerate(names):
        assert np.array_equal(decode(pngs / name)[0], film[i]), name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.mkv", "f.mkv.json", "frames", "run"]


def test_frames_folder_must_be_new_or_empty(tmp_path, run_dir):
    pngs = tmp_path / "frames"
    pngs.mkdir()
    (pngs / "keep.txt").write_text("mine")
    result = runner.invoke(app, ["render", str(run_dir), str(tmp_path / "f.gif"), "--frames", str(pngs)])
    assert result.exit_code == 2 and "--frames needs a new or empty folder" in result.output
    assert [p.name for p in pngs.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("args, message", [
    (["render", "r", "o.webm", "--fps", "abc"], "Invalid value for '--fps'"),
    (["render", "r", "o.webm", "--bogus"], "No such option: --bogus"),
    (["render"], "Missing argument"),
    (["nosuchcmd"], "No such command"),
])
def test_usage_errors_from_the_real_entry_point_are_one_line(args, message):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "layerfilm", *args], capture_output=True, text=True)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("layerfilm: error: ") and message in lines[0], out.stderr
    assert out.stdout == ""


def test_entry_point_success_and_help_exit_zero():
    import subprocess
    import sys

    for args in (["--version"], ["render", "--help"], ["info", str(SAMPLE)]):
        out = subprocess.run([sys.executable, "-m", "layerfilm", *args], capture_output=True, text=True)
        assert out.returncode == 0 and out.stderr == "", (args, out.stderr)


def test_nonfinite_weights_are_hidden_and_reported(tmp_path, sent):
    from safetensors.numpy import load_file, save_file

    run = write_run(tmp_path / "run", n=3)
    path = run / "step_000100.safetensors"
    sd = load_file(str(path))
    sd["transformer.wte.weight"][[2, 5]] = np.nan  # two token rows
    sd["transformer.h.1.mlp.c_fc.weight"][7, 0] = np.inf  # one neuron
    save_file(sd, str(path))
    result = runner.invoke(app, ["render", str(run), str(tmp_path / "f.gif"), "--fps", "2", "-q"])
    assert result.exit_code == 0, result.output
    assert "warning: 3 point(s) had NaN/Inf weights and were not drawn" in result.output
    assert len(sent) == 5


def test_cache_is_capped_least_recently_used_first_and_can_be_shown_and_cleared(tmp_path, monkeypatch):
    import os
    import time

    from layerfilm import cache, layouts
    from layerfilm.plan import make_plan
    from layerfilm.config import Selection

    runs = [write_run(tmp_path / f"run{i}", n=3, seed=i) for i in range(3)]
    plans = [make_plan(Selection(checkpoints=r)) for r in runs]
    layouts.cached_keyframe_layouts(plans[0])
    entry = next(cache.cache_dir().glob("chunk-*.lfc"))
    size = entry.stat().st_size
    monkeypatch.setenv("LAYERFILM_CACHE_SIZE", str(int(2.5 * size)))  # room for two entries
    past = time.time() - 100
    os.utime(entry, (past, past))
    layouts.cached_keyframe_layouts(plans[1])
    layouts.cached_keyframe_layouts(plans[0])  # a hit: run0 becomes the most recently used
    layouts.cached_keyframe_layouts(plans[2])  # a third entry: run1's, least recent, goes
    assert layouts.load_cached(plans[0]) is not None and layouts.load_cached(plans[2]) is not None
    assert layouts.load_cached(plans[1]) is None
    shown = runner.invoke(app, ["cache"])
    assert shown.exit_code == 0 and "2 layout entries" in shown.output
    assert f"{int(2.5 * size) / 1e6:,.0f} MB" in shown.output
    cleared = runner.invoke(app, ["cache", "--clear"])
    assert cleared.exit_code == 0 and "removed 2 files" in cleared.output
    assert list(cache.cache_dir().glob("*.lfc")) == []
