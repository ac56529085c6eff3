"""Precedence and blame: defaults < config file < command line, one validation.

The command line wins, even when the value typed equals the default (``given`` names what was
typed).  A value from a file that cannot work is reported as ``FILE: key: problem``: the
:class:`~layerfilm.errors.ConfigError` raised by validation names its field, and the field's
source is known.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

from ..errors import ConfigError
from .files import load_options_file
from .schema import Selection

C = TypeVar("C", bound=Selection)


def with_options(config: C, values: dict[str, Any], keep: Iterable[str] = ()) -> C:
    """``config`` with the options in ``values`` that are fields of it replaced, except those
    named in ``keep``.  (A config file is one file for every command: ``stats`` and ``info``
    read the render-only options too, type-checked, and use what they share with render.)"""
    mine = {f.name for f in dataclasses.fields(config)}
    keep = set(keep)
    return dataclasses.replace(config, **{k: v for k, v in values.items()
                                          if k in mine and k not in keep})


def validated_from(config: C, sources: dict[str, Path]) -> C:
    """``config.validated()``; when the offending value came from a file (``sources`` maps
    option -> file), the error names that file and key."""
    try:
        return config.validated()
    except ConfigError as error:
        if error.field in sources:
            raise ConfigError(f"{error.field}: {error}", sources[error.field],
                              field=error.field) from None
        raise


def resolve(cli: C, given: Iterable[str], config_file: Path | None = None) -> tuple[C, Path | None]:
    """Options from the config file (see :func:`~layerfilm.config.files.load_options_file`)
    under those ``given`` on the command line, validated.  Returns the config and the file
    used (``None`` when there was none)."""
    path, values = load_options_file(config_file)
    mine = {f.name for f in dataclasses.fields(cli)}
    values = {k: v for k, v in values.items() if k in mine and k not in set(given)}
    config = with_options(cli, values)
    return validated_from(config, {k: path for k in values}), path
