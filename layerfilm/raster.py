"""Positions -> per-panel density counts (numba splatting)."""

from __future__ import annotations

import numpy as np

from ._kernels import splat_kernel


class Rasterizer:
    """Splats all panels' points into one ``(H, W)`` float32 count image.

    rects: (L, 4) int64 ``[x0, y0, x1, y1)`` of each panel's square interior in the frame;
    half: (L,) the half-width in data units that each panel shows (centred on 0);
    starts: (L+1,) offsets of each panel's points in the flat ``(N, 2)`` positions.
    """

    def __init__(self, size: tuple[int, int], rects: np.ndarray, half: np.ndarray, starts: np.ndarray):
        w, h = size
        self.rects = np.ascontiguousarray(rects, dtype=np.int64)
        self.starts = np.ascontiguousarray(starts, dtype=np.int64)
        x0, y0, x1, y1 = self.rects.T
        sx = (x1 - x0) / (2.0 * np.asarray(half, dtype=np.float64))
        sy = (y1 - y0) / (2.0 * np.asarray(half, dtype=np.float64))
        # y grows upwards in data, downwards in pixels.
        self.xform = np.ascontiguousarray(np.stack([sx, (x0 + x1) / 2.0, -sy, (y0 + y1) / 2.0], axis=1))
        self.counts = np.zeros((h, w), dtype=np.float32)

    def __call__(self, xy: np.ndarray) -> np.ndarray:
        """Add ``xy`` (N, 2) float32 into the count buffer and return it (owned by the caller
        until it is reset, e.g. by :class:`layerfilm.shade.Shader`)."""
        splat_kernel(xy, self.starts, self.xform, self.rects, self.counts)
        return self.counts

    def span(self, P: np.ndarray) -> float:
        """The highest density of any pixel over all keyframes ``P`` (K, N, 2): the film's
        colour span, fixed before the first frame."""
        top = 0.0
        for k in range(P.shape[0]):
            counts = self(np.ascontiguousarray(P[k]))
            top = max(top, float(counts.max()))
            counts[...] = 0
        return top if top > 0 else 1.0
