"""Remote checkpoints against local ones: wall time and bytes fetched, measured in one run.

    python bench/remote.py                 # GPT-2-124M-shaped fp32 series on moto's S3 server
    python bench/remote.py --fraction      # what a film draws of a Llama-1B-shaped bf16 series
    python bench/remote.py --quick         # a small series, to check the machinery

Rows (``--fraction`` aside):
  local      `layerfilm render` of the series in a local folder (layout cache off)
  s3         the same files served by moto's S3 server on 127.0.0.1 (`s3://bench/run`)
  s3 again   a re-render from S3 with the layout cache on (the second of two renders)
Columns: wall time of the process, that time / local, bytes fetched (from the manifest) and
the fraction of the bytes stored, requests.  Prints ratios; asserts nothing.

moto's server reads a whole object for every ranged GET (measured here: 0.5 s for 9 kB of a
475 MB object, 12 ms of a 10 MB one), so at full size the s3 row measures moto, not layerfilm:
one GPT-2-124M checkpoint (about 6,600 ranged requests) takes it most of an hour.  The full
row is for an S3 server that serves ranges in proportion to their size; ``--quick`` checks the
machinery against moto.

``--fraction`` writes a Llama-3.2-1B-shaped bf16 series (sparse files: only the headers hold
data, so it takes no disk) and reports the bytes a film draws against the bytes stored, as
`layerfilm info` computes them and as fetched through the remote reader (``file://``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def gpt2_series(folder: Path, n: int, quick: bool) -> Path:
    """GPT-2-124M-shaped HF-style fp32 checkpoints (Conv1D weights (in, out)), drifting."""
    from safetensors.numpy import save_file

    d, blocks, vocab = (128, 2, 2000) if quick else (768, 12, 50257)
    stamp = folder / ".params"
    if stamp.exists() and stamp.read_text() == f"{n} {quick}":
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    shapes = {"attn.c_attn.weight": (d, 3 * d), "attn.c_proj.weight": (d, d),
              "mlp.c_fc.weight": (d, 4 * d), "mlp.c_proj.weight": (4 * d, d),
              "ln_1.weight": (d,), "ln_2.weight": (d,), "attn.c_attn.bias": (3 * d,),
              "mlp.c_fc.bias": (4 * d,)}
    base = {f"transformer.h.{i}.{k}": rng.standard_normal(s, dtype=np.float32) * 0.02
            for i in range(blocks) for k, s in shapes.items()}
    base["transformer.wte.weight"] = rng.standard_normal((vocab, d), dtype=np.float32) * 0.02
    base["transformer.wpe.weight"] = rng.standard_normal((1024, d), dtype=np.float32) * 0.01
    for k in range(n):
        sd = {name: v + np.float32(0.002 * k) * np.sin(v * (k + 1)) for name, v in base.items()}
        save_file(sd, str(folder / f"step_{(k + 1) * 1000:06d}.safetensors"),
                  metadata={"loss": str(4.0 / (k + 1))})
    stamp.write_text(f"{n} {quick}")
    return folder


def llama_series(folder: Path, n: int) -> Path:
    """Llama-3.2-1B-shaped bf16 checkpoints as sparse files: a real safetensors header, data
    left as holes (zeros); what a film draws is decided by the header alone."""
    d, layers, ff, kv, vocab = 2048, 16, 8192, 512, 128256
    shapes = {"model.embed_tokens.weight": (vocab, d), "model.norm.weight": (d,)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({p + "self_attn.q_proj.weight": (d, d), p + "self_attn.k_proj.weight": (kv, d),
                       p + "self_attn.v_proj.weight": (kv, d), p + "self_attn.o_proj.weight": (d, d),
                       p + "mlp.gate_proj.weight": (ff, d), p + "mlp.up_proj.weight": (ff, d),
                       p + "mlp.down_proj.weight": (d, ff), p + "input_layernorm.weight": (d,),
                       p + "post_attention_layernorm.weight": (d,)})
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = int(np.prod(shape)) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        path = folder / f"step_{(k + 1) * 1000:06d}.safetensors"
        with open(path, "wb") as f:
            f.write(len(raw).to_bytes(8, "little") + raw)
            f.truncate(8 + len(raw) + offset)
    return folder


RENDER = r"""
import json, sys, time
t = time.perf_counter()
from typer.testing import CliRunner
from layerfilm.cli import app
r = CliRunner().invoke(app, sys.argv[1:])
if r.exit_code:
    sys.exit(r.output)
print(json.dumps({"wall": time.perf_counter() - t}))
"""


def render(source: str, out: Path, env: dict, extra=()) -> dict:
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", RENDER, "render", source, str(out), "-q", "--fps", "10",
                        "--size", "640x360", *extra], capture_output=True, text=True,
                       env={**os.environ, **env})
    if p.returncode:
        sys.exit(f"render of {source} failed:\n{p.stdout}\n{p.stderr}")
    doc = json.loads(Path(str(out) + ".json").read_text())
    remote = doc["checkpoints"].get("remote") or {}
    return {"wall": time.perf_counter() - t, "fetched": remote.get("bytes_fetched"),
            "stored": remote.get("bytes_stored"), "requests": remote.get("data_requests")}


def bench_s3(n: int, quick: bool, work: Path) -> None:
    from servers import s3_put, start_moto, stop, tree

    series = gpt2_series(work / ("gpt2-quick" if quick else "gpt2-124m"), n, quick)
    stored = sum(p.stat().st_size for p in series.glob("*.safetensors"))
    proc, url = start_moto(work / "moto.log")
    try:
        t = time.perf_counter()
        s3_put(url, "bench", {f"run/{k}": p for k, p in tree(series).items() if not k.startswith(".")})
        upload = time.perf_counter() - t
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            env = {"LAYERFILM_CACHE_DIR": str(tmp / "cache"), "AWS_ACCESS_KEY_ID": "bench",
                   "AWS_SECRET_ACCESS_KEY": "bench", "FSSPEC_S3_ENDPOINT_URL": url,
                   "PYTHONPATH": str(ROOT)}
            local = render(str(series), tmp / "local.webm", env, ["--no-cache"])
            s3 = render("s3://bench/run", tmp / "s3.webm", env, ["--no-cache"])
            render("s3://bench/run", tmp / "warm.webm", env)
            again = render("s3://bench/run", tmp / "again.webm", env)
    finally:
        stop(proc)
    gb = 1e9
    print(f"series: {n} x {stored / n / 1e6:.0f} MB fp32 ({'quick' if quick else 'GPT-2-124M'}-shaped), "
          f"{stored / gb:.2f} GB; upload to moto {upload:.0f} s")
    print(f"{'row':<10} {'wall s':>8} {'/ local':>8} {'fetched':>12} {'of stored':>10} {'requests':>9}")
    for name, r in (("local", local), ("s3", s3), ("s3 again", again)):
        fetched = r["fetched"]
        print(f"{name:<10} {r['wall']:>8.1f} {r['wall'] / local['wall']:>8.2f} "
              f"{'-' if fetched is None else f'{fetched / 1e6:,.1f} MB':>12} "
              f"{'-' if fetched is None else f'{100 * fetched / stored:.1f} %':>10} "
              f"{'-' if r['requests'] is None else r['requests']:>9}")


def bench_fraction(n: int, work: Path) -> None:
    from layerfilm import layouts
    from layerfilm.config import Remote, Selection
    from layerfilm.plan import make_plan, read_estimate

    series = llama_series(work / "llama-1b-bf16", n)
    plan = make_plan(Selection(checkpoints=series))
    stored, reads = read_estimate(plan)
    print(f"series: {n} x {stored / n / 1e9:.2f} GB bf16, Llama-3.2-1B-shaped, {len(plan.layers)} panels")
    print(f"info:     a render reads {reads / 1e6:,.1f} MB of {stored / 1e9:.2f} GB ({100 * reads / stored:.2f} %)")
    remote = make_plan(Selection(checkpoints=Remote(f"file://{series}")))
    t = time.perf_counter()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layouts.keyframe_layouts(remote)
    traffic = remote.storage.traffic
    print(f"fetched:  {traffic.fetched / 1e6:,.1f} MB of {stored / 1e9:.2f} GB "
          f"({100 * traffic.fetched / stored:.2f} %) in {traffic.data_requests} requests, "
          f"{time.perf_counter() - t:.1f} s (file://, the remote reader)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--fraction", action="store_true")
    ap.add_argument("-n", type=int, default=None, help="checkpoints in the series")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "layerfilm-bench")
    a = ap.parse_args()
    if a.fraction:
        bench_fraction(a.n or 4, a.work)
    else:
        bench_s3(a.n or (3 if a.quick else 8), a.quick, a.work)


if __name__ == "__main__":
    main()
