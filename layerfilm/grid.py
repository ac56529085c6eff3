"""The frame's geometry: where everything sits (text is drawn by :mod:`.text`, frames are
composed by :mod:`.compose`).

:func:`arrange` decides it for a :class:`FrameSpec`: the header (title and fields), the panel
grid (the one that draws the dots largest for the panel count, the frame's aspect and each
panel's extent), each panel's text rows, the loss strip and the footer (captions, colour
legend), as a :class:`Grid`.  Every piece of text gets a box measured with the font it is
drawn in, and the boxes never overlap (:meth:`Grid.boxes`); text is fitted into its box,
shortened with an ellipsis when it must be, never drawn across another.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from . import raster
from .errors import ConfigError
from .text import baseline_in, fit_text, format_value, nice_below, share_texts, text_width

Box = tuple[int, int, int, int]  # [x0, y0, x1, y1) in frame pixels
NO_BOX: Box = (0, 0, 0, 0)

# Header fields, most important first: the ones at the end are left out first when the header
# is too narrow for all of them.
FIELD_PRIORITY = ("step", "loss", "tokens", "lr")
LEGEND_TITLE = "overlapping dots"
LEGEND_WIDEST = "88,888"


@dataclasses.dataclass(frozen=True)
class FrameSpec:
    """What a frame has to hold, for :func:`arrange` to measure.

    ``labels``/``points``: each panel's label and number of dots; ``extents``: (L, 2) how far
    its dots reach along x and y (data units; None: alike); ``groups``: a band number per
    panel (each band starts a row); ``fields``: ``(name, widest text)`` of the header's fields,
    left to right; ``captions``: footer lines for per-checkpoint captions; ``caption``: a
    fixed caption; ``strip``: rows for the loss strip; ``shared``: one scale for all panels;
    ``cues``: room under each panel for its activity line; ``shares``: per panel the lowest
    and highest share of its variance on the drawn axes over the film (None: not measured).
    """

    size: tuple[int, int]
    labels: tuple[str, ...]
    points: tuple[int, ...] = ()
    extents: np.ndarray | None = None
    groups: tuple[int, ...] | None = None
    title: str = ""
    fields: tuple[tuple[str, str], ...] = ()
    captions: int = 0
    caption: bool = False
    strip: int = 0
    shared: bool = False
    point_size: float | None = None
    cues: bool = True
    shares: tuple[tuple[float, float] | None, ...] = ()


@dataclasses.dataclass(frozen=True)
class Grid:
    """Where everything sits in a ``size = (W, H)`` frame.

    rects: (L, 4) int64 ``[x0, y0, x1, y1)`` drawing area of each panel (its border is the
    pixel line around it); scale: (L,) pixels per data unit (equal along x and y); sigma: (L,)
    dot footprint in pixels; font/label_font/panel_font: text sizes (panel_font 0: the panels
    are too small for text); header: height of the top strip; title/fields: the header's text
    boxes (a field left out has none); label/mark/scalebar/spark: (L, 4) each panel's text and
    cue boxes (zero-sized when there is no room); bar_value/bar_px: (L,) the scale bar's length
    in data units and pixels; variance: (L,) the captured-variance text drawn after the scale
    bar's value ("" when none fits); captions: footer boxes for per-checkpoint captions;
    caption: the fixed caption's box; legend: the colour legend's box; strip: the loss strip's
    box.
    """

    size: tuple[int, int]
    rects: np.ndarray
    scale: np.ndarray
    sigma: np.ndarray
    header: int
    font: int
    label_font: int
    panel_font: int
    title: Box
    fields: dict[str, Box]
    label: np.ndarray
    mark: np.ndarray
    scalebar: np.ndarray
    spark: np.ndarray
    bar_value: np.ndarray
    bar_px: np.ndarray
    variance: tuple[str, ...] = ()
    captions: tuple[Box, ...] = ()
    caption: Box = NO_BOX
    legend: Box = NO_BOX
    strip: Box = NO_BOX

    @property
    def baseline(self) -> int:
        return baseline_in((0, 0, self.size[0], self.header - 2), self.font)

    def boxes(self) -> list[tuple[str, Box]]:
        """Every box that holds text, a cue or a panel (with its border), by name; none of
        them overlaps another and all lie inside the frame."""
        out = [("title", self.title), *((f"field {k}", b) for k, b in self.fields.items()),
               *((f"caption line {i}", b) for i, b in enumerate(self.captions)),
               ("caption", self.caption), ("legend", self.legend), ("strip", self.strip)]
        for l, (x0, y0, x1, y1) in enumerate(self.rects):
            out.append((f"panel {l}", (int(x0) - 1, int(y0) - 1, int(x1) + 1, int(y1) + 1)))
            for name in ("label", "mark", "scalebar", "spark"):
                out.append((f"{name} {l}", tuple(int(v) for v in getattr(self, name)[l])))
        return [(n, b) for n, b in out if b[2] > b[0] and b[3] > b[1]]


def fonts(size: tuple[int, int]) -> tuple[int, int]:
    """The header's and the smaller text's sizes in pixels for a frame of ``size``."""
    w, h = size
    font = max(9, round(min(h / 34, w / 40)))
    return font, max(8, round(font * 0.75))


def _header(spec: FrameSpec, font: int, header: int) -> tuple[Box, dict[str, Box]]:
    """The title's box and the fields' boxes (right-aligned, widest text reserved), leaving out
    the least important fields until the title keeps a fair share of the width."""
    w = spec.size[0]
    margin, gap = max(4, font // 2), font
    fields = list(spec.fields)
    want_title = min(text_width(spec.title, font), max(w // 3, 4 * font))
    slack = max(2, font // 4)  # glyph boxes differ a little from digit to digit
    while fields:
        used = sum(text_width(t, font) + slack for _, t in fields) + gap * len(fields)
        if w - 2 * margin - used >= want_title:
            break
        fields.remove(max(fields, key=lambda f: FIELD_PRIORITY.index(f[0])
                          if f[0] in FIELD_PRIORITY else len(FIELD_PRIORITY)))
    boxes, right = {}, w - margin
    for name, text in reversed(fields):
        width = text_width(text, font) + slack
        if right - width < margin:
            break
        boxes[name] = (right - width, 0, right, header - 2)
        right -= width + gap
    title = (margin, 0, max(margin, right), header - 2)
    return title, dict(reversed(list(boxes.items())))


def _footer(spec: FrameSpec, lf: int) -> tuple[int, tuple[Box, ...], Box, Box]:
    """Footer height, the per-checkpoint caption lines' boxes, the fixed caption's box and the
    legend's box (on the last line, at the right)."""
    w, h = spec.size
    margin, line = max(4, lf // 2), round(lf * 1.6)
    if h < 150 and not (spec.captions or spec.caption):
        return 0, (), NO_BOX, NO_BOX  # a thumbnail: no room for a legend line
    lines = spec.captions + 1
    top = h - lines * line - max(2, lf // 4)
    captions = tuple((margin, top + i * line, w - margin, top + (i + 1) * line)
                     for i in range(spec.captions))
    y0 = top + spec.captions * line
    legend_w = (text_width(LEGEND_TITLE, lf) + 3 * lf + text_width("1", lf)
                + max(4 * lf, w // 10) + text_width(LEGEND_WIDEST, lf))
    if legend_w > w - 2 * margin:
        legend_w = text_width("1", lf) + 2 * lf + max(2 * lf, w // 10) + text_width(LEGEND_WIDEST, lf)
    legend = (w - margin - legend_w, y0, w - margin, y0 + line) if legend_w <= w - 2 * margin else NO_BOX
    right = legend[0] - lf if legend != NO_BOX else w - margin
    caption = (margin, y0, right, y0 + line) if spec.caption and right > margin + lf else NO_BOX
    return h - top, captions, caption, legend


# An activity line is at least this share of the frame's height tall (22 pixels at 1080p), so
# its levels read even where many panels make the text small.
LINE_SHARE = 0.02


def _panel_rows(cell_w: float, cell_h: float, lf: int, cues: bool, frame_h: int = 0
                ) -> tuple[int, int, int]:
    """The panel font and the heights of the label row above a panel and the row under it
    (scale bar and activity line; 3 pixel rows of it for the drift bar); 0s when the cell is
    too small for text.  The two rows take at most about a quarter of the cell's height, or
    a third at the smallest readable size (7 pixels) in small frames; the row under a panel
    grows to :data:`LINE_SHARE` of ``frame_h`` for the activity line while the two rows stay
    within a third of the cell."""
    pf = min(lf, math.floor(cell_h / 12), math.floor(cell_w / 6))
    if pf < 7:
        pf = 7 if cell_h >= 63 and cell_w >= 42 else 0
    if not pf:
        return 0, 0, 0
    lh, uh = round(pf * 1.5), round(pf * 1.45)
    if cues:
        uh = max(uh, min(round(frame_h * LINE_SHARE), math.floor(cell_h / 3) - lh - 3))
    return pf, lh, uh + 3


def _score(rw: float, rh: float, spec: FrameSpec, points: np.ndarray, ext: np.ndarray
           ) -> tuple[float, np.ndarray, np.ndarray]:
    """How large ``rw`` x ``rh`` panels draw the dots: (score, scale (L,), sigma (L,))."""
    rect = np.array([[0, 0, rw, rh]] * len(points), dtype=np.float64)
    sigma = raster.dot_sizes(rect, points, spec.point_size) / raster.FWHM
    pad = raster.edge_pad(sigma)
    scale = np.minimum((rw / 2 - pad) / ext[:, 0], (rh / 2 - pad) / ext[:, 1])
    scale = np.maximum(scale, 1e-12)
    if spec.shared:
        scale = np.full(len(scale), scale.min())
    return float(np.log(scale).sum()), scale, sigma


def arrange(spec: FrameSpec) -> Grid:
    """Lay out a frame for ``spec`` (see :class:`Grid`).

    The panels sit on the grid whose panels draw the dots largest (the sum over panels of the
    log of their pixels per data unit, or the common scale with ``shared``) given the frame's
    aspect, the panels' extents and the room their text takes; each row is centred.  Raises
    :class:`ConfigError` when the panels cannot be drawn at least 8 pixels wide.
    """
    W, H = spec.size
    n = len(spec.labels)
    font, lf = fonts(spec.size)
    header = round(font * 2.0)
    title, fields = _header(spec, font, header)
    footer, captions, caption, legend = _footer(spec, lf)
    groups = list(spec.groups) if spec.groups is not None else [0] * n
    bands = [groups.count(g) for g in sorted(set(groups))] or [n]
    points = np.asarray(spec.points if spec.points else [1000] * n, dtype=np.float64)
    ext = np.ones((n, 2)) if spec.extents is None else np.asarray(spec.extents, dtype=np.float64)
    ext = np.where(np.isfinite(ext) & (ext > 0), ext, 1.0)
    gap = max(3, round(min(W, H) / 150))
    margin = max(4, font // 2)
    gx0, gx1 = margin, W - margin
    gy0, gy1 = header + gap, H - footer - spec.strip - gap
    best = None
    for cols in range(1, max(bands) + 1):
        rows = sum(math.ceil(b / cols) for b in bands)
        ch = math.floor((gy1 - gy0 - (rows - 1) * gap) / rows)
        pf = _panel_rows((gx1 - gx0) / cols, ch, lf, spec.cues, H)[0]
        hgap = max(gap, pf)  # between columns: one panel's mark and the next's label
        cw = math.floor((gx1 - gx0 - (cols - 1) * hgap) / cols)
        pf, lh, uh = _panel_rows(cw, ch, lf, spec.cues, H)
        rw, rh = cw - 2, ch - lh - uh - 2
        if rw < 8 or rh < 8:
            continue
        score, scale, sigma = _score(rw, rh, spec, points, ext)
        empty = rows * cols - n
        if best is None or (score, -empty) > (best[0], -best[1]):
            best = (score, empty, cols, rows, cw, ch, pf, lh, uh, scale, sigma, hgap)
    if best is None:
        raise ConfigError(f"{n} panels do not fit in a {W}x{H} frame; use a larger --size or "
                          "fewer panels (--tensor, --points embeddings)", field="size")
    _, _, cols, rows, cw, ch, pf, lh, uh, scale, sigma, hgap = best
    rects = np.empty((n, 4), dtype=np.int64)
    used_h = rows * ch + (rows - 1) * gap
    top = gy0 + (gy1 - gy0 - used_h) // 2
    i = row = 0
    for band in bands:
        nrows = math.ceil(band / cols)
        counts = [band // nrows + (1 if r < band % nrows else 0) for r in range(nrows)]
        for count in counts:
            left = gx0 + (gx1 - gx0 - (count * cw + (count - 1) * hgap)) // 2
            y = top + row * (ch + gap)
            for c in range(count):
                x = left + c * (cw + hgap)
                rects[i] = (x + 1, y + lh + 1, x + cw - 1, y + ch - uh - 1)
                i += 1
            row += 1
    return Grid((W, H), rects, scale, sigma, header, font, lf, pf, title, fields,
                  *_panel_boxes(spec, rects, scale, pf, lh, uh, gap),
                  captions=captions, caption=caption, legend=legend,
                  strip=(margin, H - footer - spec.strip, W - margin, H - footer) if spec.strip else NO_BOX)


def _panel_boxes(spec: FrameSpec, rects: np.ndarray, scale: np.ndarray, pf: int, lh: int, uh: int,
                 gap: int) -> tuple[np.ndarray, ...]:
    """Each panel's label, mark, scale-bar and activity-line boxes, its scale bar's value and
    length, and its captured-variance text (see :class:`Grid`)."""
    n = len(rects)
    label, mark, scalebar, spark = (np.zeros((n, 4), dtype=np.int64) for _ in range(4))
    value, length = np.zeros(n), np.zeros(n, dtype=np.int64)
    variance = [""] * n
    room = max(3, pf // 2)
    for l, (x0, y0, x1, y1) in enumerate(rects):
        left, right = int(x0) - 1, int(x1) + 1
        width = right - left
        # The scale bar: a 1-2-5 length of at most a quarter of the panel, with its value; bar
        # and value together at most 45 % of the row, the rest for the activity line.
        v = nice_below(max(width / 4, 1.0) / scale[l])
        while pf and v * scale[l] > 4 and (v * scale[l] + room + text_width(format_value(v), pf)
                                           > width * 0.45):
            v = nice_below(v * 0.99)
        value[l], length[l] = v, max(1, int(round(v * scale[l])))
        if not pf:
            continue
        # The label whole when it can be, then the mark in what is left (if a short mark fits).
        text = fit_text(spec.labels[l], pf, width)
        lw = text_width(text, pf)
        label[l] = (left, y0 - 1 - lh, left + lw, y0 - 1)
        if width - lw - room >= text_width("■ 8,888", pf):
            mark[l] = (left + lw + room, y0 - 1 - lh, right, y0 - 1)
    # The captured variance after each scale bar's value, in the longest form that leaves every
    # panel's activity line at least 40 % of its row -- one form for the film, or none, so no
    # panel seems to lack what its neighbours show.
    texts = [share_texts(spec.shares[l] if spec.shares else None) for l in range(n)]
    forms = max((len(t) for t in texts), default=0)
    if pf:
        def base(l: int) -> int:
            return int(length[l]) + room + text_width(format_value(value[l]), pf)
        widths = [int(rects[l][2]) - int(rects[l][0]) + 2 for l in range(n)]
        form = next((i for i in range(forms) if all(
            not t or base(l) + room + text_width(t[min(i, len(t) - 1)], pf) <= widths[l] * 0.6
            for l, t in enumerate(texts))), None)
        if form is not None:
            variance = [t[min(form, len(t) - 1)] if t else "" for t in texts]
    for l, (x0, y0, x1, y1) in enumerate(rects):
        if not pf:
            continue
        left, right = int(x0) - 1, int(x1) + 1
        width = right - left
        under = (int(y1) + 4, int(y1) + 1 + uh)
        sw = int(length[l]) + room + text_width(format_value(value[l]), pf)
        if variance[l]:
            sw += room + text_width(variance[l], pf)
        if sw <= width:
            scalebar[l] = (left, under[0], left + sw, under[1])
        start = left + (sw + 2 * room if sw <= width else 0)
        if spec.cues and right - start >= 2.5 * pf:
            spark[l] = (start, under[0], right, under[1])
    return label, mark, scalebar, spark, value, length, tuple(variance)


