"""Exception types that the CLI turns into one-line messages and exit codes.

Every error a user can cause by what they pass in is a :class:`LayerfilmError`.
Its ``str()`` is the whole message: one line that names the file (when there is
one) and the problem.  Anything else escaping the pipeline is a bug.
"""

from __future__ import annotations

import os


class LayerfilmError(Exception):
    """Base class: a problem with the user's input, options or environment.

    ``path``: the file or folder at fault, put in front of the message; ``field``: the option
    at fault (a config field name), so a value that came from a config file can be blamed on
    that file and key.
    """

    exit_code = 1

    def __init__(self, message: str, path: str | os.PathLike | None = None, *,
                 field: str | None = None):
        self.path = None if path is None else os.fspath(path)
        self.problem = message
        self.field = field
        super().__init__(f"{self.path}: {message}" if self.path else message)

    def renamed(self, old: str, new: str) -> None:
        """Say ``new`` wherever this error says ``old``: an output's hidden temporary is named
        as the output it was to become, the file the user asked for."""
        if self.path is not None:
            self.path = self.path.replace(old, new)
        self.problem = self.problem.replace(old, new)
        self.args = (f"{self.path}: {self.problem}" if self.path else self.problem,)


class ConfigError(LayerfilmError):
    """An option value that cannot work (bad size, unknown colormap, ...)."""

    exit_code = 2


class CheckpointError(LayerfilmError):
    """A checkpoint folder or file that cannot be read or used."""


class EncodeError(LayerfilmError):
    """ffmpeg refused or failed; the message carries the command's last words."""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it has none: the
    part of a library's error that fits in a one-line message."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
