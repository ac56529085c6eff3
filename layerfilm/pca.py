"""Principal planes of a layer's point cloud, keyframe after keyframe.

Narrow layers (``min(n, d) <= 64``) get the exact top two axes at every keyframe.  Wider ones
are *tracked*: a block of 8 directions is refined from the previous keyframe's by block
subspace iteration (Halko et al. 2011) in one BLAS-free numba kernel, which costs a fraction of
an eigendecomposition.  Tracking never falls behind unnoticed:

* every pass reports how much variance the block's best two directions held before and after
  it; while a pass still gains more than 0.3 %, up to three more passes follow, and a block
  that is still gaining then is replaced by an exact solve at that keyframe ("corrected");
* a block that gains too little to pass again can still be behind (a new direction it barely
  touches), so every tracked keyframe's plane is then checked before it is drawn, and
  replaced by an exact solve where it holds less than 99 % of the exact top-two variance.
  Up to ``min(n, d) =`` :data:`EXACT_CHECK_MAX` the check is exact: the keyframe's float32
  covariance (or Gram) matrix is formed once (:class:`_Moments`) and the passes, the exact
  top-two eigenvalues and any exact solve all work on it -- at 1,024 x 128 that costs about
  what the passes on the rows cost alone.  Wider, a cheap certificate
  (:func:`certified_share`: the block's residuals and a few Lanczos steps on the covariance
  off the block bound the exact top-two variance; wrong with probability at most
  :data:`CHECK_FAIL`, whatever the data) shows the 99 %, or, where it falls short, the exact
  top-two eigenvalues of the keyframe's float32 covariance (or Gram) matrix measure what the
  plane holds;
* the keyframes are cut into chunks of :data:`CHUNK`, each starting from an exact solve (so
  chunks can be computed anywhere, in any order, with the same result).

What happened is counted per panel (:class:`PlaneStats`): exact solves, corrections, extra
passes, exact checks, a lower bound on the share of the exact top-two variance that the drawn
plane held at every keyframe, and the share of the panel's total variance the two drawn axes
hold.
"""

from __future__ import annotations

import dataclasses
import functools
import threading

import numpy as np

# Up to this width (of min(n, d)) the top two eigenpairs are computed exactly, every keyframe.
EXACT_MAX_DIM = 64
BLOCK = 8  # tracked directions: the two drawn + guards that speed convergence
CHUNK = 64  # tracked layers restart from an exact solve every CHUNK keyframes
GAIN = 3e-3  # a pass that raised the top-two variance by more than this fraction: pass again
EXTRA_PASSES = 3
AUDIT_MIN = 0.99  # an audited plane holding less of the exact top-two variance is corrected
EXACT_BASIS_MAX = 1536  # min(n, d) up to which a chunk start is an eigendecomposition
# Up to this min(n, d), every tracked keyframe is checked exactly on its covariance (or Gram)
# matrix: measured cheaper than the certificate there (1,024 x 128: 0.6 ms against 1.6 ms, and
# 2,000 x 256: 2.9 ms against ~5 ms), the certificate cheaper beyond.
EXACT_CHECK_MAX = 256
# The slacks tried for the Cholesky bound (_Moments.share) before the eigenvalues are computed:
# the first shows a converged plane holds >= 0.999, the second >= AUDIT_MIN.
# A narrow plane is shown to hold at least min(the panel's lowest share so far, CLOSE) of the
# exact top-two variance by a certificate, else its share is computed exactly: captured_min
# is the true minimum to within 1 - CLOSE, and an exact eigenvalue solve is paid only at
# keyframes that hold less than every keyframe before them.
CLOSE = 0.9995
_COLD_PASSES = 6  # otherwise: passes from a seeded random start, then as many as still gain
# Every tracked keyframe's plane is checked (certified_share) by Lanczos stages of these many
# steps on the covariance off the plane, each stage's bound wrong with probability at most
# CHECK_FAIL / len(LANCZOS_STEPS); a plane no stage certifies is checked by an exact solve.
LANCZOS_STEPS = (16, 32, 64)
CHECK_FAIL = 1e-6
# Certificates' random starts: [seed, keyframe]; a solve too wide to decompose: [seed, SOLVE_STREAM].
SOLVE_STREAM = 2**32 - 1
ROUNDING = 1e-4  # relative slack for the float32 products (their errors are ~1e-6)

_PK = None


def _pk():
    """:mod:`layerfilm._plane_kernels` (numba loads with it), kept in ``_PK`` once imported: a
    relative import in a method held the GIL 3.5 us a call (3.11 resolves it in Python)."""
    global _PK
    if _PK is None:
        from . import _plane_kernels as _PK
    return _PK


@dataclasses.dataclass
class PlaneStats:
    """What the principal planes of one panel took, over the film."""

    method: str = "pca"  # "pca" (exact every keyframe) or "tracked pca"
    keyframes: int = 0
    exact: int = 0  # keyframes solved exactly (chunk starts and corrections)
    corrected: int = 0  # tracked planes replaced by an exact solve
    extra_passes: int = 0
    exact_checks: int = 0  # tracked planes checked on the covariance matrix, or exactly
    # A lower bound on the share of the exact top-two variance held by the plane the film
    # shows, over every keyframe: exact solves count as 1, planes checked exactly as what they
    # held.  Narrow panels (EXACT_CHECK_MAX): the true minimum, or at most 1 - CLOSE below it.
    # Wider ones: certified planes count as their certified bound (certified_share: it may
    # sit a little below what the plane holds, and is wrong with probability at most
    # CHECK_FAIL each), and planes the covariance's Cholesky bound shows to hold AUDIT_MIN
    # as AUDIT_MIN.
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
            for key in ("keyframes", "exact", "corrected", "extra_passes", "exact_checks"):
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


def lanczos_slack(m: int, steps: int, fail: float) -> float:
    """The ``eps`` for which ``steps`` Lanczos steps from a uniformly random start on an
    ``m``-dimensional positive semi-definite matrix end below ``(1 - eps)`` times its largest
    eigenvalue with probability at most ``fail``, whatever the matrix (Kuczynski and
    Wozniakowski 1992, Thm 4.2: ``P <= 1.648 sqrt(m) exp(-sqrt(eps) (2 steps - 1))``)."""
    return (np.log(1.648 * np.sqrt(m) / fail) / (2 * steps - 1)) ** 2


def _block_top2(M: np.ndarray, G: np.ndarray, outside: float, t: np.ndarray) -> np.ndarray:
    """The top-two sum of diag(M + G / t, (outside + t) I) for each t (see top2_bound)."""
    a = np.linalg.eigvalsh(M[None] + G[None] / t[:, None, None])
    a1, a2, b = a[:, -1], a[:, -2], outside + t
    return np.maximum(np.maximum(a1 + a2, a1 + b), 2 * b)


def top2_bound(M: np.ndarray, G: np.ndarray, outside: float) -> float:
    """An upper bound on the top-two eigenvalue sum of a symmetric C, from orthonormal rows
    V (p, d): ``M = V C V^T``, ``G = R R^T`` for the residuals ``R = V C - M V``, and
    ``outside`` >= the largest eigenvalue of C off V's span.

    For every t > 0, C <= diag(M + G / t, W + t I) in the Loewner order (in V's basis and
    its complement's: the coupling 2 b.(R^T a) is at most |R^T a|^2 / t + t |b|^2), and Ky
    Fan sums follow that order; the bound is the least over t of the top-two sum of that
    block diagonal (any t gives a bound: a coarse grid, then a finer one around its best).
    Second order in the residuals where V's span is ahead of the rest.
    """
    scale = max(float(np.trace(M)), float(outside), 1e-300)
    t = scale * np.geomspace(1e-9, 1e3, 49)
    coarse = _block_top2(M, G, outside, t)
    best = int(np.argmin(coarse))
    fine = np.geomspace(t[max(best - 1, 0)], t[min(best + 1, len(t) - 1)], 17)
    return float(min(coarse[best], _block_top2(M, G, outside, fine).min()))


def certified_share(X: np.ndarray, basis: np.ndarray, rng: np.random.Generator) -> float:
    """A lower bound on the share of ``X``'s exact top-two variance that the plane of
    ``basis``'s first two rows holds (``basis``: (p, d), the tracked block), in stages of
    Lanczos steps (:data:`LANCZOS_STEPS`) until it reaches :data:`AUDIT_MIN` or the stages
    run out.

    The block's Rayleigh quotient and residuals bound the top-two variance
    (:func:`top2_bound`) given the largest variance off the block, which Lanczos from a
    random start bounds by what it found divided by ``1 - eps`` (:func:`lanczos_slack`):
    wrong, over all stages together, with probability at most :data:`CHECK_FAIL`, whatever
    the data.  (No cheap check can be certain: a direction that no probe met could hold up
    to all the variance left off the block.)  The whole block is deflated, not only the
    plane: the largest variance left is then about the (p + 1)-th eigenvalue, well below the
    second even in slowly falling spectra, so a few Lanczos steps bound it closely enough.
    """
    from ._plane_kernels import block_lanczos_kernel, centre_kernel, covariance_apply

    X = np.ascontiguousarray(X, dtype=np.float32)
    d = X.shape[1]
    Xc = np.empty_like(X)
    centre_kernel(X, Xc)
    V = np.ascontiguousarray(np.linalg.qr(np.asarray(basis, dtype=np.float64).T)[0].T)
    CV = np.empty_like(V)
    covariance_apply(Xc, V, CV)
    M = CV @ V.T
    M = (M + M.T) / 2
    held = float(M[0, 0] + M[1, 1])  # the first two rows of V span the drawn plane
    if held <= 0.0:
        return 1.0 if not np.any(CV) else 0.0
    R = CV - M @ V
    G = R @ R.T
    steps = LANCZOS_STEPS[-1]
    L = np.zeros((steps + 1, d))
    start = rng.standard_normal(d)
    start -= V.T @ (V @ start)
    L[0] = start / np.linalg.norm(start)
    alpha, beta = np.zeros(steps), np.zeros(steps)
    done, best = 0, 0.0
    for stage in LANCZOS_STEPS:
        if not (done and beta[done - 1] == 0.0):  # else the space is invariant: all is found
            done = block_lanczos_kernel(Xc, V, L, alpha, beta, done, stage)
        eps = lanczos_slack(d - len(V), stage, CHECK_FAIL / len(LANCZOS_STEPS))
        if eps >= 1.0:
            continue
        T = np.diag(alpha[:done]) + np.diag(beta[:done - 1], 1) + np.diag(beta[:done - 1], -1)
        found = max(float(np.linalg.eigvalsh(T)[-1]), 0.0)
        bound = top2_bound(M, G, found / (1.0 - eps) * (1 + ROUNDING) + ROUNDING * held)
        best = max(best, held / (bound * (1 + ROUNDING)))
        if best >= AUDIT_MIN:
            break
    return min(best, 1.0)


def _gain(ritz: np.ndarray, p: int) -> float:
    """How much the last refinement raised the top-two variance, as a fraction of it."""
    after = ritz[0] + ritz[1]
    return (after - ritz[p]) / after if after > 0 else 0.0


class _Moments:
    """One keyframe's rows centred, and their covariance ``Xc^T Xc`` (``n >= d``) or Gram
    matrix ``Xc Xc^T`` (``n < d``) in float32 (one BLAS product, formed once), for panels up
    to :data:`EXACT_CHECK_MAX` wide: tracking passes, the exact top-two variance and exact
    solves then cost a few small products and one partial eigendecomposition each (numba
    kernels in :mod:`layerfilm._plane_kernels`, free of the GIL)."""

    def __init__(self, X: np.ndarray, scratch: np.ndarray | None = None):
        # ``scratch``: X's shape, kept by the caller (fresh pages per keyframe cost 2x here)
        self.X, self.gram = X, X.shape[0] < X.shape[1]
        self.Xc = scratch if scratch is not None and scratch.shape == X.shape else np.empty_like(X)
        _pk().centre_kernel(X, self.Xc)  # numpy's mean in float64 took 20x longer
        self.M = self.Xc @ self.Xc.T if self.gram else self.Xc.T @ self.Xc  # BLAS syrk
        self.total = _pk().trace_kernel(self.M)  # np.trace(M, dtype=float64), bit for bit

    def _top(self, k: int, vectors: bool) -> tuple[np.ndarray, np.ndarray]:
        w, Z = np.empty(k), np.empty((k if vectors else 1, self.M.shape[0]), np.float32)
        _pk().top_eigen(self.M, k, vectors, w, Z)
        return w, Z

    def top2(self) -> float:
        """The exact variance on the top two principal axes."""
        return float(np.clip(self._top(2, False)[0], 0, None).sum())

    def share(self, ritz: np.ndarray, basis: np.ndarray, floor: float = 1.0) -> float:
        """The share of the exact top-two variance that the plane of ``basis``'s first two
        rows holds (``ritz``: their variances first, as :meth:`refine` returns them), or
        ``min(floor, CLOSE)`` where the plane is shown to hold at least that much: each of
        the top two eigenvalues at most its Ritz value times the matching ``1 + slack``
        (:func:`~layerfilm._plane_kernels.top2_at_most`, a third of the work of computing
        them)."""
        held = float(ritz[0] + ritz[1])
        if held <= 0.0:
            return 1.0 if self.total <= 0.0 else 0.0
        target = min(floor, CLOSE)
        grow = 1.0 / target - 2 * ROUNDING  # 1 / (grow + 2 ROUNDING) == target
        if not self.gram and grow > 1 + ROUNDING:
            r1, r2 = max(float(ritz[0]), 0.0), max(float(ritz[1]), 0.0)
            if _pk().top2_at_most(self.M, basis[0], r1, r1 * grow + ROUNDING * held,
                                  r2 * grow + ROUNDING * held):
                return target
        return self.exact_share(ritz)

    def exact_share(self, ritz: np.ndarray) -> float:
        """The share of the exact top-two variance that the plane with Ritz values ``ritz``
        (its two variances first) holds, from this matrix's top two eigenvalues."""
        return min(float((ritz[0] + ritz[1]) / max(self.top2(), 1e-300)), 1.0)

    def basis(self, p: int) -> np.ndarray:
        """The top ``p`` principal directions as orthonormal rows ``(p, d)`` float32."""
        w, U = self._top(p, True)
        if not self.gram:
            return U
        V = self.Xc.T.astype(np.float64) @ (U.T / np.sqrt(np.maximum(w, 1e-300)))
        return np.ascontiguousarray(np.linalg.qr(V)[0].T, dtype=np.float32)

    def refine(self, start: np.ndarray, passes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """What :func:`_refine` returns, from the covariance matrix (``n >= d``) instead of a
        sweep over the rows per pass."""
        if self.gram:
            return _refine(self.X, start, passes)
        p, d = start.shape
        scores, basis, ritz = np.empty((len(self.X), 2), np.float32), np.empty((p, d), np.float32), np.empty(p + 2)
        _pk().covariance_refine_kernel(self.M, self.Xc, np.ascontiguousarray(start, dtype=np.float32),
                                 passes, self.total, scores, basis, ritz)
        return scores, basis, ritz


_SCRATCH = threading.local()  # per thread: an array to centre a keyframe's rows into (_Moments)


def _scratch(shape: tuple[int, int]) -> np.ndarray:
    """This thread's float32 array of ``shape`` for :class:`_Moments` to centre into: one per
    thread rather than per panel, so it stays in cache from panel to panel (a panel's own, 129
    of them at 1,024 x 128, was a cold write every keyframe: measured 2.4x the centring's cost)."""
    kept = getattr(_SCRATCH, "array", None)
    if kept is None or kept.shape != shape:
        kept = _SCRATCH.array = np.empty(shape, np.float32)
    return kept


class PlaneTracker:
    """The principal plane of one wide panel, keyframe after keyframe (see the module
    docstring).  ``__call__(X, keyframe, last)`` returns the ``(n, 2)`` float32 scores."""

    def __init__(self, seed: int = 0, stats: PlaneStats | None = None):
        self.seed = seed
        self.basis: np.ndarray | None = None
        self.stats = stats or PlaneStats("tracked pca")

    def _exact(self, X: np.ndarray, p: int, moments: _Moments | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """An exact (or, for very wide and long clouds, converged and certified) solve from
        scratch."""
        n, d = X.shape
        self.stats.exact += 1
        if moments is not None:
            self.stats.audited(1.0)  # an exact solve holds all of it
            return moments.refine(moments.basis(p), 0)
        if min(n, d) <= EXACT_BASIS_MAX:
            start, _ = exact_basis(X, p)
            self.stats.audited(1.0)
            return _refine(X, start, 0)
        rng = np.random.default_rng(self.seed)
        start = np.ascontiguousarray(np.linalg.qr(rng.standard_normal((d, p)))[0].T, dtype=np.float32)
        scores, basis, ritz = _refine(X, start, _COLD_PASSES)
        for _ in range(4 * EXTRA_PASSES):
            if _gain(ritz, p) <= GAIN / 10:
                break
            scores, basis, ritz = _refine(X, basis, 1)
        # Too wide for an eigendecomposition: what this plane holds is bounded, not known.
        self.stats.audited(certified_share(X, basis, np.random.default_rng([self.seed, SOLVE_STREAM])))
        return scores, basis, ritz

    def __call__(self, X: np.ndarray, keyframe: int) -> np.ndarray:
        X = np.ascontiguousarray(X, dtype=np.float32)
        n, d = X.shape
        p = min(BLOCK, d, n)
        moments = _Moments(X, _scratch(X.shape)) if min(n, d) <= EXACT_CHECK_MAX else None
        refine = moments.refine if moments is not None else functools.partial(_refine, X)
        if self.basis is None or self.basis.shape != (p, d) or keyframe % CHUNK == 0:
            scores, basis, ritz = self._exact(X, p, moments)
        else:
            scores, basis, ritz = refine(self.basis, 1)
            extra = 0
            while _gain(ritz, p) > GAIN and extra < EXTRA_PASSES:
                scores, basis, ritz = refine(basis, 1)
                extra += 1
            self.stats.extra_passes += extra
            if moments is None and _gain(ritz, p) > GAIN:
                self.stats.corrected += 1
                scores, basis, ritz = self._exact(X, p)
            else:
                scores, basis, ritz = self._checked(X, keyframe, scores, basis, ritz, moments)
        self.basis = basis
        self.stats.saw((ritz[0] + ritz[1]) / ritz[p + 1] if ritz[p + 1] > 0 else 1.0)
        return scores

    def _checked(self, X: np.ndarray, keyframe: int, scores: np.ndarray, basis: np.ndarray,
                 ritz: np.ndarray, moments: _Moments | None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The tracked plane if it holds :data:`AUDIT_MIN` of the exact top-two variance, else
        an exact solve; what the drawn plane holds is recorded either way.

        A plane gaining too little to pass again can still be behind (a new direction the
        block barely touches), so every one is checked: exactly where ``moments`` are at hand;
        else cheaply certified (:func:`certified_share`, its start seeded by the keyframe so
        any chunk gets the same answer), or, where that falls short, measured against the
        exact top-two variance.
        """
        n, d = X.shape
        solvable = min(n, d) <= EXACT_BASIS_MAX  # narrow enough for an exact solve
        if moments is not None:
            self.stats.exact_checks += 1
            floor = 1.0 if self.stats.captured_min is None else self.stats.captured_min
            share = moments.share(ritz, basis, max(floor, AUDIT_MIN))
        else:
            # Where the certificate has fallen short at most of this chunk's tracked keyframes
            # (a nearly flat spectrum: the variance off the block is close to the plane's), it
            # is skipped for the exact check below.  Counted per chunk, so any chunk still
            # gets the same answer; the decisions, and so the drawn planes, are the same.
            st = self.stats
            hopeless = solvable and st.exact_checks >= 2 and 2 * st.exact_checks > st.keyframes - st.exact
            share = 0.0 if hopeless else certified_share(
                X, basis, np.random.default_rng([self.seed, keyframe]))
            if share < AUDIT_MIN and solvable:
                # On the float32 covariance (or Gram) matrix: shown to hold AUDIT_MIN by
                # :meth:`_Moments.share`'s Cholesky bound (9.7 ms at 768 wide, passing 67 of
                # the 83 good planes of 8 GPT-2 checkpoints), else its exact share from the top
                # two eigenvalues (21 ms).  The bound aims at AUDIT_MIN, not at the lowest share
                # so far as narrow panels' does: aimed higher it passed too rarely to pay for
                # itself.  Only the check: the passes above ran on the rows and a correction
                # is the float64 exact solve, so the drawn planes are what they were.
                self.stats.exact_checks += 1
                share = _Moments(X, _scratch(X.shape)).share(ritz, basis, AUDIT_MIN)
        if share < AUDIT_MIN and (moments is not None or solvable):
            self.stats.corrected += 1
            return self._exact(X, basis.shape[0], moments)
        self.stats.audited(share)  # beyond EXACT_BASIS_MAX, the bound as it is
        return scores, basis, ritz


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
