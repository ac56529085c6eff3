"""layerfilm benchmark: end-to-end time per format against the encode-only floor and a naive
matplotlib peer, all measured in this one run.  Prints ratios; asserts nothing.

    python bench/bench.py            # the full scale: 128 blocks x ~1,000 points, 180 keyframes, 1080p
    python bench/bench.py --quick    # a small run to check the machinery (~1 minute)
    python bench/bench.py --activations   # only the model rows: --points activations, --prompt (GPT-2-124M)

The series are made once in --workdir and kept; the films, raw frames and other outputs of a
run are deleted at its end (a full run writes about 9 GB while it runs).

Columns:
  layerfilm   wall time of `layerfilm render` (a fresh process, numba cache warm, layout cache
              off), split into load+project / render / encode as the pipeline reports them
  floor       the same ffmpeg command fed the same frames from a raw file (encode-only)
  lf/floor    layerfilm / floor  (1.0 = layerfilm costs nothing beyond ffmpeg itself)
  peer        a matplotlib loop (one subplot per layer, set_offsets, canvas.draw, FFMpegWriter),
              timed on a sample of frames and extrapolated to the whole film
  peer/lf     how many times faster layerfilm is than the peer
  RSS         peak resident memory of the layerfilm process

Below the table, each format's CPU seconds (user + system: layerfilm with its ffmpeg, and ffmpeg
alone on the floor) and the least lf/floor that much work allows on this machine's cores:
(layerfilm's CPU seconds / cores) / floor -- what a perfect overlap of every stage would reach.
Last, layerfilm's own CPU per frame, in-process (bench/frame_cost.py): the colour span's pass
and the frame loop, split by part.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FORMATS = ("gif", "webm", "webp", "mp4", "mkv")


def make_series(folder: Path, blocks: int, d: int, keyframes: int, seed: int = 0) -> Path:
    """Synthetic nanoGPT-style checkpoints (fp16): every block has 8*d points of width d.

    Weights drift along a smooth random path, with a slow rotation, so layouts keep changing.
    Reused when a series with the same parameters already exists.
    """
    from safetensors.numpy import save_file

    stamp = folder / ".params"
    params = f"{blocks} {d} {keyframes} {seed}"
    if stamp.exists() and stamp.read_text() == params:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.safetensors"):
        old.unlink()
    rng = np.random.default_rng(seed)
    shapes = {"attn.c_attn.weight": (3 * d, d), "attn.c_proj.weight": (d, d),
              "mlp.c_fc.weight": (2 * d, d), "mlp.c_proj.weight": (d, 2 * d)}
    base = {f"transformer.h.{i}.{n}": rng.standard_normal(s, dtype=np.float32)
            for i in range(blocks) for n, s in shapes.items()}
    base["transformer.wte.weight"] = rng.standard_normal((512, d), dtype=np.float32)
    drift = {k: rng.standard_normal(v.shape, dtype=np.float32) for k, v in base.items()}
    for k in range(keyframes):
        a = k / max(keyframes - 1, 1)
        sd = {n: (v * (1 + a) + np.sin(3 * a + i % 7) * drift[n]).astype(np.float16)
              for i, (n, v) in enumerate(base.items())}
        save_file(sd, str(folder / f"step_{k * 100:06d}.safetensors"), metadata={"loss": str(3 * (1 - a) + 0.1)})
    stamp.write_text(params)
    return folder


RENDER = r"""
import json, resource, sys, time
from pathlib import Path
from layerfilm.config import RenderConfig
from layerfilm.pipeline import render
from layerfilm import encode
a = json.loads(sys.argv[1])
capture = a.get("capture")
if capture:  # record the exact bytes sent to ffmpeg, for the encode-only floor
    sink = open(capture, "wb")
    original = encode.FilmWriter.write
    def write(self, frame):
        if self.encoder.pix_fmt_in == "pal8":
            sink.write(frame.tobytes()); sink.write(self._pal.tobytes())
        else:
            sink.write(self.palette[frame].tobytes())
        original(self, frame)
    encode.FilmWriter.write = write
t = time.perf_counter()
r = render(RenderConfig(checkpoints=Path(a["ckpts"]), output=Path(a["out"]), fps=a["fps"], frames_per_keyframe=a["fpk"],
                        size=tuple(a["size"]), max_points=a["max_points"], jobs=a.get("jobs", 1),
                        cache=a.get("cache", False), scheduler=a.get("scheduler")))
wall = time.perf_counter() - t
io = dict(line.split(": ") for line in open("/proc/self/io").read().split("\n") if ": " in line)
me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
cpu = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime  # ffmpeg included
print(json.dumps(dict(wall=wall, seconds=r.seconds, frames=r.frames, bytes=r.bytes, command=r.command, cpu=cpu,
                      rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      io={k: int(v) for k, v in io.items()})))
"""


def run_layerfilm(args: dict, env: dict | None = None) -> dict:
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", RENDER, json.dumps(args)], capture_output=True, text=True,
                         env=None if env is None else {**os.environ, **env})
    if out.returncode != 0:
        sys.exit(f"layerfilm render failed:\n{out.stderr}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["process"] = time.perf_counter() - t  # including interpreter start, imports, numba load
    return r


def run_floor(command: list[str], raw: Path, out: Path) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of ffmpeg alone, fed the captured frames."""
    cmd = [c if c != "OUTPUT" else str(out) for c in command]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    with open(raw, "rb") as f:
        subprocess.run(cmd, stdin=f, check=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def run_grow(work: Path, d: int, size, fpk: int, max_points: int, formats, repeat: int = 3
             ) -> dict[str, tuple[list[dict], list[dict]]]:
    """``layerfilm watch``'s update: a film of 100 checkpoints (16 blocks) brought up to date
    with a 101st, reusing the layout cache the 100-checkpoint film left, against a render of
    the 101 with no cache; ``repeat`` pairs per format, each update from the same cache."""
    series = make_series(work / "ckpts-16x101", 16, d, 101)
    ckpts = sorted(series.glob("*.safetensors"))
    folder = work / "grow"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    for path in ckpts[:100]:
        os.link(path, folder / path.name)
    out = {}
    for fmt in formats:
        base = dict(ckpts=str(folder), fps=25, fpk=fpk, size=size, max_points=max_points,
                    out=str(work / f"grow.{fmt}"))
        before = Path(tempfile.mkdtemp(prefix="layerfilm-bench-grow-"))
        (folder / ckpts[100].name).unlink(missing_ok=True)
        run_layerfilm(dict(base, cache=True), {"LAYERFILM_CACHE_DIR": str(before)})
        os.link(ckpts[100], folder / ckpts[100].name)
        update, fresh = [], []
        for _ in range(repeat):
            cache = Path(tempfile.mkdtemp(prefix="layerfilm-bench-grow-"))
            shutil.copytree(before, cache, dirs_exist_ok=True)
            update.append(run_layerfilm(dict(base, cache=True), {"LAYERFILM_CACHE_DIR": str(cache)}))
            fresh.append(run_layerfilm(dict(base, out=str(work / f"grow-fresh.{fmt}"))))
            shutil.rmtree(cache, ignore_errors=True)
        shutil.rmtree(before, ignore_errors=True)
        out[fmt] = (update, fresh)
    shutil.rmtree(folder, ignore_errors=True)
    return out


def run_peer(ckpts: Path, size, fpk: int, sample_frames: int, max_points: int, workdir: Path) -> float:
    """Seconds per frame of the hand-written matplotlib loop people use today."""
    import imageio_ffmpeg
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.animation import FFMpegWriter

    from layerfilm.interpolate import Interpolator, keyframe_times
    from layerfilm.config import Selection
    from layerfilm.layouts import keyframe_layouts
    from layerfilm.plan import make_plan

    plan = make_plan(Selection(checkpoints=ckpts, max_points=max_points))
    two = dataclasses.replace(plan, refs=plan.refs[:2], loss=None)  # two keyframes suffice
    P = keyframe_layouts(two).P
    starts = plan.starts
    interp = Interpolator(P, keyframe_times(2, fpk))
    n = len(plan.layers)
    cols = int(np.ceil(np.sqrt(n * size[0] / size[1])))
    rows = int(np.ceil(n / cols))
    dpi = 100
    fig, axes = plt.subplots(rows, cols, figsize=(size[0] / dpi, size[1] / dpi), dpi=dpi)
    axes = np.atleast_1d(axes).ravel()
    scatters = []
    for l, ax in enumerate(axes):
        ax.set_xticks([]), ax.set_yticks([])
        if l < n:
            pts = P[0, starts[l]:starts[l + 1]]
            r = np.abs(P[:, starts[l]:starts[l + 1]]).max()
            ax.set_xlim(-r, r), ax.set_ylim(-r, r)
            scatters.append(ax.scatter(pts[:, 0], pts[:, 1], s=1, c="orange"))
    matplotlib.rcParams["animation.ffmpeg_path"] = imageio_ffmpeg.get_ffmpeg_exe()
    writer = FFMpegWriter(fps=25)
    t = time.perf_counter()
    with writer.saving(fig, str(workdir / "peer.mp4"), dpi):
        for f in range(sample_frames):
            xy = interp.at(f % fpk)
            for l, sc in enumerate(scatters):
                sc.set_offsets(xy[starts[l]:starts[l + 1]])
            writer.grab_frame()
    plt.close(fig)
    return (time.perf_counter() - t) / sample_frames


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="16 blocks, 30 keyframes, 960x540")
    ap.add_argument("--real-size", action="store_true",
                    help="GPT-2-124M x 30 fp32 and Llama-1B x 8 bf16 series (35 GB, made once): wall "
                         "time, bytes read and peak RSS against one sha256 pass (bench/real_size.py)")
    ap.add_argument("--activations", action="store_true",
                    help="seconds per keyframe of --points activations: GPT-2-124M shape, 512-token "
                         "probe, 3 keyframes (bench/activations.py)")
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--fpk", type=int, default=5, help="frames per keyframe (default 5)")
    ap.add_argument("--peer-frames", type=int, default=12, help="frames to time the peer on")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "layerfilm-bench")
    a = ap.parse_args()
    if a.activations:
        import activations

        a.workdir.mkdir(parents=True, exist_ok=True)
        activations.run(a.workdir)
        return
    if a.real_size:
        import real_size

        a.workdir.mkdir(parents=True, exist_ok=True)
        real_size.run(a.workdir / "real-size", run_layerfilm)
        return
    blocks, keyframes, size = (16, 30, (960, 540)) if a.quick else (128, 180, (1920, 1080))
    d, max_points = 128, 2000
    work = a.workdir
    work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    ckpts = make_series(work / f"ckpts-{blocks}x{keyframes}", blocks, d, keyframes)
    print(f"series: {blocks} blocks x {8 * d} points (d_model {d}), {keyframes} keyframes "
          f"[{time.perf_counter() - t:.0f} s to make]; film {size[0]}x{size[1]}, {a.fpk} frames per keyframe")
    base = dict(ckpts=str(ckpts), fps=25, fpk=a.fpk, size=size, max_points=max_points)
    # Start-up: a tiny render with an empty numba cache (compiles), then again (loads the cache).
    tiny = make_series(work / "ckpts-tiny", 2, 16, 2)
    small = dict(ckpts=str(tiny), fps=2, fpk=1, size=(128, 96), max_points=100, out=str(work / "tiny.gif"))
    with tempfile.TemporaryDirectory() as numba_cache:
        env = {"NUMBA_CACHE_DIR": numba_cache}
        cold = run_layerfilm(small, env)["process"]
        warm = run_layerfilm(small, env)["process"]
    # Warm numba's own on-disk cache so no row pays for compilation.
    run_layerfilm(dict(base, out=str(work / "warm.gif"), fpk=1))

    formats = a.formats.split(",")
    cache = tempfile.mkdtemp(prefix="layerfilm-bench-cache-")
    env = {"LAYERFILM_CACHE_DIR": cache}
    # The exact bytes each pixel format sends to ffmpeg, for the encode-only floor.  These runs
    # are not timed; they use the layout cache (the first one fills it).
    raws: dict[str, Path] = {}
    for fmt in formats:
        pix = "pal8" if fmt == "gif" else "rgb24"
        if pix not in raws:
            raws[pix] = work / f"frames.{pix}"
            run_layerfilm(dict(base, out=str(work / f"capture.{fmt}"), capture=str(raws[pix]), cache=True), env)
    # Timed rows: a fresh process each, layout cache off, numba cache warm.
    rows = []
    for fmt in formats:
        r = run_layerfilm(dict(base, out=str(work / f"film.{fmt}")))
        floor, floor_cpu = run_floor(r["command"], raws["pal8" if fmt == "gif" else "rgb24"],
                                     work / f"floor.{fmt}")
        rows.append((fmt, r, floor, floor_cpu))
    # --jobs 2 against the 1-job rows above.
    jobs2 = {fmt: run_layerfilm(dict(base, out=str(work / f"film2.{fmt}"), jobs=2))
             for fmt in formats if fmt in ("gif", "webm")}
    # Layout cache: a re-render of the first format (another file name) reusing the cached layouts.
    reuse = run_layerfilm(dict(base, out=str(work / f"cached.{formats[0]}"), cache=True), env)
    fill = rows[0][1]
    grow = run_grow(work, d, size, a.fpk, max_points, ("gif", "webm"))
    peer = run_peer(ckpts, size, a.fpk, a.peer_frames, max_points, work)
    for raw in raws.values():
        raw.unlink()
    # The films (GBs at full scale) go too: only the series is kept, for the next run.
    for pattern in ("film*", "floor.*", "capture.*", "cached.*", "warm.gif*", "tiny.gif*", "peer*", "grow*"):
        for made in work.glob(pattern):
            if made.is_file():
                made.unlink()
    shutil.rmtree(cache, ignore_errors=True)

    frames = rows[0][1]["frames"]
    print(f"\n{frames} frames per film; peer measured on {a.peer_frames} frames: {peer * 1e3:.0f} ms/frame\n")
    head = f"{'format':<6} {'layerfilm':>9} {'load+proj':>9} {'render':>7} {'encode':>7} {'floor':>7} " \
           f"{'lf/floor':>8} {'peer':>8} {'peer/lf':>7} {'MB':>7} {'RSS MB':>7}"
    print(head)
    print("-" * len(head))
    for fmt, r, floor, _ in rows:
        s = r["seconds"]
        print(f"{fmt:<6} {r['wall']:>8.1f}s {s['load+project']:>8.1f}s {s['render']:>6.1f}s {s['encode']:>6.1f}s "
              f"{floor:>6.1f}s {r['wall'] / floor:>8.2f} {peer * frames:>7.0f}s {peer * frames / r['wall']:>7.1f} "
              f"{r['bytes'] / 1e6:>7.1f} {r['rss_mb']:>7.0f}")
    # The work itself bounds the ratio: no schedule on this machine's cores finishes before its
    # CPU seconds (layerfilm's own and its ffmpeg's) are spread over all of them.
    cores = len(os.sched_getaffinity(0))
    print(f"\nCPU seconds (user + system) and the least lf/floor they allow on {cores} cores:")
    for fmt, r, floor, floor_cpu in rows:
        print(f"  {fmt:<5} layerfilm {r['cpu']:6.1f} s (ffmpeg included), ffmpeg alone {floor_cpu:6.1f} s: "
              f"lf/floor >= {max(r['cpu'] / cores, floor) / floor:.2f}")
    lp = rows[0][1]["seconds"]["load+project"] / rows[0][1]["wall"]
    print(f"\nload+project share of the {rows[0][0]} run: {lp:.1%}")
    one = {fmt: r for fmt, r, *_ in rows}
    for fmt, r in jobs2.items():
        lp1, lp2 = one[fmt]["seconds"]["load+project"], r["seconds"]["load+project"]
        print(f"--jobs 2, {fmt}: {r['wall']:.1f} s; 1 job / 2 jobs = {one[fmt]['wall'] / r['wall']:.2f}x "
              f"overall, {(one[fmt]['wall'] - lp1) / (r['wall'] - lp2):.2f}x for render+encode")
    print(f"layout cache, {formats[0]}: {fill['wall']:.1f} s without it, {reuse['wall']:.1f} s reusing it "
          f"(load+project {fill['seconds']['load+project']:.1f} s -> {reuse['seconds']['load+project']:.2f} s; "
          f"speed-up {fill['wall'] / reuse['wall']:.2f}x)")
    for fmt, (update, fresh) in grow.items():
        u, f = np.median([r["wall"] for r in update]), np.median([r["wall"] for r in fresh])
        lp = np.median([r["seconds"]["load+project"] for r in update])
        lpf = np.median([r["seconds"]["load+project"] for r in fresh])
        print(f"watch, {fmt}: a 100-checkpoint film grown by one: {u:.2f} s (load+project {lp:.2f} s) "
              f"against {f:.2f} s (load+project {lpf:.2f} s) for the 101 afresh: {u / f:.2f}x "
              f"(median of {len(update)}; the rest is drawing and encoding every frame again)")
    print(f"start-up (tiny render, whole process): {cold:.1f} s with an empty numba cache, "
          f"{warm:.1f} s with it filled ({cold / warm:.1f}x)")
    import frame_cost

    frame_cost.run(ckpts, size, a.fpk, max_points)
    from layout_cost import layout_cost  # issue 28: the layout phase's CPU per panel-keyframe

    layout_cost(ckpts, size, a.fpk, max_points)
    if not a.quick:  # the model runs: --points activations and --prompt, GPT-2-124M shape
        import activations

        activations.run(a.workdir)


if __name__ == "__main__":
    main()
