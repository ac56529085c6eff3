"""render(config): the composition of the stages, nothing more.

load (checkpoints) -> extract -> project -> interpolate -> raster -> shade/compose -> encode.
Checkpoints are streamed one at a time; only the 2-D keyframe layouts stay in
memory, and frames stream into ffmpeg as they are made.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from . import checkpoints, compose, encode, extract, interpolate, project, raster, shade
from .config import RenderConfig
from .errors import CheckpointError


class Progress:
    """Progress reporting: ``with progress.stage("Loading", total) as advance: advance(1)``.

    The base class reports nothing; the CLI passes a rich-backed subclass.
    """

    @contextlib.contextmanager
    def stage(self, name: str, total: int) -> Iterator[Callable[[int], None]]:
        yield lambda n=1: None


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a render will draw, from the folder alone (``layerfilm info`` prints this)."""

    folder: Path
    refs: list[checkpoints.CheckpointRef]
    skipped: list[tuple[Path, str]]
    layers: list[extract.Layer]
    loss: checkpoints.LossCurve | None

    @property
    def steps(self) -> np.ndarray:
        return np.array([r.step for r in self.refs], dtype=np.int64)

    @property
    def starts(self) -> np.ndarray:
        """(L+1,) offsets of each panel's points in the flat point arrays."""
        return np.concatenate([[0], np.cumsum([l.n_points for l in self.layers])]).astype(np.int64)


def make_plan(folder: str | Path, max_points: int = 2000, seed: int = 0) -> Plan:
    """Discover checkpoints and plan the panels from the first one."""
    refs, skipped = checkpoints.discover(folder)
    first = checkpoints.open_checkpoint(refs[0].path)
    try:
        layers = extract.plan_layers(first.shapes(), max_points, seed)
    except CheckpointError as e:
        raise CheckpointError(e.problem, refs[0].path) from None
    return Plan(Path(folder), refs, skipped, layers, checkpoints.load_loss_curve(folder, refs))


@dataclasses.dataclass(frozen=True)
class Keyframes:
    """Aligned 2-D layouts: P (K, N, 2) float32, NaN where a weight was not finite."""

    P: np.ndarray
    nonfinite: int  # points hidden because their weights had NaN/Inf


def keyframe_layouts(plan: Plan, projection: str = "pca", seed: int = 0,
                     progress: Progress = Progress()) -> Keyframes:
    """Read, extract and project every keyframe, one checkpoint in memory at a time.

    BLAS runs single-threaded here: the matrices are small, and a multi-threaded OpenBLAS
    sharing cores with any other busy process (a training run, ffmpeg) was measured 20-60x
    slower than one thread.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        return _keyframe_layouts(plan, projection, seed, progress)


def _keyframe_layouts(plan: Plan, projection: str, seed: int, progress: Progress) -> Keyframes:
    starts = plan.starts
    P = np.empty((len(plan.refs), starts[-1], 2), dtype=np.float32)
    previous: list[np.ndarray | None] = [None] * len(plan.layers)
    with progress.stage("Loading + projecting", len(plan.refs)) as advance:
        for k, ref in enumerate(plan.refs):
            ckpt = checkpoints.open_checkpoint(ref.path)
            shapes = ckpt.shapes()
            for l, layer in enumerate(plan.layers):
                cloud = extract.read_layer(ckpt, layer, shapes)
                previous[l] = project.project_keyframe(cloud, projection, previous[l], seed)
                P[k, starts[l]:starts[l + 1]] = previous[l]
            del ckpt
            advance(1)
    return Keyframes(P, int(np.isnan(P).any(axis=2).sum()))


@dataclasses.dataclass
class RenderResult:
    output: Path
    frames: int
    keyframes: int
    seconds: dict[str, float]  # per stage: load+project, render, encode
    bytes: int
    nonfinite: int
    command: list[str]


def render(config: RenderConfig, progress: Progress = Progress()) -> RenderResult:
    """Render the film described by ``config`` (validated here) to ``config.output``."""
    cfg = config.validated()
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    plan = make_plan(cfg.checkpoints, cfg.max_points, cfg.seed)
    keys = keyframe_layouts(plan, cfg.projection, cfg.seed, progress)
    seconds["load+project"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    starts = plan.starts
    times = interpolate.keyframe_times(len(plan.refs), cfg.keyframe_frames)
    n_frames = interpolate.frame_count(times)
    layout = compose.grid_layout(len(plan.layers), cfg.size)
    rasterize = raster.Rasterizer(cfg.size, layout.rects, project.axis_ranges(keys.P, starts), starts)
    shader = shade.Shader(rasterize.span(keys.P), cfg.color_scale)
    notes = [f"{l.n_points:,} pts" for l in plan.layers]
    composer = compose.FrameComposer(layout, [l.label for l in plan.layers], notes,
                                     plan.folder.resolve().name, shader)
    interp = interpolate.Interpolator(keys.P, times)
    steps = plan.steps.astype(np.float64)
    encode_s = 0.0
    writer = encode.FilmWriter(cfg.output, cfg.size, cfg.fps, cfg.format, shade.palette(cfg.cmap))
    with progress.stage(f"Rendering {cfg.output.name}", n_frames) as advance, writer:
        for f in range(n_frames):
            step = int(round(np.interp(f, times, steps)))
            loss = plan.loss.at(step) if plan.loss else None
            frame = composer(rasterize(interp.at(f)), step, loss, f / max(n_frames - 1, 1))
            t1 = time.perf_counter()
            writer.write(frame)
            encode_s += time.perf_counter() - t1
            advance(1)
        t1 = time.perf_counter()
    encode_s += time.perf_counter() - t1  # ffmpeg finishing the file
    total = time.perf_counter() - t0
    seconds["render"] = total - encode_s
    seconds["encode"] = encode_s
    return RenderResult(cfg.output, n_frames, len(plan.refs), seconds, cfg.output.stat().st_size,
                        keys.nonfinite, writer.command)
