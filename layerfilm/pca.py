"""Principal planes of a layer's point cloud, keyframe after keyframe.

Narrow layers (``min(n, d) <= 64``) get the exact top two axes at every keyframe.  Wider ones
are *tracked*: a block of 8 directions is refined from the previous keyframe's by block
subspace iteration (Halko et al. 2011) in one BLAS-free numba kernel, which costs a fraction of
an eigendecomposition.  Tracking never falls behind unnoticed:

* every pass reports how much variance the block's best two directions held before and after
  it; while a pass still gains more than 0.3 %, up to three more passes follow, and a block
  that is still gaining then is replaced by an exact solve at that keyframe ("corrected");
* the keyframes are cut into chunks of :data:`CHUNK`: each chunk starts from an exact solve
  (so chunks can be computed anywhere, in any order, with the same result), and at each
  chunk's last keyframe the tracked plane is audited against the exact top-two variance and
  corrected when it holds less than 99 % of it.

What happened is counted per panel (:class:`PlaneStats`): exact solves, corrections, extra
passes, the lowest audited share of the exact variance, and the share of the panel's total
variance the two drawn axes hold.
"""

from __future__ import annotations

import dataclasses

import numpy as np

# Up to this width (of min(n, d)) the top two eigenpairs are computed exactly, every keyframe.
EXACT_MAX_DIM = 64
BLOCK = 8  # tracked directions: the two drawn + guards that speed convergence
CHUNK = 64  # tracked layers restart from an exact solve every CHUNK keyframes
GAIN = 3e-3  # a pass that raised the top-two variance by more than this fraction: pass again
EXTRA_PASSES = 3
AUDIT_MIN = 0.99  # an audited plane holding less of the exact top-two variance is corrected
EXACT_BASIS_MAX = 1536  # min(n, d) up to which a chunk start is an eigendecomposition
_COLD_PASSES = 6  # otherwise: passes from a seeded random start, then as many as still gain


@dataclasses.dataclass
class PlaneStats:
    """What the principal planes of one panel took, over the film."""

    method: str = "pca"  # "pca" (exact every keyframe) or "tracked pca"
    keyframes: int = 0
    exact: int = 0  # keyframes solved exactly (chunk starts and corrections)
    corrected: int = 0  # tracked planes replaced by an exact solve
    extra_passes: int = 0
    # Lowest share of the exact top-two variance held by a plane the film shows, over the
    # keyframes where it was measured (audits; exact solves count as 1).
    captured_min: float | None = None
    share_min: float | None = None  # share of the panel's total variance on the two axes
    share_max: float | None = None

    def saw(self, share: float) -> None:
        self.keyframes += 1
        if np.isfinite(share):
            self.share_min = share if self.share_min is None else min(self.share_min, share)
            self.share_max = share if self.share_max is None else max(self.share_max, share)

    def audited(self, captured: float) -> None:
        self.captured_min = captured if self.captured_min is None else min(self.captured_min, captured)

    @staticmethod
    def merged(parts: list[dict]) -> dict:
        """One panel's records (:meth:`as_dict` plus what its projection reported) from
        consecutive runs of keyframes, as one for the whole film."""
        out = dict(parts[0])
        for part in parts[1:]:
            for key in ("keyframes", "exact", "corrected", "extra_passes"):
                out[key] += part[key]
            for key, pick in (("captured_min", min), ("share_min", min), ("share_max", max)):
                values = [v for v in (out[key], part[key]) if v is not None]
                out[key] = pick(values) if values else None
        return out

    def as_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v)
                for k, v in dataclasses.asdict(self).items()}


def _centred64(X: np.ndarray) -> np.ndarray:
    return X.astype(np.float64) - X.mean(axis=0, dtype=np.float64)


def exact_2d(X: np.ndarray) -> tuple[np.ndarray, float]:
    """Exact scores on the top two principal axes (``(n, d)`` -> ``(n, 2)`` float64, centred)
    and the share of the total variance they hold.  Only the top two eigenpairs are computed
    (LAPACK ``syevr`` of the ``d x d`` covariance or ``n x n`` Gram matrix)."""
    from scipy.linalg import eigh

    X = np.asarray(X)
    n, d = X.shape
    if min(n, d) < 2:
        out = np.zeros((n, 2))
        if d >= 1 and n:  # no rows (every point NaN): nothing to centre, and no warning
            out[:, 0] = X[:, 0] - X[:, 0].mean()
        return out, 1.0
    Xc = _centred64(X)
    total = float((Xc ** 2).sum())
    if n >= d:
        w, V = eigh(Xc.T @ Xc, subset_by_index=[d - 2, d - 1], driver="evr")
        out = Xc @ V[:, ::-1]
    else:
        w, U = eigh(Xc @ Xc.T, subset_by_index=[n - 2, n - 1], driver="evr")
        out = U[:, ::-1] * np.sqrt(np.clip(w[::-1], 0, None))
    return out, (float(np.clip(w, 0, None).sum()) / total if total > 0 else 1.0)


def exact_basis(X: np.ndarray, p: int) -> tuple[np.ndarray, float]:
    """The top ``p`` principal directions of ``X`` as orthonormal rows ``(p, d)`` float32, and
    the exact top-two variance (eigendecomposition of the smaller of covariance and Gram)."""
    from scipy.linalg import eigh

    Xc = _centred64(np.asarray(X))
    n, d = Xc.shape
    if n >= d:
        w, V = eigh(Xc.T @ Xc, subset_by_index=[d - p, d - 1], driver="evr")
        V = V[:, ::-1]
    else:
        w, U = eigh(Xc @ Xc.T, subset_by_index=[n - p, n - 1], driver="evr")
        w, U = w[::-1], U[:, ::-1]
        V = Xc.T @ (U / np.sqrt(np.maximum(w, 1e-300)))
        V, _ = np.linalg.qr(V)  # exact directions, re-orthonormalised against round-off
        w = w[::-1]
    top2 = float(np.clip(w[-2:], 0, None).sum())
    return np.ascontiguousarray(V.T, dtype=np.float32), top2


def exact_top2(X: np.ndarray) -> float:
    """The exact variance on the top two principal axes of ``X``."""
    from scipy.linalg import eigh

    Xc = _centred64(np.asarray(X))
    n, d = Xc.shape
    m = min(n, d)
    G = Xc.T @ Xc if n >= d else Xc @ Xc.T
    w, _ = eigh(G, subset_by_index=[m - 2, m - 1], driver="evr")  # faster than eigvals_only here
    return float(np.clip(w, 0, None).sum())


def _refine(X: np.ndarray, start: np.ndarray, passes: int
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``passes`` subspace-iteration passes from ``start`` + Rayleigh-Ritz, in the kernel:
    (scores (n, 2) float32, basis (p, d) float32, ritz (p + 2,): see the kernel)."""
    from ._kernels import tracked_pca_kernel

    n, d = X.shape
    p = start.shape[0]
    scores = np.empty((n, 2), np.float32)
    basis = np.empty((p, d), np.float32)
    ritz = np.empty(p + 2)
    tracked_pca_kernel(X, start, passes, scores, basis, ritz)
    return scores, basis, ritz


def _gain(ritz: np.ndarray, p: int) -> float:
    """How much the last refinement raised the top-two variance, as a fraction of it."""
    after = ritz[0] + ritz[1]
    return (after - ritz[p]) / after if after > 0 else 0.0


class PlaneTracker:
    """The principal plane of one wide panel, keyframe after keyframe (see the module
    docstring).  ``__call__(X, keyframe, last)`` returns the ``(n, 2)`` float32 scores."""

    def __init__(self, seed: int = 0, stats: PlaneStats | None = None):
        self.seed = seed
        self.basis: np.ndarray | None = None
        self.stats = stats or PlaneStats("tracked pca")

    def _exact(self, X: np.ndarray, p: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """An exact (or, for very wide and long clouds, converged) solve from scratch."""
        n, d = X.shape
        self.stats.exact += 1
        if min(n, d) <= EXACT_BASIS_MAX:
            start, _ = exact_basis(X, p)
            self.stats.audited(1.0)  # an exact solve holds all of it
            return _refine(X, start, 0)
        rng = np.random.default_rng(self.seed)
        start = np.ascontiguousarray(np.linalg.qr(rng.standard_normal((d, p)))[0].T, dtype=np.float32)
        scores, basis, ritz = _refine(X, start, _COLD_PASSES)
        for _ in range(4 * EXTRA_PASSES):
            if _gain(ritz, p) <= GAIN / 10:
                break
            scores, basis, ritz = _refine(X, basis, 1)
        return scores, basis, ritz

    def __call__(self, X: np.ndarray, keyframe: int, last: bool = False) -> np.ndarray:
        X = np.ascontiguousarray(X, dtype=np.float32)
        n, d = X.shape
        p = min(BLOCK, d, n)
        if self.basis is None or self.basis.shape != (p, d) or keyframe % CHUNK == 0:
            scores, basis, ritz = self._exact(X, p)
        else:
            scores, basis, ritz = _refine(X, self.basis, 1)
            extra = 0
            while _gain(ritz, p) > GAIN and extra < EXTRA_PASSES:
                scores, basis, ritz = _refine(X, basis, 1)
                extra += 1
            self.stats.extra_passes += extra
            if _gain(ritz, p) > GAIN:
                self.stats.corrected += 1
                scores, basis, ritz = self._exact(X, p)
            elif (keyframe + 1) % CHUNK == 0 or last:
                # Audit the plane that has been tracked longest from its exact start.
                if min(n, d) <= EXACT_BASIS_MAX:
                    captured = (ritz[0] + ritz[1]) / max(exact_top2(X), 1e-300)
                    self.stats.audited(min(float(captured), 1.0))
                    if captured < AUDIT_MIN:
                        self.stats.corrected += 1
                        scores, basis, ritz = self._exact(X, p)
        self.basis = basis
        self.stats.saw((ritz[0] + ritz[1]) / ritz[p + 1] if ritz[p + 1] > 0 else 1.0)
        return scores


def pca_2d(X: np.ndarray, seed: int = 0, basis: np.ndarray | None = None
           ) -> tuple[np.ndarray, np.ndarray | None]:
    """Scores on the top two principal axes, and the basis to pass in at the next call.

    ``(n, d)`` -> ``(n, 2)``, centred.  Exact (:func:`exact_2d`, float64) when
    ``min(n, d) <= 64``.  Wider clouds use the tracking kernel (float32): six passes from a
    seeded random start, or -- given ``basis``, earlier directions -- one pass that continues
    the same iteration (no checks: :class:`PlaneTracker` is what the film uses).
    """
    X = np.asarray(X)
    n, d = X.shape
    if min(n, d) <= EXACT_MAX_DIM:
        return exact_2d(X)[0], None
    X = np.ascontiguousarray(X, dtype=np.float32)
    p = min(BLOCK, d, n)
    if basis is None or basis.shape != (p, d):
        start = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, p)))[0].T
        basis, passes = np.ascontiguousarray(start, dtype=np.float32), _COLD_PASSES
    else:
        passes = 1
    scores, refined, _ = _refine(X, basis, passes)
    return scores, refined


def axis_share(X: np.ndarray, seed: int = 0) -> float:
    """The share of ``X``'s variance that its top two principal axes hold (exact up to
    :data:`EXACT_BASIS_MAX`, converged subspace iteration beyond)."""
    X = np.asarray(X)
    X = X[np.isfinite(X).all(axis=1)]
    if min(X.shape) <= EXACT_MAX_DIM:
        return exact_2d(X)[1]
    tracker = PlaneTracker(seed)
    tracker(X, 0)
    return float(tracker.stats.share_max)
