"""Text in frames: FreeType glyphs rasterised straight into the palette's grey ramp (matplotlib's
binding, no figure, no canvas), widths measured with the font they are drawn in, and the numbers
a frame writes (scale-bar values, captured variance) formatted as people write them.
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
import warnings

import numpy as np

from . import shade

Box = tuple[int, int, int, int]  # [x0, y0, x1, y1) in frame pixels


@functools.lru_cache(maxsize=8)
def _font(px: int):
    from matplotlib import font_manager, ft2font

    font = ft2font.FT2Font(font_manager.findfont("DejaVu Sans"))
    font.set_size(px, 72)  # at 72 dpi one point is one pixel
    return font


_FONT_LOCK = threading.Lock()  # one FreeType face is shared by all render threads


@contextlib.contextmanager
def missing_glyphs_as_boxes():
    """Text drawn inside this block may hold characters the font lacks (CJK or emoji in layer
    names): FreeType draws the font's empty box for each, which is what the film shows, but
    matplotlib also warns on stderr once per glyph, which would bury layerfilm's own lines."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"Glyph \d+ .* missing from font", UserWarning)
        yield


@functools.lru_cache(maxsize=4096)
def text_mask(text: str, px: int) -> tuple[np.ndarray, int]:
    """Anti-aliased coverage of ``text`` at ``px`` pixels: ``(mask (h, w) uint8, baseline row)``."""
    if not text:
        return np.zeros((1, 0), np.uint8), 0
    with _FONT_LOCK, missing_glyphs_as_boxes():
        font = _font(px)
        font.clear()
        font.set_text(text, 0.0)
        font.draw_glyphs_to_bitmap(antialiased=True)
        mask = np.array(font.get_image(), dtype=np.uint8)
        return mask, mask.shape[0] - int(round(font.get_descent() / 64))


def text_width(text: str, px: int) -> int:
    """Width in pixels of ``text`` drawn at ``px``."""
    return int(text_mask(text, px)[0].shape[1])


@functools.lru_cache(maxsize=4096)
def fit_text(text: str, px: int, width: float) -> str:
    """``text`` if it fits in ``width`` pixels at ``px``, else its longest start that fits with
    an ellipsis, else ``""``."""
    if text_width(text, px) <= width:
        return text
    lo, hi = 0, len(text)
    while lo < hi:  # the longest prefix that fits with its ellipsis
        mid = (lo + hi + 1) // 2
        if text_width(text[:mid].rstrip() + "…", px) <= width:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo].rstrip() + "…" if lo else ""


@functools.lru_cache(maxsize=4096)
def _text_indices(text: str, px: int, dim: bool) -> tuple[np.ndarray, np.ndarray, int]:
    """``text`` as grey-ramp palette indices, its coverage mask and baseline row (cached, so
    per-frame text costs only a copy)."""
    mask, base = text_mask(text, px)
    if dim:
        mask = (mask.astype(np.uint16) * 150 // 255).astype(np.uint8)
    return shade.text_index(mask), mask > 0, base


def draw_text(frame: np.ndarray, text: str, px: int, x: int, baseline: int, align: str = "left",
              dim: bool = False, clip: Box | None = None) -> None:
    """Draw ``text`` into the index ``frame`` with its baseline at row ``baseline``, inside
    ``clip`` (default: the frame)."""
    if not text:
        return
    idx, covered, base = _text_indices(text, px, dim)
    h, w = idx.shape
    if align == "right":
        x -= w
    y = baseline - base
    cx0, cy0, cx1, cy1 = clip if clip is not None else (0, 0, frame.shape[1], frame.shape[0])
    fy0, fx0 = max(y, cy0, 0), max(x, cx0, 0)
    fy1, fx1 = min(y + h, cy1, frame.shape[0]), min(x + w, cx1, frame.shape[1])
    if fy1 <= fy0 or fx1 <= fx0:
        return
    sy, sx = slice(fy0 - y, fy1 - y), slice(fx0 - x, fx1 - x)
    np.copyto(frame[fy0:fy1, fx0:fx1], idx[sy, sx], where=covered[sy, sx])


def baseline_in(box: Box, px: int) -> int:
    """The baseline that sets text of ``px`` pixels inside ``box``'s rows (room for accents
    above and descenders below)."""
    x0, y0, x1, y1 = box
    return y0 + min(y1 - y0 - max(1, round(px * 0.26)), round((y1 - y0 + px * 0.74) / 2))


def nice_below(x: float) -> float:
    """The largest 1, 2 or 5 times a power of ten that is at most ``x`` (> 0)."""
    e = math.floor(math.log10(x))
    for m in (5, 2, 1):
        if m * 10.0 ** e <= x * (1 + 1e-12):
            return float(f"{m * 10.0 ** e:.12g}")
    return float(f"{10.0 ** (e - 1) * 5:.12g}")


def format_value(v: float) -> str:
    """A scale bar's value as people write it: 0.1, 0.05, 2, 2e-05."""
    return f"{v:g}"


def share_texts(share: tuple[float, float] | None) -> list[str]:
    """The captured variance beside a scale bar, longest first: the share of the panel's
    variance on its two drawn axes over the film, ``var 8–63%`` (one number when it stays
    within a percent), or nothing when the projection measured none (UMAP).  Below 1 % one
    decimal (``0.1%``: a wide layer's flat spectrum), below 0.05 % ``<0.1%``, never a
    ``0%`` that reads as nothing."""
    if share is None or not np.isfinite(share).all():
        return []
    lo, hi = (_percent(v) for v in share)
    span = f"{lo}%" if lo == hi else f"{lo}–{hi}%"
    return [f"var {span}", span]


def _percent(v: float) -> str:
    p = 100.0 * v
    if round(p) >= 1:
        return f"{round(p)}"
    return f"{p:.1f}" if round(p, 1) >= 0.1 else "<0.1"
