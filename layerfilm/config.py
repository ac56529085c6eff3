"""The user's choices, validated in one place.

:class:`RenderConfig` is frozen: the CLI builds one, :func:`RenderConfig.validated`
checks every field and names the offending value, and from then on the stages
trust it.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from .errors import ConfigError

PROJECTIONS = ("pca", "umap", "fourier")
COLOR_SCALES = ("log", "linear")
# Output suffix -> format name.  The encoder table in ``encode.py`` is keyed by
# the same names; a test keeps the two in step.
SUFFIXES = {".webm": "webm", ".gif": "gif", ".webp": "webp", ".mp4": "mp4", ".mkv": "mkv"}
ORDERS = ("film", "settle")
POINTS = ("neurons", "embeddings", "rows", "cols")
# Relative change per 100 training steps under which a layer counts as settled.
SETTLE_THRESHOLD = 0.01


def parse_size(text: str) -> tuple[int, int]:
    """``"1280x720"`` -> ``(1280, 720)``; raises :class:`ConfigError` otherwise."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", text)
    if not m:
        raise ConfigError(f"--size must look like WIDTHxHEIGHT (e.g. 1280x720), got {text!r}")
    return int(m.group(1)), int(m.group(2))


@dataclasses.dataclass(frozen=True)
class RenderConfig:
    """Everything that decides what a film looks like.

    ``frames_per_keyframe=None`` means one keyframe per second (= ``fps``).
    """

    checkpoints: Path
    output: Path
    fps: int = 25
    frames_per_keyframe: int | None = None
    size: tuple[int, int] = (1280, 720)
    projection: str = "pca"
    max_points: int = 2000
    seed: int = 0
    cmap: str = "inferno"
    color_scale: str = "log"
    jobs: int = 1
    cache: bool = True
    frames_dir: Path | None = None
    points: str = "neurons"
    tensor: str | None = None
    loss_strip: bool = False
    metrics: Path | None = None
    drift: bool = False
    order: str = "film"
    settle_threshold: float = SETTLE_THRESHOLD
    stills_dir: Path | None = None
    stills_every: int | None = None  # None: about a dozen tiles

    @property
    def format(self) -> str:
        return SUFFIXES[self.output.suffix.lower()]

    @property
    def keyframe_frames(self) -> int:
        return self.frames_per_keyframe or self.fps

    def validated(self) -> "RenderConfig":
        """Return ``self`` after checking every field; raise :class:`ConfigError`."""
        if self.output.suffix.lower() not in SUFFIXES:
            known = ", ".join(SUFFIXES)
            raise ConfigError(
                f"unknown output format {self.output.suffix or '(no suffix)'!r}; use one of {known}",
                self.output,
            )
        if self.output.exists() and self.output.is_dir():
            raise ConfigError("output is a directory; give a file name such as out.webm", self.output)
        if not self.output.parent.exists() and str(self.output.parent) not in ("", "."):
            raise ConfigError("the output's folder does not exist", self.output.parent)
        if not 1 <= self.fps <= 240:
            raise ConfigError(f"--fps must be between 1 and 240, got {self.fps}")
        if self.frames_per_keyframe is not None and not 1 <= self.frames_per_keyframe <= 10_000:
            raise ConfigError(
                f"--frames-per-keyframe must be between 1 and 10000, got {self.frames_per_keyframe}"
            )
        w, h = self.size
        if not (64 <= w <= 8192 and 64 <= h <= 8192):
            raise ConfigError(f"--size must be between 64x64 and 8192x8192, got {w}x{h}")
        if self.projection not in PROJECTIONS:
            raise ConfigError(
                f"--projection must be one of {', '.join(PROJECTIONS)}, got {self.projection!r}"
            )
        if self.max_points < 3:
            raise ConfigError(f"--max-points must be at least 3, got {self.max_points}")
        if self.color_scale not in COLOR_SCALES:
            raise ConfigError(
                f"--color-scale must be one of {', '.join(COLOR_SCALES)}, got {self.color_scale!r}"
            )
        if self.frames_dir is not None:
            d = self.frames_dir
            if d.exists() and (not d.is_dir() or any(d.iterdir())):
                raise ConfigError("--frames needs a new or empty folder", d)
            if not d.resolve().parent.exists():
                raise ConfigError("the parent folder of --frames does not exist", d)
        if not 1 <= self.jobs <= 64:
            raise ConfigError(f"--jobs must be between 1 and 64, got {self.jobs}")
        check_selection(self.points, self.tensor)
        if self.order not in ORDERS:
            raise ConfigError(f"--order must be one of {', '.join(ORDERS)}, got {self.order!r}")
        if not (0 < self.settle_threshold < float("inf")):
            raise ConfigError(f"--settle-threshold must be a positive number, got {self.settle_threshold}")
        if self.metrics is not None and not self.metrics.is_file():
            raise ConfigError("--metrics: no such file", self.metrics)
        if self.stills_dir is not None:
            d = self.stills_dir
            if d.exists() and (not d.is_dir() or any(d.iterdir())):
                raise ConfigError("--stills needs a new or empty folder", d)
            if not d.resolve().parent.exists():
                raise ConfigError("the parent folder of --stills does not exist", d)
            if self.frames_dir is not None and d.resolve() == self.frames_dir.resolve():
                raise ConfigError("--stills and --frames need different folders", d)
        if self.stills_every is not None and self.stills_every < 1:
            raise ConfigError(f"--stills-every must be at least 1, got {self.stills_every}")
        import matplotlib

        if self.cmap not in matplotlib.colormaps:
            raise ConfigError(
                f"--cmap {self.cmap!r} is not a matplotlib colormap (try inferno, viridis, magma, turbo)"
            )
        return self



def check_selection(points: str, tensor: str | None) -> None:
    """Validate ``--points`` and ``--tensor`` (a regular expression)."""
    if points not in POINTS:
        raise ConfigError(f"--points must be one of {', '.join(POINTS)}, got {points!r}")
    if tensor is not None:
        try:
            re.compile(tensor)
        except re.error as e:
            raise ConfigError(f"--tensor {tensor!r} is not a regular expression: {e}") from None


@dataclasses.dataclass(frozen=True)
class StatsConfig:
    """What ``layerfilm stats`` measures and where it writes (``out``: a folder)."""

    checkpoints: Path
    out: Path = Path("layerfilm-stats")
    settle_threshold: float = SETTLE_THRESHOLD
    points: str = "neurons"
    tensor: str | None = None
    max_points: int = 2000
    seed: int = 0
    projection: str = "pca"
    layouts: bool = False  # compute layouts when none are cached

    def validated(self) -> "StatsConfig":
        """Return ``self`` after checking every field; raise :class:`ConfigError`."""
        if not (self.settle_threshold > 0 and self.settle_threshold < float("inf")):
            raise ConfigError(f"--settle-threshold must be a positive number, got {self.settle_threshold}")
        check_selection(self.points, self.tensor)
        if self.max_points < 3:
            raise ConfigError(f"--max-points must be at least 3, got {self.max_points}")
        if self.projection not in PROJECTIONS:
            raise ConfigError(
                f"--projection must be one of {', '.join(PROJECTIONS)}, got {self.projection!r}")
        if self.out.exists() and not self.out.is_dir():
            raise ConfigError("--out must be a folder", self.out)
        if not self.out.exists() and not self.out.resolve().parent.is_dir():
            raise ConfigError("the parent folder of --out does not exist", self.out)
        return self
