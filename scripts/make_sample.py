#!/usr/bin/env python3
"""Generate the shipped sample run: a small GPT that groks modular addition.

Trains a pre-LN GPT-style decoder (nanoGPT parameter names) on ``a + b mod p``
with full-batch AdamW and strong weight decay, the classic grokking recipe
(Power et al. 2022; Nanda et al. 2023). Clears the old ``step_*.safetensors`` in
``--out``, then writes:

* ``step_XXXXXX.safetensors`` every ``--ckpt-every`` steps (float16, with
  step / loss / val_loss / train_acc / val_acc in the header metadata),
* ``metrics.jsonl`` with one JSON object every ``--log-every`` steps,
* ``README.md`` describing the run,
* ``config.json`` and a tokenizer, so transformers can run the checkpoints (``--prompt``).

Everything is seeded and runs on one CPU thread, so a rerun with the same torch
build reproduces the files byte for byte (about 10 minutes).

Usage:  python scripts/make_sample.py [--out sample_checkpoints] [--steps N] [--seed S]
"""
from __future__ import annotations

import argparse
import json
import math
import random
import struct
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

SIZE_LIMIT_BYTES = 15 * 1000 * 1000


# --------------------------------------------------------------------------- model
class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_head: int, n_ctx: int, bias: bool):
        super().__init__()
        assert d_model % n_head == 0
        self.n_head = n_head
        self.c_attn = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.c_proj = nn.Linear(d_model, d_model, bias=bias)
        self.register_buffer(
            "mask", torch.tril(torch.ones(n_ctx, n_ctx, dtype=torch.bool)), persistent=False
        )

    def forward(self, x: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        # The context is only 3 tokens long, so broadcasted element-wise products
        # are faster on CPU than (flash) batched matmuls and need no transposes.
        B, T, C = x.shape
        hs = C // self.n_head
        q, k, v = self.c_attn(x).view(B, T, 3, self.n_head, hs).unbind(2)  # (B, T, H, hs)
        mask = self.mask[:T, :T]
        if last_only:  # only the query at the last position is needed
            q, mask = q[:, -1:], mask[-1:]
        att = (q[:, :, None] * k[:, None]).sum(-1) / math.sqrt(hs)  # (B, Tq, Tk, H)
        att = att.masked_fill(~mask[:, :, None], float("-inf")).softmax(dim=2)
        y = (att[..., None] * v[:, None]).sum(2)  # (B, Tq, H, hs)
        return self.c_proj(y.reshape(B, -1, C))


class MLP(nn.Module):
    def __init__(self, d_model: int, d_ff: int, bias: bool):
        super().__init__()
        self.c_fc = nn.Linear(d_model, d_ff, bias=bias)
        self.c_proj = nn.Linear(d_ff, d_model, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.relu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, d_model: int, n_head: int, d_ff: int, n_ctx: int, bias: bool):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_head, n_ctx, bias)
        self.ln_2 = nn.LayerNorm(d_model)
        self.mlp = MLP(d_model, d_ff, bias)

    def forward(self, x: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        a = self.attn(self.ln_1(x), last_only)
        x = (x[:, -1:] if last_only else x) + a
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(
        self, vocab: int, n_ctx: int, n_layer: int, d_model: int, n_head: int, d_ff: int, bias: bool = True
    ):
        super().__init__()
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(vocab, d_model),
                wpe=nn.Embedding(n_ctx, d_model),
                h=nn.ModuleList([Block(d_model, n_head, d_ff, n_ctx, bias) for _ in range(n_layer)]),
                ln_f=nn.LayerNorm(d_model),
            )
        )
        self.lm_head = nn.Linear(d_model, vocab, bias=False)  # untied
        # nanoGPT-style init
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))
            elif p.dim() >= 2:
                nn.init.normal_(p, mean=0.0, std=0.02)
            elif name.endswith(".bias"):
                nn.init.zeros_(p)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.shape[1]
        pos = torch.arange(T, device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)
        n = len(self.transformer.h)
        for i, block in enumerate(self.transformer.h):
            # only the '=' position is trained, so the last block skips the others
            x = block(x, last_only=(i == n - 1))
        x = self.transformer.ln_f(x[:, -1, :])
        return self.lm_head(x)


# --------------------------------------------------------------------------- data
def make_data(p: int, frac: float, seed: int):
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    a, b = a.reshape(-1), b.reshape(-1)
    eq = torch.full_like(a, p)  # '=' token
    x = torch.stack([a, b, eq], dim=1)
    y = (a + b) % p
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(p * p, generator=g)
    n_train = int(round(frac * p * p))
    tr, va = perm[:n_train], perm[n_train:]
    return x[tr], y[tr], x[va], y[va]


# --------------------------------------------------------------------------- analysis
def fourier_summary(wte: np.ndarray, p: int, top: int = 6):
    """Energy of the embedding over residue-axis frequencies k = 1..p//2."""
    E = wte[:p].astype(np.float64)
    E = E - E.mean(axis=0, keepdims=True)
    spec = np.fft.rfft(E, axis=0)  # (p//2+1, d)
    power = (np.abs(spec) ** 2).sum(axis=1)[1:]  # k = 1..p//2
    frac = power / power.sum()
    order = np.argsort(-frac)[:top]
    return [(int(k + 1), float(frac[k])) for k in order]


def ring_alignment(wte: np.ndarray, p: int, k: int) -> float:
    """Project ``wte[:p]`` onto the plane of its frequency-k Fourier component and
    return |mean exp(i(angle_a - 2 pi k a / p))|, best over both orientations:
    1.0 when residue a sits at angle 2 pi k a / p on a ring (up to rotation)."""
    E = wte[:p].astype(np.float64)
    E = E - E.mean(axis=0, keepdims=True)
    Fk = np.fft.rfft(E, axis=0)[k]
    Q, _ = np.linalg.qr(np.stack([Fk.real, Fk.imag], axis=1))
    X = E @ Q
    theta = np.arctan2(X[:, 1], X[:, 0])
    a = np.arange(p)
    return max(float(abs(np.mean(np.exp(1j * (theta - s * 2 * np.pi * k * a / p))))) for s in (1, -1))


# --------------------------------------------------------------------------- output
def save_checkpoint(tensors: dict, path: Path, meta: dict) -> None:
    """``safetensors.torch.save_file``, then put the JSON header in a fixed key order.

    safetensors writes the metadata in hash-map order, which differs from run to
    run; rewriting the header (same content, same length) in a canonical order
    makes reruns byte-identical.
    """
    save_file(tensors, str(path), metadata=meta)
    with open(path, "r+b") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
        md = header.pop("__metadata__")
        canon = {"__metadata__": {k: md[k] for k in meta}}
        for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"]):
            canon[name] = info
        raw = json.dumps(canon, separators=(",", ":")).encode()
        if len(raw) <= n:  # always true: same content, without whitespace
            fh.seek(8)
            fh.write(raw + b" " * (n - len(raw)))


def write_model_files(out: Path, p: int, n_layer: int, d_model: int, n_head: int, d_ff: int) -> None:
    """``config.json`` (the Hugging Face GPT-2 configuration this model is: same attention
    scaling, LayerNorm eps 1e-5, biases, ReLU, untied ``lm_head``; GPT-2's Conv1D stores the
    Linear weights transposed, which layerfilm recognises by their shapes) and a WordLevel
    ``tokenizer.json`` (tokens "0".."p-1" and "=", split at whitespace; "+" is read as a space),
    so ``layerfilm render --prompt "12 + 45 ="`` can run every checkpoint.  Written by hand, so
    the sample needs neither transformers nor tokenizers to be made."""
    config = {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": p + 1,
        "n_positions": 3, "n_embd": d_model, "n_layer": n_layer, "n_head": n_head,
        "n_inner": d_ff, "activation_function": "relu", "layer_norm_epsilon": 1e-5,
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "scale_attn_weights": True,
        "tie_word_embeddings": False, "bos_token_id": None, "eos_token_id": None,
    }
    vocab = {str(i): i for i in range(p)}
    vocab["="] = p
    tokenizer = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": [],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Replace", "pattern": {"String": "+"}, "content": " "},
            {"type": "Replace", "pattern": {"String": "="}, "content": " = "}]},
        "pre_tokenizer": {"type": "WhitespaceSplit"}, "post_processor": None, "decoder": None,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "tokenizer.json").write_text(json.dumps(tokenizer, indent=2) + "\n")
    (out / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 3}, indent=2) + "\n")


# --------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="sample_checkpoints", help="output directory (default: %(default)s)")
    ap.add_argument("--steps", type=int, default=5000, help="optimiser steps (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="seeds the split and the init (default: %(default)s)")
    ap.add_argument("--p", type=int, default=97, help="modulus, a prime (default: %(default)s)")
    ap.add_argument("--train-frac", type=float, default=0.3)
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=48)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--d-ff", type=int, default=96)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--wd", type=float, default=1.0)
    ap.add_argument("--decay-all", action="store_true",
                    help="weight-decay LayerNorm parameters and biases too (default: weight "
                         "matrices and embeddings only, the nanoGPT convention)")
    ap.add_argument("--beta2", type=float, default=0.98)
    ap.add_argument("--warmup", type=int, default=10, help="linear lr warm-up steps")
    ap.add_argument("--ckpt-every", type=int, default=100)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model-files-only", action="store_true",
                    help="write only config.json and the tokenizer into --out (no training)")
    args = ap.parse_args(argv)
    if args.model_files_only:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        write_model_files(Path(args.out), args.p, args.n_layer, args.d_model, args.n_head, args.d_ff)
        return 0

    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)

    p = args.p
    xtr, ytr, xva, yva = make_data(p, args.train_frac, args.seed)
    model = GPT(p + 1, 3, args.n_layer, args.d_model, args.n_head, args.d_ff)
    n_params = sum(t.numel() for t in model.state_dict().values())
    n_ckpt = args.steps // args.ckpt_every + 1
    est = n_ckpt * (2 * n_params + 3000) + 100_000  # + headers, metrics.jsonl, README
    print(f"params={n_params:,}  checkpoint~{2 * n_params / 1e3:.0f} kB  "
          f"{n_ckpt} checkpoints  ~{est / 1e6:.2f} MB", flush=True)
    if est > SIZE_LIMIT_BYTES:
        print(f"error: ~{est / 1e6:.1f} MB would exceed the 15 MB budget; "
              f"lower --steps or the model size", file=sys.stderr)
        return 2

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_model_files(out, p, args.n_layer, args.d_model, args.n_head, args.d_ff)
    for f in out.glob("step_*.safetensors"):
        f.unlink()

    # weight decay on the matrices and embeddings (and, with --decay-all, on the rest)
    groups = {"matrices": [], "embeddings": [], "other": []}
    for name, t in model.named_parameters():
        if name.startswith(("transformer.wte", "transformer.wpe")):
            groups["embeddings"].append(t)
        elif t.dim() >= 2 or args.decay_all:
            groups["matrices"].append(t)
        else:
            groups["other"].append(t)
    wds = {"matrices": args.wd, "embeddings": args.wd, "other": 0.0}
    opt = torch.optim.AdamW([{"params": ps, "weight_decay": wds[k]} for k, ps in groups.items() if ps],
                            lr=args.lr, betas=(0.9, args.beta2))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, args.warmup)))

    metrics_path = out / "metrics.jsonl"
    first = {}  # first logged step at which a threshold is reached
    val_loss = val_acc = float("nan")
    t0 = time.time()
    with open(metrics_path, "w") as mf:
        for step in range(args.steps + 1):
            # everything logged at `step` describes the parameters after `step` updates
            logits = model(xtr)
            loss = F.cross_entropy(logits, ytr)
            train_acc = (logits.argmax(-1) == ytr).float().mean().item()
            need_ckpt = step % args.ckpt_every == 0
            if step % args.log_every == 0 or need_ckpt:
                with torch.no_grad():
                    vl = model(xva)
                    val_loss = F.cross_entropy(vl, yva).item()
                    val_acc = (vl.argmax(-1) == yva).float().mean().item()
                for key, v in (("train 0.99", train_acc), ("val 0.5", val_acc),
                               ("val 0.9", val_acc), ("val 0.99", val_acc)):
                    if key not in first and v >= float(key.split()[1]):
                        first[key] = step
                rec = dict(step=step, loss=loss.item(), val_loss=val_loss, train_acc=train_acc, val_acc=val_acc)
                mf.write(json.dumps(rec) + "\n")
            if need_ckpt:
                sd = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
                meta = {"step": str(step), "loss": str(loss.item()), "val_loss": str(val_loss),
                        "train_acc": str(train_acc), "val_acc": str(val_acc)}
                save_checkpoint(sd, out / f"step_{step:06d}.safetensors", meta)
                print(f"step {step:5d}  loss {loss.item():.4f}  val_loss {val_loss:.4f}  "
                      f"train_acc {train_acc:.3f}  val_acc {val_acc:.3f}  ({time.time() - t0:.0f}s)",
                      flush=True)
            if step == args.steps:
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    wall = time.time() - t0

    wte = model.transformer.wte.weight.detach().numpy()
    freqs = fourier_summary(wte, p)
    k0 = freqs[0][0]
    ring = ring_alignment(wte, p, k0)

    def fmt(key):
        return f"step {first[key]:,}" if key in first else "never"

    wd_what = ("all parameters" if args.decay_all else
               "the weight matrices and embeddings (not on LayerNorm parameters or biases)")
    # No wall time or dates in here: a rerun must reproduce this file exactly.
    readme = f"""# Sample run: a small GPT grokking modular addition

Generated by `scripts/make_sample.py` (regenerate with `make sample`); do not edit by hand.

## Task
`a + b mod {p}`. Input tokens `[a, b, '=']` (vocabulary {p + 1}: residues 0..{p - 1}, plus `'='`
as token {p}); the answer is predicted at the last position. A fixed random
{args.train_frac:.0%} of all {p}x{p} = {p * p:,} pairs ({len(ytr):,}) is the training set,
the other {len(yva):,} pairs are the validation set.

## Model
Pre-LN GPT-style decoder (causal attention) in plain torch with nanoGPT parameter names:
`transformer.wte`, `transformer.wpe`,
`transformer.h.{{i}}.{{ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj}}`,
`transformer.ln_f` and an untied `lm_head`. {args.n_layer} blocks, d_model {args.d_model},
{args.n_head} heads, d_ff {args.d_ff}, ReLU MLP, biases in every Linear but `lm_head`,
nanoGPT init (std 0.02), {n_params:,} parameters.

## Training
Full-batch AdamW (the recipe of Power et al. 2022 and Nanda et al. 2023): lr {args.lr:g}
({args.warmup}-step linear warm-up, then constant), betas (0.9, {args.beta2:g}), weight decay
{args.wd:g} on {wd_what};
{args.steps:,} steps, seed {args.seed}, one CPU thread (about 10 minutes).

## Result
* Train accuracy first >= 99% at {fmt("train 0.99")}. Validation accuracy stays near chance,
  then first reaches >= 50% at {fmt("val 0.5")}, >= 90% at {fmt("val 0.9")} and >= 99% at
  {fmt("val 0.99")}: grokking.
* Final (step {args.steps:,}): train loss {loss.item():.4g}, train acc {train_acc:.4f},
  val loss {val_loss:.4g}, val acc {val_acc:.4f}.
* After memorisation the training loss spikes briefly every few hundred steps (the
  "slingshot" of adaptive optimisers, Thilak et al. 2022); validation accuracy jumps up right
  after such spikes.
* Token embedding `wte[:{p}]`, DFT over the residue axis, share of the non-constant energy:
  {", ".join(f"k={k} {s:.0%}" for k, s in freqs)}: a few key frequencies, as Nanda et al. found.
  Projected onto the cos/sin plane of k={k0}, residue a sits at angle ~2 pi {k0} a / {p} on a ring
  (circular alignment |mean exp(i(angle - 2 pi {k0} a/{p}))| = {ring:.3f}; 1 is a perfect ring).

## Files
* `step_XXXXXX.safetensors`: the full state dict in float16 every {args.ckpt_every} steps,
  {n_ckpt} files from step 0 to step {args.steps:,}; the header metadata holds `step`,
  `loss` (train), `val_loss`, `train_acc` and `val_acc` as strings.
* `metrics.jsonl`: one JSON object every {args.log_every} steps with keys
  `step`, `loss` (train), `val_loss`, `train_acc`, `val_acc`.
* `config.json`, `tokenizer.json`, `tokenizer_config.json`: the same model as a Hugging Face
  GPT-2 (`n_positions` 3, ReLU, untied `lm_head`; its Conv1D weights are these Linear weights
  transposed) and a word-level tokenizer (tokens `0`..`{p - 1}` and `=`; `+` reads as a space), so
  `layerfilm render {out} film.webm --prompt "12 + 45 ="` shows each checkpoint's answer.
"""
    (out / "README.md").write_text(readme)
    total = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    print(f"done: {args.steps} steps in {wall:.0f}s; val acc >= 0.5 at {fmt('val 0.5')}, "
          f">= 0.99 at {fmt('val 0.99')}; {n_ckpt} checkpoints; {out} holds {total / 1e6:.2f} MB; "
          f"top wte frequencies {[(k, round(s, 3)) for k, s in freqs]}, ring alignment k={k0}: {ring:.3f}",
          flush=True)
    if total > SIZE_LIMIT_BYTES:
        print("error: output exceeds the 15 MB budget", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
