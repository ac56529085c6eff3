"""Keyframe tracks -> positions for any frame.

Frames sit at integer times ``0 .. n_frames-1``; keyframe ``k`` sits at
``times[k]``.  Between keyframes points move along a cubic Hermite curve with
Catmull-Rom tangents (see ``_kernels.hermite_kernel``): exact at every keyframe,
velocity-continuous across them.
"""

from __future__ import annotations

import concurrent.futures

import numpy as np

from ._draw_kernels import curve_extremes_kernel
from ._kernels import hermite_at
from .cluster import threads


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
        hermite_at(self.P, self.times, k, float(t), self.out)
        return self.out


def curve_extremes(P: np.ndarray, times: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """How far out each point goes between keyframes: ``(K-1, N, 2)`` float64, the largest
    ``|x|`` and ``|y|`` on each segment's curve, both ends included -- found exactly, where the
    cubic's derivative vanishes, not by sampling (NaN for points that are not finite); into
    ``out`` (C order) when given."""
    out = np.empty((len(times) - 1,) + P.shape[1:]) if out is None else out
    P = np.ascontiguousarray(P, dtype=np.float32)
    times = np.ascontiguousarray(times, dtype=np.float64)
    # Before the first frame nothing else runs: the segments are shared out to threads (the
    # kernel releases the GIL; each segment is written by one thread, so the result is the same).
    parts = np.linspace(0, len(times) - 1, threads() + 1).astype(np.int64)
    with concurrent.futures.ThreadPoolExecutor(len(parts) - 1) as pool:
        list(pool.map(lambda ab: curve_extremes_kernel(P, times, ab[0], ab[1], out),
                      zip(parts[:-1], parts[1:])))
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
    # (K-1, N): the segments that leave the range (x or y; numpy's any over a length-2 axis
    # took 12x as long, 0.53 s on the bench film)
    leave = (extremes[..., 0] > lim[:, 0]) | (extremes[..., 1] > lim[:, 1])
    for k in np.flatnonzero(leave.any(axis=1)):
        idx = np.flatnonzero(leave[k])
        sub = np.ascontiguousarray(P[:, idx], dtype=np.float32)
        xy = np.empty((len(idx), 2), dtype=np.float32)
        end = n_frames if k == len(times) - 2 else int(np.ceil(times[k + 1]))
        for f in range(int(np.ceil(times[k])), end):
            hermite_at(sub, times, k, float(f), xy)
            beyond = (np.abs(xy.astype(np.float64)) > lim[idx]).any(axis=1)
            np.add.at(out, panel[idx[beyond]], 1)
    return out
