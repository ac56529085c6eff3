"""Shared fixtures: tiny training runs written with the real safetensors library,
and a decoder that reads films back with ffmpeg."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_checkpoints"


def gpt_state(rng, d=16, blocks=2, vocab=40, ff=None, prefix="transformer.h", dtype=np.float32):
    """A nanoGPT-style state dict (nn.Linear weights are (out, in))."""
    sd = {"transformer.wte.weight": rng.normal(size=(vocab, d)),
          "transformer.wpe.weight": rng.normal(size=(8, d))}
    for i in range(blocks):
        f = (ff[i] if isinstance(ff, (list, tuple)) else ff) or 4 * d
        p = f"{prefix}.{i}."
        sd[p + "ln_1.weight"] = np.ones(d)
        sd[p + "attn.c_attn.weight"] = rng.normal(size=(3 * d, d))
        sd[p + "attn.c_proj.weight"] = rng.normal(size=(d, d))
        sd[p + "mlp.c_fc.weight"] = rng.normal(size=(f, d))
        sd[p + "mlp.c_proj.weight"] = rng.normal(size=(d, f))
    return {k: v.astype(dtype) for k, v in sd.items()}


def write_run(folder: Path, n=4, seed=0, name="step_{step:06d}.safetensors", every=100, **kw) -> Path:
    """A run whose weights drift and grow a little each checkpoint."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    base = gpt_state(rng, **kw)
    for k in range(n):
        step = k * every
        sd = {key: (v * (1 + 0.2 * k) + 0.3 * k * rng.normal(size=v.shape)).astype(v.dtype)
              for key, v in base.items()}
        path = folder / name.format(step=step)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(sd, str(path), metadata={"step": str(step), "loss": str(4.0 / (k + 1))})
    return folder


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Each test gets its own layout cache, never the user's."""
    monkeypatch.setenv("LAYERFILM_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def run_dir(tmp_path) -> Path:
    return write_run(tmp_path / "run")


def decode(path: Path) -> np.ndarray:
    """All frames of a film as ``(n, H, W, 3)`` uint8, decoded by ffmpeg to rgb24."""
    import imageio_ffmpeg

    gen = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    meta = gen.__next__()
    w, h = meta["size"]
    frames = [np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in gen]
    return np.stack(frames)
