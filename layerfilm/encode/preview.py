"""``--preview FILE.mp4``: a small lossy H.264 copy of the film for posting, made from the same
frames in the same pass as the lossless film (a second ffmpeg fed each frame as it passes), with
"lossy preview" stamped in its bottom-left corner.

Why a second ffmpeg and not a transcode of the finished film: the frames are already in memory
as they are made, so the preview costs their RGB conversion and the H.264 encode; a transcode
costs the same encode plus decoding the lossless film again, and cannot start before the film
is finished.  Measured on the shared 2-core box (rough): the sample's 1,251-frame 720p WebM
took 14.8 s, 21.4 s with ``--preview`` (+6.6 s), against 8.6 s wall (16 s CPU) for transcoding
the finished WebM afterwards; decoding that WebM alone costs 7 s of CPU, the GIF 3 s.

Settings (``docs/rendering.md``): ``libx264 -preset veryfast -crf 23``, capped by the VBV at
:data:`KBPS_720P` kbit/s for a 1280x720 frame (in proportion to the pixels at other sizes), so
a minute is at most about 7.2 MB at 720p; ``yuv420p`` in BT.709 with ``+faststart``, which
phones and forums play.  yuv420p needs even dimensions: an odd width or height gets one
column or row of the film's background.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path

import numpy as np

from ..text import text_mask
from .ffmpeg import Encoder, FilmWriter, RGBFrames, _Ffmpeg, encoder_command

LABEL = "lossy preview"
KBPS_720P = 960  # the VBV cap at 1280x720: 960 kbit/s is 7.2 MB a minute
CRF = 23
PRESET = "veryfast"


def even(size: tuple[int, int]) -> tuple[int, int]:
    """``size`` rounded up to even numbers (yuv420p halves both)."""
    w, h = size
    return w + w % 2, h + h % 2


def max_kbps(size: tuple[int, int]) -> int:
    """The bit rate cap of a preview of ``size``: :data:`KBPS_720P` scaled by its pixels."""
    w, h = even(size)
    return max(100, round(KBPS_720P * w * h / (1280 * 720)))


def encoder(size: tuple[int, int]) -> Encoder:
    """The preview's ffmpeg settings for frames of ``size`` (see the module docstring)."""
    kbps = max_kbps(size)
    return Encoder("rgb24", (
        "-c:v", "libx264", "-preset", PRESET, "-crf", str(CRF),
        "-maxrate", f"{kbps}k", "-bufsize", f"{2 * kbps}k",
        "-vf", "scale=out_color_matrix=bt709:out_range=tv", "-pix_fmt", "yuv420p",
        "-colorspace", "bt709", "-color_primaries", "bt709", "-color_trc", "bt709"),
        "mp4", mux_args=("-movflags", "+faststart"))


def settings(size: tuple[int, int], fps: int) -> dict:
    """What the manifest records of the preview's encoding."""
    return {"codec": "libx264", "preset": PRESET, "crf": CRF, "maxrate_kbps": max_kbps(size),
            "bufsize_kbps": 2 * max_kbps(size), "pix_fmt": "yuv420p", "color": "bt709",
            "size": list(even(size)), "fps": fps, "label": LABEL, "lossless": False}


def label_px(size: tuple[int, int]) -> int:
    """The label's font size: legible on a phone at 640x360, small beside the film's text."""
    return max(10, round(min(size[1], size[0] * 9 / 16) / 50))


@functools.lru_cache(maxsize=8)
def label_patch(size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The label for a frame of ``size`` as ``(rgb (h, w, 3) float32, alpha (h, w, 1)
    float32)``: light text on a dark plate."""
    px = label_px(size)
    mask, _ = text_mask(LABEL, px)
    pad = max(2, px // 3)
    h, w = mask.shape[0] + 2 * pad, mask.shape[1] + 2 * pad
    cover = np.zeros((h, w), np.float32)
    cover[pad:pad + mask.shape[0], pad:pad + mask.shape[1]] = mask / 255.0
    plate, ink = np.array([24, 24, 24], np.float32), np.array([255, 214, 102], np.float32)
    rgb = plate + cover[..., None] * (ink - plate)
    alpha = np.maximum(0.78, cover)[..., None]  # the plate lets a little of the film through
    return rgb, alpha


def spot(film) -> tuple[int, int]:
    """Where the label's top-left corner goes in ``film``'s frames: the bottom-left corner,
    which holds nothing unless the film has a footer caption; then the header's free end, left
    of its fields, when the title leaves room there; else the bottom-left corner all the same
    (over the caption line's start)."""
    from ..overlays import Header
    from ..text import fit_text, text_width

    grid = film.grid
    w, h = film.size
    ph, pw = label_patch((w, h))[0].shape[:2]
    corner = (0, h - ph)
    if not grid.captions and grid.caption[2] <= grid.caption[0]:
        return corner
    title = next((o.title for o in film.overlays if isinstance(o, Header)), "")
    x0, _, x1, _ = grid.title
    used = text_width(fit_text(title, grid.font, x1 - x0), grid.font)
    if x1 - x0 - used >= pw + 2 * grid.font and ph <= grid.header - 2:
        return x1 - pw, (grid.header - 2 - ph) // 2
    return corner


def stamp(rgb: np.ndarray, at: tuple[int, int], size: tuple[int, int]) -> None:
    """Blend the label of a film of ``size`` into the (H, W, 3) uint8 frame ``rgb`` in place,
    its top-left corner at ``at``."""
    patch, alpha = label_patch(size)
    x, y = at
    h, w = patch.shape[:2]
    region = rgb[y:y + h, x:x + w]
    region[...] = np.rint(region * (1 - alpha) + patch * alpha).astype(np.uint8)


class PreviewWriter(FilmWriter):
    """Writes the lossy preview of a film of ``size`` to ``path`` (atomically, as
    :class:`FilmWriter`), from the same ``(H, W)`` palette-index frames."""

    _splice = False  # its one frame buffer changes every frame: written, not handed over

    def __init__(self, path: str | os.PathLike, size: tuple[int, int], fps: int,
                 palette: np.ndarray, shown: str | os.PathLike | None = None,
                 at: tuple[int, int] | None = None):
        _Ffmpeg.__init__(self, path, even(size), fps, encoder(size), palette)
        self.at = at if at is not None else (0, size[1] - label_patch(size)[0].shape[0])
        self._tmp: Path | None = None
        if shown is not None:
            self.shown = Path(shown)
        self._film = RGBFrames(size, self.palette)
        w, h = even(size)
        self._out = np.empty((h, w, 3), np.uint8)
        self._out[...] = self.palette[0]  # the background fills an odd size's extra row/column

    def write(self, frame: np.ndarray) -> None:
        h, w = frame.shape
        self._out[:h, :w] = self._film(frame)
        stamp(self._out, self.at, (w, h))
        self._send(memoryview(self._out).cast("B"))


def command(size: tuple[int, int], fps: int) -> list[str]:
    """The preview's ffmpeg command for a film of ``size`` (as a manifest records it)."""
    return encoder_command(encoder(size), even(size), fps, exe="ffmpeg")


@dataclasses.dataclass(frozen=True)
class Preview:
    """The preview written: its path, bytes and the ffmpeg command (``OUTPUT`` standing for it)."""

    path: Path
    bytes: int
    command: list[str]


def entry(preview, size: tuple[int, int], fps: int) -> dict:
    """The manifest's record of a ``--preview`` beside the film: where, how big, how it was
    encoded."""
    return {"path": os.path.abspath(preview.path), "bytes": preview.bytes,
            "settings": settings(size, fps), "command": preview.command}
