"""Options in files: ``layerfilm.toml``, ``[tool.layerfilm]`` in ``pyproject.toml``, manifests.

Every field of :class:`RenderConfig` except the two positional ones is an *option*: it can be
set in a config file, is recorded in manifests and printed by ``--print-config``.  Reading and
writing are generic over the fields (their names and type annotations), so a new field needs no
code here; its check lives in ``validate.py`` like every other.  On the command line each option
is the ``render`` parameter of the same name (a test keeps the two in step).  ``info`` and
``stats`` read the same files and use the options that are fields of their own configs.
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

from ..errors import ConfigError
from .schema import RenderConfig, Selection

CONFIG_FILE = "layerfilm.toml"
POSITIONAL = ("checkpoints", "output")
# Options about where the work runs, not what the film is: not recorded in manifests.
RUN_ONLY = ("scheduler",)
# Options set only in config files (fsspec's own settings, not layerfilm flags).
FILE_ONLY = ("storage_options",)


def option_names(config_type: type = RenderConfig) -> list[str]:
    """The options of ``config_type`` (by default all of them): its own fields in field order,
    then the :class:`Selection` ones, positionals left out."""
    shared = [f.name for f in dataclasses.fields(Selection)]
    own = [f.name for f in dataclasses.fields(config_type) if f.name not in shared]
    known = {f.name for f in dataclasses.fields(RenderConfig)}
    return [n for n in own + shared if n not in POSITIONAL and n in known]


@functools.cache
def option_types() -> dict[str, Any]:
    """Option name -> its resolved type annotation."""
    hints = typing.get_type_hints(RenderConfig)
    return {name: hints[name] for name in option_names()}


# Options naming an extra output file (beside the film), like the ``*_dir`` folders.
OUTPUT_FILES = ("preview", "html")


def output_options() -> list[str]:
    """Options typed ``Path`` and named ``*_dir``: folders where extra outputs go (``--frames``,
    ``--stills``), and the extra output files (:data:`OUTPUT_FILES`: ``--preview``).  A
    re-render from a manifest writes them again only when they are given on the command line.
    (Other paths, such as ``metrics``, are inputs.)"""
    return [n for n, t in option_types().items()
            if (n.endswith("_dir") or n in OUTPUT_FILES) and Path in (t, *typing.get_args(t))]


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
    return value  # a type this loader does not know: validate.py checks it


def plain(value: Any) -> Any:
    """An option value as plain JSON/TOML data: paths absolute strings, tuples lists."""
    if isinstance(value, Path):
        return os.path.abspath(value)
    if isinstance(value, (tuple, list)):
        return [plain(v) for v in value]
    return value


def options_dict(config: Selection,
                 names: Iterable[str] | None = None) -> dict[str, Any]:
    """Every option of ``config`` (or those in ``names``) as plain data (``None`` for unset
    options)."""
    names = option_names(type(config)) if names is None else names
    return {name: plain(getattr(config, name)) for name in names}


def options_toml(config: Selection, header: Iterable[str] = (),
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
