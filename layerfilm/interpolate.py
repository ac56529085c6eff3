"""Keyframe tracks -> positions for any frame.

Frames sit at integer times ``0 .. n_frames-1``; keyframe ``k`` sits at
``times[k]``.  Between keyframes points move along a cubic Hermite curve with
Catmull-Rom tangents (see ``_kernels.hermite_kernel``): exact at every keyframe,
velocity-continuous across them.
"""

from __future__ import annotations

import numpy as np

from ._kernels import hermite_kernel


def keyframe_times(n_keyframes: int, frames_per_keyframe: int) -> np.ndarray:
    """Frame time of each keyframe: ``(K,)`` float64, evenly spaced."""
    return np.arange(n_keyframes, dtype=np.float64) * frames_per_keyframe


def step_times(steps: np.ndarray, frames_per_keyframe: int) -> np.ndarray:
    """Frame time of each keyframe placed by training step: ``(K,)`` float64, whole numbers.

    The film is as long as with :func:`keyframe_times` (``(K-1) * frames_per_keyframe``
    frames from first to last keyframe), but each gap gets frames in proportion to its
    training steps, so unevenly spaced checkpoints keep true time.  Every keyframe sits
    exactly on a frame of its own (its time rounded, then kept at least one frame after the
    one before and before the one after), so the frame at a checkpoint shows that checkpoint's
    layout and step, not an interpolation.
    """
    steps = np.asarray(steps, dtype=np.float64)
    span = (len(steps) - 1) * frames_per_keyframe
    t = np.round((steps - steps[0]) / (steps[-1] - steps[0]) * span)
    for k in range(1, len(t)):
        t[k] = max(t[k], t[k - 1] + 1)
    t[-1] = span
    for k in range(len(t) - 2, -1, -1):
        t[k] = min(t[k], t[k + 1] - 1)
    return t


def frame_count(times: np.ndarray) -> int:
    """Frames in the film: one per integer time from the first keyframe to the last."""
    return int(round(times[-1] - times[0])) + 1


def segment(times: np.ndarray, t: float) -> tuple[int, float]:
    """Index ``k`` of the segment holding time ``t`` and the fraction ``s`` in [0, 1]."""
    k = int(np.searchsorted(times, t, side="right")) - 1
    k = min(max(k, 0), len(times) - 2)
    return k, (t - times[k]) / (times[k + 1] - times[k])


class Interpolator:
    """Positions of all N points at any time; reuses one output buffer.

    P: (K, N, 2) float32 aligned keyframe layouts (K >= 2); times: (K,) float64, increasing.
    """

    def __init__(self, P: np.ndarray, times: np.ndarray):
        self.P = np.ascontiguousarray(P, dtype=np.float32)
        self.times = np.ascontiguousarray(times, dtype=np.float64)
        self.out = np.empty(self.P.shape[1:], dtype=np.float32)

    def at(self, t: float) -> np.ndarray:
        """``(N, 2)`` float32 positions at time ``t`` (the returned buffer is reused)."""
        k, _ = segment(self.times, t)
        hermite_kernel(self.P, self.times, k, float(t), self.out)
        return self.out


def _segment_cubics(P: np.ndarray, times: np.ndarray, k: int):
    """Coefficients ``(a, b, c, d)`` of segment ``k``'s cubic ``((a s + b) s + c) s + d`` in
    ``s`` in [0, 1], each ``(N, 2)`` float64 -- the curve :func:`_kernels.hermite_kernel` draws."""
    K = len(times)
    km, kp = max(k - 1, 0), min(k + 2, K - 1)
    h = times[k + 1] - times[k]
    p0, p1 = P[k].astype(np.float64), P[k + 1].astype(np.float64)
    t0 = (p1 - P[km]) * (h / (times[k + 1] - times[km]))
    t1 = (P[kp] - p0) * (h / (times[kp] - times[k]))
    return 2 * p0 + t0 - 2 * p1 + t1, -3 * p0 - 2 * t0 + 3 * p1 - t1, t0, p0


def curve_extremes(P: np.ndarray, times: np.ndarray) -> np.ndarray:
    """How far out each point goes between keyframes: ``(K-1, N, 2)`` float64, the largest
    ``|x|`` and ``|y|`` on each segment's curve, both ends included -- found exactly, where the
    cubic's derivative vanishes, not by sampling (NaN for points that are not finite)."""
    out = np.empty((len(times) - 1,) + P.shape[1:])
    with np.errstate(all="ignore"):
        for k in range(len(times) - 1):
            a, b, c, d = _segment_cubics(P, times, k)
            best = np.maximum(np.abs(d), np.abs(a + b + c + d))
            qa, qb = 3 * a, 2 * b  # p'(s) = qa s^2 + qb s + c
            root = np.sqrt(np.maximum(qb * qb - 4 * qa * c, 0.0))
            for s in ((-qb + root) / (2 * qa), (-qb - root) / (2 * qa), -c / qb):
                inside = np.isfinite(s) & (s > 0) & (s < 1)
                value = np.abs(((a * s + b) * s + c) * s + d)
                best = np.where(inside & (value > best), value, best)
            out[k] = best
    return out


def outside_counts(P: np.ndarray, times: np.ndarray, limits: np.ndarray, starts: np.ndarray,
                   extremes: np.ndarray | None = None) -> np.ndarray:
    """``(L,)`` int64: per panel, how many (frame, point) pairs of the film lie outside the
    panel's range ``|x| <= limits[l, 0]``, ``|y| <= limits[l, 1]`` -- the dots drawn pinned to
    the panel's edge.  Exact: the frames of every segment whose curve leaves the range are
    evaluated by the film's own kernel."""
    if extremes is None:
        extremes = curve_extremes(P, times)
    lim = np.repeat(np.asarray(limits, dtype=np.float64), np.diff(starts), axis=0)  # (N, 2)
    panel = np.repeat(np.arange(len(starts) - 1), np.diff(starts))
    out = np.zeros(len(starts) - 1, dtype=np.int64)
    n_frames = frame_count(times)
    for k in range(len(times) - 1):
        idx = np.flatnonzero((extremes[k] > lim).any(axis=1))
        if not idx.size:
            continue
        sub = np.ascontiguousarray(P[:, idx], dtype=np.float32)
        xy = np.empty((len(idx), 2), dtype=np.float32)
        end = n_frames if k == len(times) - 2 else int(np.ceil(times[k + 1]))
        for f in range(int(np.ceil(times[k])), end):
            hermite_kernel(sub, times, k, float(f), xy)
            beyond = (np.abs(xy.astype(np.float64)) > lim[idx]).any(axis=1)
            np.add.at(out, panel[idx[beyond]], 1)
    return out
