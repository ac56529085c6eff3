"""Checkpoints -> aligned 2-D keyframe layouts of every panel (the ``project`` stage driven over
a run): one checkpoint in memory at a time, layers projected in parallel threads, results
memoised in the cache."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
from typing import Callable

import numpy as np

from . import cache, extract, project
from .plan import Plan
from .progress import QUIET, Progress


@dataclasses.dataclass(frozen=True)
class Keyframes:
    """Aligned 2-D layouts: P (K, N, 2) float32, NaN where a weight was not finite."""

    P: np.ndarray
    nonfinite: int  # points hidden because their weights had NaN/Inf

    def reordered(self, order: list[int], starts: np.ndarray) -> "Keyframes":
        """The same layouts with the panels (``starts``: (L+1,) offsets) in ``order``."""
        points = np.concatenate([np.arange(starts[l], starts[l + 1]) for l in order])
        return Keyframes(self.P[:, points], self.nonfinite)


def projections(plan: Plan, method: str, seed: int) -> list[project.Projection]:
    """The projection of each panel.  ``fourier`` lays out token-embedding panels in the plane
    of their strongest frequency, chosen once from the last checkpoint (where a trained
    model's structure is), and every other panel by PCA."""
    pca = project.PCA(seed)
    if method == "umap":
        return [project.UMAP(seed) for _ in plan.layers]
    if method != "fourier" or not any(extract.is_token_embedding(l) for l in plan.layers):
        return [pca] * len(plan.layers)
    last = plan.refs[-1].open()
    shapes = last.shapes()
    out: list[project.Projection] = []
    for layer in plan.layers:
        if extract.is_token_embedding(layer):
            cloud = extract.read_layer(last, layer, shapes)
            out.append(project.Fourier.fit(cloud, layer.sources[0].index, layer.total))
        else:
            out.append(pca)
    return out


def _threads(method: str) -> int:
    """Layers are projected in parallel threads (the wide-layer PCA and alignment are numba
    kernels that release the GIL and call no BLAS); UMAP brings its own threading, so it runs
    alone."""
    if method == "umap":
        return 1
    return max(1, min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                      else os.cpu_count() or 1, 4))


# ``observe(k, l, cloud)``: called with every layer's point cloud as it is read (from the
# projecting threads, each layer in keyframe order), so other measurements share the one pass.
Observer = Callable[[int, int, np.ndarray], None]


def keyframe_layouts(plan: Plan, projection: str = "pca", seed: int = 0,
                     progress: Progress = QUIET, observe: Observer | None = None) -> Keyframes:
    """Read, extract and project every keyframe, one checkpoint in memory at a time.

    BLAS runs single-threaded here: the matrices are small, and a multi-threaded OpenBLAS
    sharing cores with any other busy process (a training run, ffmpeg) was measured 20-60x
    slower than one thread.
    """
    import scipy.linalg  # noqa: F401  (scipy has its own BLAS: load it before limiting threads)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        return _keyframe_layouts(plan, projection, seed, progress, observe)


def _keyframe_layouts(plan: Plan, projection: str, seed: int, progress: Progress,
                      observe: Observer | None = None) -> Keyframes:
    starts = plan.starts
    P = np.empty((len(plan.refs), starts[-1], 2), dtype=np.float32)
    tracks = [project.Track() for _ in plan.layers]
    how = projections(plan, projection, seed)
    threads = _threads(projection)

    def project_layers(ckpt, shapes: dict, k: int, part: int) -> None:
        # Each layer has its own track, so which thread projects it never changes the result.
        for l in range(part, len(plan.layers), threads):
            cloud = extract.read_layer(ckpt, plan.layers[l], shapes)
            if observe is not None:
                observe(k, l, cloud)
            P[k, starts[l]:starts[l + 1]] = project.project_keyframe(cloud, how[l], tracks[l])

    with concurrent.futures.ThreadPoolExecutor(threads) as pool, \
            progress.stage("Loading + projecting", len(plan.refs)) as advance:
        for k, ref in enumerate(plan.refs):  # one checkpoint in memory at a time
            ckpt = ref.open()
            shapes = ckpt.shapes()
            parts = [pool.submit(project_layers, ckpt, shapes, k, part) for part in range(threads)]
            for part in parts:
                part.result()
            del ckpt
            advance(1)
    return Keyframes(P, int(np.isnan(P).any(axis=2).sum()))


def load_cached(plan: Plan, projection: str = "pca", seed: int = 0) -> Keyframes | None:
    """The keyframe layouts a render with these options cached, or ``None`` (nothing computed)."""
    found = cache.load_layouts(plan, projection, seed)
    return None if found is None else Keyframes(*found)


def cached_keyframe_layouts(plan: Plan, projection: str = "pca", seed: int = 0,
                            progress: Progress = QUIET, use_cache: bool = True,
                            observe: Observer | None = None) -> Keyframes:
    """:func:`keyframe_layouts`, memoised on disk (see :mod:`layerfilm.cache`); ``observe`` is
    called only when the layouts are computed."""
    keys = load_cached(plan, projection, seed) if use_cache else None
    if keys is None:
        keys = keyframe_layouts(plan, projection, seed, progress, observe)
        if use_cache:
            cache.store_layouts(plan, projection, seed, keys.P, keys.nonfinite)
    return keys
