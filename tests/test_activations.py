"""``--points activations``: the clouds are the model's own hidden states on the probe (GPT-2 and
Llama built from configs by transformers, saved as checkpoint series by ``save_pretrained``), the
film places them as an independent PCA + Procrustes says, ``--label-tokens`` draws only near its
dots, and a changed probe never draws stale layouts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from layerfilm import activations, clouds, layouts  # noqa: E402
from layerfilm.cli import app  # noqa: E402
from layerfilm.config import Selection  # noqa: E402

from conftest import decode  # noqa: E402

runner = CliRunner()
WORDS = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "far", "and", "big", "red", "blue",
         "sun", "is", "hot", "cold", "we", "go", "home"]
PROBE = "the cat sat on a mat\nthe dog ran far\n\na big red sun is hot\nwe go home and the cat sat\n"


def _tokenizer(folder: Path) -> None:
    """A WordLevel tokenizer split at whitespace, built locally (nothing downloaded)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[UNK]"] + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(str(folder))


def _config(kind: str, width: int = 16):
    if kind == "gpt2":
        return transformers.GPT2Config(vocab_size=len(WORDS) + 1, n_positions=16, n_embd=width, n_layer=2,
                                       n_head=2, bos_token_id=None, eos_token_id=None)
    return transformers.LlamaConfig(vocab_size=len(WORDS) + 1, hidden_size=16, intermediate_size=32,
                                    num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                    max_position_embeddings=16, bos_token_id=None, eos_token_id=None)


def write_series(folder: Path, kind: str = "gpt2", n: int = 3, width: int = 16) -> Path:
    """``n`` Hugging Face ``checkpoint-N/`` folders of one model whose weights move from one to
    the next (``save_pretrained``, safetensors), the tokenizer beside them; ``width``: GPT-2's
    hidden size."""
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(_config(kind, width))
    folder.mkdir(parents=True)
    for k in range(n):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.3 * torch.randn_like(p))
        model.save_pretrained(str(folder / f"checkpoint-{(k + 1) * 100}"), safe_serialization=True)
    _tokenizer(folder)
    (folder / "probe.txt").write_text(PROBE)
    return folder


def own_states(folder: Path, step: int) -> tuple[list[list[np.ndarray]], list[str]]:
    """Per probe line, transformers' own ``output_hidden_states`` (each (len, d)) of the
    checkpoint at ``step`` loaded by ``from_pretrained``; the lines run."""
    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder / f"checkpoint-{step}"))
    model.eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    lines = [line for line in PROBE.splitlines() if line.strip()]
    out = []
    with torch.no_grad():
        for line in lines:
            ids = torch.tensor([tok(line)["input_ids"]])
            hs = model(ids, output_hidden_states=True).hidden_states
            out.append([h[0].numpy() for h in hs])
    return out, lines


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_clouds_are_the_models_own_hidden_states(tmp_path, kind):
    run = write_series(tmp_path / kind, kind)
    plan = activations.make_plan(Selection(checkpoints=run, points="activations",
                                           probe=run / "probe.txt", max_points=20))
    probe = plan.probe
    assert [l.label for l in plan.layers] == ["embed", "L0", "L1"]
    assert len(probe.points) == 20 and all(l.n_points == 20 for l in plan.layers)
    # Tokens in order, line after line (the blank line skipped), cut at --max-points.
    assert list(map(tuple, probe.points[:7])) == [(0, i) for i in range(6)] + [(1, 0)]
    assert probe.texts[:6] == ("the", "cat", "sat", "on", "a", "mat")
    for frame in clouds.stream(plan):
        states, _ = own_states(run, frame.step)
        for l in range(3):
            want = np.stack([states[a][l][p] for a, p in probe.points])
            np.testing.assert_allclose(frame.cloud(l), want, rtol=1e-5, atol=1e-5)
    # One position of each line: the last token.
    last = activations.make_plan(Selection(checkpoints=run, points="activations", probe=run / "probe.txt",
                                           probe_positions="-1"))
    assert last.probe.texts == ("mat", "far", "hot", "sat")
    assert list(map(tuple, last.probe.points)) == [(0, 5), (1, 3), (2, 5), (3, 6)]


def _reference_layouts(run: Path, plan) -> np.ndarray:
    """(K, N, 2) each keyframe's PCA of the model's own hidden states, each turned onto the one
    before by orthogonal Procrustes (numpy only)."""
    K, n = len(plan.refs), len(plan.probe.points)
    out = np.zeros((K, n * len(plan.layers), 2))
    for k, ref in enumerate(plan.refs):
        states, _ = own_states(run, ref.step)
        for l in range(len(plan.layers)):
            X = np.stack([states[a][l][p] for a, p in plan.probe.points]).astype(np.float64)
            X -= X.mean(axis=0)
            _, _, Vt = np.linalg.svd(X, full_matrices=False)
            Y = X @ Vt[:2].T
            if k:
                U, _, Wt = np.linalg.svd(Y.T @ out[k - 1, l * n:(l + 1) * n])
                Y = Y @ (U @ Wt)
            out[k, l * n:(l + 1) * n] = Y
    return out


def test_film_places_the_dots_where_pca_and_procrustes_say(tmp_path, monkeypatch, sent):
    from layerfilm import film as film_stage
    import layerfilm.pipeline as pipeline

    run = write_series(tmp_path / "gpt2")
    films = []
    prepare = film_stage.prepare
    monkeypatch.setattr(pipeline.film, "prepare", lambda *a, **k: films.append(prepare(*a, **k)) or films[-1])
    out = tmp_path / "f.webm"
    r = runner.invoke(app, ["render", str(run), str(out), "--points", "activations", "--probe",
                            str(run / "probe.txt"), "--size", "640x360", "--fps", "4", "-q"])
    assert r.exit_code == 0, r.output
    np.testing.assert_array_equal(decode(out), np.stack(sent))  # lossless
    film = films[0]
    plan = activations.make_plan(Selection(checkpoints=run, points="activations", probe=run / "probe.txt"))
    ref = _reference_layouts(run, plan)
    P = film.P.astype(np.float64)
    n = len(plan.probe.points)
    for l in range(len(plan.layers)):
        span = slice(l * n, (l + 1) * n)
        # One fixed orientation (the first keyframe's) turns the reference onto the film's.
        U, _, Wt = np.linalg.svd(ref[0, span].T @ P[0, span])
        Q = U @ Wt
        for k in range(len(plan.refs)):
            np.testing.assert_allclose(ref[k, span] @ Q, P[k, span], atol=2e-4 * np.abs(P[k, span]).max())
    # And the frames show them there: each panel's brightest dot centre at the last keyframe.
    last = sent[film.keyframe_frames()[-1]].sum(axis=2)
    lay, checked = film.grid, 0
    for l, (x0, y0, x1, y1) in enumerate(lay.rects):
        xy = P[-1, film.starts[l]:film.starts[l + 1]]
        at = np.stack([(x0 + x1) / 2 + xy[:, 0] * lay.scale[l], (y0 + y1) / 2 - xy[:, 1] * lay.scale[l]], 1)
        d = np.linalg.norm(at[:, None] - at[None], axis=2)
        np.fill_diagonal(d, np.inf)
        inside = (np.abs(xy) <= film.rasterizer().limits[l]).all(axis=1)
        for i in np.flatnonzero((d.min(axis=1) > 6 * lay.sigma[l]) & inside):
            px, py = int(at[i, 0]), int(at[i, 1])
            win = last[py - 2:py + 3, px - 2:px + 3]
            ym, xm = np.unravel_index(np.argmax(win), win.shape)
            assert abs(px - 2 + xm + 0.5 - at[i, 0]) <= 1.5 and abs(py - 2 + ym + 0.5 - at[i, 1]) <= 1.5
            checked += 1
    assert checked >= 3


def test_label_tokens_draw_only_beside_their_dots(tmp_path, monkeypatch, index_frames):
    from layerfilm import film as film_stage, overlays
    import layerfilm.pipeline as pipeline

    run = write_series(tmp_path / "gpt2")
    films = []
    prepare = film_stage.prepare
    monkeypatch.setattr(pipeline.film, "prepare", lambda *a, **k: films.append(prepare(*a, **k)) or films[-1])
    common = ["--points", "activations", "--probe", str(run / "probe.txt"), "--size", "640x360",
              "--fps", "3", "-q", "--no-cues"]
    assert runner.invoke(app, ["render", str(run), str(tmp_path / "a.gif"), *common]).exit_code == 0
    plain = [f.copy() for f in index_frames]
    index_frames.clear()
    r = runner.invoke(app, ["render", str(run), str(tmp_path / "b.gif"), *common, "--label-tokens", "dog,hot"])
    assert r.exit_code == 0, r.output
    labelled = index_frames
    (labels,) = [o for o in films[-1].overlays if isinstance(o, overlays.TokenLabels)]
    assert labels.texts[:2] == ["dog", "hot"] and len(labels.texts) == 2 * 3  # in every panel
    assert len(plain) == len(labelled)
    for f, (a, b) in enumerate(zip(plain, labelled)):
        diff = np.argwhere(a != b)
        assert len(diff), f  # every frame shows the labels
        at = labels.positions(f)
        px = labels.px[labels.panel]
        # Every changed pixel is within a label's reach of a labelled dot: its text's width
        # to either side, a line of text above and below.
        reach = np.array([[4 + overlays.text_width(t, p), p] for t, p in zip(labels.texts, px)])
        near = ((np.abs(diff[:, None, 1] - at[None, :, 0]) <= reach[None, :, 0] + 2)
                & (np.abs(diff[:, None, 0] - at[None, :, 1]) <= reach[None, :, 1] + 2)).any(axis=1)
        assert near.all(), (f, diff[~near][:5])
    # A token not in the probe is named.
    r = runner.invoke(app, ["render", str(run), str(tmp_path / "c.gif"), *common, "--label-tokens", "zebra"])
    assert r.exit_code == 0 and "'zebra': no dot of the probe" in r.output


def test_a_changed_probe_changes_the_film_not_a_stale_cache(tmp_path, sent):
    run = write_series(tmp_path / "gpt2")
    args = ["--points", "activations", "--probe", str(run / "probe.txt"), "--size", "320x180",
            "--fps", "2", "-q"]
    assert runner.invoke(app, ["render", str(run), str(tmp_path / "a.webm"), *args]).exit_code == 0
    first = [f.copy() for f in sent]
    sent.clear()
    assert runner.invoke(app, ["render", str(run), str(tmp_path / "b.webm"), *args]).exit_code == 0
    again = [f.copy() for f in sent]
    assert all((a == b).all() for a, b in zip(first, again))  # from the cache: the same film
    # The same number of tokens, other words: a cache keyed on shapes alone would reuse layouts.
    (run / "probe.txt").write_text(PROBE.replace("cat", "dog").replace("mat", "sun"))
    sent.clear()
    assert runner.invoke(app, ["render", str(run), str(tmp_path / "c.webm"), *args]).exit_code == 0
    changed = [f.copy() for f in sent]
    assert len(changed) == len(first) and any((a != b).any() for a, b in zip(first, changed))
    # And the cached layouts are the new probe's: the same as computed without the cache.
    plan = activations.make_plan(Selection(checkpoints=run, points="activations", probe=run / "probe.txt"))
    fresh = layouts.keyframe_layouts(plan).P
    cached = layouts.load_cached(plan)
    assert cached is not None
    np.testing.assert_array_equal(cached.P, fresh)


def test_stats_and_info_read_activations(tmp_path):
    run = write_series(tmp_path / "gpt2")
    args = ["--points", "activations", "--probe", str(run / "probe.txt")]
    r = runner.invoke(app, ["info", str(run), *args])
    assert r.exit_code == 0, r.output
    assert "hidden_states[2] R" in r.output and "panels      3" in r.output
    r = runner.invoke(app, ["stats", str(run), *args, "--out", str(tmp_path / "s"), "-q", "--layouts"])
    assert r.exit_code == 0, r.output
    rows = (tmp_path / "s" / "layer_stats.csv").read_text().splitlines()
    assert len(rows) == 1 + 3 * 3 and rows[1].split(",")[1] == "embed"


def test_bad_input_is_one_line(tmp_path, monkeypatch):
    run = write_series(tmp_path / "gpt2")
    out = str(tmp_path / "f.webm")

    def fails(*args: str, says: str):
        r = runner.invoke(app, ["render", str(run), out, *args])
        assert r.exit_code != 0 and "Traceback" not in r.output, r.output
        assert says in r.output and len(r.output.strip().splitlines()) == 1, r.output
        assert not Path(out).exists()

    fails("--points", "activations", says="needs --probe FILE")
    fails("--probe", str(run / "probe.txt"), says="--probe is for --points activations")
    fails("--points", "activations", "--probe", str(tmp_path / "none.txt"), says="no such file")
    fails("--points", "activations", "--probe", str(run / "probe.txt"), "--probe-positions", "x",
          says="--probe-positions must be")
    (tmp_path / "long.txt").write_text("the cat\n" + " ".join(["cat"] * 40) + "\n")
    fails("--points", "activations", "--probe", str(tmp_path / "long.txt"),
          says="long.txt: line 2: 40 tokens, the model takes at most 16")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00")
    fails("--points", "activations", "--probe", str(tmp_path / "bin.txt"), says="cannot read it")
    fails("--label-tokens", "cat", says="--label-tokens marks probe tokens")
    (run / "tokenizer.json").unlink()
    (run / "tokenizer_config.json").unlink()
    fails("--points", "activations", "--probe", str(run / "probe.txt"),
          says="--points activations: no tokenizer in or beside the checkpoints: pass --tokenizer")
    # Without the model extra: one line naming it.
    import builtins

    real = builtins.__import__

    def no_transformers(name, *a, **k):
        if name == "transformers" or name.startswith("transformers."):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_transformers)
    fails("--points", "activations", "--probe", str(run / "probe.txt"), says="layerfilm[model]")


def test_prompts_and_probe_share_one_model_and_from_manifest_refuses_a_changed_probe(tmp_path, monkeypatch):
    """With --prompt and --points activations the model is built once (weights replaced per
    keyframe) and says what a prompt-only render says; the manifest records the probe's key and
    the prompts, and --from-manifest refuses a probe or a prompts file edited since, naming it."""
    import json

    from layerfilm import completions

    run = write_series(tmp_path / "gpt2")
    (tmp_path / "prompts.txt").write_text("the cat\nwe go\n")
    small = ["--size", "320x180", "--fps", "2", "-q", "--no-cache", "--max-new-tokens", "3"]
    built = []
    real = completions.open_runner
    monkeypatch.setattr(completions, "open_runner", lambda *a, **k: built.append(1) or real(*a, **k))
    both = tmp_path / "both.gif"
    r = runner.invoke(app, ["render", str(run), str(both), "--points", "activations", "--probe",
                            str(run / "probe.txt"), "--prompts", str(tmp_path / "prompts.txt"), *small])
    assert r.exit_code == 0, r.output
    assert len(built) == 1
    alone = tmp_path / "alone.gif"
    r = runner.invoke(app, ["render", str(run), str(alone), "--prompts", str(tmp_path / "prompts.txt"), *small])
    assert r.exit_code == 0, r.output
    manifest = tmp_path / "both.gif.json"
    doc, other = json.loads(manifest.read_text()), json.loads((tmp_path / "alone.gif.json").read_text())
    assert doc["completions"]["checkpoints"] == other["completions"]["checkpoints"]
    assert doc["probe"]["points"] == len(PROBE.split()) and doc["probe"]["key"].startswith("activations|")
    assert other["probe"] is None
    again = runner.invoke(app, ["render", "--from-manifest", str(manifest), str(tmp_path / "again.gif")])
    assert again.exit_code == 0, again.output
    assert (tmp_path / "again.gif").read_bytes() == both.read_bytes()

    def refused(says: str, names: str):
        r = runner.invoke(app, ["render", "--from-manifest", str(manifest), str(tmp_path / "no.gif")])
        assert r.exit_code == 2 and "Traceback" not in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1 and says in r.output and names in r.output, r.output
        assert not (tmp_path / "no.gif").exists()

    (tmp_path / "prompts.txt").write_text("the cat\nwe go\nthe dog\n")
    refused("the prompts are not those", manifest.name)
    (tmp_path / "prompts.txt").write_text("the cat\nwe go\n")
    (run / "probe.txt").write_text(PROBE.replace("cat", "dog"))
    refused("changed since", "probe.txt")


def test_a_panel_that_would_be_one_point_is_left_out(tmp_path):
    """Every line ending in the same token, drawn at -1: the embedding output is one point at
    every checkpoint, so there is no embed panel; the blocks' panels are the model's own states."""
    run = write_series(tmp_path / "gpt2")
    (run / "same.txt").write_text("the cat sat\nwe go sat\na big sat\nthe dog sat\n")
    plan = activations.make_plan(Selection(checkpoints=run, points="activations",
                                           probe=run / "same.txt", probe_positions="-1"))
    assert [layer.label for layer in plan.layers] == ["L0", "L1"]
    model = transformers.AutoModelForCausalLM.from_pretrained(str(run / "checkpoint-200")).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(run))
    with torch.no_grad():
        last = [[h[0, -1].numpy() for h in model(torch.tensor([tok(line)["input_ids"]]),
                                                 output_hidden_states=True).hidden_states]
                for line in (run / "same.txt").read_text().splitlines()]
    assert all(np.array_equal(row[0], last[0][0]) for row in last)  # the embedding output: one point
    for l, cloud in enumerate(clouds.of(plan).open(1).clouds()):
        np.testing.assert_allclose(cloud, np.stack([row[l + 1] for row in last]), rtol=1e-5, atol=1e-5)


def test_viewer_page_names_each_dot_by_its_probe_token(tmp_path):
    """--html on an activation film: a dot's identity on the page is its probe token's text and
    where it stands in the probe (file line, token position), in every panel."""
    from layerfilm import viewer

    run = write_series(tmp_path / "gpt2")
    page = tmp_path / "a.html"
    r = runner.invoke(app, ["render", str(run), str(tmp_path / "a.gif"), "--points", "activations",
                            "--probe", str(run / "probe.txt"), "--size", "320x180", "--fps", "2", "-q",
                            "--html", str(page)])
    assert r.exit_code == 0, r.output
    data = viewer.read_data(page)
    want = [w for line in PROBE.splitlines() for w in line.split()]
    where = [f"line {n}, token {p}" for n, line in enumerate(PROBE.splitlines(), 1)
             for p in range(len(line.split()))]
    assert len(data["identities"]) == 3
    for ident in data["identities"]:
        assert ident["kind"] == "tokens" and ident["texts"] == want and ident["where"] == where


def test_activation_films_hash_the_weights_as_the_model_reads_them(tmp_path, fetched):
    """Running the model reads every tensor whole, once: the manifest's digests of each file
    are made on the way (XXH3-128 over every float tensor's bytes in file order, found here
    from the header by hand), nothing reads the files again, and --from-manifest re-renders
    the same film checking those digests against what it reads."""
    import hashlib
    import json

    import xxhash

    run = write_series(tmp_path / "gpt2", width=64)  # files past the first 64 KiB read with the header
    out = tmp_path / "a.gif"
    args = ["--points", "activations", "--probe", str(run / "probe.txt"), "--size", "320x180",
            "--fps", "2", "-q", "--no-cache"]
    fetched.clear()
    r = runner.invoke(app, ["render", str(run), str(out), *args])
    assert r.exit_code == 0, r.output
    files = sorted(run.glob("*/model.safetensors"))
    doc = json.loads((tmp_path / "a.gif.json").read_text())
    entries = {e["path"]: e for e in doc["checkpoints"]["files"]}
    for f in files:
        raw = f.read_bytes()
        n = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8:8 + n])
        spans = sorted(tuple(v["data_offsets"]) for k, v in header.items()
                       if k != "__metadata__" and v["dtype"] in ("F16", "BF16", "F32", "F64"))
        drawn = b"".join(raw[8 + n + s:8 + n + e] for s, e in spans)
        entry = entries[f"{f.parent.name}/{f.name}"]
        assert entry["read_xxh3"] == xxhash.xxh3_128(drawn).hexdigest() and entry["read_bytes"] == len(drawn)
        assert entry["header_sha256"] == hashlib.sha256(raw[:8 + n]).hexdigest()
        assert len(raw) > 4 * 65536  # past the first 64 KiB, read with the header: fetched by range
    # Every file (all named model.safetensors, laid out alike) fetched once, by the model: as
    # many bytes as the files times the distinct ones fetched, and those inside the tensors.
    got = [(s, e) for _, ranges in fetched for s, e in ranges]
    distinct = set().union(*(range(s, e) for s, e in got))
    assert sum(e - s for s, e in got) == len(files) * len(distinct) > 0
    assert min(distinct) >= 8 + n
    again = runner.invoke(app, ["render", "--from-manifest", str(tmp_path / "a.gif.json"),
                                str(tmp_path / "b.gif")])
    assert again.exit_code == 0 and "identical to the film recorded" in again.output, again.output
    assert (tmp_path / "b.gif").read_bytes() == out.read_bytes()
