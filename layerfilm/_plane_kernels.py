"""The numba kernels that track and check a layer's principal plane beside the row-sweeping
tracking kernel (:mod:`layerfilm._kernels`), each tested against numpy.

* Narrow clouds (``pca._Moments``): the tracking passes on the covariance matrix, and its exact
  top eigenpairs by LAPACK's ``ssyevx`` -- without the GIL, since layers are projected in
  parallel threads (numpy's and scipy's eigensolvers hold it: two threads then ran no faster
  than one).
* Wider clouds (``pca.certified_share``): Lanczos on the covariance with the tracked block
  projected out, from a random start: what it finds bounds (with a stated probability) the
  largest variance off the block, which with the block's residuals bounds the exact top-two
  variance.  BLAS-free, for the same reason.
"""

from __future__ import annotations

import numpy as np
from numba import types
from numba.np.linalg import _LAPACK, ensure_lapack

from ._kernels import _orthonormalize_rows, _ritz_pairs, ngjit, ngjit_fast

@ngjit_fast
def centre_kernel(X, Xc):
    """Xc = X minus its column means (float32 out; the means summed in float64)."""
    n, d = X.shape
    acc = np.zeros(d)
    for i in range(n):
        for k in range(d):
            acc[k] += X[i, k]
    for i in range(n):
        for k in range(d):
            Xc[i, k] = X[i, k] - np.float32(acc[k] / n)


@ngjit
def _pairwise_sum(a, lo, n):
    """numpy's pairwise sum of ``a[lo:lo + n]`` (float64), in its order: below 8 terms one
    after the other; up to 128, eight running sums added in a tree, then the rest; beyond,
    the two halves (the first a multiple of 8) summed apart."""
    if n < 8:
        s = 0.0
        for i in range(lo, lo + n):
            s += a[i]
        return s
    if n <= 128:
        r = a[lo:lo + 8].copy()
        i = 8
        while i < n - n % 8:
            for j in range(8):
                r[j] += a[lo + i + j]
            i += 8
        s = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
        for i in range(n - n % 8, n):
            s += a[lo + i]
        return s
    half = n // 2
    half -= half % 8
    return _pairwise_sum(a, lo, half) + _pairwise_sum(a, lo + half, n - half)


@ngjit
def trace_kernel(M):
    """``np.trace(M, dtype=np.float64)`` of the square float32 ``M``, bit for bit: numpy
    widens the diagonal into buffers of 8,192 values and adds each buffer's pairwise sum
    (:func:`_pairwise_sum`) to the total -- without the GIL, and without the 7 us of
    numpy's set-up for a reduction that casts."""
    m = M.shape[0]
    diag = np.empty(m)
    for i in range(m):
        diag[i] = M[i, i]
    total = 0.0
    for lo in range(0, m, 8192):
        total += _pairwise_sum(diag, lo, min(8192, m - lo))
    return total


@ngjit_fast
def top_eigen(M, k, vectors, w, Z):
    """The top ``k`` eigenvalues of the symmetric float32 ``M`` (m, m), descending, into
    ``w[:k]`` (float64), and with ``vectors`` their unit eigenvectors into the rows of
    ``Z[:k]`` ((k, m) float32)."""
    m = M.shape[0]
    if vectors:
        lam, E = np.linalg.eigh(M.astype(np.float64))
        for i in range(k):
            w[i] = lam[m - 1 - i]
            for j in range(m):
                Z[i, j] = E[j, m - 1 - i]
    else:  # values alone in float32: a quarter faster, and M is float32 already
        lam32 = np.linalg.eigvalsh(M)
        for i in range(k):
            w[i] = lam32[m - 1 - i]


# LAPACK's dpotrf as numba's np.linalg.cholesky calls it, without the copy, the zeroed
# triangle and the exception (a fifth of the certificate's cost at 128 x 128).
ensure_lapack()
_POTRF = _LAPACK().numba_xxpotrf(types.float64)


@ngjit_fast
def _definite(A):
    """Whether the symmetric float64 ``A`` (C order; overwritten) is positive definite: its
    Cholesky factor exists (what np.linalg.cholesky decides, by the same LAPACK call)."""
    return _POTRF(ord("d"), ord("U"), A.shape[0], A.ctypes, A.shape[0]) == 0


@ngjit_fast
def top2_at_most(C, q, r, bound1, bound2):
    """Whether the largest eigenvalue of the symmetric ``C`` (d, d) is below ``bound1`` and the
    second below ``bound2``, shown by two Cholesky factorisations (float64, a third of the
    work of the eigenvalues): ``bound1 I - C`` is positive definite, and so is
    ``bound2 I - (C - r q q^T)`` for the unit ``q`` and ``r >= 0`` (the top Ritz pair): the
    second eigenvalue of C is at most the largest of C minus any positive semi-definite
    rank-one matrix (Weyl).  False: not shown (either bound may still hold)."""
    d = C.shape[0]
    A = np.empty((d, d))
    for i in range(d):
        for j in range(d):
            A[i, j] = -C[i, j]
        A[i, i] += bound1
    if not _definite(A):
        return False
    for i in range(d):
        for j in range(d):
            A[i, j] = r * q[i] * q[j] - C[i, j]
        A[i, i] += bound2
    return _definite(A)


@ngjit_fast
def covariance_refine_kernel(C, Xc, start, passes, total, scores, basis, ritz):
    """What ``_kernels.tracked_pca_kernel`` computes (same outputs, same meaning), from the
    covariance matrix ``C = Xc^T Xc`` (d, d) float32 instead of a sweep over the rows per
    pass: each pass is a (p, d) x (d, d) product; the rows are read once, for the scores."""
    p, d = start.shape
    Q = start.copy()
    incoming = -1.0
    for it in range(passes):
        Z = np.dot(Q, C)
        if it == 0:  # the start block's Rayleigh quotient: what it held, for free
            G = np.dot(Z, Q.T).astype(np.float64)
            win = np.linalg.eigvalsh((G + G.T) / 2)
            incoming = win[p - 1] + win[p - 2]
        _orthonormalize_rows(Z)
        Q[:] = Z
    G = np.dot(np.dot(Q, C), Q.T).astype(np.float64)
    w, V = np.linalg.eigh((G + G.T) / 2)  # ascending
    _ritz_pairs(w, V, Q, incoming, total, ritz, basis)
    scores[:] = np.dot(Xc, np.ascontiguousarray(basis[:2].T))


@ngjit_fast
def covariance_apply(Xc, V, out):
    """out = V Xc^T Xc for the rows V (m, d), one sweep over the centred rows; sums in V's
    dtype (float64 for the block's residuals, float32 for Lanczos steps)."""
    n, d = Xc.shape
    m = V.shape[0]
    out[:] = 0.0
    zero = out[0, 0]  # a zero of the sums' dtype
    y = np.empty(m, out.dtype)
    for i in range(n):
        for j in range(m):
            s = zero
            for k in range(d):
                s += Xc[i, k] * V[j, k]
            y[j] = s
        for j in range(m):
            yj = y[j]
            for k in range(d):
                out[j, k] += yj * Xc[i, k]


@ngjit_fast
def _project_out(w, V, rows):
    """w minus its components along V's first ``rows`` rows (orthonormal), twice over."""
    for _ in range(2):
        for i in range(rows):
            s = 0.0
            for k in range(w.shape[0]):
                s += w[k] * V[i, k]
            for k in range(w.shape[0]):
                w[k] -= s * V[i, k]


@ngjit_fast
def block_lanczos_kernel(Xc, block, L, alpha, beta, first, last):
    """Lanczos steps ``first..last-1`` on P C P, C = Xc^T Xc, P the projection off
    ``block``'s rows; returns the steps done (fewer on breakdown: the Krylov space is then
    invariant and its largest Ritz value final).

    Xc: (n, d) float32, centred (:func:`centre_kernel`).  block: (p, d) float64, orthonormal
    rows.  L: (steps + 1, d) float64: row 0 the unit start, orthogonal to block, set by the
    caller; then the Lanczos vectors.  alpha, beta: (steps,) float64: the tridiagonal's
    diagonal and off-diagonal.  The products with C run in float32 (as the tracking kernel's);
    the vectors are kept in float64 and fully reorthogonalised against the block and every
    earlier vector, so the tridiagonal is the Rayleigh quotient of P C P on their span.
    """
    d = Xc.shape[1]
    q = np.empty((1, d), np.float32)
    w = np.empty((1, d), np.float32)
    v = np.empty(d)
    for j in range(first, last):
        for k in range(d):
            q[0, k] = L[j, k]
        covariance_apply(Xc, q, w)
        for k in range(d):
            v[k] = w[0, k]
        _project_out(v, block, block.shape[0])
        s = 0.0
        for k in range(d):
            s += v[k] * L[j, k]
        alpha[j] = s
        scale = 0.0
        for k in range(d):
            scale += v[k] * v[k]
        _project_out(v, L, j + 1)
        _project_out(v, block, block.shape[0])
        s = 0.0
        for k in range(d):
            s += v[k] * v[k]
        beta[j] = np.sqrt(s)
        if beta[j] <= 1e-12 * np.sqrt(scale):  # nothing new (float32 noise is still a vector)
            beta[j] = 0.0
            return j + 1
        for k in range(d):
            L[j + 1, k] = v[k] / beta[j]
    return last


def block_lanczos_numpy(X, block, start, steps):
    """The numpy twin of :func:`block_lanczos_kernel` from step 0 (``start``: any vector,
    deflated and normalised here), in float64: returns (alpha, beta, CV), CV = block C."""
    Xc = np.asarray(X, dtype=np.float64) - np.asarray(X, dtype=np.float64).mean(axis=0)
    P = np.eye(Xc.shape[1]) - block.T @ block
    A = P @ (Xc.T @ Xc) @ P
    q = P @ start
    Q = [q / np.linalg.norm(q)]
    alpha, beta = [], []
    for j in range(steps):
        w = A @ Q[j]
        alpha.append(w @ Q[j])
        for _ in range(2):
            w = w - np.array(Q).T @ (np.array(Q) @ w)
            w = P @ w
        beta.append(np.linalg.norm(w))
        Q.append(w / beta[-1])
    return np.array(alpha), np.array(beta), block @ (Xc.T @ Xc)
