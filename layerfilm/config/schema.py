"""The user's choices as frozen dataclasses, validated in one place.

:class:`Selection` is what every command shares: which checkpoints, which keyframes, which
tensors and points.  :class:`RenderConfig`, :class:`StatsConfig` and :class:`InfoConfig` add
what each command needs.  :func:`validate` checks every field of any of them, by name, in
one table (:data:`_CHECKS`); an error carries the field, so a value that came from a config
file is blamed on that file and key.  ``config.validated()`` runs it once per config object;
from then on the stages trust it.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError

PROJECTIONS = ("pca", "umap", "fourier")
COLOR_SCALES = ("log", "linear")
TIMELINES = ("keyframe", "step")
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
        raise ConfigError(f"--size must look like WIDTHxHEIGHT (e.g. 1280x720), got {text!r}",
                          field="size")
    return int(m.group(1)), int(m.group(2))


def parse_steps(text: str) -> tuple[int | None, int | None, int | None]:
    """``"1000:5000:500"`` -> ``(1000, 5000, 500)``; any part may be empty (``"::500"``,
    ``"2000:"``); raises :class:`ConfigError` otherwise."""
    m = re.fullmatch(r"\s*(\d*)\s*:\s*(\d*)\s*(?::\s*(\d*)\s*)?", text)
    if not m:
        raise ConfigError(f"--steps must look like START:STOP:EVERY (e.g. 0:5000:500, ::200 or "
                          f"1000:), got {text!r}", field="steps")
    return tuple(int(g) if g else None for g in m.groups())  # type: ignore[return-value]


_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


@dataclasses.dataclass(frozen=True)
class Remote:
    """Checkpoints behind a URL (``hf://ORG/REPO``, ``s3://bucket/run``, ``https://...``).

    ``revisions`` pins Hub ref names to commits, as a manifest recorded them (``()``: what
    the refs point to now).  ``str()`` and ``os.fspath()`` give the URL, so messages name it.
    """

    url: str
    revisions: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        return self.url

    def __fspath__(self) -> str:
        return self.url

    @property
    def name(self) -> str:
        """The last part of the URL (a run's name)."""
        return self.url.rstrip("/").rsplit("/", 1)[-1].split("@")[0]


def as_location(text: str | os.PathLike | None) -> "Path | Remote | None":
    """A CHECKPOINTS argument: a :class:`Remote` for a URL, else a :class:`Path`."""
    if text is None or isinstance(text, (Path, Remote)):
        return text
    text = os.fspath(text)
    return Remote(text) if _URL.match(text) else Path(text)


class _Validated:
    def validated(self):
        """Return ``self`` after :func:`validate` (run once per object); raise
        :class:`ConfigError`."""
        if not getattr(self, "_valid", False):
            validate(self)
            object.__setattr__(self, "_valid", True)
        return self


@dataclasses.dataclass(frozen=True, kw_only=True)
class Selection(_Validated):
    """What is drawn or measured, shared by ``render``, ``info`` and ``stats``.

    ``checkpoints``: the folder, or a :class:`Remote` URL; ``steps="START:STOP:EVERY"``
    picks keyframes (:attr:`step_range`, see ``checkpoints.select_steps``); ``points``/
    ``tensor``/``layer_pattern`` decide the panels and their dots (``extract.plan_panels``), at
    most ``max_points`` a panel, subsampled with ``seed``; ``skip_bad`` leaves out unreadable
    checkpoints instead of stopping.  Remote sources: ``revisions`` (globs of Hub ref names),
    ``storage_options`` (fsspec's, from a config file only), ``keep_downloads`` (keep whole
    files that had to be downloaded).
    """

    checkpoints: Path | Remote | None = None
    points: str = "neurons"
    tensor: str | None = None
    max_points: int = 2000
    seed: int = 0
    steps: str | None = None  # kept as text, so config files and manifests hold it as typed
    layer_pattern: str | None = None
    skip_bad: bool = False
    revisions: str | None = None
    keep_downloads: bool = False
    storage_options: dict[str, Any] | None = None  # a config-file table, never a flag

    @property
    def step_range(self) -> tuple[int | None, int | None, int | None] | None:
        """``steps`` parsed: ``(start, stop, every)``, each ``None`` when left out."""
        return None if self.steps is None else parse_steps(self.steps)

    @property
    def selection(self) -> "Selection":
        """Just the :class:`Selection` fields of this config."""
        return Selection(**{f.name: getattr(self, f.name) for f in dataclasses.fields(Selection)})


@dataclasses.dataclass(frozen=True, kw_only=True)
class RenderConfig(Selection):
    """Everything that decides what a film looks like.

    ``frames_per_keyframe=None`` means one keyframe per second (= ``fps``);
    ``timeline="step"`` spaces keyframes by training step instead of evenly.
    """

    output: Path | None = None
    fps: int = 25
    frames_per_keyframe: int | None = None
    size: tuple[int, int] = (1280, 720)
    projection: str = "pca"
    cmap: str = "inferno"
    color_scale: str = "log"
    jobs: int = 1
    cache: bool = True
    frames_dir: Path | None = None
    loss_strip: bool = False
    metrics: Path | None = None
    drift: bool = False
    order: str = "film"
    settle_threshold: float = SETTLE_THRESHOLD
    stills_dir: Path | None = None
    stills_every: int | None = None  # None: about a dozen tiles
    timeline: str = "keyframe"
    verify_inputs: bool = False  # the manifest hashes every byte of every checkpoint

    @property
    def format(self) -> str:
        return SUFFIXES[self.output.suffix.lower()]

    @property
    def keyframe_frames(self) -> int:
        return self.frames_per_keyframe or self.fps

    @property
    def needs_layer_stats(self) -> bool:
        """Whether the film draws numbers measured on the weights (drift bars, settle order)."""
        return self.drift or self.order == "settle"


@dataclasses.dataclass(frozen=True, kw_only=True)
class StatsConfig(Selection):
    """What ``layerfilm stats`` measures and where it writes (``out``: a folder).

    ``projection`` picks whose cached layouts fill the layout columns; ``layouts`` computes
    them when none are cached.
    """

    out: Path = Path("layerfilm-stats")
    settle_threshold: float = SETTLE_THRESHOLD
    projection: str = "pca"
    layouts: bool = False


@dataclasses.dataclass(frozen=True, kw_only=True)
class InfoConfig(Selection):
    """What ``layerfilm info`` needs beyond the selection: the film's timing (to show its
    length) and where the loss comes from."""

    fps: int = 25
    frames_per_keyframe: int | None = None
    metrics: Path | None = None

    @property
    def keyframe_frames(self) -> int:
        return self.frames_per_keyframe or self.fps


REPO_TYPES = ("model", "dataset")
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


@dataclasses.dataclass(frozen=True, kw_only=True)
class PublishConfig(_Validated):
    """``layerfilm publish``: which films go where on the Hugging Face Hub."""

    films: tuple[Path, ...] = ()
    repo_id: str = ""
    bucket: str | None = None  # USER/NAME[/prefix]: a Storage Bucket instead of a repository
    repo_type: str = "model"
    private: bool = False
    path_in_repo: str = ""
    message: str | None = None
    dry_run: bool = False


# ---- validation: one check per field name ---------------------------------------------------

_CHECKS: dict[str, Callable[[object], None]] = {}


def _check(*names: str):
    def register(fn):
        for name in names:
            _CHECKS[name] = fn
        return fn
    return register


def _fail(field: str, message: str, path: Path | None = None):
    raise ConfigError(message, path, field=field)


def _one_of(field: str, option: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        _fail(field, f"{option} must be one of {', '.join(allowed)}, got {value!r}")


def _regex(field: str, text: str, what: str) -> None:
    try:
        re.compile(text)
    except re.error as e:
        _fail(field, f"{what} {text!r} is not {'a valid' if field == 'layer_pattern' else 'a'} "
                     f"regular expression: {e}")


def _new_or_empty_folder(field: str, option: str, d: Path) -> None:
    if d.exists() and (not d.is_dir() or any(d.iterdir())):
        _fail(field, f"{option} needs a new or empty folder", d)
    if not d.resolve().parent.exists():
        _fail(field, f"the parent folder of {option} does not exist", d)


@_check("output")
def _output(c) -> None:
    out = c.output
    if out is None:
        return  # not given yet (--print-config); the CLI asks for it before rendering
    if out.suffix.lower() not in SUFFIXES:
        _fail("output", f"unknown output format {out.suffix or '(no suffix)'!r}; use one of "
                        f"{', '.join(SUFFIXES)}", out)
    if out.exists() and out.is_dir():
        _fail("output", "output is a directory; give a file name such as out.webm", out)
    if not out.parent.exists() and str(out.parent) not in ("", "."):
        _fail("output", "the output's folder does not exist", out.parent)


@_check("fps")
def _fps(c) -> None:
    if not 1 <= c.fps <= 240:
        _fail("fps", f"--fps must be between 1 and 240, got {c.fps}")


@_check("frames_per_keyframe")
def _frames_per_keyframe(c) -> None:
    if c.frames_per_keyframe is not None and not 1 <= c.frames_per_keyframe <= 10_000:
        _fail("frames_per_keyframe",
              f"--frames-per-keyframe must be between 1 and 10000, got {c.frames_per_keyframe}")


@_check("size")
def _size(c) -> None:
    w, h = c.size
    if not (64 <= w <= 8192 and 64 <= h <= 8192):
        _fail("size", f"--size must be between 64x64 and 8192x8192, got {w}x{h}")


@_check("projection")
def _projection(c) -> None:
    _one_of("projection", "--projection", c.projection, PROJECTIONS)


@_check("max_points")
def _max_points(c) -> None:
    if c.max_points < 3:
        _fail("max_points", f"--max-points must be at least 3, got {c.max_points}")


@_check("color_scale")
def _color_scale(c) -> None:
    _one_of("color_scale", "--color-scale", c.color_scale, COLOR_SCALES)


@_check("frames_dir")
def _frames_dir(c) -> None:
    if c.frames_dir is not None:
        _new_or_empty_folder("frames_dir", "--frames", c.frames_dir)


@_check("jobs")
def _jobs(c) -> None:
    if not 1 <= c.jobs <= 64:
        _fail("jobs", f"--jobs must be between 1 and 64, got {c.jobs}")


@_check("points")
def _points(c) -> None:
    _one_of("points", "--points", c.points, POINTS)


@_check("tensor")
def _tensor(c) -> None:
    if c.tensor is not None:
        _regex("tensor", c.tensor, "--tensor")


@_check("order")
def _order(c) -> None:
    _one_of("order", "--order", c.order, ORDERS)


@_check("settle_threshold")
def _settle_threshold(c) -> None:
    if not (0 < c.settle_threshold < float("inf")):
        _fail("settle_threshold",
              f"--settle-threshold must be a positive number, got {c.settle_threshold}")


@_check("metrics")
def _metrics(c) -> None:
    if c.metrics is not None and not c.metrics.is_file():
        _fail("metrics", "--metrics: no such file", c.metrics)


@_check("stills_dir")
def _stills_dir(c) -> None:
    d = c.stills_dir
    if d is not None:
        _new_or_empty_folder("stills_dir", "--stills", d)
        if c.frames_dir is not None and d.resolve() == c.frames_dir.resolve():
            _fail("stills_dir", "--stills and --frames need different folders", d)


@_check("stills_every")
def _stills_every(c) -> None:
    if c.stills_every is not None and c.stills_every < 1:
        _fail("stills_every", f"--stills-every must be at least 1, got {c.stills_every}")


@_check("steps")
def _steps(c) -> None:
    if c.steps is not None:
        start, stop, every = parse_steps(c.steps)
        if start is not None and stop is not None and start > stop:
            _fail("steps", f"--steps START must not exceed STOP, got {start}:{stop}")
        if every is not None and every < 1:
            _fail("steps", f"--steps EVERY must be at least 1, got {every}")


@_check("timeline")
def _timeline(c) -> None:
    _one_of("timeline", "--timeline", c.timeline, TIMELINES)


@_check("layer_pattern")
def _layer_pattern(c) -> None:
    if c.layer_pattern is not None:
        _regex("layer_pattern", c.layer_pattern, "--layer-pattern")


@_check("out")
def _out(c) -> None:
    if c.out.exists() and not c.out.is_dir():
        _fail("out", "--out must be a folder", c.out)
    if not c.out.exists() and not c.out.resolve().parent.is_dir():
        _fail("out", "the parent folder of --out does not exist", c.out)


@_check("cmap")
def _cmap(c) -> None:
    import matplotlib

    if c.cmap not in matplotlib.colormaps:
        _fail("cmap", f"--cmap {c.cmap!r} is not a matplotlib colormap (try inferno, viridis, "
                      "magma, turbo)")


@_check("checkpoints")
def _checkpoints(c) -> None:
    if isinstance(c.checkpoints, Remote) and not _URL.match(c.checkpoints.url):
        _fail("checkpoints", f"not a URL: {c.checkpoints.url!r}")


@_check("revisions")
def _revisions(c) -> None:
    if c.revisions is not None and not any(p.strip() for p in c.revisions.split(",")):
        _fail("revisions", f"--revisions needs one or more globs (e.g. 'step*'), got {c.revisions!r}")


@_check("storage_options")
def _storage_options(c) -> None:
    so = c.storage_options
    if so is not None and not (isinstance(so, dict) and all(isinstance(k, str) for k in so)):
        _fail("storage_options", "storage_options must be a table of fsspec options "
                                 "(e.g. [storage_options] endpoint_url = \"...\")")


@_check("repo_id")
def _repo_id(c) -> None:
    if c.bucket is not None:
        if c.repo_id:
            _fail("repo_id", "give --repo-id or --bucket, not both")
        return
    if not c.repo_id:
        _fail("repo_id", "give --repo-id USER/NAME (a repository) or --bucket USER/NAME (a "
                         "Storage Bucket)")
    if not _REPO_ID.fullmatch(c.repo_id):
        _fail("repo_id", f"--repo-id must look like USER/NAME, got {c.repo_id!r}")


@_check("bucket")
def _bucket(c) -> None:
    if c.bucket is not None and not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*(/[^/]+)*/?",
                                                 c.bucket):
        _fail("bucket", f"--bucket must look like USER/NAME or USER/NAME/FOLDER, got {c.bucket!r}")


@_check("repo_type")
def _repo_type(c) -> None:
    _one_of("repo_type", "--repo-type", c.repo_type, REPO_TYPES)


# Cheap checks first; the colormap check imports matplotlib.
_ORDER = ("checkpoints", "revisions", "storage_options", "output", "fps", "frames_per_keyframe", "size", "projection", "max_points", "color_scale",
          "frames_dir", "jobs", "points", "tensor", "order", "settle_threshold", "metrics",
          "stills_dir", "stills_every", "steps", "timeline", "layer_pattern", "out", "repo_id",
          "bucket", "repo_type", "cmap")
assert set(_ORDER) == set(_CHECKS)


def validate(config) -> None:
    """Check every field of ``config`` that has a check; raise :class:`ConfigError` (with
    ``field`` set) for the first that cannot work."""
    names = {f.name for f in dataclasses.fields(config)}
    for name in _ORDER:
        if name in names:
            _CHECKS[name](config)
