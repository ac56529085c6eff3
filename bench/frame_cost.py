"""layerfilm's own CPU per frame, in-process: the colour span's pass (every frame splatted once
before the first is drawn, both threads' CPU) and the frame loop (interpolate, splat, shade,
overlays; then the RGB conversion and the pipe write an RGB film pays, or the index frame a GIF
sends), each as CPU milliseconds per frame of the film.  The pipe is drained by ``cat`` so no
encoder's CPU is counted (or competes).  Called by bench.py; also runs alone:

    python bench/frame_cost.py CKPTS [WIDTH HEIGHT]
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np

GOAL_MS = 8.0  # issue 28: layerfilm's CPU per 1080p frame at 128 panels x 1,000 dots


def prepared(ckpts: Path, size: tuple[int, int], fpk: int, max_points: int):
    """The bench film's plan, layouts and drift (computed, not cached) and its spec."""
    from layerfilm import film, layouts
    from layerfilm.activations import make_plan
    from layerfilm.config import RenderConfig

    cfg = RenderConfig(checkpoints=ckpts, output=Path("unused.webm"), fps=25, frames_per_keyframe=fpk,
                       size=size, max_points=max_points).validated()
    spec = film.FilmSpec.of(cfg)
    plan = make_plan(cfg, cfg.metrics, film.panels_fit(spec, 0))
    keys, measured = layouts.layouts_and_drift(plan, cfg.projection, cfg.seed, use_cache=False,
                                               drift=cfg.needs_drift, fourier_ref=cfg.fourier_ref)
    return plan, keys, measured, spec, cfg


def _writer_parts():
    """What FilmWriter does with a frame: its RGB conversion and its pipe set-up -- or, in a
    layerfilm from before they were parts of their own (to measure an older commit with this
    script), the whole-frame palette lookup and the default pipe."""
    try:
        from layerfilm.encode.ffmpeg import RGBFrames, widen_pipe
    except ImportError:
        from layerfilm._kernels import palette_rgb_kernel

        class RGBFrames:
            def __init__(self, size, palette):
                self.palette, self.rgb = palette, np.empty((size[1], size[0], 3), np.uint8)

            def __call__(self, frame):
                palette_rgb_kernel(frame, self.palette, self.rgb)
                return self.rgb

        def widen_pipe(stream):
            pass
    return RGBFrames, widen_pipe


def run(ckpts: Path, size: tuple[int, int], fpk: int = 5, max_points: int = 2000) -> dict:
    from layerfilm import film, shade

    RGBFrames, widen_pipe = _writer_parts()

    plan, keys, measured, spec, cfg = prepared(ckpts, size, fpk, max_points)
    picture = film.prepare(plan, keys, spec, measured)
    n = picture.n_frames
    times = picture.times
    r = picture.rasterizer()
    c0 = time.process_time()
    span = r.span(keys.P, times)
    span_ms = (time.process_time() - c0) / n * 1e3
    assert span == picture.shader.span
    make = film.FrameMaker(picture)
    rgb = RGBFrames(size, shade.palette(cfg.cmap))
    sink = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    widen_pipe(sink.stdin)  # as FilmWriter does
    pick = range(n)  # every frame, in order, as a render makes them
    t = dict(make=0.0, rgb=0.0, send_rgb=0.0, send_index=0.0)
    try:
        for f in pick:
            c = time.thread_time()
            frame = make(f)
            d = time.thread_time()
            out = rgb(frame)
            e = time.thread_time()
            sink.stdin.write(memoryview(out).cast("B"))
            g = time.thread_time()
            sink.stdin.write(memoryview(frame).cast("B"))
            h = time.thread_time()
            t["make"] += d - c
            t["rgb"] += e - d
            t["send_rgb"] += g - e
            t["send_index"] += h - g
    finally:
        sink.stdin.close()
        sink.wait()
    ms = {k: v / len(pick) * 1e3 for k, v in t.items()}
    rgb_total = span_ms + ms["make"] + ms["rgb"] + ms["send_rgb"]
    gif_total = span_ms + ms["make"] + ms["send_index"]
    points = int(picture.starts[-1])
    print(f"\nframe cost, {size[0]}x{size[1]}, {len(plan.layers)} panels x {points // len(plan.layers):,} dots, "
          f"{n} frames (CPU ms per frame, all timed):")
    print(f"  colour span's pass {span_ms:5.2f}   frame: make {ms['make']:5.2f} (interpolate, splat, shade, "
          f"overlays), RGB {ms['rgb']:4.2f}, pipe write {ms['send_rgb']:4.2f} (index frame {ms['send_index']:4.2f})")
    print(f"  total: RGB films {rgb_total:5.2f} ms, GIF {gif_total:5.2f} ms (goal <= {GOAL_MS:g} at 1080p, "
          "128 panels x 1,000 dots)")
    return dict(span=span_ms, **ms, rgb_total=rgb_total, gif_total=gif_total)


if __name__ == "__main__":
    size = (int(sys.argv[2]), int(sys.argv[3])) if len(sys.argv) > 3 else (1920, 1080)
    run(Path(sys.argv[1]), size)
