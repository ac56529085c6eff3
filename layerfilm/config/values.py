"""The values a user's choice may take, and how text becomes one: the fixed choices, the parsers
of ``--size``, ``--steps`` and ``--max-memory``, and :class:`Remote` for a checkpoints URL.  Both
the dataclasses (:mod:`.schema`) and their checks (:mod:`.validate`) take these from here."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

from ..errors import ConfigError

PROJECTIONS = ("pca", "umap", "fourier")
COLOR_SCALES = ("log", "linear")
TIMELINES = ("keyframe", "step")
# Output suffix -> format name.  The encoder table in ``encode.py`` is keyed by
# the same names; a test keeps the two in step.
SUFFIXES = {".webm": "webm", ".gif": "gif", ".webp": "webp", ".mp4": "mp4", ".mkv": "mkv"}
ORDERS = ("film", "settle")
SCALES = ("panel", "shared")
POINTS = ("neurons", "embeddings", "rows", "cols", "activations")


def parse_positions(text: str) -> tuple[int, ...] | None:
    """``--probe-positions``: ``"all"`` -> ``None`` (every token of each probe line), else
    comma-separated token indices into each line, negative ones from its end (``"-1"``: the
    last token).  :class:`ValueError` for anything else."""
    if text.strip() == "all":
        return None
    try:
        out = tuple(int(p) for p in text.split(","))
    except ValueError:
        raise ValueError(f"--probe-positions must be 'all' or token indices such as -1 or 0,2, "
                         f"got {text!r}") from None
    if len(set(out)) != len(out):
        raise ValueError(f"--probe-positions names a position twice: {text!r}")
    return out


# A layer has settled once its rate stays below this share of its own early pace (see
# drift.Settling); with --settle-threshold instead once its change per 100 steps stays below that.
SETTLE_FRACTION = 0.25
# |z| of a layer's drift against its neighbours' from which it is marked as a rebel.
REBEL_Z = 3.0


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


_MEMORY_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
                 "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def parse_memory(text: str) -> int:
    """``"8G"``, ``"500MB"``, ``"1.5GiB"``, ``"1000000"`` -> bytes (K/M/G/T: powers of 1000,
    Ki/Mi/Gi/Ti: of 1024); raises :class:`ConfigError` otherwise."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?\s*", str(text), re.I)
    if not m or float(m.group(1)) <= 0:
        raise ConfigError(f"--max-memory must be a size such as 8G, 512M or 1.5GiB, got {text!r}",
                          field="max_memory")
    return int(float(m.group(1)) * _MEMORY_UNITS[(m.group(2) or "").lower()])


URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


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
    return Remote(text) if URL.match(text) else Path(text)


REPO_TYPES = ("model", "dataset")
REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
