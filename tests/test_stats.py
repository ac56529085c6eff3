"""layerfilm stats: every number against an independent numpy computation on a small run."""

import csv

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from typer.testing import CliRunner

from layerfilm import layouts, pipeline, stats
from layerfilm.cli import app

from conftest import SAMPLE, gpt_state, plan_of, write_run

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
    """L1 stops changing after step 200, the embedding after step 400, L0 never."""
    folder.mkdir()
    rng = np.random.default_rng(3)
    sd = gpt_state(rng, d=8, blocks=2, vocab=12)
    last = {"transformer.h.1.": 2, "transformer.wte": 4, "transformer.h.0.": 99}
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
    np.testing.assert_array_equal(s.settle_steps(1e-6), [400, np.nan, 200])
    # A threshold above every change: settled from the first keyframe on.
    assert list(s.settle_steps(10.0)) == [0, 0, 0]


def test_settling_counts_change_per_100_steps():
    # Uneven gaps: a change of 0.03 over 300 steps is 0.01 per 100 steps.
    s = stats.LayerStats(np.array([0, 100, 400, 500]), ["a"], np.array([1]), *(np.zeros((1, 4)),) * 1,
                         np.array([[np.nan, 0.05, 0.03, 0.001]]), *(np.zeros((1, 4)),) * 5)
    np.testing.assert_allclose(s.rate[0, 1:], [0.05, 0.01, 0.001])
    assert s.settle_steps(0.02)[0] == 100 and s.settle_steps(0.005)[0] == 400
    assert np.isnan(s.settle_steps(0.0005)[0])


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
        assert r["settle_step"] == {"embed": "400", "L0": "", "L1": "200"}[r["layer"]]
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
