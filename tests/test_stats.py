"""layerfilm stats: every number against an independent numpy computation on a small run."""

import csv

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from typer.testing import CliRunner

from layerfilm import drift, layouts, stats
from layerfilm.cli import app

from conftest import gpt_state, plan_of, rebel_run, write_run

runner = CliRunner()
BLOCK = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def flat_layers(path):
    """Each panel's weights as one flat float64 vector, straight from the file (the norms,
    differences and dot products below do not depend on the order of the elements)."""
    sd = load_file(str(path))
    out = {"embed": sd["transformer.wte.weight"].astype(np.float64).ravel()}
    for i in range(2):
        out[f"L{i}"] = np.concatenate([sd[f"transformer.h.{i}.{n}"].astype(np.float64).ravel()
                                       for n in BLOCK])
    return out


def test_weight_statistics_match_numpy(run_dir):
    plan = plan_of(run_dir)
    got = stats.weight_stats(plan.refs, plan.layers)
    W = [flat_layers(r.path) for r in plan.refs]
    assert got.labels == ["embed", "L0", "L1"] and list(got.steps) == [0, 100, 200, 300]
    for l, label in enumerate(got.labels):
        w = [x[label] for x in W]
        assert got.points[l] == (40 if label == "embed" else 16 * 3 + 16 + 64 + 64)
        for k in range(len(w)):
            np.testing.assert_allclose(got.norm[l, k], np.linalg.norm(w[k]), rtol=1e-12)
            np.testing.assert_allclose(got.rel_first[l, k],
                                       np.linalg.norm(w[k] - w[0]) / np.linalg.norm(w[0]), rtol=1e-12)
            np.testing.assert_allclose(got.mean_abs_first[l, k], np.mean(np.abs(w[k] - w[0])),
                                       rtol=1e-12)
            if k == 0:
                assert np.isnan(got.rel_prev[l, k]) and np.isnan(got.rate[l, k])
                continue
            rel = np.linalg.norm(w[k] - w[k - 1]) / np.linalg.norm(w[k - 1])
            np.testing.assert_allclose(got.rel_prev[l, k], rel, rtol=1e-12)
            np.testing.assert_allclose(got.rate[l, k], rel * 100 / 100, rtol=1e-12)
            if k == 1:
                assert np.isnan(got.update_cosine[l, k])
                continue
            a, b = w[k] - w[k - 1], w[k - 1] - w[k - 2]
            np.testing.assert_allclose(got.update_cosine[l, k],
                                       a @ b / (np.linalg.norm(a) * np.linalg.norm(b)), rtol=1e-10)
    assert not got.has_layouts


def test_layout_statistics_are_the_procrustes_residual(run_dir):
    from scipy.linalg import orthogonal_procrustes

    plan = plan_of(run_dir)
    P = layouts.keyframe_layouts(plan).P.astype(np.float64)
    disp, resid = stats.layout_stats(P, plan.starts)
    rng = np.random.default_rng(1)
    for l in range(len(plan.layers)):
        s, e = plan.starts[l], plan.starts[l + 1]
        assert np.isnan(disp[l, 0]) and np.isnan(resid[l, 0])
        for k in range(1, P.shape[0]):
            A, B = P[k, s:e], P[k - 1, s:e]
            np.testing.assert_allclose(disp[l, k], np.mean(np.linalg.norm(A - B, axis=1)), rtol=1e-12)
            # Undo the alignment with a random rotation/reflection; scipy finds it again.
            Q, _ = np.linalg.qr(rng.normal(size=(2, 2)))
            R, _ = orthogonal_procrustes(A @ Q, B)
            expect = np.linalg.norm(A @ Q @ R - B) / np.linalg.norm(B)
            np.testing.assert_allclose(resid[l, k], expect, rtol=1e-5)


def _freezing_run(folder):
    """L1 stops changing after step 200, the embedding after step 300, L0 never."""
    folder.mkdir()
    rng = np.random.default_rng(3)
    sd = gpt_state(rng, d=8, blocks=2, vocab=12)
    last = {"transformer.h.1.": 2, "transformer.wte": 3, "transformer.h.0.": 99}
    for k in range(7):
        for key in sd:
            if any(key.startswith(p) and k <= stop for p, stop in last.items()) and k > 0:
                sd[key] = (sd[key] + 0.05 * rng.normal(size=sd[key].shape)).astype(np.float32)
        save_file(sd, str(folder / f"step_{k * 100:06d}.safetensors"))
    return folder


def test_settling_step_is_where_change_stays_below_the_threshold(tmp_path):
    run = _freezing_run(tmp_path / "run")
    plan = plan_of(run)
    s = stats.weight_stats(plan.refs, plan.layers)
    assert s.labels == ["embed", "L0", "L1"]
    np.testing.assert_array_equal(s.settle_steps(drift.Settling(threshold=1e-6)), [300, np.nan, 200])
    # A threshold above every change: settled from the first keyframe on.
    assert list(s.settle_steps(drift.Settling(threshold=10.0))) == [0, 0, 0]


def _drift(steps, rel_prev, labels=None):
    rel_prev = np.atleast_2d(np.asarray(rel_prev, dtype=np.float64))
    L = rel_prev.shape[0]
    return drift.Drift(np.asarray(steps), labels or [f"L{l}" for l in range(L)],
                       np.ones(L, dtype=np.int64), np.ones(rel_prev.shape), rel_prev)


def test_settling_counts_change_per_100_steps():
    # Uneven gaps: a change of 0.03 over 300 steps is 0.01 per 100 steps (no growth measured,
    # so the change is taken to grow with the gap).
    s = _drift([0, 100, 400, 500, 600, 700], [[np.nan, 0.05, 0.03, 0.001, 0.001, 0.001]])
    np.testing.assert_allclose(s.rate[0, 1:], [0.05, 0.01, 0.001, 0.001, 0.001])
    by = lambda x: s.settle_steps(drift.Settling(threshold=x))[0]  # noqa: E731
    assert by(0.02) == 100 and by(0.005) == 400
    assert np.isnan(by(0.0005))
    # Below 0.002 only in the last two intervals: too few to show a layer stopped.
    assert np.isnan(drift.Drift(s.steps, s.labels, s.points, s.norm,
                                np.array([[np.nan, 0.05, 0.03, 0.03, 0.001, 0.001]])
                                ).settle_steps(drift.Settling(threshold=0.002))[0])


def _peak(r):
    """The early pace: the highest mean rate of three neighbouring intervals among the first
    quarter of the intervals (at least three; the highest rate with fewer)."""
    if len(r) < 3:
        return max(r)
    early = r[:max(3, int(np.ceil(len(r) / 4)))]
    return max(np.mean(early[i:i + 3]) for i in range(len(early) - 2))


def _settle_by_hand(steps, rate, fraction=None, threshold=None):
    """The settling rule written out: the first keyframe after which every interval's rate is
    below ``threshold``, or ``fraction`` of the early pace (:func:`_peak`), with at least three
    intervals after it; a layer that never moved is settled from the start; else ``None``
    (still moving)."""
    out = []
    for r in np.atleast_2d(rate):
        r = list(r[1:])
        if max(r) <= 0:
            out.append(steps[0])
            continue
        limit = threshold if threshold is not None else fraction * _peak(r)
        first = next((k for k in range(len(r) + 1) if all(x < limit for x in r[k:])), None)
        out.append(steps[first] if first is not None and len(r) - first >= 3 else None)
    return out


def test_settling_on_series_with_known_settling_steps():
    steps = np.arange(0, 1100, 100)
    # Layer 0 moves 0.1 per interval for 5 intervals, then nothing: settled at step 500.
    # Layer 1 moves at one rate all along: still moving at the end (the old path rule said
    # "settled 900").  Layer 2 makes one big jump at step 300 and jitters by 1e-3 after: 300.
    # Layer 3 never moves: settled from the start.  Layer 4 halves its change every interval:
    # its peak is the mean of its first three rates (0.29), and a quarter of it is undercut
    # for good from the fourth interval on: step 300.
    # Layer 5 slows to a tenth and speeds up again in the last interval: still moving.
    # Layer 6 has a burst mid-run and then its early pace again: still moving (it did not stop).
    rel = np.full((7, 11), np.nan)
    rel[0, 1:] = [0.1] * 5 + [0.0] * 5
    rel[1, 1:] = 0.02
    rel[2, 1:] = [1e-3, 1e-3, 1.0] + [1e-3] * 7
    rel[3, 1:] = 0.0
    rel[4, 1:] = 0.5 ** np.arange(1, 11)
    rel[5, 1:] = [0.1] * 3 + [0.01] * 6 + [0.1]
    rel[6, 1:] = [0.02] * 4 + [0.5] * 2 + [0.02] * 4
    d = _drift(steps, rel)
    got = d.settle_steps(drift.Settling(0.25))
    np.testing.assert_array_equal(got, [500, np.nan, 300, 0, 300, np.nan, np.nan])
    for f in (0.05, 0.25, 0.5, 0.9):
        want = _settle_by_hand(steps, d.rate, fraction=f)
        np.testing.assert_array_equal(d.settle_steps(drift.Settling(f)),
                                      [np.nan if w is None else w for w in want], f)
    np.testing.assert_allclose(d.path_done[1], np.arange(11) / 10)
    assert (d.path_done[3] == 1).all()


def test_settling_on_a_run_with_decaying_updates(tmp_path):
    """Checkpoints whose updates shrink at different speeds per layer: the settling step is the
    one numpy finds from the files' own weights; a layer whose updates barely shrink is still
    moving at the end."""
    from safetensors.numpy import save_file

    run = tmp_path / "run"
    run.mkdir()
    rng = np.random.default_rng(5)
    sd = gpt_state(rng, d=8, blocks=2, vocab=12)
    decay = {"transformer.wte": 0.3, "transformer.h.0.": 0.97, "transformer.h.1.": 0.6}
    for k in range(9):
        for key, v in sd.items():
            rate = next((r for p, r in decay.items() if key.startswith(p)), 1.0)
            if k:
                sd[key] = (v + 0.2 * rate ** k * rng.normal(size=v.shape)).astype(np.float32)
        save_file(sd, str(run / f"step_{k * 50:06d}.safetensors"))
    result = runner.invoke(app, ["stats", str(run), "--out", str(tmp_path / "s"), "-q"])
    assert result.exit_code == 0, result.output
    steps = np.arange(0, 450, 50)
    W = [flat_layers(run / f"step_{s:06d}.safetensors") for s in steps]
    rows = list(csv.DictReader(open(tmp_path / "s" / "layer_stats.csv")))
    for label in ("embed", "L0", "L1"):
        w = [x[label] for x in W]
        rel = [np.nan] + [np.linalg.norm(w[k] - w[k - 1]) / np.linalg.norm(w[k - 1]) for k in range(1, 9)]
        rate = np.array(rel) * 100 / 50
        want = _settle_by_hand(steps, rate, fraction=0.25)[0]
        mine = [r for r in rows if r["layer"] == label]
        assert {r["settle_step"] for r in mine} == {"" if want is None else str(want)}, label
        done = np.cumsum(np.nan_to_num(rel)) / np.nansum(rel)
        np.testing.assert_allclose([float(r["path_done"]) for r in mine], done, rtol=1e-8)
    settle = {r["layer"]: r["settle_step"] for r in rows}
    assert settle["L0"] == "" and int(settle["embed"]) < int(settle["L1"])  # the fastest decay first
    assert f"settles first: embed (step {int(settle['embed']):,})" in result.output


def _rebel_by_hand(rate, l, k):
    x = np.log10(rate[:, k])
    nb = [x[j] for j in range(l - 2, l + 3) if 0 <= j < len(x) and j != l]
    return (x[l] - np.mean(nb)) / max(np.std(nb, ddof=1), 0.1)


def test_rebel_is_the_layer_that_moves_against_its_neighbours(tmp_path):
    """Six blocks drift alike, except L3, which moves ten times faster from step 300 on."""
    run = rebel_run(tmp_path / "run")
    plan = plan_of(run)
    s = stats.weight_stats(plan.refs, plan.layers)
    assert s.labels == ["embed"] + [f"L{i}" for i in range(6)]
    W = [flat_layers_n(run / f"step_{k * 100:06d}.safetensors", 6) for k in range(7)]
    rate = np.array([[np.nan] + [np.linalg.norm(W[k][lab] - W[k - 1][lab]) / np.linalg.norm(W[k - 1][lab])
                                 for k in range(1, 7)] for lab in s.labels])
    for l in range(len(s.labels)):
        assert np.isnan(s.rebel[l, 0])
        for k in range(1, 7):
            np.testing.assert_allclose(s.rebel[l, k], _rebel_by_hand(rate, l, k), rtol=1e-9)
    rebels = {(s.labels[l], int(s.steps[k])) for l, k in zip(*np.nonzero(np.abs(np.nan_to_num(s.rebel)) >= 3))}
    assert {lab for lab, _ in rebels} == {"L3"}
    assert {step for _, step in rebels} == {300, 400, 500, 600}
    result = runner.invoke(app, ["stats", str(run), "--out", str(tmp_path / "s"), "-q"])
    assert "rebels (|z| >= 3): L3 (at 4 keyframes" in result.output
    rows = [r for r in csv.DictReader(open(tmp_path / "s" / "layer_stats.csv")) if r["layer"] == "L3"]
    np.testing.assert_allclose([float(r["rebel_z"]) for r in rows[1:]], s.rebel[4, 1:], rtol=1e-8)
    assert rows[0]["rebel_z"] == ""


def flat_layers_n(path, blocks):
    sd = load_file(str(path))
    out = {"embed": sd["transformer.wte.weight"].astype(np.float64).ravel()}
    for i in range(blocks):
        out[f"L{i}"] = np.concatenate([sd[f"transformer.h.{i}.{n}"].astype(np.float64).ravel()
                                       for n in BLOCK])
    return out


def test_rebel_needs_two_neighbours_and_has_a_floor():
    rate = np.array([[np.nan, 1.0], [np.nan, 1.0], [np.nan, 2.0]])
    z = drift.rebel_scores(rate)
    # Each layer has exactly two neighbours; theirs agree (std 0), so the floor of 0.1 decade holds.
    np.testing.assert_allclose(z[:, 1], [(0 - np.log10(2) / 2) / max(np.std([0, np.log10(2)], ddof=1), 0.1),
                                         (0 - np.log10(2) / 2) / max(np.std([0, np.log10(2)], ddof=1), 0.1),
                                         np.log10(2) / 0.1])
    assert np.isnan(drift.rebel_scores(np.array([[np.nan, 1.0], [np.nan, 3.0]]))).all()


def test_drift_measured_with_the_layouts_equals_its_own_pass(tmp_path, run_dir):
    plan = plan_of(run_dir)
    # Three passes measure it: the layouts' own, the reading-only pass (when the layouts come
    # from the cache) and the stats'.
    keys, fused = layouts.layouts_and_drift(plan, "pca", 0, use_cache=False)
    alone = drift.drift_of(layouts.drift_sums(plan)[0], plan.steps, plan.layers)
    full = stats.weight_stats(plan.refs, plan.layers)
    for d in (alone, full):
        np.testing.assert_array_equal(fused.norm, d.norm)
        np.testing.assert_array_equal(fused.rel_prev, d.rel_prev)
    # The second time the drift comes from the cache, bit for bit.
    layouts.layouts_and_drift(plan, "pca", 0, use_cache=True)
    again = layouts.layouts_and_drift(plan, "pca", 0, use_cache=True)[1]
    np.testing.assert_array_equal(again.rel_prev, fused.rel_prev)
    np.testing.assert_array_equal(again.rebel, fused.rebel)


def test_csv_rows_columns_and_files(tmp_path):
    run = _freezing_run(tmp_path / "run")
    out = tmp_path / "stats"
    result = runner.invoke(app, ["stats", str(run), "--out", str(out), "--settle-threshold", "1e-6",
                                 "--layouts", "-q"])
    assert result.exit_code == 0, result.output
    assert "settles first: L1 (step 200)" in result.output
    assert "layout columns: computed (--layouts)" in result.output
    rows = list(csv.DictReader(open(out / "layer_stats.csv")))
    assert list(rows[0]) == list(stats.COLUMNS)
    assert len(rows) == 7 * 3 and [r["layer"] for r in rows[:3]] == ["embed", "L0", "L1"]
    plan = plan_of(run)
    s = stats.weight_stats(plan.refs, plan.layers).with_layouts(
        layouts.cached_keyframe_layouts(plan).P, plan.starts)
    for r in rows:
        k, l = int(r["step"]) // 100, s.labels.index(r["layer"])
        for col, arr in (("weight_norm", s.norm), ("rel_change_prev", s.rel_prev),
                         ("rel_change_per_100", s.rate), ("rel_change_first", s.rel_first),
                         ("mean_abs_change_first", s.mean_abs_first),
                         ("update_cosine", s.update_cosine),
                         ("layout_displacement", s.displacement),
                         ("procrustes_residual", s.residual)):
            if np.isnan(arr[l, k]):
                assert r[col] == "", (col, r)
            else:
                np.testing.assert_allclose(float(r[col]), arr[l, k], rtol=1e-8)
        assert r["settle_step"] == {"embed": "300", "L0": "", "L1": "200"}[r["layer"]]
        np.testing.assert_allclose(float(r["path_done"]), s.path_done[l, k], rtol=1e-8)
        assert (r["rebel_z"] == "") == np.isnan(s.rebel[l, k])
    assert rows[3]["layout_displacement"] != "" and rows[0]["layout_displacement"] == ""
    import matplotlib.image

    img = matplotlib.image.imread(out / "layer_change.png")
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 300
    assert sorted(p.name for p in out.iterdir()) == ["layer_change.png", "layer_stats.csv"]


def test_layout_columns_come_from_the_render_cache(tmp_path, run_dir):
    out = tmp_path / "s"
    result = runner.invoke(app, ["stats", str(run_dir), "--out", str(out), "-q"])
    assert "layout columns: empty: no cached layouts" in result.output
    assert all(r["procrustes_residual"] == "" for r in csv.DictReader(open(out / "layer_stats.csv")))
    assert runner.invoke(app, ["render", str(run_dir), str(tmp_path / "f.gif"), "--fps", "2",
                               "--size", "128x96", "-q"]).exit_code == 0
    result = runner.invoke(app, ["stats", str(run_dir), "--out", str(out), "-q"])
    assert "layout columns: from the layout cache" in result.output
    assert sum(r["procrustes_residual"] != "" for r in csv.DictReader(open(out / "layer_stats.csv"))) == 9


@pytest.mark.parametrize("name", ["checkpoint-{step}/model.safetensors", "iter-{step}.safetensors"])
def test_stats_on_other_layouts(tmp_path, name):
    run = write_run(tmp_path / "run", n=3, name=name)
    result = runner.invoke(app, ["stats", str(run), "--out", str(tmp_path / "s"), "-q"])
    assert result.exit_code == 0, result.output
    assert len(list(csv.DictReader(open(tmp_path / "s" / "layer_stats.csv")))) == 3 * 3


def test_stats_on_torch_pickles(tmp_path):
    torch = pytest.importorskip("torch")
    run = tmp_path / "run"
    run.mkdir()
    for k in range(3):
        sd = {key: torch.from_numpy(v) for key, v in
              gpt_state(np.random.default_rng(k), d=8, blocks=2).items()}
        # nanoGPT (compiled) and Lightning layouts
        torch.save({"model": {"_orig_mod." + key: v for key, v in sd.items()}, "iter_num": k * 10},
                   run / f"ckpt_{k * 10}.pt")
        torch.save({"state_dict": sd, "global_step": k * 10}, run / f"epoch=0-step={k * 10 + 5}.ckpt")
    result = runner.invoke(app, ["stats", str(run), "--out", str(tmp_path / "s"), "-q"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(tmp_path / "s" / "layer_stats.csv")))
    assert [int(r["step"]) for r in rows[::3]] == [0, 5, 10, 15, 20, 25]


@pytest.mark.parametrize("args, message", [
    (["--settle-threshold", "0"], "--settle-threshold must be a positive number"),
    (["--settle-fraction", "1.5"], "--settle-fraction must be above 0 and below 1"),
    (["--rebel-z", "-1"], "--rebel-z must be a positive number"),
    (["--points", "bogus"], "--points must be one of neurons, embeddings, rows, cols"),
    (["--tensor", "("], "--tensor '(' is not a regular expression"),
    (["--tensor", "nothing_like_this"], "no tensors to draw as --points neurons matching"),
])
def test_bad_stats_options_are_one_line(tmp_path, run_dir, args, message):
    result = runner.invoke(app, ["stats", str(run_dir), "--out", str(tmp_path / "s"), *args])
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.output
    assert not (tmp_path / "s").exists()
