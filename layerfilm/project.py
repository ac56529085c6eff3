"""2-D layouts per layer per keyframe, aligned so clouds never spin or flip.

Each keyframe's layout is centred and then rotated/reflected onto the previous
keyframe's *aligned* layout by orthogonal Procrustes (the same chaining as
umap-learn's ``aligned_umap.procrustes_align``).  There is no rescaling, so a
layer whose weights grow is seen to grow.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Protocol

import numpy as np

from .errors import ConfigError


# Up to this width (of min(n, d)) the top two eigenpairs are computed exactly, every keyframe.
_EXACT_MAX_DIM = 64
# Wider layers track their principal plane from keyframe to keyframe: a block of this many
# directions (the two drawn + guards that speed convergence) refined by one pass per keyframe.
_BLOCK = 8
_COLD_PASSES = 6
_WARM_PASSES = 1


def pca_2d(X: np.ndarray, seed: int = 0, basis: np.ndarray | None = None
           ) -> tuple[np.ndarray, np.ndarray | None]:
    """Scores on the top two principal axes, and the basis to pass in at the next keyframe.

    ``(n, d)`` -> ``(n, 2)``, centred.  Exact (top-two ``syevr`` of the ``d x d``
    covariance or ``n x n`` Gram matrix, float64) when ``min(n, d) <= 64``.  Wider
    layers use block subspace iteration (Halko et al. 2011) on the centred data with
    ``_BLOCK`` directions, in one numba kernel (float32): six passes from a seeded
    random start, or -- given ``basis``, the previous keyframe's directions -- one
    pass that continues the same iteration.  Weights that sit still converge to the
    exact axes; weights that move are followed smoothly instead of re-solved from
    scratch.  Fewer than two non-zero directions give zero columns.
    """
    X = np.asarray(X)
    n, d = X.shape
    if min(n, d) < 2:
        out = np.zeros((n, 2))
        if d >= 1:
            out[:, 0] = X[:, 0] - X[:, 0].mean()
        return out, None
    if min(n, d) <= _EXACT_MAX_DIM:
        # Only the top two eigenpairs (LAPACK syevr): exact, and ~2.6x faster than a full eigh.
        from scipy.linalg import eigh

        Xc = X.astype(np.float64) - X.mean(axis=0, dtype=np.float64)
        if n >= d:
            _, V = eigh(Xc.T @ Xc, subset_by_index=[d - 2, d - 1], driver="evr")
            return Xc @ V[:, ::-1], None
        w, U = eigh(Xc @ Xc.T, subset_by_index=[n - 2, n - 1], driver="evr")
        return U[:, ::-1] * np.sqrt(np.clip(w[::-1], 0, None)), None
    from ._kernels import tracked_pca_kernel

    X = np.ascontiguousarray(X, dtype=np.float32)
    p = min(_BLOCK, d, n)
    if basis is None or basis.shape != (p, d):
        start = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, p)))[0].T
        basis, passes = np.ascontiguousarray(start, dtype=np.float32), _COLD_PASSES
    else:
        passes = _WARM_PASSES
    scores = np.empty((n, 2), np.float32)
    refined = np.empty((p, d), np.float32)
    tracked_pca_kernel(X, basis, passes, scores, refined)
    return scores, refined


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
        kwargs["n_epochs"] = 100  # small steps from where the points already are
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


@dataclasses.dataclass
class Track:
    """One layer's state carried from keyframe to keyframe."""

    layout: np.ndarray | None = None  # the last aligned layout, (n, 2) float32
    basis: np.ndarray | None = None  # PCA directions to continue from (see :func:`pca_2d`)


@dataclasses.dataclass(frozen=True)
class Projected:
    """One layer's 2-D layout at one keyframe before alignment, and what made it.

    xy: (n, 2) centred coordinates; method: ``"pca"`` (exact), ``"tracked pca"``, ``"umap"``
    or ``"fourier"``; frequency: ``(period, k)`` of the Fourier plane, when there is one.
    """

    xy: np.ndarray
    method: str
    frequency: tuple[int, int] | None = None


class Projection(Protocol):
    """A way to lay out a layer's points in 2-D, keyframe after keyframe.

    ``projection(X, track, rows)`` lays out the ``(n, d)`` cloud ``X``; ``track`` is the same
    layer's state from earlier keyframes (the projection may read and update it); ``rows`` is
    ``None`` when ``X`` holds all the layer's points, else the boolean mask of the points it
    holds (the others had NaN/Inf weights).
    """

    name: str

    def __call__(self, X: np.ndarray, track: "Track", rows: np.ndarray | None) -> Projected: ...


class PCA:
    """The top two principal axes (:func:`pca_2d`): exact for narrow layers, tracked from the
    previous keyframe's directions for wide ones."""

    name = "pca"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def __call__(self, X: np.ndarray, track: "Track", rows: np.ndarray | None) -> Projected:
        xy, track.basis = pca_2d(X, self.seed, track.basis)
        # Only the tracking kernel answers in float32 (exact PCA works in float64).
        return Projected(xy, "tracked pca" if xy.dtype == np.float32 else "pca")


class UMAP:
    """UMAP, warm-started from the previous keyframe's layout when every point is there."""

    name = "umap"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def __call__(self, X: np.ndarray, track: "Track", rows: np.ndarray | None) -> Projected:
        return Projected(umap_2d(X, track.layout if rows is None else None, self.seed), "umap")


class Fourier:
    """The token embedding in the plane of one Fourier frequency over the token ids
    (:func:`fourier_2d`); ``ids`` are the panel's token ids, ``period`` and ``k`` the
    frequency."""

    name = "fourier"

    def __init__(self, ids: np.ndarray, period: int, k: int):
        self.ids, self.period, self.k = np.asarray(ids), period, k

    @classmethod
    def fit(cls, X: np.ndarray, ids: np.ndarray, vocab: int) -> "Fourier":
        """The frequency that carries the most of ``X``'s variance (:func:`fourier_frequency`)."""
        ok = np.isfinite(X).all(axis=1)
        period, k, _ = fourier_frequency(X[ok], np.asarray(ids)[ok], vocab)
        return cls(ids, period, k)

    def __call__(self, X: np.ndarray, track: "Track", rows: np.ndarray | None) -> Projected:
        ids = self.ids if rows is None else self.ids[rows]
        xy = fourier_2d(X, ids, self.period, self.k)
        method = "tracked pca" if xy.dtype == np.float32 else "fourier"  # a degenerate plane
        return Projected(xy, method, (self.period, self.k))


def project_keyframe(X: np.ndarray, projection: Projection, track: Track) -> np.ndarray:
    """One layer's aligned 2-D layout at the next keyframe: ``(n, d)`` -> ``(n, 2)`` float32.

    ``track`` holds the same layer's state from the previous keyframe and is updated.  Rows
    with NaN/Inf take no part in the projection and stay NaN in the result, so they are not
    drawn.  The layout is centred and rotated/reflected onto the previous one (never scaled).
    """
    X = np.asarray(X)
    rows = None if np.isfinite(X).all() else np.isfinite(X).all(axis=1)
    done = projection(X if rows is None else X[rows], track, rows)
    raw = done.xy
    if rows is not None:
        raw = np.full((len(X), 2), np.nan)
        raw[rows] = done.xy
    elif done.method == "tracked pca" and (track.layout is None or np.isfinite(track.layout).all()):
        # The wide-layer path with every weight finite: align in one float32 kernel call.
        from ._kernels import align_kernel

        out = np.empty_like(raw)
        align_kernel(raw, track.layout if track.layout is not None else raw[:0], out)
        track.layout = out
        return out
    track.layout = align(raw, track.layout).astype(np.float32)
    return track.layout


def axis_ranges(extremes: np.ndarray, starts: np.ndarray, quantile: float = 0.995,
                cap: float = 1.5) -> np.ndarray:
    """How far each panel's drawing reaches along x and y, for the whole film.

    extremes: (M, N, 2) how far out each point goes along x and y (e.g. over each segment of
    the film's curves, :func:`layerfilm.interpolate.curve_extremes`); starts: (L+1,) panel
    offsets.  Returns (L, 2) float64 half-extents: the farthest any point goes, so every dot of
    every frame is inside -- unless that is more than ``cap`` times the ``quantile`` of the
    points' reach (a few far outliers), in which case ``cap`` times that quantile, and the
    outliers are drawn pinned to the panel's edge (and counted, see
    :func:`layerfilm.interpolate.outside_counts`).  1.0 for a panel with nothing finite.
    """
    out = np.ones((len(starts) - 1, 2))
    for l in range(len(starts) - 1):
        cols = np.ascontiguousarray(extremes[:, starts[l]:starts[l + 1]].reshape(-1, 2).T)
        cols = [c if np.isfinite(c).all() else c[np.isfinite(c)] for c in cols]
        full = np.array([c.max() if c.size else 0.0 for c in cols])
        typical = np.array([np.quantile(c, quantile) if c.size else 0.0 for c in cols])
        half = np.where(typical > 0, np.minimum(full, cap * typical), full)
        out[l] = np.where(half > 0, half, 1.0)
    return out


# --projection fourier: how many trailing special tokens ('=', BOS, ...) may follow the residues,
# and the highest frequency searched.
_FOURIER_TAIL = 8
_FOURIER_MAX_K = 512


def fourier_frequency(X: np.ndarray, ids: np.ndarray, vocab: int) -> tuple[int, int, float]:
    """The period ``p`` and frequency ``k`` whose cos/sin pair carries the most of the cloud's
    variance over the token index, and that share (0..1).

    X: (n, d) rows for tokens ``ids`` (n,) of a ``vocab``-token embedding.  Periods from
    ``vocab - 8`` to ``vocab`` are tried (a vocabulary may end with special tokens, which
    take no part in the fit), frequencies ``1 .. min(p // 2, 512)``.
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
        # Least-squares fit of each column on cos/sin (rows are nearly orthogonal; the
        # projection is exact when the ids cover every residue).
        share = ((np.cos(angle) @ Xc) ** 2).sum(axis=1) + ((np.sin(angle) @ Xc) ** 2).sum(axis=1)
        share *= 2.0 / (inside.sum() * total)
        i = int(np.argmax(share))
        if share[i] > best[2]:
            best = (p, int(ks[i]), float(share[i]))
    return best


def fourier_2d(X: np.ndarray, ids: np.ndarray, period: int, k: int) -> np.ndarray:
    """Coordinates in the weight-space plane of frequency ``k`` over the token index:
    ``(n, d)`` -> ``(n, 2)`` float64, centred.

    The plane is spanned by ``sum_a x_a cos(2 pi k a / period)`` and the sine twin (the
    Fourier component of the embedding, Nanda et al. 2023), orthonormalised; tokens ``a``
    of a model that computes with this frequency lie on a ring at angle ``2 pi k a / period``.
    """
    X = np.asarray(X, dtype=np.float64)
    ids = np.asarray(ids, dtype=np.int64)
    inside = ids < period
    centre = X[inside].mean(axis=0) if inside.any() else X.mean(axis=0)
    Xc = X - centre
    angle = 2 * np.pi * k * ids[inside] / period
    basis = np.stack([np.cos(angle) @ Xc[inside], np.sin(angle) @ Xc[inside]], axis=1)  # (d, 2)
    Q, R = np.linalg.qr(basis)
    if min(abs(R[0, 0]), abs(R[1, 1])) <= 1e-12 * max(abs(R[0, 0]), 1e-300):
        return pca_2d(X)[0]
    # Keep the cosine direction as the x axis and the sine direction pointing up.
    return Xc @ (Q * np.sign(np.diag(R)))
