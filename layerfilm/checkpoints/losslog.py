"""What the run logged beside the checkpoints: the training loss (for the header and the loss
strip), the learning rate and the tokens seen (for the header), and ``--captions`` files."""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
from pathlib import Path, PurePath
from typing import Iterable, Mapping

import numpy as np

from ..errors import CheckpointError
from ..untrusted import load_json
from .discover import CheckpointRef, parse_step
from .formats import SAFETENSORS_SUFFIXES
from .storage import LOCAL, Storage

METRICS_NAMES = ("metrics.jsonl", "log.jsonl", "metrics.csv", "trainer_state.json")
# Column names, first found wins: the learning rate and the training tokens seen so far.
LR_KEYS = ("lr", "learning_rate", "learning-rate", "train/lr", "lr-AdamW", "lr-Adam")
TOKEN_KEYS = ("num_input_tokens_seen", "tokens_seen", "tokens", "train/tokens")


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
    lr: tuple[np.ndarray, np.ndarray] | None = None  # (steps, values) when the log has them
    tokens: tuple[np.ndarray, np.ndarray] | None = None

    def at(self, step: float) -> float | None:
        return _last(self.steps, self.values, step)

    def lr_at(self, step: float) -> float | None:
        """The learning rate last logged at or before ``step`` (``None``: not logged)."""
        return None if self.lr is None else _last(*self.lr, step)


def _last(steps: np.ndarray, values: np.ndarray, step: float) -> float | None:
    i = int(np.searchsorted(steps, step, side="right")) - 1
    return None if i < 0 else float(values[i])


def load_loss_curve(folder: PurePath | str | os.PathLike, refs: Iterable[CheckpointRef] = (),
                    storage: Storage = LOCAL, metadata: Mapping[PurePath, dict] | None = None
                    ) -> LossCurve | None:
    """The loss curve logged beside the checkpoints, or ``None``.

    Looks for ``metrics.jsonl`` / ``log.jsonl`` / ``metrics.csv`` (columns ``step``
    and ``loss`` or ``train_loss``) in ``folder`` and the folders down to the
    checkpoints, and ``trainer_state.json`` (``log_history``) beside the last checkpoint;
    falls back to a ``loss`` entry in each safetensors file's metadata (``metadata``: those
    already read, by path, not read again).
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
                curve = _log_curve(storage, path, storage.display(path))
                if curve is not None:
                    return curve
    # Hugging Face Trainer: each checkpoint-N/trainer_state.json holds the whole log so far.
    states = [(r.path if storage.is_dir(r.path) else r.path.parent) / "trainer_state.json"
              for r in refs]
    states = [p for p in states if storage.is_file(p)] or sorted(
        _trainer_states(storage, folder), key=lambda p: parse_step(p, folder) or 0)
    if states:
        curve = _log_curve(storage, states[-1], storage.display(states[-1]))
        if curve is not None:
            return curve
    pairs = []
    for ref in refs:
        if ref.path.suffix.lower() in SAFETENSORS_SUFFIXES:
            from .formats import SafetensorsFile

            meta = (metadata or {}).get(ref.path)
            if meta is None:
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


def _arrays(pairs: list[tuple[int, float]]) -> tuple[np.ndarray, np.ndarray]:
    by_step = dict(sorted(pairs))
    return np.fromiter(by_step.keys(), np.int64), np.fromiter(by_step.values(), np.float64)


def _curve(pairs: list[tuple[int, float]], source: str, path: PurePath | None = None,
           rows: list[dict] = ()) -> LossCurve:
    """The loss ``pairs`` as a curve, with the learning rate and tokens seen that ``rows`` (the
    log's rows) hold, if any."""
    extra = {}
    for name, keys in (("lr", LR_KEYS), ("tokens", TOKEN_KEYS)):
        found = _pairs(rows, keys)
        if found:
            extra[name] = _arrays(found)
    return LossCurve(*_arrays(pairs), source, path, **extra)


def _pairs(rows, keys: tuple[str, ...]) -> list[tuple[int, float]]:
    """(step, value) for every row with a step and one of ``keys`` (the first one present)."""
    out = []
    for row in rows:
        if not isinstance(row, dict):
            continue
        step = _float(row.get("step", row.get("global_step", row.get("iter"))))
        value = next((v for v in (_float(row.get(k)) for k in keys) if v is not None), None)
        if step is not None and value is not None:
            out.append((int(step), value))
    return out


def _float(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _read_text(storage: Storage, path: PurePath) -> str:
    return storage.read(path, 0, storage.size(path)).decode("utf-8")


def _read_rows(storage: Storage, path: PurePath) -> list:
    """The rows of a JSONL/CSV log or a trainer_state.json's ``log_history``; bad lines skipped."""
    rows: list = []
    try:
        text = _read_text(storage, path)
        if path.name == "trainer_state.json" or path.suffix.lower() == ".json":
            rows = load_json(text).get("log_history", [])
        elif path.suffix == ".csv":
            rows = list(csv.DictReader(io.StringIO(text, newline="")))
        else:
            for line in text.splitlines():
                try:
                    rows.append(load_json(line))
                except ValueError:  # not JSON, or nested too deeply
                    continue
    except (OSError, ValueError, AttributeError):
        return []
    return rows if isinstance(rows, list) else []


LOSS_KEYS = ("loss", "train_loss", "train_loss_step")


def _log_curve(storage: Storage, path: PurePath, source: str) -> LossCurve | None:
    rows = _read_rows(storage, path)
    pairs = _pairs(rows, LOSS_KEYS)
    return _curve(pairs, source, path, rows) if pairs else None


def load_loss_file(path: str | os.PathLike) -> LossCurve:
    """The loss curve in one local file given by the user (``--metrics``): JSONL, CSV (columns
    ``step`` and ``loss``/``train_loss``) or a Trainer-style JSON with ``log_history``.
    Raises :class:`CheckpointError` when it holds no (step, loss) pairs."""
    path = Path(path)
    curve = _log_curve(LOCAL, path, str(path))
    if curve is None:
        raise CheckpointError("no (step, loss) values found (JSONL or CSV with columns step and loss, "
                              "or a trainer_state.json)", path)
    return curve


def checkpoint_tokens(refs: Iterable[CheckpointRef], loss: LossCurve | None = None,
                      storage: Storage = LOCAL) -> np.ndarray:
    """(K,) float64 training tokens seen at each checkpoint, NaN where unknown: from its name
    (``tokens4B``, ``2BT``), else the ``num_input_tokens_seen`` of the ``trainer_state.json``
    beside it, else the log's tokens column at that step."""
    out = []
    for ref in refs:
        tokens = ref.tokens
        if tokens is None:
            state = (ref.path if storage.is_dir(ref.path) else ref.path.parent) / "trainer_state.json"
            if storage.is_file(state):
                try:
                    tokens = _float(load_json(_read_text(storage, state)).get("num_input_tokens_seen"))
                except (OSError, ValueError, AttributeError):
                    tokens = None
                # 0 is what a Trainer that does not count tokens writes: only true at step 0.
                tokens = tokens if tokens or (tokens == 0 and ref.step == 0) else None
        if tokens is None and loss is not None and loss.tokens is not None:
            steps, values = loss.tokens
            hit = np.flatnonzero(steps == ref.step)
            tokens = float(values[hit[0]]) if hit.size else None
        out.append(np.nan if tokens is None else float(tokens))
    return np.array(out, dtype=np.float64)
