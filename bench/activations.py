"""Seconds per keyframe of ``--points activations`` and ``--prompt`` for a GPT-2-124M-shaped model (``GPT2Config()``'s
default sizes, random init, built from its config and saved with ``save_pretrained`` as
safetensors -- nothing downloaded) on a 512-token probe: ``python bench/bench.py --activations``.

What is timed is the activation source alone, as a render reads it: each keyframe's weights
copied into the one model and the probe run (``clouds.of(plan).open(k)``); the model is built
once before (its time printed apart), projection and drawing are what every film costs.
"""

from __future__ import annotations

import time
from pathlib import Path


def make_series(folder: Path, keyframes: int = 3) -> Path:
    """``keyframes`` checkpoint-N folders of one randomly initialised GPT-2-124M, a WordLevel
    tokenizer of 1,000 words beside them, and a probe of 512 tokens (8 lines of 64)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    if (folder / "probe.txt").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config())
    for k in range(keyframes):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
        model.save_pretrained(str(folder / f"checkpoint-{(k + 1) * 100}"), safe_serialization=True)
    words = [f"w{i}" for i in range(1000)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["[UNK]"] + words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(str(folder))
    lines = [" ".join(words[(7 * (64 * j + i)) % 1000] for i in range(64)) for j in range(8)]
    (folder / "probe.txt").write_text("\n".join(lines) + "\n")
    return folder


def run(workdir: Path) -> None:
    from layerfilm import activations, clouds
    from layerfilm.config import Selection

    t = time.perf_counter()
    folder = make_series(workdir / "gpt2-124m-activations")
    made = time.perf_counter() - t
    t = time.perf_counter()
    plan = activations.make_plan(Selection(checkpoints=folder, points="activations",
                                           probe=folder / "probe.txt", max_points=512))
    built = time.perf_counter() - t
    source = clouds.of(plan)
    per = []
    for k in range(len(plan.refs)):
        t = time.perf_counter()
        frame = source.open(k)
        frame.clouds()
        per.append(time.perf_counter() - t)
    n = len(plan.probe.points)
    print(f"activations: GPT-2-124M shape ({plan.probe.layers} hidden states of width {plan.probe.dim}), "
          f"{n} probe tokens, {len(plan.refs)} keyframes [series made in {made:.0f} s; plan with the "
          f"model built once: {built:.1f} s]")
    print(f"  seconds per keyframe (weights copied in + forward pass): "
          + ", ".join(f"{s:.2f}" for s in per) + f"; median {sorted(per)[len(per) // 2]:.2f}")
    # --prompt on the same model: the weights are in; one prompt of 16 tokens, 12 generated.
    runner, prompt = plan.probe.runner(plan), " ".join(f"w{i}" for i in range(16))
    said = []
    for k in range(len(plan.refs)):
        t = time.perf_counter()
        runner.load(plan.refs[k])
        loaded = time.perf_counter() - t
        runner.complete(prompt, 12)
        said.append((loaded, time.perf_counter() - t - loaded))
    print("  --prompt per keyframe (weights copied in + 12 tokens generated greedily): "
          + ", ".join(f"{a:.2f} + {b:.2f}" for a, b in said) + " s")
