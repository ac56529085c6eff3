"""``python -m layerfilm.warmup``: compile every numba kernel once, right after installing.

numba compiles a kernel the first time it runs and keeps the machine code on disk
(``cache=True``); the first render after an install would otherwise spend ~10 s compiling.
This renders two tiny films -- fp16 and bf16 safetensors, a narrow (exact PCA) and a wide
(tracked PCA) layer, every overlay -- through the real pipeline, so every kernel a render uses
is compiled for the very argument types it will get.  ``make demo`` and ``make test`` run it.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np


def _write(path: Path, tensors: dict[str, tuple[str, np.ndarray]]) -> None:
    header, offset = {}, 0
    for name, (dtype, arr) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        for _, arr in tensors.values():
            f.write(np.ascontiguousarray(arr).tobytes())


def _run(folder: Path, dtype: str) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir()
    for k in range(3):
        tensors = {}
        for name, shape in (("wte.weight", (120, 80)), ("h.0.attn.c_attn.weight", (240, 80)),
                            ("h.0.mlp.c_proj.weight", (80, 160)), ("h.1.attn.c_attn.weight", (24, 8))):
            w = rng.standard_normal(shape).astype(np.float32)
            if dtype == "F16":
                tensors[name] = ("F16", w.astype(np.float16).view(np.uint16))
            else:
                tensors[name] = ("BF16", (w.view(np.uint32) >> 16).astype(np.uint16))
        _write(folder / f"step_{k * 10}.safetensors", tensors)
    (folder / "metrics.jsonl").write_text("".join(f'{{"step": {s}, "loss": {3 - s / 10}}}\n' for s in range(21)))
    return folder


def main() -> None:
    from .config import RenderConfig
    from .pipeline import render

    t = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="layerfilm-warmup-") as tmp:
        tmp = Path(tmp)
        for dtype, out, extra in (("F16", "a.gif", {"jobs": 2}), ("BF16", "b.webm", {"drift": True})):
            run = _run(tmp / dtype, dtype)
            render(RenderConfig(checkpoints=run, output=tmp / out, fps=2, size=(320, 180), cache=False,
                                loss_strip=True, stills_dir=tmp / f"stills-{dtype}", **extra))
        # fp32/fp64 checkpoints: their rows and columns go through the float widen kernel.
        from .checkpoints.formats.safetensors import SafetensorsFile

        rng = np.random.default_rng(0)
        _write(tmp / "f.safetensors", {"a": ("F32", rng.standard_normal((8, 4)).astype(np.float32)),
                                       "b": ("F64", rng.standard_normal((8, 4)))})
        f = SafetensorsFile(tmp / "f.safetensors")
        for name in "ab":
            f.read(name, np.array([1, 3]), 0), f.read(name, np.array([1, 3]), 1), f.read(name)
    print(f"layerfilm: numba kernels compiled and cached in {time.perf_counter() - t:.1f} s")


if __name__ == "__main__":
    main()
