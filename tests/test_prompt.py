"""``--prompt``: every keyframe's checkpoint run in one transformers model, its greedy
continuations shown as captions, recorded in the manifest and in ``layerfilm stats``.

Real components only: tiny GPT-2 and Llama models built from configs by transformers and saved
with their own ``save_pretrained`` / safetensors, a nanoGPT checkpoint dict saved with
``torch.save``, WordLevel tokenizers saved by ``tokenizers``; every completion is compared with
what transformers' own ``generate`` (greedy) says on the same weights.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from layerfilm.checkpoints import human_bytes
from layerfilm.cli import app

from conftest import ROOT, SAMPLE, decode
from servers import s3_put, tree
from test_cli import _ink_contains
from test_picture import _capture_film

try:  # fixtures: moto's S3 server and a proxy in front of it that counts what is fetched
    from test_remote_s3 import moto, s3  # noqa: F401
    S3 = True
except pytest.skip.Exception:  # no s3fs or moto
    S3 = False

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

runner = CliRunner()
WORDS = [f"w{i}" for i in range(30)]
SMALL = ["--size", "320x180", "--fps", "2", "-q"]
ARROW = "\u2192"


def _tokenizer(folder: Path) -> Path:
    """A word-level tokenizer of ``WORDS`` (ids 0..29) and ``<unk>`` (30, outside the models'
    vocabularies, so every generated token shows), saved in ``folder``."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS + ["<unk>"])}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>").save_pretrained(folder)
    return folder


def _gpt2_config(**kw):
    return transformers.GPT2Config(**{"vocab_size": 30, "n_positions": 16, "n_embd": 16, "n_layer": 2,
                                      "n_head": 2, "bos_token_id": None, "eos_token_id": None, **kw})


def _random(model, seed: int):
    """``model`` with every parameter drawn afresh (so greedy continuations differ by seed)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return model.eval()


def _reference(model, tokenizer, prompt: str, n: int) -> str:
    """transformers' own greedy continuation, decoded as layerfilm shows it."""
    enc = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, do_sample=False, num_beams=1, max_new_tokens=n, pad_token_id=0)
    return " ".join(tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).split())


def _gpt2_run(root: Path) -> Path:
    """Three Hugging Face ``checkpoint-N/`` folders (config.json in each, written by
    save_pretrained) of a tiny GPT-2 with different weights; the tokenizer beside them."""
    for k, step in enumerate((100, 200, 300)):
        _random(transformers.GPT2LMHeadModel(_gpt2_config()), k).save_pretrained(root / f"checkpoint-{step}")
    _tokenizer(root)
    return root


def _manifest(film: Path) -> dict:
    return json.loads(Path(f"{film}.json").read_text())


def _said(film: Path) -> dict[int, dict[str, str]]:
    return {c["step"]: c["completions"] for c in _manifest(film)["completions"]["checkpoints"]}


def _one_line(result, code: int, *needles: str) -> None:
    text = result.output.strip()
    assert result.exit_code == code, text
    assert len(text.splitlines()) == 1 and "Traceback" not in text, text
    for needle in needles:
        assert needle in text, text


PROMPTS = ["w1 w2 w3", "w7"]


def test_gpt2_completions_equal_generate_in_manifest_and_stats(tmp_path):
    run = _gpt2_run(tmp_path / "run")
    tok = transformers.AutoTokenizer.from_pretrained(run)
    film = tmp_path / "f.gif"
    args = [a for p in PROMPTS for a in ("--prompt", p)] + ["--max-new-tokens", "5"]
    r = runner.invoke(app, ["render", str(run), str(film), *SMALL, *args])
    assert r.exit_code == 0, r.output
    said = _said(film)
    assert sorted(said) == [100, 200, 300]
    for step in (100, 200, 300):
        model = transformers.GPT2LMHeadModel.from_pretrained(run / f"checkpoint-{step}").eval()
        assert said[step] == {p: _reference(model, tok, p, 5) for p in PROMPTS}
        assert all(len(c.split()) == 5 for c in said[step].values())
    assert len({json.dumps(v) for v in said.values()}) == 3  # the weights really were replaced
    entry = _manifest(film)["completions"]
    assert entry["decoding"] == "greedy" and entry["max_new_tokens"] == 5 and entry["prompts"] == PROMPTS
    assert [c["path"] for c in entry["checkpoints"]] == [f"checkpoint-{s}/model.safetensors" for s in (100, 200, 300)]

    r = runner.invoke(app, ["stats", str(run), "--out", str(tmp_path / "stats"), "-q", *args])
    assert r.exit_code == 0, r.output
    assert "completions.csv (3 keyframes x 2 prompts)" in r.output
    with open(tmp_path / "stats" / "completions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(int(row["step"]), row["prompt"], row["completion"]) for row in rows] == \
        [(s, p, said[s][p]) for s in (100, 200, 300) for p in PROMPTS]


def test_llama_bare_safetensors_series_with_model_config_and_tokenizer(tmp_path):
    """A series of bare safetensors files: no config beside them is one line naming
    --model-config, no tokenizer one naming --tokenizer; with both, each keyframe says what
    LlamaForCausalLM's own generate says."""
    from safetensors.torch import save_file

    config = transformers.LlamaConfig(vocab_size=30, hidden_size=16, intermediate_size=32,
                                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                      max_position_embeddings=32, bos_token_id=None, eos_token_id=None,
                                      tie_word_embeddings=False)
    run, cfg_dir, tok_dir = tmp_path / "run", tmp_path / "cfg", _tokenizer(tmp_path / "tok")
    run.mkdir()
    config.save_pretrained(cfg_dir)
    models = {}
    for k, step in enumerate((0, 50, 100)):
        models[step] = _random(transformers.LlamaForCausalLM(config), 10 + k)
        save_file({n: t.contiguous() for n, t in models[step].state_dict().items()},
                  str(run / f"step_{step:06d}.safetensors"), metadata={"step": str(step)})
    film = tmp_path / "f.gif"
    base = ["render", str(run), str(film), *SMALL, "--prompt", "w3 w4", "--max-new-tokens", "6"]
    _one_line(runner.invoke(app, base), 2, str(run), "--model-config DIR")
    _one_line(runner.invoke(app, base + ["--model-config", str(cfg_dir)]), 2, "--tokenizer DIR")
    _one_line(runner.invoke(app, base + ["--model-config", str(cfg_dir), "--tokenizer", str(cfg_dir)]), 2,
              str(cfg_dir), "--tokenizer: no tokenizer files in it")
    _one_line(runner.invoke(app, base + ["--model-config", str(tmp_path / "tok")]), 2,
              "--model-config needs a folder with the model's config.json")
    r = runner.invoke(app, base + ["--model-config", str(cfg_dir), "--tokenizer", str(tok_dir)])
    assert r.exit_code == 0, r.output
    tok = transformers.AutoTokenizer.from_pretrained(tok_dir)
    assert _said(film) == {s: {"w3 w4": _reference(m, tok, "w3 w4", 6)} for s, m in models.items()}
    assert not film.with_suffix(".gif.json").read_text().count("Traceback")


@pytest.mark.parametrize("bias", [True, False])
def test_nanogpt_checkpoint_dict_runs_as_the_equivalent_gpt2(tmp_path, bias):
    """nanoGPT's own checkpoint dict (``model`` with nn.Linear (out, in) weights and the
    attention's causal-mask buffer, ``model_args``, ``iter_num``): its ``model_args`` become
    the GPT-2 config, and every keyframe says what a GPT2LMHeadModel holding the same weights
    says (with ``bias=False``: a GPT-2 whose biases are zero)."""
    args = {"n_layer": 2, "n_head": 2, "n_embd": 16, "block_size": 12, "bias": bias, "vocab_size": 30,
            "dropout": 0.0}
    # What a nanoGPT model is, written out independently of layerfilm's mapping: exact GELU,
    # 4x MLP, LayerNorm eps 1e-5, tied embeddings.
    config = transformers.GPT2Config(n_embd=16, n_layer=2, n_head=2, n_positions=12, vocab_size=30,
                                     n_inner=64, activation_function="gelu", layer_norm_epsilon=1e-5,
                                     tie_word_embeddings=True, bos_token_id=None, eos_token_id=None)
    run = tmp_path / "out"
    run.mkdir()
    models = {}
    for k, step in enumerate((0, 250, 500)):
        model = _random(transformers.GPT2LMHeadModel(config), 20 + k)
        sd = {}
        for name, t in model.state_dict().items():
            if name.endswith(".bias") and not bias:
                with torch.no_grad():
                    dict(model.named_parameters())[name].zero_()
                continue
            is_conv = name.endswith(".weight") and any(s in name for s in ("c_attn", "c_proj", "c_fc"))
            sd[name] = t.T.contiguous() if is_conv else t.clone()
        sd["lm_head.weight"] = sd["transformer.wte.weight"]
        for i in range(2):
            sd[f"transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(12, 12)).view(1, 1, 12, 12)
        models[step] = model
        torch.save({"model": sd, "model_args": args, "iter_num": step, "best_val_loss": 3.0,
                    "config": {"batch_size": 4}}, run / f"ckpt_{step}.pt")
    tok_dir = _tokenizer(tmp_path / "tok")
    film = tmp_path / "f.gif"
    prompts = ["w5 w6 w7 w8", "w0"]
    base = ["render", str(run), str(film), *SMALL, *[a for p in prompts for a in ("--prompt", p)]]
    _one_line(runner.invoke(app, base), 2, "--tokenizer DIR")
    r = runner.invoke(app, base + ["--tokenizer", str(tok_dir)])
    assert r.exit_code == 0, r.output
    tok = transformers.AutoTokenizer.from_pretrained(tok_dir)
    assert _said(film) == {s: {p: _reference(m, tok, p, 12 - len(p.split()) + 1) for p in prompts}
                           for s, m in models.items()}
    # The context ends the continuation: 4 prompt tokens + 9 new ones (the last needs no position).
    assert all(len(c["w5 w6 w7 w8"].split()) == 9 for c in _said(film).values())
    # --points activations runs the same mapped model: its clouds are the GPT-2's own states.
    from layerfilm import activations, clouds
    from layerfilm.config import Selection

    (tmp_path / "probe.txt").write_text("w1 w2 w3 w4\nw9 w8 w7\n")
    plan = activations.make_plan(Selection(checkpoints=run, points="activations",
                                           probe=tmp_path / "probe.txt", tokenizer=tok_dir))
    for k, (step, model) in enumerate(models.items()):
        with torch.no_grad():
            own = [np.concatenate([h[0].numpy() for h in model(torch.tensor([tok(line)["input_ids"]]),
                                                               output_hidden_states=True).hidden_states[l:l + 1]])
                   for l in range(3) for line in ("w1 w2 w3 w4", "w9 w8 w7")]
        got = clouds.of(plan).open(k).clouds()
        for l in range(3):
            np.testing.assert_allclose(got[l], np.concatenate(own[2 * l:2 * l + 2]), rtol=1e-5, atol=1e-5)


def test_captions_show_what_each_keyframe_said_and_rerender_is_bit_identical(tmp_path, monkeypatch):
    run = _gpt2_run(tmp_path / "run")
    opts = [*SMALL, "--max-new-tokens", "3"]
    a, b = tmp_path / "a.gif", tmp_path / "b.gif"
    for film in (a, b):
        r = runner.invoke(app, ["render", str(run), str(film), "--prompt", "w1 w2", *opts])
        assert r.exit_code == 0, r.output
    assert a.read_bytes() == b.read_bytes()  # the same film bits on a re-render
    r = runner.invoke(app, ["render", "--from-manifest", f"{a}.json", str(tmp_path / "m.gif")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "m.gif").read_bytes() == a.read_bytes()

    # One prompt: the film is, pixel for pixel, the film of the same text given as --captions.
    said = _said(a)
    captions = tmp_path / "c.jsonl"
    captions.write_text("".join(json.dumps({"step": s, "text": f"w1 w2 {ARROW} {c['w1 w2']}"}) + "\n"
                                for s, c in said.items()))
    r = runner.invoke(app, ["render", str(run), str(tmp_path / "c.gif"), "--captions", str(captions), *opts])
    assert r.exit_code == 0, r.output
    np.testing.assert_array_equal(decode(a), decode(tmp_path / "c.gif"))
    r = runner.invoke(app, ["render", str(run), str(tmp_path / "n.gif"), *opts])
    assert not np.array_equal(decode(a), decode(tmp_path / "n.gif"))

    # Two prompts: one caption line each, glyph for glyph, from each keyframe's frame on.
    films = _capture_film(monkeypatch)
    d = tmp_path / "d.gif"
    r = runner.invoke(app, ["render", str(run), str(d), "--prompt", "w1 w2", "--prompt", "w9", *opts,
                            "--size", "480x270", "--frames", str(tmp_path / "png")])
    assert r.exit_code == 0, r.output
    lay = films[0].grid
    assert len(lay.captions) == 2
    said = _said(d)
    for i, step in enumerate((100, 200, 300)):
        frame = decode(tmp_path / "png" / f"frame_{2 * i:06d}.png")[0]
        for (x0, y0, x1, y1), prompt in zip(lay.captions, ("w1 w2", "w9")):
            ink = frame[y0:y1, x0:x1].any(axis=2)
            assert _ink_contains(ink, f"{prompt} {ARROW} {said[step][prompt]}", lay.label_font), (step, prompt)


def _val_acc() -> dict[int, float]:
    rows = [json.loads(line) for line in (SAMPLE / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r["val_acc"] for r in rows}


def test_the_sample_learns_to_add(tmp_path):
    """The shipped grokking sample run as a GPT-2 (its config.json and tokenizer): its answers
    to a few ``a + b =`` probes (a ``--prompts`` file) are all wrong at step 0 and all right
    ((a + b) mod 97) at every keyframe from which its logged validation accuracy stays at 0.99
    or more (every 300 steps: the answers need no film)."""
    from layerfilm import completions
    from layerfilm.config import RenderConfig
    from layerfilm.plan import make_plan

    pairs = [(12, 45), (3, 5), (90, 10), (50, 60), (96, 96), (33, 71)]
    probes = tmp_path / "probes.txt"
    probes.write_text("".join(f"{a} + {b} =\n\n" for a, b in pairs))
    config = RenderConfig(checkpoints=SAMPLE, output=tmp_path / "s.gif", steps="0::300",
                          prompts=probes).validated()
    said = {s.step: dict(s.completions)
            for s in completions.run_prompts(make_plan(config), config.all_prompts, config.max_new_tokens)}
    acc = _val_acc()
    right = {s: [c[f"{a} + {b} ="] == str((a + b) % 97) for a, b in pairs] for s, c in said.items()}
    assert not any(right[0])
    steps = sorted(said)
    grokked = next(s for s in steps if all(acc[t] >= 0.99 for t in steps if t >= s))
    assert 0 < grokked < steps[-1]
    assert all(all(right[s]) for s in steps if s >= grokked), {s: right[s] for s in steps if s >= grokked}
    assert not all(all(right[s]) for s in steps if s < grokked - 500)  # it was not right all along


def test_bad_prompts_are_one_line(tmp_path):
    run = _gpt2_run(tmp_path / "run")
    film = tmp_path / "f.gif"
    long = " ".join(WORDS[:17])
    _one_line(runner.invoke(app, ["render", str(run), str(film), *SMALL, "--prompt", long]), 2,
              "17 tokens, the model takes at most 16")
    _one_line(runner.invoke(app, ["render", str(run), str(film), *SMALL, "--prompts", str(tmp_path / "no")]),
              2, "--prompts: cannot read it")
    (tmp_path / "empty.txt").write_text("\n\n")
    _one_line(runner.invoke(app, ["render", str(run), str(film), *SMALL, "--prompts",
                                  str(tmp_path / "empty.txt")]), 2, "no prompts in it")
    _one_line(runner.invoke(app, ["render", str(run), str(film), *SMALL, "--prompt", "w1",
                                  "--max-new-tokens", "0"]), 2, "--max-new-tokens must be between 1 and 256")
    _one_line(runner.invoke(app, ["render", str(run), str(film), *SMALL,
                                  *["--prompt", "w1"] * 9]), 2, "at most 8 prompts")
    assert not list(tmp_path.glob("f.gif*"))


def test_without_the_model_extra_the_error_names_it(tmp_path):
    """transformers not importable (as without ``layerfilm[model]``): one line naming the
    extra, a non-zero exit, no traceback."""
    code = ("import sys; sys.modules['transformers'] = None; sys.argv[0] = 'layerfilm'; "
            "from layerfilm.cli import main_entry; main_entry()")
    out = subprocess.run([sys.executable, "-c", code, "render", str(SAMPLE), str(tmp_path / "f.gif"),
                          "--size", "320x180", "--steps", "0:200", "-q", "--prompt", "1 + 2 ="],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    text = (out.stdout + out.stderr).strip()
    assert out.returncode == 2, text
    assert len(text.splitlines()) == 1 and "Traceback" not in text, text
    assert "pip install 'layerfilm[model]'" in text
    assert not list(tmp_path.glob("f.gif*"))


@pytest.mark.skipif(not S3, reason="needs s3fs and moto")
def test_remote_series_says_what_it_fetches_first(tmp_path, moto, s3):
    """s3://: running needs whole tensors, so the command says how many bytes it will fetch
    before it starts (every tensor the model takes, every keyframe), and then says what the
    same series says locally; without a local config and tokenizer, one line naming both."""
    from safetensors.torch import save_file

    run = tmp_path / "run"
    run.mkdir()
    wanted = 0
    for k, step in enumerate((0, 100, 200)):
        model = _random(transformers.GPT2LMHeadModel(_gpt2_config()), 30 + k)
        sd = {n: t.contiguous() for n, t in model.state_dict().items() if n != "lm_head.weight"}  # tied
        wanted += sum(t.numel() * t.element_size() for t in sd.values())
        save_file(sd, str(run / f"step_{step:06d}.safetensors"))
    cfg_dir, tok_dir = tmp_path / "cfg", _tokenizer(tmp_path / "tok")
    _gpt2_config().save_pretrained(cfg_dir)
    s3_put(moto, "prompts", {f"run/{k}": p for k, p in tree(run).items()})
    opts = [*SMALL, "--prompt", "w4 w5", "--max-new-tokens", "4"]
    _one_line(runner.invoke(app, ["render", "s3://prompts/run", str(tmp_path / "r.gif"), *opts]), 2,
              "s3://prompts/run", "--model-config DIR and --tokenizer DIR")
    given = ["--model-config", str(cfg_dir), "--tokenizer", str(tok_dir)]
    r = runner.invoke(app, ["render", "s3://prompts/run", str(tmp_path / "r.gif"), *opts, *given])
    assert r.exit_code == 0, r.output
    assert f"fetching {human_bytes(wanted)} of weights from s3://prompts/run (3 checkpoints)" in r.output
    fetched = sum(e[4] for e in s3.gets("run/") if "?" not in e[1] and "list-type" not in e[1])
    assert fetched >= wanted
    local = runner.invoke(app, ["render", str(run), str(tmp_path / "l.gif"), *opts, *given])
    assert local.exit_code == 0, local.output
    assert _said(tmp_path / "r.gif") == _said(tmp_path / "l.gif")
    # --points activations runs the model too, and says so first (nothing cached yet).
    (tmp_path / "probe.txt").write_text("w1 w2 w3\nw4 w5 w6\n")
    acts = ["--points", "activations", "--probe", str(tmp_path / "probe.txt"), *SMALL, *given]
    r = runner.invoke(app, ["render", "s3://prompts/run", str(tmp_path / "a.gif"), *acts])
    assert r.exit_code == 0, r.output
    assert (f"--points activations runs every keyframe's checkpoint whole: fetching {human_bytes(wanted)} "
            "of weights from s3://prompts/run (3 checkpoints; none if its layouts are cached)") in r.output
