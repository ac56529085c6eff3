"""The film: keyframe layouts -> frame ``f``: interpolate, rasterize, shade and compose.

:func:`prepare` fixes everything before the first frame -- the timeline, each panel's reach,
the frame's grid and scales, the film's colour span, the header, captions, legend and cues
-- into a read-only :class:`Film`, from a :class:`FilmSpec` (the few choices that decide the
picture).  A :class:`FrameMaker` (one per render job: it owns its buffers) then makes any frame
of it.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np

from . import compose, cues, header, interpolate, overlays, project, raster, shade
from .cluster import threads
from .grid import FrameSpec, Grid, arrange, fonts
from .text import text_width
from .config import RenderConfig
from .layouts import Keyframes
from .plan import Plan
from .drift import Drift, Settling


@dataclasses.dataclass(frozen=True, kw_only=True)
class FilmSpec:
    """What the picture is made from, of all the render options: the frame ``size`` (the one
    source of the film's size; stills at another size get a copy with another ``size``), the
    timeline (``timeline``, ``keyframe_frames`` frames between keyframes), the header
    (``title``, ``tokens_per_step``), the footer (``caption`` text, ``captions`` JSONL file),
    the panels (``scale``, ``point_size``, ``order``), the colours (``color_scale``) and what is
    drawn from the drift (``loss_strip``, ``drift``, ``cues``, ``rebel_z``, ``settling``).
    Build it from a config with :meth:`of`."""

    size: tuple[int, int]
    timeline: str
    keyframe_frames: int
    tokens_per_step: int | None
    title: str | None
    caption: str | None
    captions: Path | None
    loss_strip: bool
    scale: str
    point_size: float | None
    cues: bool
    color_scale: str
    drift: bool
    order: str
    rebel_z: float
    settling: Settling
    label_tokens: tuple[str, ...] = ()  # --points activations: probe tokens labelled

    @classmethod
    def of(cls, config: RenderConfig) -> "FilmSpec":
        """The spec of ``config``'s film: its attribute of each name (``keyframe_frames`` is
        worked out from ``fps``), and its settling rule."""
        named = {f.name: getattr(config, f.name) for f in dataclasses.fields(cls) if f.name != "settling"}
        return cls(**named, settling=Settling.of(config))


@dataclasses.dataclass(frozen=True)
class Film:
    """Everything fixed before the first frame; shared read-only by all render jobs.

    P: (K, N, 2) float32 keyframe layouts; times: (K,) frame time of each keyframe (whole
    numbers); steps: (K,) float64 training steps; starts: (L+1,) panel offsets into the
    points; outside: (L,) how many (frame, dot) pairs are drawn pinned to a panel's edge.
    """

    P: np.ndarray
    times: np.ndarray
    steps: np.ndarray
    grid: Grid
    starts: np.ndarray
    shader: shade.Shader
    labels: list[str]
    n_frames: int
    overlays: tuple[compose.Overlay, ...] = ()
    outside: np.ndarray | None = None

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` of every frame, in pixels."""
        return self.grid.size

    def keyframe_frames(self) -> list[int]:
        """The frame number of each keyframe."""
        return [int(t) for t in self.times]

    def rasterizer(self) -> raster.Rasterizer:
        lay = self.grid
        return raster.Rasterizer(lay.size, lay.rects, lay.scale, lay.sigma, self.starts)

    def describe(self) -> dict:
        """How the film was drawn, for the manifest: per panel its scale, scale bar, dot size
        and how many (frame, dot) pairs were pinned to its edge, and the colour span."""
        lay = self.grid
        out = np.zeros(len(self.labels), dtype=np.int64) if self.outside is None else self.outside
        return {"color_span": round(float(self.shader.span), 6),
                "panels": {label: {"pixels_per_unit": round(float(lay.scale[l]), 6),
                                   "scale_bar": float(lay.bar_value[l]),
                                   "dot_size_px": round(float(lay.sigma[l] * raster.FWHM), 3),
                                   "pinned_to_edge": int(out[l])}
                           for l, label in enumerate(self.labels)},
                "pinned_to_edge": int(out.sum())}


class FrameMaker:
    """Frame ``f`` of a :class:`Film` as an ``(H, W)`` uint8 index frame (a buffer reused from
    call to call)."""

    def __init__(self, film: Film):
        self.film = film
        self.rasterize = film.rasterizer()
        self.compose = compose.FrameComposer(film.grid, film.labels, film.shader, film.overlays)
        self.interp = interpolate.Interpolator(film.P, film.times)

    def __call__(self, f: int) -> np.ndarray:
        film = self.film
        step = int(round(np.interp(f, film.times, film.steps)))
        return self.compose(functools.partial(self.rasterize.shade_into, self.interp.at(f)), f, step)


def keyframe_maker(film: Film):
    """``(k) -> index frame`` of the film at keyframe ``k`` (a buffer reused from call to call)."""
    make = FrameMaker(film)
    return lambda k: make(int(film.times[k]))


def settle_order(plan: Plan, keys: Keyframes, measured: Drift, settling: Settling
                 ) -> tuple[Plan, Keyframes, Drift]:
    """Panels reordered by settling step (earliest first, never-settling last, ties in film order)."""
    settle = measured.settle_steps(settling)
    order = sorted(range(len(plan.layers)), key=lambda l: (np.isnan(settle[l]), settle[l], l))
    return plan.reordered(order), keys.reordered(order, plan.starts), measured.reordered(order)


def _frame_spec(spec: FilmSpec, layers, labels: list[str], captions: list[tuple[int, str]],
                extents=None, title: str = "", widest: tuple = (), shares: tuple = ()) -> FrameSpec:
    """What the frame has to hold (see :class:`FrameSpec`): the one description both
    the plan-time fit check and the film's grid measure."""
    lf = fonts(spec.size)[1]
    one_line = spec.size[0] - 2 * max(4, lf // 2)
    groups = [l.group for l in layers]  # encoder/decoder row bands, unless reordered
    points = np.array([l.n_points for l in layers])
    return FrameSpec(
        spec.size, tuple(labels), tuple(points), extents,
        tuple(groups) if groups == sorted(groups) else None, title, widest,
        captions=max(caption_lines(t, lf, one_line) for _, t in captions) if captions else 0,
        caption=spec.caption is not None,
        strip=overlays.strip_height(spec.size) if spec.loss_strip else 0,
        shared=spec.scale == "shared", point_size=spec.point_size, cues=spec.cues, shares=shares)


def caption_lines(text: str, px: int, width: int) -> int:
    """Footer lines a per-keyframe caption takes: one per line of a caption of several (each
    shortened to fit, as ``--prompt``'s one line per prompt), else one, or two when it is wider
    than the frame (wrapped)."""
    if "\n" in text:
        return text.count("\n") + 1
    return 2 if text_width(text, px) > width else 1


def panels_fit(spec: FilmSpec, prompts: int = 0):
    """A check for :func:`~layerfilm.plan.make_plan` to run once the panels are planned from
    the first checkpoint: :class:`ConfigError` when they cannot fit in a ``spec.size`` frame,
    before any other checkpoint is opened or any data read (100,000 panels were refused only
    after a minute of loading).  How far each panel's dots reach is not known yet; whether the
    panels fit at all does not depend on it.  ``prompts``: caption lines ``--prompt`` will add,
    one a prompt, whose text the model has not said yet."""
    def check(layers) -> None:
        captions = header.load_captions(spec.captions) if spec.captions is not None else []
        if prompts:
            captions = [(0, "\n".join(["?"] * (prompts + bool(captions))))]
        frame = _frame_spec(spec, layers, [l.label for l in layers], captions)
        if spec.order == "settle":  # panels reordered later may lose their bands: the looser case
            frame = dataclasses.replace(frame, groups=None)
        arrange(frame)
    return check


def _share_range(panel: dict) -> tuple[float, float] | None:
    """The lowest and highest share of a panel's variance on its drawn axes over the film's
    keyframes, as its projection measured them (None for UMAP, which measures none)."""
    lo, hi = panel.get("share_min"), panel.get("share_max")
    return None if lo is None or hi is None else (float(lo), float(hi))


EXTREMES_RUNS = 8  # runs of panels whose curves' extremes are held at a time (see _extremes)


def _extremes(P: np.ndarray, times: np.ndarray, starts: np.ndarray):
    """``(l0, l1, s0, s1, extremes)`` for runs of panels ``l0 .. l1-1`` (points ``s0 .. s1-1``):
    :func:`~layerfilm.interpolate.curve_extremes` of their points, each run's into the same
    buffer.  The whole film's at once took 376 MB on the bench film, the peak of a render."""
    L, N, segments = len(starts) - 1, P.shape[1], len(times) - 1
    edges = np.unique(np.r_[0, np.searchsorted(starts, np.arange(1, EXTREMES_RUNS) * N / EXTREMES_RUNS),
                            L])
    block = np.empty(segments * int(np.diff(starts[edges]).max(initial=0)) * 2)
    for l0, l1 in zip(edges[:-1].tolist(), edges[1:].tolist()):
        s0, s1 = int(starts[l0]), int(starts[l1])
        extremes = block[:segments * (s1 - s0) * 2].reshape(segments, s1 - s0, 2)
        yield l0, l1, s0, s1, interpolate.curve_extremes(P[:, s0:s1], times, extremes)


def _reach(P: np.ndarray, times: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """(L, 2) each panel's :func:`~layerfilm.project.axis_ranges` over the film's curves."""
    return np.concatenate([np.empty((0, 2))] + [
        project.axis_ranges(extremes, starts[l0:l1 + 1] - s0, workers=threads())
        for l0, l1, s0, _, extremes in _extremes(P, times, starts)])


def _pinned(P: np.ndarray, times: np.ndarray, limits: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """(L,) :func:`~layerfilm.interpolate.outside_counts` a run of panels at a time, from
    their extremes found again (0.2 s of CPU on the bench film) rather than kept."""
    return np.concatenate([np.zeros(0, np.int64)] + [
        interpolate.outside_counts(P[:, s0:s1], times, limits[l0:l1], starts[l0:l1 + 1] - s0, extremes)
        for l0, l1, s0, s1, extremes in _extremes(P, times, starts)])


def prepare(plan: Plan, keys: Keyframes, spec: FilmSpec, measured: Drift | None = None,
            said: list[tuple[int, str]] | None = None) -> Film:
    """Everything about the film that is fixed before its first frame (see :class:`Film`).

    ``measured`` (the layers' drift) is needed for the cues, ``--drift`` and ``--order
    settle``; the panels are drawn in ``plan``'s order.  ``said``: the per-keyframe captions
    ``--prompt`` made (``completions.captions``: with ``--captions`` already merged in), shown
    instead of the ``--captions`` file's.
    """
    starts = plan.starts
    if spec.timeline == "step":
        times = interpolate.step_times(plan.steps, spec.keyframe_frames)
    else:
        times = interpolate.keyframe_times(len(plan.refs), spec.keyframe_frames)
    n_frames = interpolate.frame_count(times)
    reach = _reach(keys.P, times, starts)
    fields, widest = header.header_fields(plan, spec.tokens_per_step)
    captions = said if said is not None else \
        header.load_captions(spec.captions) if spec.captions is not None else []
    labels = [l.label for l in plan.layers]
    for l, panel in enumerate(keys.panels):
        if panel.get("plane"):  # a Fourier plane: say which frequency the ring is drawn in
            labels[l] = f"{labels[l]} k {panel['k']}/{panel['period']}"
    points = np.array([l.n_points for l in plan.layers])
    grid = arrange(_frame_spec(
        spec, plan.layers, labels, captions, reach, spec.title or plan.name,
        widest, tuple(_share_range(panel) for panel in keys.panels) if keys.panels else ()))
    rasterizer = raster.Rasterizer(spec.size, grid.rects, grid.scale, grid.sigma, starts)
    pinned = _pinned(keys.P, times, rasterizer.limits, starts)
    shader = shade.Shader(rasterizer.span(keys.P, times), spec.color_scale)
    extras: list[compose.Overlay] = [
        overlays.Header(grid, spec.title or plan.name, fields, n_frames),
        overlays.ScaleBars(grid), overlays.Legend(grid, shader)]
    if captions or spec.caption:
        extras.append(overlays.Captions(grid, spec.caption, captions))
    if spec.loss_strip:
        extras.append(overlays.LossStrip.below_panels(grid, plan.loss.steps, plan.loss.values,
                                                      (float(plan.steps[0]), float(plan.steps[-1]))))
    if measured is not None and spec.drift:
        extras.append(overlays.DriftBars(grid.rects, measured.rate, times))
    live = measured is not None and (spec.cues or spec.order == "settle")
    if spec.label_tokens and plan.probe is not None:
        marked = plan.probe.labelled(spec.label_tokens)
        if marked:
            L = len(plan.layers)
            at = np.array([starts[l] + i for l in range(L) for i in marked], dtype=np.int64)
            extras.append(overlays.TokenLabels(
                grid, rasterizer.xform, keys.P[:, at], times, np.repeat(np.arange(L), len(marked)),
                [plan.probe.texts[i] for i in marked] * L))
    extras.append(cues.PanelCues(
        grid, times, plan.steps, points, measured.rate if live else None,
        measured.settle_steps(spec.settling) if live else None,
        measured.rebel if live else None, spec.rebel_z, announce=spec.order == "settle",
        pinned=pinned))
    return Film(keys.P, times, plan.steps.astype(np.float64), grid, starts, shader, labels,
                n_frames, tuple(extras), pinned)
