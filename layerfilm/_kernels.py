"""The numba kernels, each beside a plain-numpy twin that tests compare it to.

Kernels trust their inputs (validation happened in ``config/validate.py``) and run
single-threaded on purpose: ffmpeg needs the other cores, and ``parallel=True``
kernels fighting the encoder cost more than they win.  ``cache=True`` keeps the
compiled code on disk so a second run starts fast.

A hot loop is written for the compiler to vectorise it: one unit-stride loop over flat
arrays (a (N, 2) array as 2N numbers, not a loop over points with one over x and y inside),
selects (``a if c else b``, ``&`` of comparisons) instead of branches and of ``min``/``max``
(which branch on NaN), separate 1-D arrays rather than columns of a 2-D one, and no two
views of one buffer as different types.  Vectorised, the interpolation took 0.11 ms a bench
frame instead of 0.38, the splat's placing of its points 1.0 ms less; whether a loop was
vectorised shows in ``kernel.inspect_asm()`` of an uncached compile (``zmm``/``ymm``
arithmetic such as ``vmulpd``).
"""

from __future__ import annotations

import numba
import numpy as np

ngjit = numba.njit(cache=True, nogil=True, fastmath=False, error_model="numpy")
# fastmath lets sums vectorise (reassociated); the results are the same run after run.
ngjit_fast = numba.njit(cache=True, nogil=True, fastmath=True, error_model="numpy")


# --- interpolation ---------------------------------------------------------------------------
# Cubic Hermite through the keyframes with Catmull-Rom (finite-difference) tangents on a
# non-uniform time axis: positions pass exactly through every keyframe and the tangent at a
# keyframe is shared by the two segments that meet there, so velocity is continuous (no pulse).

@ngjit
def hermite_kernel(P, times, k, t, out):
    """Positions at time ``t`` in segment ``k`` (``times[k] <= t <= times[k+1]``).

    P: (K, M) float32 keyframe coordinates -- (K, N, 2) layouts viewed as (K, 2N), so one
    loop runs over every coordinate and vectorises (a loop over points with one over x and y
    inside did not: 3.4x the time); times: (K,) float64; out: (M,) float32.
    """
    K = P.shape[0]
    t0 = times[k]
    t1 = times[k + 1]
    h = t1 - t0
    s = (t - t0) / h
    s2 = s * s
    s3 = s2 * s
    h00 = 2.0 * s3 - 3.0 * s2 + 1.0
    h10 = s3 - 2.0 * s2 + s
    h01 = -2.0 * s3 + 3.0 * s2
    h11 = s3 - s2
    # Tangent weights: m_k = (P[k+1] - P[k-1]) / (t[k+1] - t[k-1]), one-sided at the ends.
    km = k - 1 if k > 0 else k
    kp = k + 2 if k + 2 < K else k + 1
    a0 = h10 * h / (times[k + 1] - times[km])
    a1 = h11 * h / (times[kp] - times[k])
    here, there, before, after = P[k], P[k + 1], P[km], P[kp]
    for i in range(P.shape[1]):
        p0 = here[i]
        p1 = there[i]
        m0 = (p1 - before[i]) * a0
        m1 = (after[i] - p0) * a1
        out[i] = h00 * p0 + m0 + h01 * p1 + m1


def hermite_at(P, times, k, t, out):
    """:func:`hermite_kernel` for (K, N, 2) layouts ``P`` (contiguous in their last two axes,
    as any ``P[:, a:b]`` of a C-contiguous array is: a view, not a copy) into the
    C-contiguous ``out`` (N, 2)."""
    if not out.flags.c_contiguous:  # its reshape would be a copy, written and lost
        raise ValueError("hermite_at writes into a C-contiguous (N, 2) array")
    hermite_kernel(P.reshape(P.shape[0], -1), times, k, t, out.reshape(-1))


def hermite_numpy(P, times, k, t):
    """The numpy twin of :func:`hermite_kernel`; returns ``(N, 2)`` float32."""
    P = P.astype(np.float64)
    K = len(times)
    km, kp = max(k - 1, 0), min(k + 2, K - 1)
    h = times[k + 1] - times[k]
    s = (t - times[k]) / h
    m0 = (P[k + 1] - P[km]) / (times[k + 1] - times[km])
    m1 = (P[kp] - P[k]) / (times[kp] - times[k])
    h00, h10 = 2 * s**3 - 3 * s**2 + 1, s**3 - 2 * s**2 + s
    h01, h11 = -2 * s**3 + 3 * s**2, s**3 - s**2
    return (h00 * P[k] + h10 * h * m0 + h01 * P[k + 1] + h11 * h * m1).astype(np.float32)


# --- drift --------------------------------------------------------------------------------------
# A layer's weight norm and its change since the previous keyframe, in one pass over float32
# weights with float64 sums and no temporaries: the film's activity cues and ``layerfilm stats``
# share this kernel, so both agree to the last bit.

@ngjit_fast
def sq_norms_kernel(W, prev, out):
    """``out[0] = sum(W**2)``, ``out[1] = sum((W - prev)**2)`` (float64 sums, vectorised).

    W: (n, d) float32, any strides; prev: (n, d) float32, or (0, 0) when there is no previous
    keyframe (``out[1]`` is then NaN); out: (2,) float64.
    """
    s, t = 0.0, 0.0
    n, d = W.shape
    if prev.shape[0] == n and prev.shape[1] == d:
        for i in range(n):
            for j in range(d):
                w = np.float64(W[i, j])
                e = w - np.float64(prev[i, j])
                s += w * w
                t += e * e
        out[1] = t
    else:
        for i in range(n):
            for j in range(d):
                w = np.float64(W[i, j])
                s += w * w
        out[1] = np.nan
    out[0] = s


def sq_norms_numpy(W, prev):
    """The numpy twin of :func:`sq_norms_kernel`; returns ``(sum W**2, sum (W - prev)**2)``."""
    W = np.asarray(W, dtype=np.float64)
    if prev is None or np.shape(prev) != W.shape:
        return float((W ** 2).sum()), np.nan
    return float((W ** 2).sum()), float(((W - np.asarray(prev, dtype=np.float64)) ** 2).sum())


# --- drift sketch -------------------------------------------------------------------------------
# A CountSketch of a layer's drawn weights: element (i, j) is added, with sign sr[i] * sc[j], into
# bucket (hr[i] + hc[j]) mod S.  The sketch is linear, so the sketch of W_b - W_a is the difference
# of the two sketches, and its squared norm estimates ||W_b - W_a||**2 (relative error about
# sqrt(2 / S) for a dense difference): the change between ANY two keyframes, from one pass that
# holds a single checkpoint.  Fixed hashes per shape make the sketches of every keyframe comparable.

@ngjit
def sketch_kernel(W, hr, sr, hc, sc, out):
    """``out[(hr[i] + hc[j]) % S] += sr[i] * sc[j] * W[i, j]`` for every element (float64).

    W: (n, d) float32, any strides; hr, hc: (n,), (d,) int64 in ``0 .. S-1``; sr, sc: (n,),
    (d,) float64 of +-1; out: (S,) float64 with S a power of two, zeroed here.
    """
    mask = out.shape[0] - 1  # S is a power of two
    out[:] = 0.0
    n, d = W.shape
    for i in range(n):
        base, sign = hr[i], sr[i]
        for j in range(d):
            out[(base + hc[j]) & mask] += sign * sc[j] * np.float64(W[i, j])


def sketch_numpy(W, hr, sr, hc, sc, S):
    """The numpy twin of :func:`sketch_kernel`; returns ``(S,)`` float64."""
    W = np.asarray(W, dtype=np.float64)
    buckets = (hr[:, None] + hc[None, :]) % S
    out = np.zeros(S)
    np.add.at(out, buckets.ravel(), (sr[:, None] * sc[None, :] * W).ravel())
    return out


# --- palette lookup --------------------------------------------------------------------------

@ngjit
def palette_rgb_kernel(frame, palette, out):
    """``out[y, x] = palette[frame[y, x]]``: (H, W) uint8 indices -> (H, W, 3) uint8 RGB."""
    for y in range(frame.shape[0]):
        for x in range(frame.shape[1]):
            i = frame[y, x]
            out[y, x, 0] = palette[i, 0]
            out[y, x, 1] = palette[i, 1]
            out[y, x, 2] = palette[i, 2]


@ngjit
def palette_rgb_changed_kernel(words, seen_words, frame, seen, palette, out):
    """:func:`palette_rgb_kernel` for the pixels that differ from the last frame converted:
    ``out`` (H*W*3 uint8, flat) already holds ``palette[seen]``; each 8-pixel word of
    ``frame`` (H*W uint8, flat; ``words`` the same memory as uint64) that differs from
    ``seen``'s is converted and copied into ``seen``.  Consecutive frames of a film differ in
    a small part (the dots, the cursor, the numbers), so most of a frame costs one compare
    per 8 pixels."""
    for w in range(words.shape[0]):
        if words[w] != seen_words[w]:
            seen_words[w] = words[w]
            for p in range(np.uint64(w * 8), np.uint64(w * 8 + 8)):
                i = frame[p]
                q = p * np.uint64(3)
                out[q] = palette[i, 0]
                out[q + np.uint64(1)] = palette[i, 1]
                out[q + np.uint64(2)] = palette[i, 2]
    for p in range(words.shape[0] * 8, frame.shape[0]):  # the last pixels, fewer than 8
        i = frame[p]
        seen[p] = i
        out[3 * p] = palette[i, 0]
        out[3 * p + 1] = palette[i, 1]
        out[3 * p + 2] = palette[i, 2]


def palette_rgb_numpy(frame, palette, out):
    """The numpy twin of :func:`palette_rgb_kernel`."""
    np.take(palette, frame, axis=0, out=out)


# --- tracked PCA -------------------------------------------------------------------------------
# Block subspace iteration for the top principal axes of a layer, continued from the previous
# keyframe's directions.  One kernel per keyframe and layer, with no BLAS inside: threads that
# project different layers at once neither wait on the GIL nor on OpenBLAS's internal lock
# (measured here: two threads calling numpy's matmul ran no faster than one).  fastmath lets the
# inner products vectorise; results do not depend on which thread runs them.



@ngjit_fast
def _orthonormalize_rows(Z):
    """Modified Gram-Schmidt (twice) on the rows of Z (p, d), in place.  A row that is (nearly)
    dependent on the rows before it is replaced by a coordinate axis, so the block keeps full
    rank even for an all-zero layer."""
    p, d = Z.shape
    scale = 0.0
    for j in range(p):
        s = 0.0
        for k in range(d):
            s += Z[j, k] * Z[j, k]
        scale = max(scale, np.sqrt(s))
    for j in range(p):
        for trial in range(d + 1):
            for _ in range(2):
                for i in range(j):
                    s = 0.0
                    for k in range(d):
                        s += Z[i, k] * Z[j, k]
                    for k in range(d):
                        Z[j, k] -= s * Z[i, k]
            s = 0.0
            for k in range(d):
                s += Z[j, k] * Z[j, k]
            norm = np.sqrt(s)
            if norm > 1e-5 * scale and norm > 0.0:
                for k in range(d):
                    Z[j, k] /= norm
                break
            for k in range(d):  # dependent: try the next coordinate axis instead
                Z[j, k] = 0.0
            Z[j, (j + trial) % d] = 1.0
            scale = 1.0


@ngjit_fast
def _ritz_pairs(w, V, Q, incoming, total, ritz, basis):
    """The block ``Q`` (p, d)'s Ritz pairs, largest first, from its Rayleigh quotient's
    eigenvalues ``w`` and eigenvectors ``V`` (ascending): ``ritz`` gets the p values, then the
    top-two variance the block held coming in (``incoming``; the top two values when it is
    negative: no pass was made) and the ``total``; the rows of ``basis`` (p, d) the vectors."""
    p, d = Q.shape
    for a in range(p):
        ritz[a] = w[p - 1 - a]
    ritz[p] = incoming if incoming >= 0.0 else w[p - 1] + w[p - 2]
    ritz[p + 1] = total
    for a in range(p):
        for k in range(d):
            s = 0.0
            for j in range(p):
                s += V[j, p - 1 - a] * Q[j, k]
            basis[a, k] = s


@ngjit_fast
def tracked_pca_kernel(X, start, passes, scores, basis, ritz):
    """Top-two principal scores of X, refining the directions ``start`` by ``passes`` passes.

    X: (n, d) float32.  start: (p, d) float32, orthonormal rows (the previous keyframe's
    ``basis``, or a random start).  scores: (n, 2) float32 out, centred.  basis: (p, d)
    float32 out: the refined directions, ordered by the variance they explain.  ritz: (p + 2,)
    float64 out: the variance along each refined direction (Ritz values, descending), then
    the variance ``start``'s best two directions held before refining (the top-two Ritz sum
    of ``start`` on X: how much the passes gained tells whether the block had fallen behind),
    then the total variance of X.
    """
    n, d = X.shape
    p = start.shape[0]
    acc = np.zeros(d)
    for i in range(n):
        for k in range(d):
            acc[k] += X[i, k]
    mu = np.empty(d, np.float32)
    for k in range(d):
        mu[k] = acc[k] / n
    Q = start.copy()
    Z = np.empty((p, d), np.float32)
    xc = np.empty(d, np.float32)
    y = np.empty(p, np.float32)
    incoming = -1.0
    for it in range(passes):
        # Z = Q (X - mu)^T (X - mu), one sweep over the rows.
        Z[:] = 0.0
        for i in range(n):
            for k in range(d):
                xc[k] = X[i, k] - mu[k]
            for j in range(p):
                s = np.float32(0.0)
                for k in range(d):
                    s += xc[k] * Q[j, k]
                y[j] = s
            for j in range(p):
                yj = y[j]
                for k in range(d):
                    Z[j, k] += yj * xc[k]
        if it == 0:
            # Q C Q^T, the start block's Rayleigh quotient: its top-two eigenvalues are what
            # the start directions held, for free.
            Gin = np.zeros((p, p))
            for a in range(p):
                for b in range(p):
                    s = 0.0
                    for k in range(d):
                        s += Z[a, k] * Q[b, k]
                    Gin[a, b] = s
            for a in range(p):
                for b in range(a):
                    Gin[a, b] = Gin[b, a] = 0.5 * (Gin[a, b] + Gin[b, a])
            win = np.linalg.eigvalsh(Gin)
            incoming = win[p - 1] + win[p - 2]
        _orthonormalize_rows(Z)
        Q[:] = Z
    # Rayleigh-Ritz: the data in the block, B = (X - mu) Q^T, and its own principal axes.
    B = np.empty((n, p), np.float32)
    G = np.zeros((p, p))
    total = 0.0
    for i in range(n):
        for k in range(d):
            xc[k] = X[i, k] - mu[k]
            total += xc[k] * xc[k]
        for j in range(p):
            s = np.float32(0.0)
            for k in range(d):
                s += xc[k] * Q[j, k]
            B[i, j] = s
        for a in range(p):
            for b in range(a + 1):
                G[a, b] += B[i, a] * B[i, b]
    for a in range(p):
        for b in range(a):
            G[b, a] = G[a, b]
    w, V = np.linalg.eigh(G)  # ascending
    for i in range(n):
        for c in range(2):
            s = 0.0
            for j in range(p):
                s += B[i, j] * V[j, p - 1 - c]
            scores[i, c] = s
    _ritz_pairs(w, V, Q, incoming, total, ritz, basis)


def tracked_pca_numpy(X, start, passes):
    """The numpy twin of :func:`tracked_pca_kernel` (QR instead of Gram-Schmidt: the same
    subspace, so scores agree up to the sign of each column); returns (scores, basis, ritz)."""
    X = np.asarray(X, dtype=np.float64)
    Xc = X - X.mean(axis=0)
    Q = np.asarray(start, dtype=np.float64).T  # (d, p)
    w_in = np.linalg.eigvalsh(Q.T @ Xc.T @ Xc @ Q)[::-1]
    for _ in range(passes):
        Q, _ = np.linalg.qr(Xc.T @ (Xc @ Q))
    B = Xc @ Q
    w, V = np.linalg.eigh(B.T @ B)
    w, V = w[::-1], V[:, ::-1]
    ritz = np.r_[w, w_in[:2].sum(), (Xc ** 2).sum()]
    return B @ V[:, :2], (Q @ V).T, ritz


# --- alignment -----------------------------------------------------------------------------------

@ngjit
def all_finite(X):
    """``np.isfinite(X).all()`` for a 2-D ``X``, without the GIL or a mask as large as ``X``
    (a row at a time; the comparison is what ``isfinite`` is: ``|x| < inf`` is false for
    NaN and the infinities)."""
    n, d = X.shape
    for i in range(n):
        ok = True
        for k in range(d):
            ok &= abs(X[i, k]) < np.inf
        if not ok:
            return False
    return True


@ngjit
def align_kernel(layout, previous, out):
    """Centre ``layout`` (n, 2) and rotate/reflect it onto ``previous`` (n, 2), into ``out``.

    The orthogonal 2x2 Procrustes problem in closed form: with M = A^T B, the best rotation
    by atan2(M10 - M01, M00 + M11) and the best reflection by atan2(M01 + M10, M00 - M11);
    whichever reaches the larger trace(R^T M) wins.  All rows must be finite; an empty
    ``previous`` only centres.
    """
    n = layout.shape[0]
    mx = 0.0
    my = 0.0
    for i in range(n):
        mx += layout[i, 0]
        my += layout[i, 1]
    mx /= max(n, 1)
    my /= max(n, 1)
    r00, r01, r10, r11 = 1.0, 0.0, 0.0, 1.0
    if previous.shape[0] == n and n >= 2:
        m00 = m01 = m10 = m11 = 0.0
        for i in range(n):
            a0 = layout[i, 0] - mx
            a1 = layout[i, 1] - my
            m00 += a0 * previous[i, 0]
            m01 += a0 * previous[i, 1]
            m10 += a1 * previous[i, 0]
            m11 += a1 * previous[i, 1]
        rot = np.hypot(m00 + m11, m10 - m01)
        ref = np.hypot(m00 - m11, m01 + m10)
        if ref > rot:
            t = np.arctan2(m01 + m10, m00 - m11)
            c, s = np.cos(t), np.sin(t)
            r00, r01, r10, r11 = c, s, s, -c
        elif rot > 0.0:
            t = np.arctan2(m10 - m01, m00 + m11)
            c, s = np.cos(t), np.sin(t)
            r00, r01, r10, r11 = c, -s, s, c
    for i in range(n):
        a0 = layout[i, 0] - mx
        a1 = layout[i, 1] - my
        out[i, 0] = a0 * r00 + a1 * r10
        out[i, 1] = a0 * r01 + a1 * r11
