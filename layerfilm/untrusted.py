"""What comes from outside, made safe to use: names joined to folders, JSON parsed.

Object keys, Hub file names, a sharded index's shard names, a Distributed Checkpoint's data
file names and a manifest's file entries are written by whoever made the files or runs the
server.  :func:`within` is the one place such a name is joined to its folder: it refuses any
name that would lead outside (``..``, an absolute path), before anything is read or written.
:func:`load_json` parses JSON from such files with a bound on nesting, so a header of 200,000
nested brackets is a one-line error instead of a ``RecursionError`` traceback.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import PurePath

import numpy as np

from .errors import CheckpointError

MAX_JSON_DEPTH = 64  # far above any real file's nesting (headers 3, trainer states 4, configs ~6)
_ESCAPED = re.compile(rb"\\.", re.S)  # a backslash and the character it escapes
_NOT_STRUCTURE = bytes(sorted(set(range(256)) - set(b'"[]{}')))  # deleted before strings are found
_STRING = re.compile(rb'"[^"]*"')  # a string, once escapes are gone


class JSONTooDeep(ValueError):
    """JSON nested deeper than :data:`MAX_JSON_DEPTH`: refused before it is parsed (a
    ``ValueError``, so every reader that already treats bad JSON as bad input does so here)."""


def within(folder: PurePath, name: str | os.PathLike, where: str | os.PathLike | None = None,
           what: str = "name") -> PurePath:
    """``folder / name``, where ``name`` came from outside (a listing, an index, metadata, a
    manifest); :class:`CheckpointError` naming ``name`` (and ``where``, the file or URL it came
    from) unless it is a relative path that stays inside ``folder``.

    The check is on the name itself -- no ``..`` part (``/`` and ``\\`` both separate parts),
    not absolute, not empty -- so it holds for remote paths too (an object store has no folders
    to resolve), and it is made before any listing or read of the place the name points at.
    Symbolic links the user put in their own folder are theirs to follow (the Hugging Face
    cache links its snapshots into blobs/); no name from outside may climb out.
    """
    text = os.fspath(name)
    parts = text.replace("\\", "/").split("/")
    if (not text or "\x00" in text or parts[0] == "" or PurePath(text).is_absolute()
            or ".." in parts or all(p in ("", ".") for p in parts)):
        raise CheckpointError(f"refused {what} {text!r}: it leads outside its folder "
                              f"({folder}); nothing was read or written there",
                              folder if where is None else where)
    return folder / text


def json_depth(text: str | bytes) -> int:
    """How deeply ``text``'s arrays and objects nest (brackets inside strings do not count),
    in linear time, on its UTF-8 bytes (no byte of a multi-byte character is ASCII): escaped
    characters dropped, then every byte but quotes and brackets (C loops), then strings
    (a regular expression on what is left: a few bytes per JSON string); the rest is a
    running sum."""
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    if b"\\" in data:
        data = _ESCAPED.sub(b"", data)
    brackets = _STRING.sub(b"", data.translate(None, _NOT_STRUCTURE))
    if not brackets:
        return 0
    codes = np.frombuffer(brackets, np.uint8)
    steps = np.where((codes == ord("[")) | (codes == ord("{")), 1, -1)
    return int(np.cumsum(steps).max())


def load_json(raw: str | bytes | bytearray, **hooks):
    """``json.loads(raw, **hooks)``, refused with :class:`JSONTooDeep` when it nests deeper than
    :data:`MAX_JSON_DEPTH` (Python's parser recurses once per level and would otherwise raise
    ``RecursionError``, which no reader expects)."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else bytes(raw)
    if data.count(b"[") + data.count(b"{") > MAX_JSON_DEPTH and json_depth(data) > MAX_JSON_DEPTH:
        raise JSONTooDeep(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return json.loads(raw, **hooks)
