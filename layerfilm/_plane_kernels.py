"""The numba kernels that check a tracked plane (``pca.certified_share``), each beside a
plain-numpy twin that tests compare it to.

Lanczos on the covariance with the tracked block projected out, from a random start: what it
finds bounds (with a stated probability) the largest variance off the block, which with the
block's residuals bounds the exact top-two variance.  BLAS-free for the same reason as the
tracking kernel in :mod:`layerfilm._kernels`: layers are checked in parallel threads.
"""

from __future__ import annotations

import numpy as np

from ._kernels import ngjit_fast


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
