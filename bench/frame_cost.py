"""layerfilm's own CPU per frame, in-process: the colour span's pass (every frame's densest
pixel found before the first is drawn: a bound per group of frames and the splats it cannot
rule out, both threads' CPU) and the frame loop (interpolate, splat, shade,
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
    """What FilmWriter does with a frame: its RGB conversion and its pipe (sized for the frame
    and, where it can, handed frames by vmsplice from two buffers in turn) -- or, in a layerfilm
    from before they were parts of their own (to measure an older commit with this script), the
    whole-frame palette lookup and plain writes into the pipe as that commit set it up."""
    try:
        from layerfilm.encode.ffmpeg import RGBFrames
    except ImportError:
        from layerfilm._kernels import palette_rgb_kernel

        class RGBFrames:
            def __init__(self, size, palette):
                self.palette, self.rgb = palette, np.empty((size[1], size[0], 3), np.uint8)

            def __call__(self, frame):
                palette_rgb_kernel(frame, self.palette, self.rgb)
                return self.rgb
    try:
        from layerfilm.encode.pipe import FramePipe
    except ImportError:
        class FramePipe:
            spliced = False

            def __init__(self, stream, frame_bytes):
                try:
                    from layerfilm.encode.ffmpeg import widen_pipe
                except ImportError:  # older still: the default pipe
                    widen_pipe = None
                if widen_pipe is not None:
                    widen_pipe(stream)
                self.stream = stream

            def send(self, *parts):
                for part in parts:
                    self.stream.write(memoryview(part).cast("B"))
    return RGBFrames, FramePipe


class _Sink:
    """``cat`` reading a pipe set up as FilmWriter sets up ffmpeg's, for frames of
    ``frame_bytes``; :attr:`buffers` are the one or two buffers frames go from, in turn."""

    def __init__(self, FramePipe, frame_bytes, make_buffer):
        self.proc = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
        self.pipe = FramePipe(self.proc.stdin, frame_bytes)
        self.buffers = [make_buffer() for _ in range(2 if self.pipe.spliced else 1)]

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def run(ckpts: Path, size: tuple[int, int], fpk: int = 5, max_points: int = 2000) -> dict:
    from layerfilm import film, shade

    RGBFrames, FramePipe = _writer_parts()

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
    pal = shade.palette(cfg.cmap)
    width, height = size
    rgb_sink = _Sink(FramePipe, width * height * 3, lambda: RGBFrames(size, pal))
    index_sink = _Sink(FramePipe, width * height, lambda: np.empty((height, width), np.uint8))
    palette_words = np.zeros(1024, np.uint8)  # what follows each index frame
    pick = range(n)  # every frame, in order, as a render makes them
    t = dict(make=0.0, rgb=0.0, send_rgb=0.0, send_index=0.0)
    try:
        for f in pick:
            c = time.thread_time()
            frame = make(f)
            d = time.thread_time()
            out = rgb_sink.buffers[f % len(rgb_sink.buffers)](frame)
            e = time.thread_time()
            rgb_sink.pipe.send(out)
            g = time.thread_time()
            index = frame
            if index_sink.pipe.spliced:  # FilmWriter copies the frame out of the maker's buffer
                index = index_sink.buffers[f % 2]
                np.copyto(index, frame)
            index_sink.pipe.send(index, palette_words)
            h = time.thread_time()
            t["make"] += d - c
            t["rgb"] += e - d
            t["send_rgb"] += g - e
            t["send_index"] += h - g
    finally:
        rgb_sink.close()
        index_sink.close()
    ms = {k: v / len(pick) * 1e3 for k, v in t.items()}
    rgb_total = span_ms + ms["make"] + ms["rgb"] + ms["send_rgb"]
    gif_total = span_ms + ms["make"] + ms["send_index"]
    points = int(picture.starts[-1])
    print(f"\nframe cost, {size[0]}x{size[1]}, {len(plan.layers)} panels x {points // len(plan.layers):,} dots, "
          f"{n} frames (CPU ms per frame, all timed):")
    how = "handed over (vmsplice)" if rgb_sink.pipe.spliced else "written"
    print(f"  colour span's pass {span_ms:5.2f}   frame: make {ms['make']:5.2f} (interpolate, splat, shade, "
          f"overlays), RGB {ms['rgb']:4.2f}, pipe {ms['send_rgb']:4.2f} (index frame {ms['send_index']:4.2f}; "
          f"{how})")
    print(f"  total: RGB films {rgb_total:5.2f} ms, GIF {gif_total:5.2f} ms (goal <= {GOAL_MS:g} at 1080p, "
          "128 panels x 1,000 dots)")
    return dict(span=span_ms, **ms, rgb_total=rgb_total, gif_total=gif_total)


if __name__ == "__main__":
    size = (int(sys.argv[2]), int(sys.argv[3])) if len(sys.argv) > 3 else (1920, 1080)
    run(Path(sys.argv[1]), size)
