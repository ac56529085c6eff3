"""Checkpoints -> aligned 2-D keyframe layouts of every panel (the ``project`` stage driven over
a run): one checkpoint in memory at a time, layers projected in parallel threads, results
memoised in the cache."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os

import numpy as np

from . import cache, extract, project
from .errors import ConfigError
from .plan import Plan
from .progress import QUIET, Progress


@dataclasses.dataclass(frozen=True)
class Keyframes:
    """Aligned 2-D layouts: P (K, N, 2) float32, NaN where a weight was not finite; and per
    panel what its projection did (``panels``: method, exact solves, corrections, the share
    of variance the drawn axes hold, the Fourier frequency, ...)."""

    P: np.ndarray
    nonfinite: int  # points hidden because their weights had NaN/Inf
    panels: tuple[dict, ...] = ()

    def reordered(self, order: list[int], starts: np.ndarray) -> "Keyframes":
        """The same layouts with the panels (``starts``: (L+1,) offsets) in ``order``."""
        points = np.concatenate([np.arange(starts[l], starts[l + 1]) for l in order])
        panels = tuple(self.panels[l] for l in order) if self.panels else ()
        return Keyframes(self.P[:, points], self.nonfinite, panels)


def fourier_reference(plan: Plan, fourier_ref: int | None) -> int:
    """The index of the checkpoint whose embedding fixes the Fourier plane: the one at step
    ``fourier_ref``, else the last (where a trained model's structure is)."""
    if fourier_ref is None:
        return len(plan.refs) - 1
    steps = [r.step for r in plan.refs]
    if fourier_ref not in steps:
        near = min(steps, key=lambda s: abs(s - fourier_ref))
        raise ConfigError(f"--fourier-ref {fourier_ref}: no checkpoint at that step (the nearest is "
                          f"{near:,}; steps {steps[0]:,}..{steps[-1]:,})", field="fourier_ref")
    return steps.index(fourier_ref)


def projections(plan: Plan, method: str, seed: int, fourier_ref: int | None = None
                ) -> list[project.Projection]:
    """The projection of each panel.  ``fourier`` lays out token-embedding panels in one fixed
    plane -- of their strongest frequency at the reference checkpoint (:func:`fourier_reference`)
    -- and every other panel by PCA."""
    pca = project.PCA(seed)
    if method == "umap":
        return [project.UMAP(seed) for _ in plan.layers]
    if method != "fourier" or not any(extract.is_token_embedding(l) for l in plan.layers):
        return [pca] * len(plan.layers)
    ref = plan.refs[fourier_reference(plan, fourier_ref)]
    ckpt = ref.open()
    shapes = ckpt.shapes()
    out: list[project.Projection] = []
    for layer in plan.layers:
        if extract.is_token_embedding(layer):
            cloud = extract.read_layer(ckpt, layer, shapes)
            out.append(project.Fourier.fit(cloud, layer.sources[0].index, layer.total, ref.step))
        else:
            out.append(pca)
    return out


def axis_shares(plan: Plan, projection: str = "pca", seed: int = 0, fourier_ref: int | None = None
                ) -> list[tuple[float, float]]:
    """Per panel, the share of its variance that the two drawn axes hold at the first and at
    the last keyframe: its top two principal axes (also for UMAP, as a yardstick), or its
    Fourier plane.  Reads two checkpoints (``layerfilm info`` prints it)."""
    from . import pca

    how = projections(plan, projection, seed, fourier_ref)
    shares = []
    for ref in (plan.refs[0], plan.refs[-1]):
        ckpt = ref.open()
        shapes = ckpt.shapes()
        row = []
        for layer, projected in zip(plan.layers, how):
            X = extract.read_layer(ckpt, layer, shapes)
            if isinstance(projected, project.Fourier) and projected.plane is not None:
                ok = np.isfinite(X).all(axis=1)
                row.append(project.plane_share(X[ok], projected.ids[ok], projected.period,
                                               projected.plane))
            else:
                row.append(pca.axis_share(X, seed))
        shares.append(row)
    return list(zip(*shares))


def _threads(method: str) -> int:
    """Layers are projected in parallel threads (the wide-layer PCA and alignment are numba
    kernels that release the GIL and call no BLAS); UMAP brings its own threading, so it runs
    alone."""
    if method == "umap":
        return 1
    return max(1, min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                      else os.cpu_count() or 1, 4))


def keyframe_layouts(plan: Plan, projection: str = "pca", seed: int = 0,
                     progress: Progress = QUIET, fourier_ref: int | None = None) -> Keyframes:
    """Read, extract and project every keyframe, one checkpoint in memory at a time.

    BLAS runs single-threaded here: the matrices are small, and a multi-threaded OpenBLAS
    sharing cores with any other busy process (a training run, ffmpeg) was measured 20-60x
    slower than one thread.
    """
    import scipy.linalg  # noqa: F401  (scipy has its own BLAS: load it before limiting threads)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        return _keyframe_layouts(plan, projection, seed, progress, fourier_ref)


def _keyframe_layouts(plan: Plan, projection: str, seed: int, progress: Progress,
                      fourier_ref: int | None) -> Keyframes:
    starts = plan.starts
    K = len(plan.refs)
    P = np.empty((K, starts[-1], 2), dtype=np.float32)
    tracks = [project.Track() for _ in plan.layers]
    how = projections(plan, projection, seed, fourier_ref)
    threads = _threads(projection)

    def project_layers(ckpt, shapes: dict, k: int, part: int) -> None:
        # Each layer has its own track, so which thread projects it never changes the result.
        for l in range(part, len(plan.layers), threads):
            cloud = extract.read_layer(ckpt, plan.layers[l], shapes)
            tracks[l].keyframe, tracks[l].last = k, k == K - 1
            P[k, starts[l]:starts[l + 1]] = project.project_keyframe(cloud, how[l], tracks[l])

    with concurrent.futures.ThreadPoolExecutor(threads) as pool, \
            progress.stage("Loading + projecting", len(plan.refs)) as advance:
        upcoming = plan.refs[0].open()
        for k, ref in enumerate(plan.refs):  # one checkpoint in memory at a time
            ckpt, upcoming = upcoming, None
            if k + 1 < len(plan.refs):  # its rows are fetched while this one is projected
                upcoming = plan.refs[k + 1].open()
                extract.prefetch(upcoming, plan.layers)
            shapes = ckpt.shapes()
            parts = [pool.submit(project_layers, ckpt, shapes, k, part) for part in range(threads)]
            for part in parts:
                part.result()
            del ckpt
            advance(1)
    panels = tuple({"label": layer.label, **t.stats.as_dict(), **t.info}
                   for layer, t in zip(plan.layers, tracks))
    return Keyframes(P, int(np.isnan(P).any(axis=2).sum()), panels)


def _options(projection: str, seed: int, fourier_ref: int | None) -> str:
    return f"{projection}|{seed}" + (f"|fourier_ref={fourier_ref}" if fourier_ref is not None else "")


def load_cached(plan: Plan, projection: str = "pca", seed: int = 0,
                fourier_ref: int | None = None) -> Keyframes | None:
    """The keyframe layouts a render with these options cached, or ``None`` (nothing computed)."""
    found = cache.load_layouts(plan, _options(projection, seed, fourier_ref))
    if found is None:
        return None
    P, nonfinite, info = found
    return Keyframes(P, nonfinite, tuple(json.loads(info)) if info else ())


def cached_keyframe_layouts(plan: Plan, projection: str = "pca", seed: int = 0,
                            progress: Progress = QUIET, use_cache: bool = True,
                            fourier_ref: int | None = None) -> Keyframes:
    """:func:`keyframe_layouts`, memoised on disk (see :mod:`layerfilm.cache`)."""
    keys = load_cached(plan, projection, seed, fourier_ref) if use_cache else None
    if keys is None:
        keys = keyframe_layouts(plan, projection, seed, progress, fourier_ref)
        if use_cache:
            cache.store_layouts(plan, _options(projection, seed, fourier_ref), keys.P, keys.nonfinite,
                                json.dumps(list(keys.panels)))
    return keys
