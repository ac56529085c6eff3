"""Real-size series: what a render costs on the checkpoints people actually have.

    python bench/bench.py --real-size          # (make bench BENCH_ARGS=--real-size)

Two series are written once into the bench folder (synthetic weights, real layouts and sizes)
and reused:

* GPT-2-124M-shaped Hugging Face Trainer folders, 30 x ``checkpoint-N/model.safetensors`` fp32
  (Conv1D shapes, 475 MB each, ``trainer_state.json`` beside them);
* Llama-3.2-1B-shaped, 8 x bf16 safetensors (GQA, tied embedding, 2.5 GB each).

In both, every tensor moves from one checkpoint to the next as in a training run: a fixed start
plus a fixed direction scaled by sqrt(checkpoint) (seeded by the tensor's name, so the series is
the same on every machine).  Independent noise at every checkpoint would be the worst case for
the tracked PCA (no plane carries over), not what a run looks like.

For each, with the series' files dropped from the page cache before each (both read from the
disk): a render (fresh process, layout cache off) -- wall time, load+project, bytes read
(``/proc/self/io``: ``rchar`` by read calls, ``read_bytes`` from the block device, which counts
memory-mapped pages too), peak RSS -- against one sha256 pass over the same files in the same
run (what a manifest that hashes every byte would add).  Prints; asserts nothing.
"""

from __future__ import annotations

import hashlib
import json
import time
import zlib
from pathlib import Path

import numpy as np

GPT2 = dict(vocab=50257, positions=1024, d=768, blocks=12, ff=3072, checkpoints=30, every=500)
LLAMA = dict(vocab=128256, d=2048, blocks=16, ff=8192, kv=512, checkpoints=8, every=1000, drift=True)


def _bf16(a: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (round to nearest even), as uint16."""
    bits = a.astype(np.float32).view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def _write_safetensors(path: Path, tensors: dict[str, tuple[str, np.ndarray]], metadata: dict) -> None:
    """A safetensors file written by hand (dtype names as the format has them: BF16 has no numpy
    type), streaming tensor by tensor."""
    header, offset = {"__metadata__": metadata}, 0
    for name, (dtype, arr) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    tmp = path.with_suffix(".part")
    with open(tmp, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for _, arr in tensors.values():
            f.write(np.ascontiguousarray(arr).tobytes())
    tmp.rename(path)


def gpt2_series(folder: Path) -> Path:
    p = GPT2
    stamp = folder / ".params"
    if stamp.exists() and stamp.read_text() == json.dumps(p):
        return folder
    rng = np.random.default_rng(0)
    d, ff = p["d"], p["ff"]
    shapes = {"transformer.wte.weight": (p["vocab"], d), "transformer.wpe.weight": (p["positions"], d),
              "transformer.ln_f.weight": (d,), "transformer.ln_f.bias": (d,)}
    for i in range(p["blocks"]):
        b = f"transformer.h.{i}."
        shapes |= {b + "ln_1.weight": (d,), b + "ln_1.bias": (d,), b + "attn.c_attn.weight": (d, 3 * d),
                   b + "attn.c_attn.bias": (3 * d,), b + "attn.c_proj.weight": (d, d), b + "attn.c_proj.bias": (d,),
                   b + "ln_2.weight": (d,), b + "ln_2.bias": (d,), b + "mlp.c_fc.weight": (d, ff),
                   b + "mlp.c_fc.bias": (ff,), b + "mlp.c_proj.weight": (ff, d), b + "mlp.c_proj.bias": (d,)}
    base = {k: (rng.standard_normal(s, dtype=np.float32) * 0.02) for k, s in shapes.items()}
    drift = {k: (rng.standard_normal(s, dtype=np.float32) * 0.01) for k, s in shapes.items()}
    folder.mkdir(parents=True, exist_ok=True)
    for c in range(p["checkpoints"]):
        step = (c + 1) * p["every"]
        sub = folder / f"checkpoint-{step}"
        sub.mkdir(exist_ok=True)
        a = np.float32(np.sqrt(c + 1))
        _write_safetensors(sub / "model.safetensors",
                           {k: ("F32", base[k] + a * drift[k]) for k in shapes}, {"format": "pt"})
        state = {"global_step": step, "log_history": [{"step": s, "loss": 4.0 / (1 + s / 2000)}
                                                      for s in range(0, step + 1, 100)]}
        (sub / "trainer_state.json").write_text(json.dumps(state))
    stamp.write_text(json.dumps(p))
    return folder


def llama_series(folder: Path) -> Path:
    p = LLAMA
    stamp = folder / ".params"
    if stamp.exists() and stamp.read_text() == json.dumps(p):
        return folder
    d, ff, kv = p["d"], p["ff"], p["kv"]
    shapes = {"model.embed_tokens.weight": (p["vocab"], d), "model.norm.weight": (d,)}
    for i in range(p["blocks"]):
        b = f"model.layers.{i}."
        shapes |= {b + "input_layernorm.weight": (d,), b + "post_attention_layernorm.weight": (d,),
                   b + "self_attn.q_proj.weight": (d, d), b + "self_attn.k_proj.weight": (kv, d),
                   b + "self_attn.v_proj.weight": (kv, d), b + "self_attn.o_proj.weight": (d, d),
                   b + "mlp.gate_proj.weight": (ff, d), b + "mlp.up_proj.weight": (ff, d),
                   b + "mlp.down_proj.weight": (d, ff)}
    folder.mkdir(parents=True, exist_ok=True)
    for c in range(p["checkpoints"]):
        step = (c + 1) * p["every"]
        a = np.float32(np.sqrt(c + 1))  # drifting from one checkpoint to the next, as GPT-2's
        tensors = {}
        for k, s in shapes.items():  # one tensor at a time: 1.2 B parameters do not fit twice
            seed = zlib.crc32(k.encode())  # the same start and direction at every checkpoint
            w = np.random.default_rng([0, seed]).standard_normal(s, dtype=np.float32) * 0.02
            w += a * np.random.default_rng([1, seed]).standard_normal(s, dtype=np.float32) * 0.01
            tensors[k] = ("BF16", _bf16(w))
        _write_safetensors(folder / f"step_{step:07d}.safetensors", tensors,
                           {"format": "pt", "loss": str(3.0 / (1 + c))})
    stamp.write_text(json.dumps(p))
    return folder


def evict(folder: Path) -> None:
    """Drop the series' files from the page cache (``POSIX_FADV_DONTNEED``: no privileges
    needed), so that the render and the sha256 pass both read from the disk, not one of them
    from what the other (or the last row) left in memory."""
    import os

    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def sha256_pass(folder: Path) -> tuple[float, int]:
    """Seconds to sha256 every checkpoint file once, and the bytes hashed."""
    t, total = time.perf_counter(), 0
    for path in sorted(folder.rglob("*.safetensors")):
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
                total += len(chunk)
    return time.perf_counter() - t, total


def run(work: Path, run_layerfilm, only: list[str] | None = None) -> None:
    """Make (or reuse) both series and print a row for each (``only``: names starting so)."""
    for name, make in (("gpt2-124M x30 fp32", gpt2_series), ("llama-1B x8 bf16", llama_series)):
        if only and not any(name.startswith(o) for o in only):
            continue
        t = time.perf_counter()
        folder = make(work / name.split()[0])
        made = time.perf_counter() - t
        stored = sum(p.stat().st_size for p in folder.rglob("*.safetensors"))
        one = max(p.stat().st_size for p in folder.rglob("*.safetensors"))
        evict(folder)
        r = run_layerfilm(dict(ckpts=str(folder), out=str(work / f"{name.split()[0]}.gif"), fps=25, fpk=25,
                               size=(1280, 720), max_points=2000))
        evict(folder)
        sha_s, hashed = sha256_pass(folder)
        s, io = r["seconds"], r.get("io", {})
        print(f"\n{name}: {stored / 1e9:.1f} GB stored ({one / 1e6:.0f} MB per checkpoint) "
              f"[{made:.0f} s to make or check]")
        print(f"  render (whole process) {r['process']:.1f} s: load+project {s['load+project']:.1f} s, "
              f"render {s['render']:.1f} s, encode {s['encode']:.1f} s")
        print(f"  one sha256 pass over the files: {sha_s:.1f} s ({hashed / 1e9:.1f} GB) -> "
              f"render / sha256 pass = {r['process'] / sha_s:.2f}")
        print(f"  bytes read: rchar {io.get('rchar', 0) / 1e6:,.0f} MB, read_bytes "
              f"{io.get('read_bytes', 0) / 1e6:,.0f} MB ({io.get('read_bytes', 0) / stored:.1%} of stored)")
        print(f"  peak RSS {r['rss_mb']:,.0f} MB (one checkpoint: {one / 1e6:,.0f} MB)")
