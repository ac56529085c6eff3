"""The picture: text never collides, the legend and the scale bars say what the dots show
(checked against numpy on the layouts), the header and captions show what the run logged,
and the cues follow the numbers of ``layerfilm stats``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import save_file
from typer.testing import CliRunner

from layerfilm import cues, drift, film as film_stage, header, overlays, shade, stats
from layerfilm.cli import app
from layerfilm.grid import FrameSpec, arrange
from layerfilm.text import fit_text, text_width

from conftest import SAMPLE, decode, densest_pixel, gpt_state, plan_of, rebel_run, write_run
from test_cli import _ink_contains

runner = CliRunner()

FIELDS = (("step", "step 88,888,888"), ("tokens", "88.8M tokens"), ("lr", "lr 8.8e-08"),
          ("loss", "loss 8.888e-08"))


def _overlaps(boxes):
    """Pairs of boxes (by name) that share a pixel, and boxes not inside ``frame``."""
    names = [n for n, _ in boxes]
    b = np.array([bx for _, bx in boxes], dtype=np.int64)
    x0, y0, x1, y1 = (b[:, i] for i in range(4))
    hit = ((x0[:, None] < x1[None, :]) & (x0[None, :] < x1[:, None])
           & (y0[:, None] < y1[None, :]) & (y0[None, :] < y1[:, None]))
    np.fill_diagonal(hit, False)
    return [(names[i], names[j]) for i, j in zip(*np.nonzero(np.triu(hit)))]


@pytest.mark.parametrize("size", [(320, 180), (1280, 720), (3840, 2160)])
def test_no_text_box_overlaps_another_for_1_to_160_panels(size):
    """Every text, cue and panel box of the frame, for 1..160 panels with long and short
    labels, every header field, two caption lines, a fixed caption and the legend: none
    overlaps another, all inside the frame, and text fitted into its box never spills."""
    w, h = size
    for n in range(1, 161):
        labels = tuple(("embed" if i == 0 else f"L{i - 1}" if i % 7 else f"L{i - 1} mlp.c_fc")
                       for i in range(n))
        for strip, captions in ((0, 2), (overlays.strip_height(size), 0)):
            spec = FrameSpec(size, labels, tuple([384] * n), title="a_rather_long_run_name_2024",
                             fields=FIELDS, captions=captions, caption=True, strip=strip,
                             extents=np.ones((n, 2)))
            lay = arrange(spec)
            boxes = lay.boxes()
            assert _overlaps(boxes) == [], (n, size, strip)
            for name, (x0, y0, x1, y1) in boxes:
                assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h, (n, name)
            assert (lay.rects[:, 2] - lay.rects[:, 0] >= 8).all() and (lay.rects[:, 3] - lay.rects[:, 1] >= 8).all()
            if lay.panel_font:  # every label fitted into its box
                for l, (x0, y0, x1, y1) in enumerate(lay.label):
                    text = fit_text(labels[l], lay.panel_font, x1 - x0)
                    assert text and text_width(text, lay.panel_font) <= x1 - x0
    # 13 panels (GPT-2 small) on a 720p frame or larger: every panel gets its text.
    if w >= 1280:
        assert arrange(FrameSpec(size, tuple(f"L{i}" for i in range(13)))).panel_font > 0


@pytest.mark.parametrize("size", ["320x180", "640x360", "1280x720"])
def test_ink_stays_in_its_boxes(tmp_path, size):
    """On rendered frames (13 panels, every header field, captions, the legend), every pixel
    that is not background lies in one of the layout's boxes (or the header's progress line)."""
    run = write_run(tmp_path / "run", n=3, blocks=12, d=8, vocab=20)
    (tmp_path / "c.jsonl").write_text('{"step": 0, "text": "the cat is possible and the dog is '
                                      'not, said the model, a great many times over"}\n')
    made = []
    prepare = film_stage.prepare

    def keep(*a, **k):
        made.append(prepare(*a, **k))
        return made[-1]

    import layerfilm.pipeline as pipeline
    original = pipeline.film.prepare
    pipeline.film.prepare = keep
    try:
        result = runner.invoke(app, ["render", str(run), str(tmp_path / "f.gif"), "--size", size,
                                     "--fps", "2", "--frames", str(tmp_path / "png"), "--tokens-per-step",
                                     "4096", "--caption", "a 12-block test model " * 4,
                                     "--captions", str(tmp_path / "c.jsonl"), "-q"])
    finally:
        pipeline.film.prepare = original
    assert result.exit_code == 0, result.output
    lay = made[0].grid
    allowed = np.zeros((lay.size[1], lay.size[0]), dtype=bool)
    for _, (x0, y0, x1, y1) in lay.boxes():
        allowed[y0:y1, x0:x1] = True
    allowed[lay.header - 2] = True
    for png in sorted((tmp_path / "png").glob("*.png")):
        ink = decode(png)[0].any(axis=2)
        stray = ink & ~allowed
        assert not stray.any(), (png.name, np.argwhere(stray)[:5])


def _capture_film(monkeypatch):
    films = []
    prepare = film_stage.prepare
    import layerfilm.pipeline as pipeline

    monkeypatch.setattr(pipeline.film, "prepare",
                        lambda *a, **k: films.append(prepare(*a, **k)) or films[-1])
    return films


def _isolated(points_px, reach):
    """Indices of dots whose nearest other dot is more than two footprints away."""
    d = np.linalg.norm(points_px[:, None] - points_px[None], axis=2)
    np.fill_diagonal(d, np.inf)
    return np.flatnonzero(d.min(axis=1) > 2 * reach)


def test_scale_bars_and_legend_say_what_the_dots_show(tmp_path, monkeypatch, index_frames):
    """Read off the frame: each panel's scale bar is bar_px pixels of bar_value weight units,
    and a lone dot sits where its layout coordinates times that ratio put it (within a pixel);
    its centre has the colour of its density exp(-d^2 / 2 sigma^2) (numpy) on the legend's
    scale, whose ends are one dot and the densest pixel of any frame -- here denser between
    two keyframes than at any keyframe."""
    from layerfilm import layouts

    run = write_run(tmp_path / "run", n=3, blocks=2, d=16, vocab=40)
    films = _capture_film(monkeypatch)
    assert runner.invoke(app, ["render", str(run), str(tmp_path / "f.gif"), "--size", "960x540",
                               "--fps", "4", "-q"]).exit_code == 0
    film = films[0]
    lay = film.grid
    P = layouts.keyframe_layouts(plan_of(run)).P
    last = index_frames[-1]
    checked = 0
    for l, (x0, y0, x1, y1) in enumerate(lay.rects):
        bx0, by0, bx1, by1 = lay.scalebar[l]
        rows = [(last[y, bx0:bx1] == overlays.INK).sum() for y in range(by0, by1)]
        assert max(rows) == lay.bar_px[l]  # the bar's row: exactly bar_px pixels
        px_per_unit = lay.bar_px[l] / lay.bar_value[l]
        assert abs(px_per_unit - lay.scale[l]) <= 0.5 / lay.bar_value[l] + 1e-9
        xy = P[-1, film.starts[l]:film.starts[l + 1]].astype(np.float64)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        at = np.stack([cx + xy[:, 0] * px_per_unit, cy - xy[:, 1] * px_per_unit], axis=1)
        sigma = lay.sigma[l]
        inside = (np.abs(xy) <= film.rasterizer().limits[l]).all(axis=1)
        for i in _isolated(at, 2.5 * sigma):
            if not inside[i]:
                continue
            px, py = int(np.floor(at[i, 0])), int(np.floor(at[i, 1]))
            win = last[py - 2:py + 3, px - 2:px + 3]
            ym, xm = np.unravel_index(np.argmax(win), win.shape)
            assert abs(px - 2 + xm + 0.5 - at[i, 0]) <= 1.0 + abs(xy[i]).max() * 0.5 / lay.bar_value[l]
            assert abs(py - 2 + ym + 0.5 - at[i, 1]) <= 1.0 + abs(xy[i]).max() * 0.5 / lay.bar_value[l]
            # The centre pixel's colour: its density by numpy, on the film's scale.
            exact = np.array([cx + xy[i, 0] * lay.scale[l], cy - xy[i, 1] * lay.scale[l]])
            d2 = (px + 0.5 - exact[0]) ** 2 + (py + 0.5 - exact[1]) ** 2
            assert last[py, px] == film.shader.index(np.exp(-d2 / (2 * sigma ** 2))), (l, i)
            checked += 1
    assert checked >= 5
    # The legend: "1" at the first column of its bar, the span at the last.
    (legend,) = [o for o in film.overlays if isinstance(o, overlays.Legend)]
    a, b = legend.bar
    row = last[legend.rows[0], a:b]
    assert row[0] == film.shader.index(1.0) and row[-1] == shade.DENSITY_BASE + shade.DENSITY_LEVELS - 1
    assert (np.diff(row.astype(int)) >= 0).all()
    r = film.rasterizer()
    densest = max(1.0, densest_pixel(P, film.times, film.n_frames, r, last.shape))
    at_keyframes = densest_pixel(P, film.times, film.n_frames, r, last.shape, film.keyframe_frames())
    assert densest > at_keyframes * 1.1  # a film whose densest pixel is between keyframes
    assert film.shader.span == pytest.approx(densest, rel=1e-6)
    assert legend.top_text == overlays.legend_span_text(densest)
    ink = last[lay.legend[1]:lay.legend[3], lay.legend[0]:lay.legend[2]] != 0
    assert _ink_contains(ink, legend.top_text, lay.label_font)


def test_shared_scale_is_one_scale(tmp_path, monkeypatch):
    run = write_run(tmp_path / "run", n=3, blocks=3, d=16, vocab=40)
    films = _capture_film(monkeypatch)
    for scale in ("panel", "shared"):
        assert runner.invoke(app, ["render", str(run), str(tmp_path / "f.gif"), "--size", "640x360",
                                   "--fps", "1", "--scale", scale, "-q"]).exit_code == 0
    own, shared = films[0].grid, films[1].grid
    assert len(set(own.scale)) > 1 and len(set(shared.scale)) == 1
    assert shared.scale[0] == pytest.approx(own.scale.min(), rel=0.05)
    assert len(set(shared.bar_value)) == 1 and len(set(shared.bar_px)) == 1


def _header_ink(frame, lay):
    return frame[:lay.header - 2].any(axis=2)


def test_header_shows_tokens_lr_and_title(tmp_path, monkeypatch):
    """Tokens seen from the checkpoints' names (interpolated between them), the learning rate
    from the log, --title; --tokens-per-step wins over the names."""
    run = tmp_path / "run"
    rng = np.random.default_rng(0)
    sd = gpt_state(rng, d=8, blocks=2, vocab=12)
    for k, tokens in enumerate(["1B", "2B", "4B"]):
        save_file({n: v + 0.1 * k for n, v in sd.items()},
                  str((run.mkdir(exist_ok=True) or run) / f"step{k * 100}-tokens{tokens}.safetensors"))
    (run / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "loss": 3.0 - s / 100, "learning_rate": 1e-3 * (1 - s / 400)}) + "\n"
        for s in range(0, 201, 50)))
    films = _capture_film(monkeypatch)
    frames_dir = tmp_path / "png"
    r = runner.invoke(app, ["render", str(run), str(tmp_path / "f.gif"), "--size", "640x360", "--fps", "2",
                            "--title", "tiny GPT", "--frames", str(frames_dir), "-q"])
    assert r.exit_code == 0, r.output
    lay = films[0].grid
    assert list(lay.fields) == ["step", "tokens", "lr", "loss"]
    f = lambda i: decode(frames_dir / f"frame_{i:06d}.png")[0]  # noqa: E731
    for i, texts in ((0, ["tiny GPT", "step 0", "1B tokens", "lr 1.0e-03", "loss 3"]),
                     (1, ["step 50", "1.5B tokens", f"lr {overlays.format_lr(1e-3 * (1 - 50 / 400))}", "loss 2.5"]),
                     (2, ["step 100", "2B tokens", "lr 7.5e-04", "loss 2"]),
                     (3, ["step 150", "3B tokens", "loss 1.5"]),
                     (4, ["step 200", "4B tokens", "lr 5.0e-04", "loss 1"])):
        for text in texts:
            assert _ink_contains(_header_ink(f(i), lay), text, lay.font), (i, text)
    assert not _ink_contains(_header_ink(f(0), lay), "sample", lay.font)
    r = runner.invoke(app, ["render", str(run), str(tmp_path / "g.gif"), "--size", "640x360", "--fps", "2",
                            "--tokens-per-step", "500000", "--frames", str(tmp_path / "png2"), "-q"])
    assert r.exit_code == 0, r.output
    last = decode(tmp_path / "png2" / "frame_000004.png")[0]
    assert _ink_contains(_header_ink(last, films[1].grid), "100M tokens", films[1].grid.font)


def test_tokens_from_trainer_state(tmp_path):
    """num_input_tokens_seen of each checkpoint's trainer_state.json (0 counts only at step
    0: a Trainer that does not count tokens writes 0), else the log's column."""
    from layerfilm.checkpoints import checkpoint_tokens

    run = write_run(tmp_path / "run", n=4, name="checkpoint-{step}/model.safetensors")
    history = []
    for step, seen in ((0, 0), (100, 100_000), (200, 0), (300, 300_000)):
        history.append({"step": step, "loss": 1.0, "num_input_tokens_seen": step * 1000})
        (run / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps(
            {"global_step": step, "num_input_tokens_seen": seen, "log_history": history}))
    plan = plan_of(run)
    np.testing.assert_array_equal(checkpoint_tokens(plan.refs), [0, 100_000, np.nan, 300_000])
    np.testing.assert_array_equal(plan.tokens, [0, 100_000, 200_000, 300_000])  # the log fills in
    assert header.tokens_seen(plan, None)(150) == pytest.approx(150_000)
    assert header.tokens_seen(plan, 7)(150) == 1050


def test_captions_from_their_step_on_and_bad_files(tmp_path, monkeypatch):
    run = write_run(tmp_path / "run", n=4)
    cap = tmp_path / "c.jsonl"
    cap.write_text('{"step": 100, "text": "the cat is"}\n\n{"step": 250, "text": "the cat is possible"}\n')
    films = _capture_film(monkeypatch)
    r = runner.invoke(app, ["render", str(run), str(tmp_path / "f.gif"), "--size", "480x270", "--fps", "2",
                            "--captions", str(cap), "--caption", "GPT, 2 blocks", "--frames",
                            str(tmp_path / "png"), "-q"])
    assert r.exit_code == 0, r.output
    lay = films[0].grid
    (line,) = lay.captions

    def shows(i, text, box, dim=False):
        frame = decode(tmp_path / "png" / f"frame_{i:06d}.png")[0]
        x0, y0, x1, y1 = box
        return _ink_contains(frame[y0:y1, x0:x1].any(axis=2), text, lay.label_font, dim)

    # Steps 0, 50, 100, ... 300 at frames 0..6: nothing, then "the cat is" from step 100 on
    # (frame 2), the longer one from step 250 (frame 5) on.
    assert not decode(tmp_path / "png" / "frame_000001.png")[0][line[1]:line[3], line[0]:line[2]].any()
    assert shows(2, "the cat is", line) and shows(4, "the cat is", line)
    assert not shows(4, "possible", line) and shows(5, "the cat is possible", line)
    assert shows(0, "GPT, 2 blocks", lay.caption, True) and shows(6, "GPT, 2 blocks", lay.caption, True)
    for text, message in (('{"step": 1}\n', "c.jsonl: line 1: expected"),
                          ('{"step": 1, "text": "a"}\nnot json\n', "c.jsonl: line 2: not JSON"),
                          ("\n", "c.jsonl: no captions in it")):
        cap.write_text(text)
        r = runner.invoke(app, ["render", str(run), str(tmp_path / "g.gif"), "--captions", str(cap)])
        assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1 and message in r.output, r.output
    r = runner.invoke(app, ["render", str(run), str(tmp_path / "g.gif"), "--captions", str(tmp_path / "no")])
    assert r.exit_code == 2 and "--captions: no such file" in r.output
    r = runner.invoke(app, ["render", str(run), str(tmp_path / "g.gif"), "--title", "a\nb"])
    assert r.exit_code == 2 and "--title must be one line" in r.output
    assert not list(tmp_path.glob("g.gif*"))


def test_cues_follow_the_stats(tmp_path, monkeypatch, index_frames):
    """The rebel's panel has a green border exactly in the intervals where stats gives it
    |z| >= 3 (and no other panel has), a 'rebel' mark then, and its activity line is green in
    those intervals' columns in every frame; each panel's 'settled' mark (cyan) appears at the
    frame of its settling step by stats' definition and stays (here: none settles); borders
    brighten with the rate."""
    run = rebel_run(tmp_path / "run")
    films = _capture_film(monkeypatch)
    fps = 2
    assert runner.invoke(app, ["render", str(run), str(tmp_path / "f.gif"), "--size", "960x540",
                               "--fps", str(fps), "-q"]).exit_code == 0
    film = films[0]
    lay = film.grid
    plan = plan_of(run)
    s = stats.weight_stats(plan.refs, plan.layers)
    rebel = np.abs(np.nan_to_num(s.rebel)) >= 3
    settle = s.settle_steps(drift.Settling())
    level = cues.activity(s.rate)
    assert rebel[4].sum() == 4 and rebel.sum() == 4  # L3 (row 4), from step 300 on
    assert np.isnan(settle).all()  # every layer keeps (at least) its pace: none settles
    for f, frame in enumerate(index_frames):
        k = -(-f // fps)
        step = f * 100 / fps
        for l, (x0, y0, x1, y1) in enumerate(lay.rects):
            border = frame[y0 - 1, x0 - 1:x1 + 1]
            assert (border == border[0]).all()
            if k and rebel[l, k]:
                assert border[0] == shade.REBEL, (f, l)
            else:
                want = cues.BORDER_DIM + (round(level[l, k] * (shade.TEXT_LEVELS - 3)) if k else 0)
                assert border[0] == want, (f, l)
            mx0, my0, mx1, my1 = lay.mark[l]
            mark = frame[my0:my1, mx0:mx1]
            assert (mark == shade.SETTLED).any() == (step >= settle[l]), (f, l)
            assert (mark == shade.REBEL).any() == bool(k and rebel[l, k]), (f, l)
            # Every rebel interval is green on the activity line from the first frame on: the
            # columns of its steps, and no others (but the cursor's and the settled tick's).
            sx0, sy0, sx1, sy1 = lay.spark[l]
            x = lambda st: sx0 + int(round(st / 600 * (sx1 - sx0 - 1)))  # noqa: E731
            want = set()
            for j in np.flatnonzero(rebel[l]):
                want |= set(range(x((j - 1) * 100), x(j * 100) + 1))
            want -= {x(step)} | ({x(settle[l])} if step >= settle[l] else set())
            green = set(sx0 + np.flatnonzero((frame[sy0:sy1, sx0:sx1] == shade.REBEL).any(axis=0)))
            assert green == want, (f, l)


def test_a_rebel_that_settled_shows_both_marks(tmp_path, monkeypatch, index_frames):
    """L3 slows tenfold after step 200: a rebel against neighbours that keep their pace, and
    settled (below a quarter of its early pace for the last four intervals).  Its mark box
    shows the settled accent and the rebel accent at once from the frame of step 300 on, so
    the film never seems to name another layer as first to settle."""
    from conftest import odd_block_run

    run = odd_block_run(tmp_path / "run", 11, blocks=6, odd=3, rate=0.01, odd_rate=0.001, odd_from=3)
    films = _capture_film(monkeypatch)
    fps = 2
    assert runner.invoke(app, ["render", str(run), str(tmp_path / "f.gif"), "--size", "960x540",
                               "--fps", str(fps), "-q"]).exit_code == 0
    lay = films[0].grid
    plan = plan_of(run)
    s = stats.weight_stats(plan.refs, plan.layers)
    rebel = np.abs(np.nan_to_num(s.rebel)) >= 3
    settle = s.settle_steps(drift.Settling())
    assert settle[4] == 200 and np.isnan(np.delete(settle, 4)).all()
    assert rebel[4, 3:].all() and rebel.sum() == 4  # L3 (row 4), the intervals into 300..600
    mx0, my0, mx1, my1 = lay.mark[4]
    for f, frame in enumerate(index_frames):
        k, step = -(-f // fps), f * 100 / fps
        mark = frame[my0:my1, mx0:mx1]
        assert (mark == shade.SETTLED).any() == (step >= 200), f
        assert (mark == shade.REBEL).any() == bool(k and rebel[4, k]), f
    assert any(((frame[my0:my1, mx0:mx1] == shade.SETTLED).any() and (frame[my0:my1, mx0:mx1] == shade.REBEL).any())
               for frame in index_frames)


def test_manifest_counts_the_dots_pinned_to_an_edge(tmp_path, monkeypatch, index_frames):
    """A run where one neuron flies far out: its panel's range stops at 1.5x the 99.5th
    percentile of the reach, and the manifest counts every (frame, dot) drawn pinned to the
    edge -- the count numpy finds by evaluating every frame's positions; the command's output
    names the panel with that count, and every frame says it beside the panel's label."""
    from layerfilm import _kernels, layouts

    run = tmp_path / "run"
    run.mkdir()
    rng = np.random.default_rng(2)
    sd = gpt_state(rng, d=8, blocks=1, vocab=600)
    for k in range(5):
        sd["transformer.wte.weight"][3] = 40.0 * (k == 2)  # token 3 jumps out and back
        save_file({n: v + 0.05 * k for n, v in sd.items()}, str(run / f"step_{k * 100:06d}.safetensors"))
    films = _capture_film(monkeypatch)
    r = runner.invoke(app, ["render", str(run), str(tmp_path / "f.gif"), "--size", "640x360",
                            "--fps", "3", "-q"])
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "f.gif.json").read_text())["drawing"]
    film = films[0]
    P = layouts.keyframe_layouts(plan_of(run)).P
    limits = film.rasterizer().limits
    want = np.zeros(len(film.labels), dtype=int)
    for f in range(film.n_frames):
        k = min(f // 3, len(P) - 2)
        xy = _kernels.hermite_numpy(P, film.times, k, float(f)).astype(np.float64)
        for l in range(len(film.labels)):
            pts = xy[film.starts[l]:film.starts[l + 1]]
            want[l] += int((np.abs(pts) > limits[l]).any(axis=1).sum())
    assert want[0] > 0  # the embedding's runaway token
    assert {k: v["pinned_to_edge"] for k, v in doc["panels"].items()} == dict(zip(film.labels, want.tolist()))
    assert doc["pinned_to_edge"] == want.sum()
    said = [line for line in r.output.splitlines() if "pinned" in line]
    assert said == ["dots drawn pinned to their panel's edge, beyond its range (frame x dot pairs): "
                    + ", ".join(f"{label} {n:,}" for label, n in zip(film.labels, want) if n)]
    lay = film.grid
    for l, n in enumerate(want):
        x0, y0, x1, y1 = lay.mark[l]
        for frame in index_frames:
            ink = frame[y0:y1, x0:x1] != 0
            assert _ink_contains(ink, f"{n:,} pinned", lay.panel_font) == bool(n), (l, n)
    assert doc["color_span"] == pytest.approx(film.shader.span, rel=1e-6)
    for l, label in enumerate(film.labels):
        assert doc["panels"][label]["pixels_per_unit"] == pytest.approx(film.grid.scale[l], rel=1e-6)


def test_scale_bar_says_the_captured_variance(tmp_path, monkeypatch, index_frames):
    """Beside each scale bar, the share of the panel's variance on its two drawn axes over the
    film, lowest to highest keyframe: numpy's (top two squared singular values of the centred
    cloud over all of them) rounded to a percent, in every frame."""
    from layerfilm import extract

    films = _capture_film(monkeypatch)
    assert runner.invoke(app, ["render", str(SAMPLE), str(tmp_path / "f.gif"), "--size", "960x540",
                               "--fps", "2", "--steps", "::2500", "-q"]).exit_code == 0
    lay = films[0].grid
    plan = plan_of(SAMPLE, steps="::2500")
    shares = np.zeros((len(plan.layers), len(plan.refs)))
    for k, ref in enumerate(plan.refs):
        ckpt = ref.open()
        for l, layer in enumerate(plan.layers):
            X = extract.read_layer(ckpt, layer, ckpt.shapes()).astype(np.float64)
            sv = np.linalg.svd(X - X.mean(axis=0), compute_uv=False) ** 2
            shares[l, k] = sv[:2].sum() / sv.sum()
    ranged = 0
    for l in range(len(plan.layers)):
        lo, hi = (int(round(100 * v)) for v in (shares[l].min(), shares[l].max()))
        ranged += lo < hi
        assert lay.variance[l] == (f"var {lo}–{hi}%" if lo < hi else f"var {lo}%"), l
        x0, y0, x1, y1 = lay.scalebar[l]
        for frame in index_frames[::3]:
            assert _ink_contains(frame[y0:y1, x0:x1] != 0, lay.variance[l], lay.panel_font, dim=True)
    assert ranged >= 1


@pytest.mark.parametrize("share, text", [
    ((0.08, 0.61), "var 8–61%"), ((0.3, 0.304), "var 30%"),
    # A wide layer's flat spectrum (Llama-1B-shaped noise: 2 of 2,048 axes) is not "0%".
    ((0.00098, 0.0011), "var 0.1%"), ((0.004, 0.02), "var 0.4–2%"), ((0.0002, 0.0002), "var <0.1%"),
])
def test_captured_variance_below_one_percent_is_not_zero(share, text):
    from layerfilm.text import share_texts

    assert share_texts(share)[0] == text
    assert share_texts(None) == [] and share_texts((np.nan, 0.5)) == []


@pytest.mark.parametrize("n", [1, 5, 13, 60, 129])
def test_activity_lines_read_at_1080p(n):
    """At 1080p every panel's activity line is at least 2 % of the frame's height (22 pixels)
    tall, also for 129 panels, whose text is small (the rows under and above a panel stay
    within a third of its cell, so at 160 panels it is 20)."""
    lay = arrange(FrameSpec((1920, 1080), tuple(f"L{i}" for i in range(n)), tuple([384] * n)))
    spark = lay.spark[lay.spark[:, 2] > lay.spark[:, 0]]
    assert len(spark) == n
    assert (spark[:, 3] - spark[:, 1] >= 22).all(), (n, sorted(set(spark[:, 3] - spark[:, 1])))
