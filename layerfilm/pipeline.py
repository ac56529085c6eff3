"""render(config): the composition of the stages, nothing more.

load (checkpoints) -> extract -> project -> interpolate -> raster -> shade/compose -> encode.
Checkpoints are streamed one at a time; only the 2-D keyframe layouts stay in
memory, and frames stream into ffmpeg as they are made.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import os
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from . import (__version__, checkpoints, compose, encode, extract, interpolate, project, raster, shade,
               stats, stills)
from .config import RenderConfig, StatsConfig
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


def make_plan(folder: str | Path, max_points: int = 2000, seed: int = 0, points: str = "neurons",
              tensor: str | None = None, *, layer_pattern: str | None = None,
              steps: tuple[int | None, int | None, int | None] | None = None,
              skip_bad: bool = False, metrics: Path | None = None) -> Plan:
    """Discover checkpoints, pick ``steps`` and plan the panels from the first one
    (``points``/``tensor``/``layer_pattern``: what to draw, see :func:`extract.plan_panels`).

    With ``skip_bad`` every checkpoint is opened (headers only where the format allows)
    and checked against the plan here; those that cannot be read or no longer fit join
    ``skipped`` with the problem instead of stopping the render.  The loss curve comes from
    ``metrics`` when given, else from what lies beside the checkpoints.
    """
    refs, skipped = checkpoints.discover(folder, skip_bad)
    if steps is not None:
        picked = checkpoints.select_steps(refs, *steps)
        if len(picked) < 2:
            text = ":".join("" if v is None else str(v) for v in steps)
            raise CheckpointError(
                f"--steps {text} keeps {len(picked)} of the {len(refs)} checkpoints (steps "
                f"{refs[0].step}..{refs[-1].step}); a film needs at least two", folder)
        refs = picked
    layers: list[extract.Layer] | None = None
    good: list[checkpoints.CheckpointRef] = []
    for ref in refs:
        try:
            ckpt = checkpoints.open_checkpoint(ref.path)
            shapes = ckpt.shapes()
            if layers is not None:
                for layer in layers:
                    extract.check_fits(ckpt, layer, shapes)
        except CheckpointError as e:
            if not skip_bad:
                raise
            skipped.append((Path(e.path) if e.path else ref.path, e.problem))
            continue
        if layers is None:
            try:
                layers = extract.plan_panels(shapes, max_points, seed, points, tensor, layer_pattern)
            except CheckpointError as e:
                raise CheckpointError(e.problem, ref.path) from None
        good.append(ref)
        del ckpt
        if not skip_bad:
            good = refs  # the keyframe pass reads (and so checks) the others
            break
    if len(good) < 2 or layers is None:
        raise CheckpointError(f"only {len(good)} of {len(refs)} checkpoints could be read; "
                              "a film needs at least two", folder)
    loss = (checkpoints.load_loss_file(metrics) if metrics is not None
            else checkpoints.load_loss_curve(folder, good))
    return Plan(Path(folder), good, skipped, layers, loss)


@dataclasses.dataclass(frozen=True)
class Keyframes:
    """Aligned 2-D layouts: P (K, N, 2) float32, NaN where a weight was not finite."""

    P: np.ndarray
    nonfinite: int  # points hidden because their weights had NaN/Inf


def cache_dir() -> Path:
    """Where keyframe layouts are cached: ``$LAYERFILM_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/layerfilm``, else ``~/.cache/layerfilm``."""
    if os.environ.get("LAYERFILM_CACHE_DIR"):
        return Path(os.environ["LAYERFILM_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "layerfilm"


def _cache_key(plan: Plan, projection: str, seed: int) -> str:
    """Checkpoint identity (resolved path, size, mtime, step) + everything that shapes a layout."""
    h = hashlib.sha256()
    for ref in plan.refs:
        for path in ref.files():  # a sharded or DCP checkpoint is several files
            st = path.stat()
            h.update(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{ref.step}\n".encode())
    h.update(f"{__version__}|{projection}|{seed}\n".encode())
    for layer in plan.layers:
        for src in layer.sources:
            h.update(f"{layer.label}|{layer.dim}|{src.tensor}|{src.axis}|".encode())
            h.update(np.ascontiguousarray(src.index, dtype=np.int64).tobytes())
    return h.hexdigest()[:32]


def _cache_path(plan: Plan, projection: str, seed: int) -> Path:
    return cache_dir() / f"layouts-{_cache_key(plan, projection, seed)}.npz"


def cached_keyframe_layouts(plan: Plan, projection: str = "pca", seed: int = 0,
                            progress: Progress = Progress(), use_cache: bool = True) -> Keyframes:
    """:func:`keyframe_layouts`, memoised on disk (see :func:`cache_dir`).

    A cache that cannot be read or written is ignored: it only ever saves time.
    """
    if not use_cache:
        return keyframe_layouts(plan, projection, seed, progress)
    keys = load_cached_layouts(plan, projection, seed)
    if keys is not None:
        return keys
    keys = keyframe_layouts(plan, projection, seed, progress)
    path = _cache_path(plan, projection, seed)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
        with open(tmp, "wb") as f:
            np.savez(f, P=keys.P, nonfinite=keys.nonfinite)
        os.replace(tmp, path)
    except OSError:
        pass
    return keys


def keyframe_layouts(plan: Plan, projection: str = "pca", seed: int = 0,
                     progress: Progress = Progress()) -> Keyframes:
    """Read, extract and project every keyframe, one checkpoint in memory at a time.

    BLAS runs single-threaded here: the matrices are small, and a multi-threaded OpenBLAS
    sharing cores with any other busy process (a training run, ffmpeg) was measured 20-60x
    slower than one thread.
    """
    import scipy.linalg  # noqa: F401  (scipy has its own BLAS: load it before limiting threads)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        return _keyframe_layouts(plan, projection, seed, progress)


def _projection_threads(projection: str) -> int:
    """Layers are projected in parallel threads (the wide-layer PCA and alignment are numba
    kernels that release the GIL and call no BLAS); UMAP brings its own threading, so it runs
    alone."""
    if projection == "umap":
        return 1
    return max(1, min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                      else os.cpu_count() or 1, 4))


def _keyframe_layouts(plan: Plan, projection: str, seed: int, progress: Progress) -> Keyframes:
    starts = plan.starts
    P = np.empty((len(plan.refs), starts[-1], 2), dtype=np.float32)
    tracks = [project.Track() for _ in plan.layers]
    threads = _projection_threads(projection)
    fourier = fourier_planes(plan) if projection == "fourier" else {}

    def project_layers(ckpt: checkpoints.TensorSource, shapes: dict, k: int, part: int) -> None:
        # Each layer has its own track, so which thread projects it never changes the result.
        for l in range(part, len(plan.layers), threads):
            cloud = extract.read_layer(ckpt, plan.layers[l], shapes)
            P[k, starts[l]:starts[l + 1]] = project.project_keyframe(cloud, projection, tracks[l], seed,
                                                                     fourier.get(l))

    with concurrent.futures.ThreadPoolExecutor(threads) as pool, \
            progress.stage("Loading + projecting", len(plan.refs)) as advance:
        for k, ref in enumerate(plan.refs):  # one checkpoint in memory at a time
            ckpt = checkpoints.open_checkpoint(ref.path)
            shapes = ckpt.shapes()
            parts = [pool.submit(project_layers, ckpt, shapes, k, part) for part in range(threads)]
            for part in parts:
                part.result()
            del ckpt
            advance(1)
    return Keyframes(P, int(np.isnan(P).any(axis=2).sum()))


def fourier_planes(plan: Plan) -> dict[int, tuple[np.ndarray, int, int]]:
    """For ``--projection fourier``: each token-embedding panel's (token ids, period, frequency),
    chosen once from the last checkpoint (where a trained model's structure is), so every
    keyframe is drawn in the same plane."""
    out = {}
    last = checkpoints.open_checkpoint(plan.refs[-1].path)
    shapes = last.shapes()
    for l, layer in enumerate(plan.layers):
        if extract.is_token_embedding(layer):
            ids = layer.sources[0].index
            cloud = extract.read_layer(last, layer, shapes)
            ok = np.isfinite(cloud).all(axis=1)
            period, k, _ = project.fourier_frequency(cloud[ok], ids[ok], layer.total)
            out[l] = (ids, period, k)
    return out


def load_cached_layouts(plan: Plan, projection: str = "pca", seed: int = 0) -> Keyframes | None:
    """The keyframe layouts a render with these options cached, or ``None`` (nothing computed)."""
    try:
        with np.load(_cache_path(plan, projection, seed)) as z:
            keys = Keyframes(z["P"], int(z["nonfinite"]))
    except (OSError, ValueError, KeyError):
        return None
    return keys if keys.P.shape == (len(plan.refs), plan.starts[-1], 2) else None


@dataclasses.dataclass
class RenderResult:
    output: Path
    frames: int
    keyframes: int
    seconds: dict[str, float]  # load+project, render, encode (summed over jobs), wall
    bytes: int
    nonfinite: int
    command: list[str]
    jobs: int = 1
    plan: Plan | None = None  # what was drawn (the manifest lists its checkpoints)


@dataclasses.dataclass(frozen=True)
class _Film:
    """Everything fixed before the first frame; shared read-only by all render jobs."""

    P: np.ndarray
    times: np.ndarray
    steps: np.ndarray
    loss: checkpoints.LossCurve | None
    layout: compose.Layout
    half: np.ndarray
    starts: np.ndarray
    shader: shade.Shader
    labels: list[str]
    notes: list[str]
    title: str
    n_frames: int
    overlays: tuple = ()  # compose.LossStrip / compose.DriftBars


class _FrameMaker:
    """Frame ``f`` of the film as an ``(H, W)`` uint8 index frame; owns its buffers, so each
    render job has its own."""

    def __init__(self, film: _Film):
        self.film = film
        self.rasterize = raster.Rasterizer(film.layout.size, film.layout.rects, film.half, film.starts)
        self.compose = compose.FrameComposer(film.layout, film.labels, film.notes, film.title, film.shader,
                                             film.overlays)
        self.interp = interpolate.Interpolator(film.P, film.times)

    def __call__(self, f: int) -> np.ndarray:
        film = self.film
        step = int(round(np.interp(f, film.times, film.steps)))
        loss = film.loss.at(step) if film.loss else None
        return self.compose(self.rasterize(self.interp.at(f)), step, loss, f / max(film.n_frames - 1, 1),
                            f)


def _prepare(plan: Plan, keys: Keyframes, cfg: RenderConfig,
             drift: stats.LayerStats | None = None) -> _Film:
    starts = plan.starts
    if cfg.timeline == "step":
        times = interpolate.step_times(plan.steps, cfg.keyframe_frames)
    else:
        times = interpolate.keyframe_times(len(plan.refs), cfg.keyframe_frames)
    footer = compose.strip_height(cfg.size) if cfg.loss_strip else 0
    groups = [l.group for l in plan.layers]  # encoder/decoder row bands, unless reordered
    layout = compose.grid_layout(len(plan.layers), cfg.size, footer,
                                 groups if groups == sorted(groups) else None)
    half = project.axis_ranges(keys.P, starts)
    span = raster.Rasterizer(cfg.size, layout.rects, half, starts).span(keys.P)
    notes = [f"{l.n_points:,} pts" for l in plan.layers]
    overlays: list = []
    if drift is not None and cfg.order == "settle":
        notes = ["never settles" if np.isnan(s) else f"settles {int(s):,}"
                 for s in drift.settle_steps(cfg.settle_threshold)]
    if drift is not None and cfg.drift:
        overlays.append(compose.DriftBars(layout.rects, drift.rate, times))
    if cfg.loss_strip:
        w, h = cfg.size
        margin, pad = max(4, layout.font // 2), max(3, layout.label_font // 3)
        overlays.append(compose.LossStrip((margin, h - footer + pad, w - margin, h - pad),
                                          plan.loss.steps, plan.loss.values,
                                          (float(plan.steps[0]), float(plan.steps[-1])),
                                          layout.label_font))
    return _Film(keys.P, times, plan.steps.astype(np.float64), plan.loss, layout, half, starts,
                 shade.Shader(span, cfg.color_scale), [l.label for l in plan.layers],
                 notes, plan.folder.resolve().name,
                 interpolate.frame_count(times), tuple(overlays))


def _settle_order(plan: Plan, keys: Keyframes, measured: stats.LayerStats, threshold: float
                  ) -> tuple[Plan, Keyframes, stats.LayerStats]:
    """Panels reordered by settling step (earliest first, never-settling last, ties in film order)."""
    settle = measured.settle_steps(threshold)
    order = sorted(range(len(plan.layers)), key=lambda l: (np.isnan(settle[l]), settle[l], l))
    starts = plan.starts
    points = np.concatenate([np.arange(starts[l], starts[l + 1]) for l in order])
    pick = lambda a: a[order]  # noqa: E731
    measured = dataclasses.replace(
        measured, labels=[measured.labels[l] for l in order],
        **{f.name: pick(getattr(measured, f.name)) for f in dataclasses.fields(measured)
           if f.name not in ("steps", "labels")})
    return (dataclasses.replace(plan, layers=[plan.layers[l] for l in order]),
            Keyframes(keys.P[:, points], keys.nonfinite), measured)


def _write_frames(film: _Film, frames: range, path: Path, cfg: RenderConfig, palette: np.ndarray,
                  advance: Callable[[int], None], stop: threading.Event,
                  png_dir: Path | None, keep: stills.Stills | None = None
                  ) -> tuple[float, float, list[str]]:
    """Render ``frames`` into one film at ``path`` (and PNGs into ``png_dir``); returns
    (render s, encode s, ffmpeg command)."""
    make = _FrameMaker(film)
    render_s = encode_s = 0.0
    writer = encode.FilmWriter(path, cfg.size, cfg.fps, cfg.format, palette)
    pngs = (encode.FilmWriter(png_dir, cfg.size, cfg.fps, "png", palette, frames.start)
            if png_dir is not None else contextlib.nullcontext())
    with writer, pngs:
        for f in frames:
            if stop.is_set():
                raise _Stopped()
            t0 = time.perf_counter()
            frame = make(f)
            t1 = time.perf_counter()
            writer.write(frame)
            if png_dir is not None:
                pngs.write(frame)
            if keep is not None:
                keep.offer(f, frame)
            render_s += t1 - t0
            encode_s += time.perf_counter() - t1
            advance(1)
        t1 = time.perf_counter()
    encode_s += time.perf_counter() - t1  # ffmpeg finishing the file
    return render_s, encode_s, writer.command


class _Stopped(Exception):
    """Another render job failed or the user pressed Ctrl-C."""


def render(config: RenderConfig, progress: Progress = Progress()) -> RenderResult:
    """Render the film described by ``config`` (validated here) to ``config.output``.

    With ``config.jobs > 1`` the frames are split into that many contiguous chunks, rendered
    and encoded in parallel (the numba kernels release the GIL; each chunk has its own
    ffmpeg), then joined without re-encoding.  Formats that cannot be joined that way
    (animated WebP) use one job.
    """
    cfg = config.validated()
    t_start = time.perf_counter()
    plan = make_plan(cfg.checkpoints, cfg.max_points, cfg.seed, cfg.points, cfg.tensor,
                     layer_pattern=cfg.layer_pattern, steps=cfg.step_range, skip_bad=cfg.skip_bad,
                     metrics=cfg.metrics)
    if cfg.loss_strip and plan.loss is None:
        raise CheckpointError("--loss-strip: no loss curve found beside the checkpoints "
                              "(metrics.jsonl, metrics.csv, trainer_state.json, or a loss in the "
                              "safetensors metadata); pass --metrics FILE", cfg.checkpoints)
    keys = cached_keyframe_layouts(plan, cfg.projection, cfg.seed, progress, cfg.cache)
    drift = None
    if cfg.drift or cfg.order == "settle":
        drift = stats.weight_stats(plan.refs, plan.layers, progress)
        if cfg.order == "settle":
            plan, keys, drift = _settle_order(plan, keys, drift, cfg.settle_threshold)
    loaded = time.perf_counter() - t_start

    film = _prepare(plan, keys, cfg, drift)
    palette = shade.palette(cfg.cmap)
    n = film.n_frames
    jobs = min(cfg.jobs, n) if encode.FORMATS[cfg.format].joinable else 1
    bounds = np.linspace(0, n, jobs + 1).round().astype(int)
    chunks = [range(bounds[j], bounds[j + 1]) for j in range(jobs)]
    stop = threading.Event()
    folder = encode.FramesFolder(cfg.frames_dir) if cfg.frames_dir else contextlib.nullcontext()
    keep = (stills.Stills([int(t) for t in film.times], stills.tile_keyframes(len(plan.refs),
                                                                             cfg.stills_every), n)
            if cfg.stills_dir is not None else None)
    still_folder = encode.FramesFolder(cfg.stills_dir) if keep else contextlib.nullcontext()
    with progress.stage(f"Rendering {cfg.output.name}", n) as advance, folder as png_dir, \
            still_folder as still_dir:
        if jobs == 1:
            results = [_write_frames(film, chunks[0], cfg.output, cfg, palette, advance, stop, png_dir,
                                     keep)]
            command = results[0][2]
        else:
            parts = [cfg.output.with_name(f".{cfg.output.name}.chunk{j}{cfg.output.suffix}")
                     for j in range(jobs)]
            try:
                with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
                    futures = [pool.submit(_write_frames, film, c, p, cfg, palette, advance, stop,
                                           png_dir, keep) for c, p in zip(chunks, parts)]
                    try:
                        results = [f.result() for f in futures]
                    except BaseException:
                        stop.set()  # the other jobs stop at their next frame and clean up
                        raise
                command = encode.join(parts, cfg.output, cfg.format)
            finally:
                for p in parts:
                    p.unlink(missing_ok=True)
        if keep is not None:
            keep.write(still_dir, palette)
    wall = time.perf_counter() - t_start
    seconds = {"load+project": loaded, "render": sum(r[0] for r in results),
               "encode": sum(r[1] for r in results), "wall": wall}
    return RenderResult(cfg.output, n, len(plan.refs), seconds, cfg.output.stat().st_size,
                        keys.nonfinite, command, jobs, plan)


@dataclasses.dataclass(frozen=True)
class StatsResult:
    stats: stats.LayerStats
    csv: Path
    heatmap: Path
    layouts: str  # where the layout columns came from, or why they are empty
    plan: Plan | None = None  # what was measured (``plan.skipped``: checkpoints left out)


def measure(config: StatsConfig, progress: Progress = Progress()) -> StatsResult:
    """``layerfilm stats``: per-layer statistics of the run, written as a CSV and a heatmap PNG
    into ``config.out`` (created if needed).  The keyframes and panels are chosen as for
    :func:`render` (:func:`make_plan`: ``steps``, ``layer_pattern``, ``skip_bad``)."""
    cfg = config.validated()
    plan = make_plan(cfg.checkpoints, cfg.max_points, cfg.seed, cfg.points, cfg.tensor,
                     layer_pattern=cfg.layer_pattern, steps=cfg.step_range, skip_bad=cfg.skip_bad)
    result = stats.weight_stats(plan.refs, plan.layers, progress)
    keys = load_cached_layouts(plan, cfg.projection, cfg.seed)
    if keys is not None:
        where = "from the layout cache"
    elif cfg.layouts:
        keys = cached_keyframe_layouts(plan, cfg.projection, cfg.seed, progress)
        where = "computed (--layouts)"
    else:
        where = ("empty: no cached layouts for these options (render the film first with the same "
                 "--points/--tensor/--max-points/--seed/--projection/--steps/--layer-pattern, or pass "
                 "--layouts)")
    if keys is not None:
        result = result.with_layouts(keys.P, plan.starts)
    cfg.out.mkdir(exist_ok=True)
    csv_path, png_path = cfg.out / "layer_stats.csv", cfg.out / "layer_change.png"
    stats.write_csv(result, cfg.settle_threshold, csv_path)
    stats.write_heatmap(result, cfg.settle_threshold, png_path,
                        f"{plan.folder.resolve().name}: relative change per 100 steps")
    return StatsResult(result, csv_path, png_path, where, plan)
