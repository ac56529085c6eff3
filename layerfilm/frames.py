"""Keyframe layouts -> frame ``f`` of the film: interpolate, rasterize, shade and compose.

:func:`prepare` fixes everything before the first frame -- the timeline, the panel layout,
each panel's axis range, the film's colour span, the labels and the overlays -- into a
read-only :class:`Film`.  A :class:`FrameMaker` (one per render job: it owns its buffers) then
makes any frame of it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from . import compose, interpolate, overlays, project, raster, shade
from .checkpoints import LossCurve
from .config import RenderConfig
from .layouts import Keyframes
from .plan import Plan
from .stats import Drift, Settling


@dataclasses.dataclass(frozen=True)
class Film:
    """Everything fixed before the first frame; shared read-only by all render jobs.

    P: (K, N, 2) float32 keyframe layouts; times: (K,) frame time of each keyframe (whole
    numbers); steps: (K,) float64 training steps; scale: (L,) each panel's pixels per data
    unit; sigma: (L,) its dots' footprint in pixels; starts: (L+1,) panel offsets into the
    points; outside: (L,) how many (frame, dot) pairs are drawn pinned to a panel's edge.
    """

    P: np.ndarray
    times: np.ndarray
    steps: np.ndarray
    loss: LossCurve | None
    layout: compose.Layout
    scale: np.ndarray
    sigma: np.ndarray
    starts: np.ndarray
    shader: shade.Shader
    labels: list[str]
    notes: list[str]
    title: str
    n_frames: int
    overlays: tuple[compose.Overlay, ...] = ()
    outside: np.ndarray | None = None

    def keyframe_frames(self) -> list[int]:
        """The frame number of each keyframe."""
        return [int(t) for t in self.times]

    def describe(self) -> dict:
        """How the film was drawn, for the manifest: per panel its scale, dot size and how many
        (frame, dot) pairs were pinned to its edge, and the colour span."""
        out = np.zeros(len(self.labels), dtype=np.int64) if self.outside is None else self.outside
        return {"color_span": round(float(self.shader.span), 6),
                "panels": {label: {"pixels_per_unit": round(float(s), 6),
                                   "dot_size_px": round(float(g * raster.FWHM), 3),
                                   "pinned_to_edge": int(n)}
                           for label, s, g, n in zip(self.labels, self.scale, self.sigma, out)},
                "pinned_to_edge": int(out.sum())}

    def rasterizer(self) -> raster.Rasterizer:
        return raster.Rasterizer(self.layout.size, self.layout.rects, self.scale, self.sigma,
                                 self.starts)


class FrameMaker:
    """Frame ``f`` of a :class:`Film` as an ``(H, W)`` uint8 index frame (a buffer reused from
    call to call)."""

    def __init__(self, film: Film):
        self.film = film
        self.rasterize = film.rasterizer()
        self.compose = compose.FrameComposer(film.layout, film.labels, film.notes, film.title,
                                             film.shader, film.overlays)
        self.interp = interpolate.Interpolator(film.P, film.times)

    def __call__(self, f: int) -> np.ndarray:
        film = self.film
        step = int(round(np.interp(f, film.times, film.steps)))
        loss = film.loss.at(step) if film.loss else None
        return self.compose(self.rasterize(self.interp.at(f)), step, loss,
                            f / max(film.n_frames - 1, 1), f)


def settle_order(plan: Plan, keys: Keyframes, measured: Drift, settling: Settling
                 ) -> tuple[Plan, Keyframes, Drift]:
    """Panels reordered by settling step (earliest first, never-settling last, ties in film order)."""
    settle = measured.settle_steps(settling)
    order = sorted(range(len(plan.layers)), key=lambda l: (np.isnan(settle[l]), settle[l], l))
    return plan.reordered(order), keys.reordered(order, plan.starts), measured.reordered(order)


def prepare(plan: Plan, keys: Keyframes, cfg: RenderConfig, measured: Drift | None = None) -> Film:
    """Everything about the film that is fixed before its first frame (see :class:`Film`).

    ``measured`` (the layers' weight statistics) is needed for ``--drift`` and ``--order
    settle``; the panels are drawn in ``plan``'s order.
    """
    starts = plan.starts
    if cfg.timeline == "step":
        times = interpolate.step_times(plan.steps, cfg.keyframe_frames)
    else:
        times = interpolate.keyframe_times(len(plan.refs), cfg.keyframe_frames)
    footer = overlays.strip_height(cfg.size) if cfg.loss_strip else 0
    groups = [l.group for l in plan.layers]  # encoder/decoder row bands, unless reordered
    layout = compose.grid_layout(len(plan.layers), cfg.size, footer,
                                 groups if groups == sorted(groups) else None)
    extremes = interpolate.curve_extremes(keys.P, times)
    half = project.axis_ranges(extremes, starts).max(axis=1)  # square panels
    rects = layout.rects
    sigma = raster.dot_sizes(rects, [l.n_points for l in plan.layers], cfg.point_size) / raster.FWHM
    scale = ((rects[:, 2] - rects[:, 0]) / 2.0 - raster.edge_pad(sigma)) / half
    if cfg.scale == "shared":
        scale = np.full(len(scale), scale.min())
    rasterizer = raster.Rasterizer(cfg.size, rects, scale, sigma, starts)
    outside = interpolate.outside_counts(keys.P, times, rasterizer.limits, starts, extremes)
    span = rasterizer.span(keys.P)
    notes = [f"{l.n_points:,} pts" for l in plan.layers]
    extras: list[compose.Overlay] = []
    if measured is not None and cfg.order == "settle":
        notes = ["never settles" if np.isnan(s) else f"settles {int(s):,}"
                 for s in measured.settle_steps(Settling.of(cfg))]
    if measured is not None and cfg.drift:
        extras.append(overlays.DriftBars(layout.rects, measured.rate, times))
    if cfg.loss_strip:
        extras.append(overlays.LossStrip.below_panels(layout, plan.loss.steps, plan.loss.values,
                                                      (float(plan.steps[0]), float(plan.steps[-1]))))
    return Film(keys.P, times, plan.steps.astype(np.float64), plan.loss, layout, scale, sigma,
                starts, shade.Shader(span, cfg.color_scale), [l.label for l in plan.layers], notes,
                plan.name, interpolate.frame_count(times), tuple(extras), outside)
