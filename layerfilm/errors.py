"""Exception types that the CLI turns into one-line messages and exit codes.

Every error a user can cause by what they pass in is a :class:`LayerfilmError`.
Its ``str()`` is the whole message: one line that names the file (when there is
one) and the problem.  Anything else escaping the pipeline is a bug.
"""

from __future__ import annotations

import os


class LayerfilmError(Exception):
    """Base class: a problem with the user's input, options or environment."""

    exit_code = 1

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        self.path = None if path is None else os.fspath(path)
        self.problem = message
        super().__init__(f"{self.path}: {message}" if self.path else message)


class ConfigError(LayerfilmError):
    """An option value that cannot work (bad size, unknown colormap, ...)."""

    exit_code = 2


class CheckpointError(LayerfilmError):
    """A checkpoint folder or file that cannot be read or used."""


class EncodeError(LayerfilmError):
    """ffmpeg refused or failed; the message carries the command's last words."""
