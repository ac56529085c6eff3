"""The user's choices, validated in one place.

:class:`RenderConfig` is frozen: the CLI builds one, :func:`RenderConfig.validated`
checks every field and names the offending value, and from then on the stages
trust it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import ConfigError

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
        raise ConfigError(f"--size must look like WIDTHxHEIGHT (e.g. 1280x720), got {text!r}")
    return int(m.group(1)), int(m.group(2))


def parse_steps(text: str) -> tuple[int | None, int | None, int | None]:
    """``"1000:5000:500"`` -> ``(1000, 5000, 500)``; any part may be empty (``"::500"``,
    ``"2000:"``); raises :class:`ConfigError` otherwise."""
    m = re.fullmatch(r"\s*(\d*)\s*:\s*(\d*)\s*(?::\s*(\d*)\s*)?", text)
    if not m:
        raise ConfigError(f"--steps must look like START:STOP:EVERY (e.g. 0:5000:500, ::200 or "
                          f"1000:), got {text!r}")
    return tuple(int(g) if g else None for g in m.groups())  # type: ignore[return-value]


@dataclasses.dataclass(frozen=True)
class RenderConfig:
    """Everything that decides what a film looks like.

    ``frames_per_keyframe=None`` means one keyframe per second (= ``fps``).
    ``steps="START:STOP:EVERY"`` picks keyframes (:attr:`step_range`, see
    ``checkpoints.select_steps``);
    ``timeline="step"`` spaces keyframes by training step instead of evenly;
    ``layer_pattern`` groups tensors into panels by a regex instead of by known names;
    ``skip_bad`` renders past unreadable checkpoints instead of stopping.
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
    steps: str | None = None  # "START:STOP:EVERY", kept as text so config files and manifests hold it
    timeline: str = "keyframe"
    layer_pattern: str | None = None
    skip_bad: bool = False

    @property
    def format(self) -> str:
        return SUFFIXES[self.output.suffix.lower()]

    @property
    def step_range(self) -> tuple[int | None, int | None, int | None] | None:
        """``steps`` parsed: ``(start, stop, every)``, each ``None`` when left out."""
        return None if self.steps is None else parse_steps(self.steps)

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
        check_steps(self.steps)
        if self.timeline not in TIMELINES:
            raise ConfigError(
                f"--timeline must be one of {', '.join(TIMELINES)}, got {self.timeline!r}"
            )
        check_layer_pattern(self.layer_pattern)
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


def check_steps(steps: str | None) -> None:
    """Validate ``--steps START:STOP:EVERY`` (render, info and stats)."""
    if steps is not None:
        start, stop, every = parse_steps(steps)
        if start is not None and stop is not None and start > stop:
            raise ConfigError(f"--steps START must not exceed STOP, got {start}:{stop}")
        if every is not None and every < 1:
            raise ConfigError(f"--steps EVERY must be at least 1, got {every}")


def check_layer_pattern(pattern: str | None) -> None:
    """Validate ``--layer-pattern`` (a regular expression)."""
    if pattern is not None:
        try:
            re.compile(pattern)
        except re.error as e:
            raise ConfigError(
                f"--layer-pattern {pattern!r} is not a valid regular expression: {e}"
            ) from None


@dataclasses.dataclass(frozen=True)
class StatsConfig:
    """What ``layerfilm stats`` measures and where it writes (``out``: a folder).

    The fields that are also :class:`RenderConfig` options (:func:`stats_option_names`) mean
    the same there and here, and are read from the same config files.
    """

    checkpoints: Path
    out: Path = Path("layerfilm-stats")
    settle_threshold: float = SETTLE_THRESHOLD
    points: str = "neurons"
    tensor: str | None = None
    max_points: int = 2000
    seed: int = 0
    projection: str = "pca"
    layouts: bool = False  # compute layouts when none are cached
    steps: str | None = None  # "START:STOP:EVERY", as RenderConfig.steps
    layer_pattern: str | None = None
    skip_bad: bool = False

    @property
    def step_range(self) -> tuple[int | None, int | None, int | None] | None:
        """``steps`` parsed: ``(start, stop, every)``, each ``None`` when left out."""
        return None if self.steps is None else parse_steps(self.steps)

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
        check_steps(self.steps)
        check_layer_pattern(self.layer_pattern)
        if self.out.exists() and not self.out.is_dir():
            raise ConfigError("--out must be a folder", self.out)
        if not self.out.exists() and not self.out.resolve().parent.is_dir():
            raise ConfigError("the parent folder of --out does not exist", self.out)
        return self


# ---- Options from files -------------------------------------------------------------------
#
# Every field of RenderConfig except the two positional ones is an *option*: it can be set in a
# config file, is recorded in manifests and printed by ``--print-config``.  Reading and writing
# are generic over the fields (their names and type annotations), so a new field needs no code
# here; its checks live in RenderConfig.validated like every other.  On the command line each
# option is the ``render`` parameter of the same name (a test keeps the two in step).

CONFIG_FILE = "layerfilm.toml"
POSITIONAL = ("checkpoints", "output")
_Config = typing.TypeVar("_Config", RenderConfig, StatsConfig)


def option_names() -> list[str]:
    """The options, in field order."""
    return [f.name for f in dataclasses.fields(RenderConfig) if f.name not in POSITIONAL]


@functools.cache
def option_types() -> dict[str, Any]:
    """Option name -> its resolved type annotation."""
    hints = typing.get_type_hints(RenderConfig)
    return {name: hints[name] for name in option_names()}


def output_options() -> list[str]:
    """Options typed ``Path`` and named ``*_dir``: folders where extra outputs go (``--frames``,
    ``--stills``).  A re-render from a manifest writes them again only when they are given on
    the command line.  (Other paths, such as ``metrics``, are inputs.)"""
    return [n for n, t in option_types().items()
            if n.endswith("_dir") and Path in (t, *typing.get_args(t))]


def load_options_file(path: Path | None = None,
                      cwd: Path | None = None) -> tuple[Path | None, dict[str, Any]]:
    """The options set in a config file, as ``(file, {option: value})``.

    ``path`` is ``--config FILE`` (a ``pyproject.toml`` is read from its ``[tool.layerfilm]``
    table, any other file from its top level).  Without it: ``layerfilm.toml`` in the current
    folder, else the ``[tool.layerfilm]`` table of ``pyproject.toml`` there, else nothing
    (``(None, {})``).  Relative paths in a file are relative to the file's folder.
    """
    if path is None:
        here = Path.cwd() if cwd is None else cwd
        for name in (CONFIG_FILE, "pyproject.toml"):
            candidate = here / name if cwd is not None else Path(name)
            if candidate.is_file():
                table = _read_table(candidate)
                if table is not None:
                    return candidate, options_from_table(table, candidate)
        return None, {}
    if not path.is_file():
        raise ConfigError("no such config file", path)
    table = _read_table(path)
    if table is None:
        raise ConfigError("has no [tool.layerfilm] table", path)
    return path, options_from_table(table, path)


def _read_table(path: Path) -> dict[str, Any] | None:
    """A file's layerfilm table: the top level, or ``[tool.layerfilm]`` of a ``pyproject.toml``
    (``None`` when it has none)."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read: {e}", path) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"not valid TOML: {e}", path) from None
    if path.name != "pyproject.toml":
        return doc
    table = doc.get("tool", {}).get("layerfilm")
    if table is not None and not isinstance(table, dict):
        raise ConfigError("tool.layerfilm must be a table", path)
    return table


def options_from_table(table: dict[str, Any], path: Path, nullable: bool = False) -> dict[str, Any]:
    """Check and convert ``{key: value}`` read from ``path`` to option values.

    Keys are option names (``frames_per_keyframe`` or ``frames-per-keyframe``); values are
    converted by the option's type (``size`` takes ``[1280, 720]`` or ``"1280x720"``, paths are
    relative to ``path``'s folder).  ``nullable`` lets ``null`` (JSON) stand for an unset option.
    An unknown key or a value of the wrong kind is a :class:`ConfigError` naming file and key.
    """
    import difflib

    types = option_types()
    out: dict[str, Any] = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        if name not in types:
            if name in POSITIONAL:
                hint = f"; give {name.upper()} on the command line"
            else:
                close = difflib.get_close_matches(name, types, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(types)}"
            raise ConfigError(f"unknown key {key!r}{hint}", path)
        if name in out:
            raise ConfigError(f"{name!r} is given twice", path)
        try:
            out[name] = _coerce(value, types[name], path.parent, nullable)
        except ValueError as e:
            raise ConfigError(f"{key}: {e}", path) from None
    return out


def _coerce(value: Any, tp: Any, base: Path, nullable: bool) -> Any:
    """``value`` (from TOML or JSON) as type ``tp``; ``ValueError`` says what was expected."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and nullable and type(None) in args:
            return None
        errors = []
        for arm in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arm, base, nullable)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(" or ".join(dict.fromkeys(errors)))
    got = f"got {value!r}"
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"expected true or false, {got}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError(f"expected a whole number, {got}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ValueError(f"expected a number, {got}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"expected a string, {got}")
    if tp is Path:
        if isinstance(value, str) and value:
            p = Path(value).expanduser()
            return p if p.is_absolute() else base / p
        raise ValueError(f"expected a path (a string), {got}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise ValueError(f"expected one of {', '.join(map(repr, args))}, {got}")
    if origin in (tuple, list):
        if origin is tuple and args == (int, int) and isinstance(value, str):
            m = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", value)
            if m:
                return int(m.group(1)), int(m.group(2))
            raise ValueError(f"expected [WIDTH, HEIGHT] or \"WIDTHxHEIGHT\", {got}")
        if not isinstance(value, list):
            raise ValueError(f"expected an array, {got}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ValueError(f"expected an array of {len(args)} values, {got}")
            return tuple(_coerce(v, a, base, nullable) for v, a in zip(value, args))
        element = args[0] if args else Any
        items = [_coerce(v, element, base, nullable) for v in value]
        return tuple(items) if origin is tuple else items
    return value  # a type this loader does not know: RenderConfig.validated checks it


def plain(value: Any) -> Any:
    """An option value as plain JSON/TOML data: paths absolute strings, tuples lists."""
    if isinstance(value, Path):
        return os.path.abspath(value)
    if isinstance(value, (tuple, list)):
        return [plain(v) for v in value]
    return value


def options_dict(config: RenderConfig | StatsConfig,
                 names: Iterable[str] | None = None) -> dict[str, Any]:
    """Every option of ``config`` (or those in ``names``) as plain data (``None`` for unset
    options)."""
    return {name: plain(getattr(config, name)) for name in (option_names() if names is None else names)}


def options_toml(config: RenderConfig | StatsConfig, header: Iterable[str] = (),
                 names: Iterable[str] | None = None) -> str:
    """Every option of ``config`` (or those in ``names``) as a TOML document that ``--config``
    reads back."""
    lines = [f"# {line}" for line in header]
    for name, value in options_dict(config, names).items():
        lines.append(f"# {name} is not set" if value is None else f"{name} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} as TOML")


def with_options(config: RenderConfig, values: dict[str, Any], keep: Iterable[str] = ()) -> RenderConfig:
    """``config`` with the options in ``values`` replaced, except those named in ``keep``."""
    keep = set(keep)
    return dataclasses.replace(config, **{k: v for k, v in values.items() if k not in keep})


def validated_from(config: _Config, fallback: _Config, sources: dict[str, Path]) -> _Config:
    """``config.validated()``; when the offending value came from a file (``sources`` maps
    option -> file), the error names that file and key.

    The culprit is found generically: the option whose value from ``fallback`` (the command
    line's) makes this error go away.
    """
    try:
        return config.validated()
    except ConfigError as error:
        for name, path in sources.items():
            trial = dataclasses.replace(config, **{name: getattr(fallback, name)})
            try:
                trial.validated()
            except ConfigError as other:
                if str(other) == str(error):
                    continue
            raise ConfigError(f"{name}: {error}", path) from None
        raise


def resolve(cli: RenderConfig, given: Iterable[str],
            config_file: Path | None = None) -> tuple[RenderConfig, Path | None]:
    """Options from the config file (see :func:`load_options_file`) under those ``given`` on
    the command line.  Checked (placeholders stand in for missing positionals); returns the
    config and the file used."""
    path, values = load_options_file(config_file)
    values = {k: v for k, v in values.items() if k not in set(given)}
    config = with_options(cli, values)
    check_options(config, cli, {k: path for k in values})
    return config, path


def check_options(config: RenderConfig, fallback: RenderConfig, sources: dict[str, Path]) -> None:
    """:func:`validated_from` with placeholders for a missing CHECKPOINTS or OUTPUT."""
    probe = dataclasses.replace(config, checkpoints=config.checkpoints or Path("."),
                                output=config.output or Path("film.webm"))
    fallback = dataclasses.replace(fallback, checkpoints=probe.checkpoints, output=probe.output)
    validated_from(probe, fallback, sources)


# ---- Options from files for ``layerfilm stats`` ---------------------------------------------
#
# stats reads the same files as render.  Of their options it applies those that are also
# StatsConfig fields (same name, same meaning); the render-only ones (fps, size, cmap, ...) are
# read and type-checked like every key -- the file is one file for both commands -- but their
# values are not used, so they are not validated further by stats.


def stats_option_names() -> list[str]:
    """The options ``layerfilm stats`` takes from config files and prints with
    ``--print-config``: the :class:`StatsConfig` fields that are also render options."""
    names = set(option_names())
    return [f.name for f in dataclasses.fields(StatsConfig) if f.name in names]


def resolve_stats(cli: StatsConfig, given: Iterable[str],
                  config_file: Path | None = None) -> tuple[StatsConfig, Path | None]:
    """:func:`resolve` for ``layerfilm stats``: the file's :func:`stats_option_names` under
    those ``given`` on the command line.  Checked (a bad value from the file is blamed on the
    file and key; a placeholder stands in for a missing CHECKPOINTS); returns the config and
    the file used."""
    path, values = load_options_file(config_file)
    wanted = set(stats_option_names()) - set(given)
    values = {k: v for k, v in values.items() if k in wanted}
    config = dataclasses.replace(cli, **values)
    probe = dataclasses.replace(config, checkpoints=config.checkpoints or Path("."))
    validated_from(probe, dataclasses.replace(cli, checkpoints=probe.checkpoints),
                   {k: path for k in values})
    return config, path
