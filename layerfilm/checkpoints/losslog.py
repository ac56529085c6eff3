"""The training loss logged beside the checkpoints (for the header and the loss strip)."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
from pathlib import Path, PurePath
from typing import Iterable

import numpy as np

from ..errors import CheckpointError
from .discover import SAFETENSORS_SUFFIXES, CheckpointRef, parse_step
from .storage import LOCAL, Storage

METRICS_NAMES = ("metrics.jsonl", "log.jsonl", "metrics.csv", "trainer_state.json")


@dataclasses.dataclass(frozen=True)
class LossCurve:
    """A training loss logged by step; ``at(step)`` is the last value logged at or before it.

    ``source`` names where it came from; ``path`` is that file when it is one file (the
    manifest records it), else ``None``.
    """

    steps: np.ndarray  # (n,) int64, increasing
    values: np.ndarray  # (n,) float64
    source: str
    path: PurePath | None = None

    def at(self, step: float) -> float | None:
        i = int(np.searchsorted(self.steps, step, side="right")) - 1
        return None if i < 0 else float(self.values[i])


def load_loss_curve(folder: PurePath | str | os.PathLike, refs: Iterable[CheckpointRef] = (),
                    storage: Storage = LOCAL) -> LossCurve | None:
    """The loss curve logged beside the checkpoints, or ``None``.

    Looks for ``metrics.jsonl`` / ``log.jsonl`` / ``metrics.csv`` (columns ``step``
    and ``loss`` or ``train_loss``) in ``folder`` and the folders down to the
    checkpoints, and ``trainer_state.json`` (``log_history``) beside the last checkpoint;
    falls back to a ``loss`` entry in each safetensors file's metadata.
    """
    folder = folder if isinstance(folder, PurePath) else Path(folder)
    refs = list(refs)
    # The folder given, then the folders between it and the checkpoints (Lightning's CSVLogger
    # writes version_N/metrics.csv beside version_N/checkpoints/).
    places = [folder]
    for ref in refs[:1]:
        places += [p for p in reversed(ref.path.parents) if p != folder and folder in p.parents]
    for place in places:
        for name in METRICS_NAMES if place == folder else METRICS_NAMES[:-1]:
            path = place / name
            if storage.is_file(path):
                pairs = _read_metrics(storage, path)
                if pairs:
                    return _curve(pairs, storage.display(path), path)
    # Hugging Face Trainer: each checkpoint-N/trainer_state.json holds the whole log so far.
    states = [(r.path if storage.is_dir(r.path) else r.path.parent) / "trainer_state.json"
              for r in refs]
    states = [p for p in states if storage.is_file(p)] or sorted(
        _trainer_states(storage, folder), key=lambda p: parse_step(p, folder) or 0)
    if states:
        pairs = _read_metrics(storage, states[-1])
        if pairs:
            return _curve(pairs, storage.display(states[-1]), states[-1])
    pairs = []
    for ref in refs:
        if ref.path.suffix.lower() in SAFETENSORS_SUFFIXES:
            from .formats import SafetensorsFile

            try:
                meta = SafetensorsFile(ref.path, ref.storage).metadata
            except CheckpointError:
                continue
            loss = _float(meta.get("loss", meta.get("train_loss")))
            if loss is not None:
                pairs.append((ref.step, loss))
    return _curve(pairs, "checkpoint metadata") if pairs else None


def _trainer_states(storage: Storage, folder: PurePath) -> list[PurePath]:
    """``*/trainer_state.json`` under ``folder``."""
    try:
        entries = storage.listdir(folder)
    except OSError:
        return []
    return [p / "trainer_state.json" for p in entries
            if storage.is_dir(p) and storage.is_file(p / "trainer_state.json")]


def _curve(pairs: list[tuple[int, float]], source: str, path: PurePath | None = None) -> LossCurve:
    by_step = dict(sorted(pairs))
    return LossCurve(np.fromiter(by_step.keys(), np.int64), np.fromiter(by_step.values(), np.float64),
                     source, path)


def _float(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _read_text(storage: Storage, path: PurePath) -> str:
    return storage.read(path, 0, storage.size(path)).decode("utf-8")


def _read_metrics(storage: Storage, path: PurePath) -> list[tuple[int, float]]:
    """(step, loss) pairs from a JSONL/CSV log or a trainer_state.json; bad lines skipped."""
    rows: list[dict] = []
    try:
        text = _read_text(storage, path)
        if path.name == "trainer_state.json":
            rows = json.loads(text).get("log_history", [])
        elif path.suffix == ".csv":
            rows = list(csv.DictReader(io.StringIO(text, newline="")))
        else:
            for line in text.splitlines():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    except (OSError, ValueError, AttributeError):
        return []
    pairs = []
    for row in rows:
        if not isinstance(row, dict):
            continue
        step = _float(row.get("step", row.get("global_step", row.get("iter"))))
        loss = _float(row.get("loss", row.get("train_loss", row.get("train_loss_step"))))
        if step is not None and loss is not None:
            pairs.append((int(step), loss))
    return pairs


def load_loss_file(path: str | os.PathLike) -> LossCurve:
    """The loss curve in one local file given by the user (``--metrics``): JSONL, CSV (columns
    ``step`` and ``loss``/``train_loss``) or a Trainer-style JSON with ``log_history``.
    Raises :class:`CheckpointError` when it holds no (step, loss) pairs."""
    path = Path(path)
    if path.suffix.lower() == ".json" and path.name != "trainer_state.json":
        try:
            rows = json.loads(path.read_text()).get("log_history", [])
        except (OSError, ValueError, AttributeError):
            rows = []
        pairs = [(int(s), v) for s, v in ((_float(r.get("step", r.get("global_step"))),
                                             _float(r.get("loss", r.get("train_loss"))))
                                            for r in rows if isinstance(r, dict))
                 if s is not None and v is not None]
    else:
        pairs = _read_metrics(LOCAL, path)
    if not pairs:
        raise CheckpointError("no (step, loss) values found (JSONL or CSV with columns step and loss, "
                              "or a trainer_state.json)", path)
    return _curve(pairs, str(path), path)
