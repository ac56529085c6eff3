"""Loss strip, drift bars, --order settle, --stills and --metrics: checked on the frames."""

import numpy as np
import pytest
from typer.testing import CliRunner

from layerfilm import compose, cues, encode, overlays, stats, stills
from layerfilm.cli import app

from conftest import decode, plan_of, write_run
from test_stats import _freezing_run

runner = CliRunner()


@pytest.fixture
def composer(monkeypatch):
    """The FrameComposer the render made (labels, notes, overlays)."""
    made = {}
    original = compose.FrameComposer.__init__

    def init(self, layout, labels, shader, overlays=()):
        made.update(layout=layout, labels=labels, overlays=overlays)
        original(self, layout, labels, shader, overlays)

    monkeypatch.setattr(compose.FrameComposer, "__init__", init)
    return made


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_stills_are_the_films_frames(tmp_path, run_dir, jobs):
    out = tmp_path / "stills"
    result = runner.invoke(app, ["render", str(run_dir), str(tmp_path / "f.mkv"), "--size", "192x108",
                                 "--fps", "3", "--stills", str(out), "--stills-every", "2",
                                 "--loss-strip", "--drift", "-j", jobs, "-q"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["contact_sheet.png", "first.png", "last.png"]
    film = decode(tmp_path / "f.mkv")
    assert film.shape[0] == 3 * 3 + 1
    assert np.array_equal(decode(out / "first.png")[0], film[0])
    assert np.array_equal(decode(out / "last.png")[0], film[-1])
    sheet = decode(out / "contact_sheet.png")[0]
    tiles = stills.tile_keyframes(4, 2)
    assert tiles == [0, 2, 3]
    assert sheet.shape == (2 * 108 + stills.GAP, 2 * 192 + stills.GAP, 3)
    for i, k in enumerate(tiles):
        x, y = stills.tile_origin(i, len(tiles), (192, 108))
        assert np.array_equal(sheet[y:y + 108, x:x + 192], film[3 * k]), k
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_stills_folder_must_be_new_or_empty_and_failure_leaves_none(tmp_path, run_dir, monkeypatch):
    out = tmp_path / "stills"
    out.mkdir()
    (out / "x").write_text("mine")
    r = runner.invoke(app, ["render", str(run_dir), str(tmp_path / "f.gif"), "--stills", str(out)])
    assert r.exit_code == 2 and "--stills needs a new or empty folder" in r.output
    original = encode.FilmWriter.write

    def write(self, frame):
        if self.frames_written == 3:
            raise encode.EncodeError("disk full", self.path)
        original(self, frame)

    monkeypatch.setattr(encode.FilmWriter, "write", write)
    r = runner.invoke(app, ["render", str(run_dir), str(tmp_path / "f.gif"), "--fps", "2",
                            "--stills", str(tmp_path / "new"), "-q"])
    assert r.exit_code == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "stills"]


def test_loss_strip_draws_the_curve_and_a_moving_cursor(tmp_path, run_dir, index_frames, composer):
    size = (320, 200)
    result = runner.invoke(app, ["render", str(run_dir), str(tmp_path / "f.gif"), "--size", "320x200",
                                 "--fps", "4", "--loss-strip", "-q"])
    assert result.exit_code == 0, result.output
    (strip,) = [o for o in composer["overlays"] if isinstance(o, overlays.LossStrip)]
    # The panels (and the text under them) leave the strip's rows free.
    assert composer["layout"].strip[3] - composer["layout"].strip[1] == overlays.strip_height(size)
    assert composer["layout"].rects[:, 3].max() < composer["layout"].strip[1]
    px0, py0, px1, py1 = strip.plot
    # The run logged loss 4/(k+1) at step 100k (safetensors metadata): log scale, 4 at the top.
    assert strip.log and np.allclose(strip.range, (np.log10(1.0), np.log10(4.0)))
    for k, loss in enumerate([4.0, 2.0, 4 / 3, 1.0]):
        x = int(round(px0 + k * 100 / 300 * (px1 - px0 - 1))) - px0
        y = int(round((np.log10(4.0) - np.log10(loss)) / np.log10(4.0) * (py1 - py0 - 1)))
        assert strip.mask[y, x], (k, x, y)
    cursor = []
    for f, frame in enumerate(index_frames):
        cols = np.flatnonzero((frame[py0:py1, px0:px1] == overlays.CURSOR).all(axis=0))
        assert len(cols) == 1, f
        cursor.append(px0 + cols[0])
        step = f * 100 / 4
        assert cursor[-1] == min(max(round(float(strip.x_of(step))), px0), px1 - 1)
        past = frame[py0:py1, px0:px1] == overlays.CURVE_PAST
        assert not past[:, cols[0] + 1:].any()  # bright only up to the cursor
    assert cursor == sorted(cursor) and cursor[0] == px0 and cursor[-1] == px1 - 1


def test_metrics_file_feeds_header_and_strip(tmp_path, run_dir, composer, monkeypatch):
    seen = []
    original = compose.FrameComposer.__call__

    def call(self, dots, time, step):
        (header,) = [o for o in self.overlays if isinstance(o, overlays.Header)]
        loss = dict(zip(self.grid.fields, [fn for _, fn in header.fields]))["loss"]
        seen.append((step, loss(step)))
        return original(self, dots, time, step)

    monkeypatch.setattr(compose.FrameComposer, "__call__", call)
    metrics = tmp_path / "log.csv"
    metrics.write_text("step,loss\n0,9.5\n150,0.25\n")
    result = runner.invoke(app, ["render", str(run_dir), str(tmp_path / "f.gif"), "--fps", "2",
                                 "--size", "200x120", "--loss-strip", "--metrics", str(metrics), "-q"])
    assert result.exit_code == 0, result.output
    assert seen[0] == (0, "loss 9.5") and seen[-1] == (300, "loss 0.25") and (150, "loss 0.25") in seen
    (strip,) = [o for o in composer["overlays"] if isinstance(o, overlays.LossStrip)]
    assert np.allclose(strip.range, np.log10([0.25, 9.5]))


def test_loss_strip_without_any_loss_is_one_line(tmp_path):
    from safetensors.numpy import load_file, save_file

    run = write_run(tmp_path / "run", n=3)
    for p in run.iterdir():
        save_file(load_file(str(p)), str(p))  # drop the metadata (and its loss)
    for extra, message in (([], "--loss-strip: no loss curve found"),
                           (["--metrics", str(tmp_path / "nope.csv")], "--metrics: no such file")):
        r = runner.invoke(app, ["render", str(run), str(tmp_path / "f.gif"), "--loss-strip", *extra])
        assert r.exit_code != 0 and len(r.output.strip().splitlines()) == 1, r.output
        assert message in r.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"step": 1}\n')
    r = runner.invoke(app, ["render", str(run), str(tmp_path / "f.gif"), "--metrics", str(bad)])
    assert r.exit_code == 1 and "bad.jsonl: no (step, loss) values found" in r.output
    assert not list(tmp_path.glob("*f.gif*"))


def test_drift_lengths_by_hand():
    rate = np.array([[np.nan, 1.0, 0.1, 0.01, 0.0], [np.nan, 10.0, 1e-5, np.nan, 0.5]])
    got = overlays.drift_lengths(rate, np.array([100, 200]), decades=2.0)
    # top = 10: 1.0 -> level 0.5, 0.1 -> 0, 0.01 -> below the scale (still 1 px), 0 -> none
    assert got.tolist() == [[0, 50, 1, 1, 0], [0, 200, 1, 0, round(200 * (1 + np.log10(0.05) / 2))]]


def test_drift_bars_follow_each_layers_change(tmp_path, index_frames, composer):
    run = _freezing_run(tmp_path / "run")
    fps = 2
    result = runner.invoke(app, ["render", str(run), str(tmp_path / "f.gif"), "--size", "300x200",
                                 "--fps", str(fps), "--drift", "-q"])
    assert result.exit_code == 0, result.output
    rects = composer["layout"].rects
    plan = plan_of(run)
    rate = stats.weight_stats(plan.refs, plan.layers).rate
    want = overlays.drift_lengths(rate, rects[:, 2] - rects[:, 0], overlays.DriftBars.DECADES)
    for f, frame in enumerate(index_frames):
        k = -(-f // fps)  # the change into keyframe k: frames (k-1) * fps + 1 .. k * fps; none at 0
        assert k == 0 or want[:, k].any()
        for l, (x0, y0, x1, y1) in enumerate(rects):
            if k == 0:
                assert not (frame[y1 + 1:y1 + 3, x0:x1] == overlays.DriftBars.COLOUR).any()
                continue
            bar = frame[y1 + 1:y1 + 3, x0:x1] == overlays.DriftBars.COLOUR
            assert bar.all(axis=0).sum() == bar.any(axis=0).sum() == want[l, k], (f, l)
            assert not bar[:, want[l, k]:].any()
    # L1 froze after step 200: no bar from then on; L0 never froze.
    assert want[2, 3:].tolist() == [0, 0, 0, 0] and (want[1, 1:] > 0).all()


def test_order_settle_lays_panels_out_by_settling_step(tmp_path, composer, index_frames):
    run = _freezing_run(tmp_path / "run")
    args = ["render", str(run), str(tmp_path / "f.gif"), "--size", "300x200", "--fps", "2", "-q"]
    assert runner.invoke(app, args).exit_code == 0
    assert composer["labels"] == ["embed", "L0", "L1"]
    default_last = index_frames[-1]
    assert runner.invoke(app, args + ["--order", "settle", "--settle-threshold", "1e-6"]).exit_code == 0
    assert composer["labels"] == ["L1", "embed", "L0"]
    (marks,) = [o for o in composer["overlays"] if isinstance(o, cues.PanelCues)]
    np.testing.assert_array_equal(marks.settle, [200, 300, np.nan])
    assert marks.announce
    # Same panels, other places: panel 0's pixels now show what panel 2 showed.
    x0, y0, x1, y1 = composer["layout"].rects[0]
    a0, b0, a1, b1 = composer["layout"].rects[2]
    assert np.array_equal(index_frames[-1][y0:y1, x0:x1], default_last[b0:b1, a0:a1])


def test_points_and_tensor_reach_the_film(tmp_path, run_dir, composer):
    r = runner.invoke(app, ["render", str(run_dir), str(tmp_path / "f.gif"), "--size", "200x120",
                            "--fps", "2", "--points", "rows", "--tensor", "mlp.c_fc", "-q"])
    assert r.exit_code == 0, r.output
    assert composer["labels"] == ["L0 mlp.c_fc", "L1 mlp.c_fc"]
    r = runner.invoke(app, ["info", str(run_dir), "--points", "embeddings"])
    assert r.exit_code == 0 and "embed" in r.output and "L0" not in r.output


def test_contact_sheet_of_large_frames_stays_readable(tmp_path, monkeypatch):
    """13 tiles of 1280x720 frames would make a 5,132 px wide sheet of shrunken text: the sheet
    is at most 4,096 px wide, its tiles are each checkpoint's frame drawn at the tile size (the
    layout of that size, its real step in the header), and first/last stay the film's frames."""
    from layerfilm import film as film_stage
    from test_cli import _ink_contains

    made = []
    prepare = film_stage.prepare
    monkeypatch.setattr(film_stage, "prepare", lambda *a, **k: made.append(prepare(*a, **k)) or made[-1])
    run = write_run(tmp_path / "run", n=13, d=8, vocab=12)
    out = tmp_path / "stills"
    result = runner.invoke(app, ["render", str(run), str(tmp_path / "f.mkv"), "--size", "1280x720",
                                 "--fps", "1", "--stills", str(out), "--stills-every", "1", "-q"])
    assert result.exit_code == 0, result.output
    film = decode(tmp_path / "f.mkv")
    assert np.array_equal(decode(out / "first.png")[0], film[0])
    assert np.array_equal(decode(out / "last.png")[0], film[-1])
    sheet = decode(out / "contact_sheet.png")[0]
    cols, (tw, th) = stills.sheet_grid(13, (1280, 720))
    assert (cols, tw, th) == (4, 1021, 574) and sheet.shape == (4 * 574 + 3 * 4, 4 * 1021 + 3 * 4, 3)
    assert sheet.shape[1] <= 4096
    tile_film = made[-1]
    assert tile_film.grid.size == (1021, 574) and tile_film.grid.font >= 14
    for k in range(13):
        x, y = stills.tile_origin(k, 13, (1280, 720))
        tile = sheet[y:y + th, x:x + tw]
        header = tile[:tile_film.grid.header - 2].any(axis=2)
        assert _ink_contains(header, f"step {k * 100:,}", tile_film.grid.font), k
        expected = film_stage.keyframe_maker(tile_film)(k)
        assert np.array_equal(tile, stills_palette()[expected]), k


def stills_palette():
    from layerfilm import shade

    return shade.palette("inferno")
