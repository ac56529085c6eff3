"""2-D layouts per layer per keyframe, aligned so clouds never spin or flip.

Each keyframe's layout is centred and then rotated/reflected onto the previous
keyframe's *aligned* layout by orthogonal Procrustes (the same chaining as
umap-learn's ``aligned_umap.procrustes_align``).  There is no rescaling, so a
layer whose weights grow is seen to grow.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import warnings
from typing import Protocol

import numpy as np

from .errors import ConfigError
from .pca import EXACT_MAX_DIM, PlaneStats, PlaneTracker, exact_2d, pca_2d


def umap_2d(X: np.ndarray, init: np.ndarray | None, seed: int) -> np.ndarray:
    """UMAP layout, warm-started from ``init`` (the previous keyframe's layout) and then in
    ``init``'s coordinate frame."""
    try:
        import umap
    except ImportError:  # pragma: no cover - umap-learn is a dependency
        raise ConfigError("--projection umap needs umap-learn: pip install umap-learn") from None
    n = len(X)
    if n < 4:
        return pca_2d(X)[0]
    kwargs = dict(
        n_components=2,
        n_neighbors=min(15, n - 1),
        random_state=seed,
        init="spectral" if init is None else np.asarray(init, dtype=np.float64),
    )
    if init is not None:
        # Small steps from where the points already are: at umap-learn's full learning rate,
        # 100 epochs moved a barely-changed cloud's points half the gap between its clusters
        # on an AVX-512 host (as far as a cold start does); at a quarter, 0.15-0.31 of it.
        kwargs["n_epochs"], kwargs["learning_rate"] = 100, 0.25
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        emb = np.asarray(umap.UMAP(**kwargs).fit_transform(np.asarray(X, dtype=np.float32)),
                         dtype=np.float64)
    if init is not None:
        # UMAP rescales an initial layout to [0, 10] on each axis before optimising: map its
        # answer back into the initial layout's frame, so a cloud that barely changed stays put.
        lo, hi = np.min(init, axis=0), np.max(init, axis=0)
        span = np.where(hi > lo, hi - lo, 10.0)
        emb = lo + emb * span / 10.0
    return emb


def procrustes_rotation(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """The orthogonal ``R`` (2x2, rotation or reflection) minimising ``||A @ R - B||``.

    A, B: ``(n, 2)``, both centred.  Never scales.
    """
    U, _, Vt = np.linalg.svd(A.T @ B)
    return U @ Vt


def rotation_onto(layout: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """The orthogonal 2x2 ``R`` turning the centred ``layout`` onto ``previous`` (both (n, 2);
    rows that are not finite in either take no part; the identity with fewer than two)."""
    ok = np.isfinite(layout).all(axis=1) & np.isfinite(previous).all(axis=1)
    if ok.sum() < 2:
        return np.eye(2)
    return procrustes_rotation(np.asarray(layout, np.float64)[ok], np.asarray(previous, np.float64)[ok])


def align(layout: np.ndarray, previous: np.ndarray | None) -> np.ndarray:
    """Centre ``layout`` and rotate/reflect it onto ``previous`` (already aligned).

    Non-finite rows take no part in choosing the rotation.
    """
    layout = np.asarray(layout, dtype=np.float64)
    if np.isfinite(layout).all() and (previous is None or np.isfinite(previous).all()):
        layout = layout - layout.mean(axis=0)  # the common case, without masks and copies
        return layout if previous is None else layout @ procrustes_rotation(layout, previous)
    ok = np.isfinite(layout).all(axis=1)
    layout = layout - layout[ok].mean(axis=0) if ok.any() else layout
    if previous is None:
        return layout
    ok &= np.isfinite(previous).all(axis=1)
    if ok.sum() < 2:
        return layout
    return layout @ procrustes_rotation(layout[ok], previous[ok])


def hidden_points(P: np.ndarray) -> int:
    """How many (keyframe, point) places of ``P`` (K, N, 2) are NaN in either coordinate: each
    place's two NaN flags read as one 2-byte word (0.34 -> 0.03 s for the bench's 47 M values;
    ``any`` over an axis of two is numpy's slow case)."""
    return int(np.count_nonzero(np.isnan(np.ascontiguousarray(P)).view(np.uint16)))


@dataclasses.dataclass
class Track:
    """One layer's state carried from keyframe to keyframe.

    The driver sets ``keyframe`` (the keyframe's index in the film) before each call;
    projections keep what they need (``layout``, the last aligned layout; ``planes``, a wide
    layer's :class:`~layerfilm.pca.PlaneTracker`) and say what they did in ``stats``.
    """

    layout: np.ndarray | None = None  # the last aligned layout, (n, 2) float32
    keyframe: int = 0
    fixed_frame: bool = False  # the projection draws in fixed axes (never turned)
    planes: PlaneTracker | None = None
    stats: PlaneStats = dataclasses.field(default_factory=PlaneStats)
    info: dict = dataclasses.field(default_factory=dict)  # what the projection reports


@dataclasses.dataclass(frozen=True)
class Projected:
    """One layer's 2-D layout at one keyframe before alignment, and what made it.

    xy: (n, 2) centred coordinates; method: ``"pca"`` (exact), ``"tracked pca"``, ``"umap"``
    or ``"fourier"``; fixed_frame: the axes mean the same at every keyframe (a fixed plane),
    so the layout is only centred, not rotated onto the previous one.
    """

    xy: np.ndarray
    method: str
    fixed_frame: bool = False


class Projection(Protocol):
    """A way to lay out a layer's points in 2-D, keyframe after keyframe.

    ``projection(X, track, rows)`` lays out the ``(n, d)`` cloud ``X``; ``track`` is the same
    layer's state from earlier keyframes (the projection may read and update it); ``rows`` is
    ``None`` when ``X`` holds all the layer's points, else the boolean mask of the points it
    holds (the others had NaN/Inf weights).

    ``sequential``: each keyframe's layout starts from the one before (warm-started), so a
    run's keyframes are laid out in one go, in order, and on one thread (it may bring its own
    threading); otherwise keyframes may be laid out in independent chunks, layers in parallel.
    """

    name: str
    sequential: bool

    def __call__(self, X: np.ndarray, track: "Track", rows: np.ndarray | None) -> Projected: ...


class PCA:
    """The top two principal axes: exact for narrow layers (``min(n, d) <= 64``), tracked for
    wide ones (:class:`~layerfilm.pca.PlaneTracker`: checked, corrected, restarted exactly
    every :data:`~layerfilm.pca.CHUNK` keyframes)."""

    name = "pca"
    sequential = False  # tracked planes restart from an exact solve every CHUNK keyframes

    def __init__(self, seed: int = 0):
        self.seed = seed

    def __call__(self, X: np.ndarray, track: "Track", rows: np.ndarray | None) -> Projected:
        if min(X.shape) <= EXACT_MAX_DIM:
            xy, share = exact_2d(X)
            track.stats.exact += 1
            track.stats.saw(share)
            return Projected(xy, "pca")
        if track.planes is None:
            track.stats.method = "tracked pca"
            track.planes = PlaneTracker(self.seed, track.stats)
        return Projected(track.planes(X, track.keyframe), "tracked pca")


class UMAP:
    """UMAP, warm-started from the previous keyframe's layout when every point is there."""

    name = "umap"
    sequential = True  # warm-started from the previous keyframe; umap-learn has its own threads

    def __init__(self, seed: int = 0):
        self.seed = seed

    def __call__(self, X: np.ndarray, track: "Track", rows: np.ndarray | None) -> Projected:
        return Projected(umap_2d(X, track.layout if rows is None else None, self.seed), "umap")


class Fourier:
    """The token embedding in one fixed plane: the cos/sin plane of the Fourier frequency
    ``k`` (period ``period``) over the token ids, fitted once at a reference checkpoint
    (:meth:`fit`) and used for every keyframe, so what is a ring is a ring and noise stays
    noise.  ``ids`` are the panel's token ids; ``plane`` is ``(d, 2)`` orthonormal, ``None``
    when the reference gave no plane (then the panel is laid out by PCA)."""

    name = "fourier"
    sequential = False

    def __init__(self, ids: np.ndarray, period: int, k: int, plane: np.ndarray | None,
                 share: float = 0.0, reference_step: int | None = None):
        self.ids, self.period, self.k, self.plane = np.asarray(ids), period, k, plane
        self.share, self.reference_step = share, reference_step

    @classmethod
    def fit(cls, X: np.ndarray, ids: np.ndarray, vocab: int, reference_step: int | None = None
            ) -> "Fourier":
        """The frequency that carries the most of ``X``'s variance (:func:`fourier_frequency`)
        and its plane in ``X``'s weight space (:func:`fourier_plane`)."""
        ok = np.isfinite(X).all(axis=1)
        ids = np.asarray(ids)
        period, k, share = fourier_frequency(X[ok], ids[ok], vocab)
        return cls(ids, period, k, fourier_plane(X[ok], ids[ok], period, k), share, reference_step)

    def describe(self) -> dict:
        return {"period": self.period, "k": self.k, "share": round(self.share, 6),
                "reference_step": self.reference_step, "plane": self.plane is not None}

    def __call__(self, X: np.ndarray, track: "Track", rows: np.ndarray | None) -> Projected:
        track.stats.method = "fourier"
        track.info = self.describe()
        if self.plane is None:
            return Projected(pca_2d(X)[0], "pca")
        ids = self.ids if rows is None else self.ids[rows]
        track.stats.saw(plane_share(X, ids, self.period, self.plane))
        return Projected(fourier_2d(X, ids, self.period, self.k, self.plane), "fourier", fixed_frame=True)


def project_keyframe(X: np.ndarray, projection: Projection, track: Track) -> np.ndarray:
    """One layer's aligned 2-D layout at the next keyframe: ``(n, d)`` -> ``(n, 2)`` float32.

    ``track`` holds the same layer's state from the previous keyframe and is updated.  Rows
    with NaN/Inf take no part in the projection and stay NaN in the result, so they are not
    drawn.  The layout is centred and rotated/reflected onto the previous one (never scaled).
    """
    kernels = _kernels()
    X = np.asarray(X)
    rows = None if X.ndim == 2 and kernels.all_finite(X) else np.isfinite(X).all(axis=1)
    done = projection(X if rows is None else X[rows], track, rows)
    raw = done.xy
    if rows is not None:
        raw = np.full((len(X), 2), np.nan)
        raw[rows] = done.xy
    if done.fixed_frame:  # the same axes at every keyframe: centred, never turned
        track.fixed_frame = True
        track.layout = align(raw, None).astype(np.float32)
        return track.layout
    first = track.layout is None
    if rows is None and done.method == "tracked pca" and (first or kernels.all_finite(track.layout)):
        # The wide-layer path with every weight finite: align in one float32 kernel call.
        out = np.empty_like(raw)
        kernels.align_kernel(raw, raw[:0] if first else track.layout, out)
    else:
        out = align(raw, track.layout).astype(np.float32)
    track.layout = orient(out) if first else out
    return track.layout


_K = None  # layerfilm._kernels, imported by the first layout (see _kernels)


def _kernels():
    """:mod:`layerfilm._kernels` (numba loads with it, so this module imports without it),
    kept once imported: a relative import in :func:`project_keyframe` held the GIL 3.5 us a
    call, once per panel-keyframe."""
    global _K
    if _K is None:
        from . import _kernels as _K
    return _K


def orient(layout: np.ndarray) -> np.ndarray:
    """``layout`` (centred, (n, 2)) with each axis turned, in place, so that the point
    farthest out along it lies on its positive side.

    A first keyframe has no earlier one to be turned onto, and an eigensolver's signs are
    arbitrary: they differ between BLAS/LAPACK kernels (CPU families), so without a rule the
    same checkpoints could be drawn mirrored on another machine.  Negating a column is exact.
    """
    for j in range(layout.shape[1]):
        col = layout[:, j]
        ok = np.isfinite(col)
        if ok.any():
            far = np.flatnonzero(ok)[np.argmax(np.abs(col[ok]))]
            if col[far] < 0:
                col *= -1
    return layout


def axis_ranges(extremes: np.ndarray, starts: np.ndarray, quantile: float = 0.995,
                cap: float = 1.5, workers: int = 1) -> np.ndarray:
    """How far each panel's drawing reaches along x and y, for the whole film.

    extremes: (M, N, 2) how far out each point goes along x and y (e.g. over each segment of
    the film's curves, :func:`layerfilm.interpolate.curve_extremes`); starts: (L+1,) panel
    offsets.  Returns (L, 2) float64 half-extents: the farthest any point goes, so every dot of
    every frame is inside -- unless that is more than ``cap`` times the ``quantile`` of the
    points' reach (a few far outliers), in which case ``cap`` times that quantile, and the
    outliers are drawn pinned to the panel's edge (and counted, see
    :func:`layerfilm.interpolate.outside_counts`).  1.0 for a panel with nothing finite.
    ``workers``: threads the panels are shared among (numpy's partition lets go of the GIL;
    0.42 s in one on the bench film).
    """
    def reach(l: int) -> np.ndarray:
        cols = np.ascontiguousarray(extremes[:, starts[l]:starts[l + 1]].reshape(-1, 2).T)
        cols = [c if np.isfinite(c).all() else c[np.isfinite(c)] for c in cols]
        full = np.array([c.max() if c.size else 0.0 for c in cols])
        typical = np.array([np.quantile(c, quantile) if c.size else 0.0 for c in cols])
        half = np.where(typical > 0, np.minimum(full, cap * typical), full)
        return np.where(half > 0, half, 1.0)

    panels = range(len(starts) - 1)
    if workers > 1:
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            found = list(pool.map(reach, panels))
    else:
        found = [reach(l) for l in panels]
    return np.array(found, dtype=np.float64).reshape(-1, 2)


# --projection fourier: how many trailing special tokens ('=', BOS, ...) may follow the residues,
# and the highest frequency searched.
_FOURIER_TAIL = 8
_FOURIER_MAX_K = 512


def fourier_frequency(X: np.ndarray, ids: np.ndarray, vocab: int) -> tuple[int, int, float]:
    """The period ``p`` and frequency ``k`` whose cos/sin plane over the token index carries
    the most of the cloud's variance, and that share (0..1).

    X: (n, d) rows for tokens ``ids`` (n,) of a ``vocab``-token embedding.  Periods from
    ``vocab - 8`` to ``vocab`` are tried (a vocabulary may end with special tokens, which
    take no part in the fit), frequencies ``1 .. min(p // 2, 512)``.  The share is the exact
    least-squares one (the variance in the span of the centred cos and sin columns), so it
    stays right when the ids do not cover every residue, and a frequency whose cos and sin
    span no plane over these ids -- ``k = p / 2``, where the sine vanishes -- is never chosen:
    there is no ring to draw there.
    """
    X = np.asarray(X, dtype=np.float64)
    ids = np.asarray(ids, dtype=np.int64)
    best = (vocab, 1, -1.0)
    for p in range(max(3, vocab - _FOURIER_TAIL), vocab + 1):
        inside = ids < p
        if inside.sum() < 3:
            continue
        Xc = X[inside] - X[inside].mean(axis=0)
        total = float((Xc ** 2).sum())
        if total <= 0:
            continue
        ks = np.arange(1, min(p // 2, _FOURIER_MAX_K) + 1)
        angle = 2 * np.pi * np.outer(ks, ids[inside]) / p
        C, S = np.cos(angle), np.sin(angle)
        C -= C.mean(axis=1, keepdims=True)
        S -= S.mean(axis=1, keepdims=True)
        cc, ss, cs = (C * C).sum(axis=1), (S * S).sum(axis=1), (C * S).sum(axis=1)
        det = cc * ss - cs ** 2
        plane = det > 1e-9 * cc * ss  # cos and sin independent over these ids
        if not plane.any():
            continue
        Bc, Bs = C @ Xc, S @ Xc  # (k, d)
        # |projection of Xc onto span(c, s)|^2 = b^T G^-1 b summed over the columns.
        energy = ss * (Bc ** 2).sum(axis=1) - 2 * cs * (Bc * Bs).sum(axis=1) + cc * (Bs ** 2).sum(axis=1)
        share = np.where(plane, energy / np.where(plane, det, 1.0), -1.0) / total
        i = int(np.argmax(share))
        if share[i] > best[2]:
            best = (p, int(ks[i]), float(share[i]))
    return best


def fourier_plane(X: np.ndarray, ids: np.ndarray, period: int, k: int) -> np.ndarray | None:
    """The weight-space plane of frequency ``k`` over the token index: ``(d, 2)`` orthonormal,
    or ``None`` when the cloud has no such plane (a degenerate fit).

    The plane is spanned by ``sum_a x_a cos(2 pi k a / period)`` and the sine twin (the
    Fourier component of the embedding, Nanda et al. 2023), orthonormalised, the cosine
    direction first and the sine direction pointing up; tokens ``a`` of a model that computes
    with this frequency lie on a ring at angle ``2 pi k a / period`` in it.
    """
    X = np.asarray(X, dtype=np.float64)
    ids = np.asarray(ids, dtype=np.int64)
    inside = ids < period
    Xc = X[inside] - X[inside].mean(axis=0) if inside.any() else X - X.mean(axis=0)
    angle = 2 * np.pi * k * ids[inside] / period
    basis = np.stack([np.cos(angle) @ Xc, np.sin(angle) @ Xc], axis=1)  # (d, 2)
    Q, R = np.linalg.qr(basis)
    if min(abs(R[0, 0]), abs(R[1, 1])) <= 1e-12 * max(abs(R[0, 0]), 1e-300):
        return None
    return Q * np.sign(np.diag(R))


def plane_share(X: np.ndarray, ids: np.ndarray, period: int, plane: np.ndarray) -> float:
    """The share of the residues' variance that lies in ``plane`` (d, 2)."""
    X = np.asarray(X, dtype=np.float64)[np.asarray(ids) < period]
    Xc = X - X.mean(axis=0)
    total = float((Xc ** 2).sum())
    return float(((Xc @ plane) ** 2).sum()) / total if total > 0 else 1.0


def fourier_2d(X: np.ndarray, ids: np.ndarray, period: int, k: int,
               plane: np.ndarray | None = None) -> np.ndarray:
    """Coordinates in a Fourier plane (:func:`fourier_plane`; by default the one fitted to
    ``X`` itself): ``(n, d)`` -> ``(n, 2)`` float64, centred on the residues' mean.  A
    degenerate fit falls back to PCA."""
    X = np.asarray(X, dtype=np.float64)
    ids = np.asarray(ids, dtype=np.int64)
    if plane is None:
        plane = fourier_plane(X, ids, period, k)
        if plane is None:
            return pca_2d(X)[0]
    inside = ids < period
    centre = X[inside].mean(axis=0) if inside.any() else X.mean(axis=0)
    return (X - centre) @ plane


# A chunk of layouts in the cache carries each panel's track, to be gone on from (watch).
_STATS_INT = ("keyframes", "exact", "corrected", "extra_passes", "exact_checks")
_STATS_FLOAT = ("captured_min", "share_min", "share_max")


def track_arrays(tracks: list[Track]) -> dict[str, np.ndarray]:
    """What each panel's projection carries to the next keyframe, as arrays (never pickled):
    its records exactly (not rounded as in ``panels``), what it reported, a tracked plane."""
    out = {"t_method": np.array([t.stats.method for t in tracks]),
           "t_int": np.array([[getattr(t.stats, k) for k in _STATS_INT] for t in tracks], dtype=np.int64),
           "t_float": np.array([[np.nan if getattr(t.stats, k) is None else getattr(t.stats, k)
                                 for k in _STATS_FLOAT] for t in tracks], dtype=np.float64),
           "t_info": np.array(json.dumps([t.info for t in tracks])),
           "t_planes": np.array([t.planes is not None for t in tracks])}
    for l, t in enumerate(tracks):
        if t.planes is not None and t.planes.basis is not None:
            out[f"t_basis_{l}"] = t.planes.basis
    return out


def tracks_of(found: dict[str, np.ndarray], last: np.ndarray, starts: np.ndarray,
              seed: int) -> list[Track] | None:
    """The panels' tracks from :func:`track_arrays` (``last``: the chunk's last layouts), or
    ``None`` for an entry stored without them."""
    if "t_method" not in found:
        return None
    info = json.loads(str(found["t_info"]))
    tracks = []
    for l in range(len(starts) - 1):
        stats = PlaneStats(str(found["t_method"][l]), *(int(v) for v in found["t_int"][l]),
                           *(None if np.isnan(v) else float(v) for v in found["t_float"][l]))
        span = slice(starts[l], starts[l + 1])
        track = Track(layout=np.array(last[span]), fixed_frame=bool(found["fixed"][l]),
                      stats=stats, info=info[l])
        if found["t_planes"][l]:
            track.planes = PlaneTracker(seed, stats)
            if f"t_basis_{l}" in found:
                track.planes.basis = np.array(found[f"t_basis_{l}"])
        tracks.append(track)
    return tracks
