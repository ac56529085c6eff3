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
