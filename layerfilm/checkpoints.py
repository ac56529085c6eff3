"""Find checkpoints, order them by training step, read tensors lazily.

Safetensors files are parsed here without torch: the header is validated
(size, JSON, dtypes, shapes, offsets) before any tensor data is touched, and
tensors are memory-mapped so only the rows that are drawn get read.  Torch
pickles (``.pt .pth .bin .ckpt``) are read with ``torch.load(weights_only=True)``
only; torch is imported inside the function that needs it.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import re
import struct
from pathlib import Path
from typing import Iterable, Protocol

import numpy as np

from .errors import CheckpointError

SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
CHECKPOINT_SUFFIXES = SAFETENSORS_SUFFIXES + TORCH_SUFFIXES
METRICS_NAMES = ("metrics.jsonl", "log.jsonl", "metrics.csv", "trainer_state.json")

# Keyword-tagged numbers win over bare numbers, so "epoch=1-step=300" is step 300.
_STEP_PATTERNS = (
    re.compile(r"(?:global_step|step|iter|iteration|it)[_\-=]?0*(\d+)", re.I),
    re.compile(r"(?:checkpoint|ckpt)[_\-=]?0*(\d+)", re.I),
)
_LAST_NUMBER = re.compile(r"(\d+)(?!.*\d)")

_MAX_HEADER = 100 * 1024 * 1024
_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # widened to float32 by hand: numpy has no bfloat16
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")


@dataclasses.dataclass(frozen=True)
class CheckpointRef:
    """One checkpoint file and the training step it was saved at."""

    path: Path
    step: int


def parse_step(path: Path, root: Path | None = None) -> int | None:
    """The training step encoded in a checkpoint's name, or ``None``.

    The file's stem is tried first, then each parent folder up to ``root``
    (``checkpoint-300/model.safetensors`` is step 300).
    """
    parts = [path.stem]
    for parent in path.parents:
        if root is not None and parent == root:
            break
        parts.append(parent.name)
    for part in parts:
        for pattern in _STEP_PATTERNS:
            found = pattern.findall(part)
            if found:
                return int(found[-1])
        m = _LAST_NUMBER.search(part)
        if m:
            return int(m.group(1))
    return None


def discover(folder: str | os.PathLike) -> tuple[list[CheckpointRef], list[tuple[Path, str]]]:
    """Checkpoints under ``folder`` (two levels deep), ordered by step.

    Returns ``(checkpoints, skipped)`` where ``skipped`` lists files that look
    like weights but carry no step in their name, with the reason.  Raises
    :class:`CheckpointError` when there is nothing to film or two files claim
    the same step.
    """
    root = Path(folder)
    if not root.exists():
        raise CheckpointError("no such folder", root)
    if not root.is_dir():
        raise CheckpointError("is a file; give the folder that holds the checkpoints", root)
    candidates: list[Path] = []
    for depth_glob in ("*", "*/*"):
        candidates += [
            p for p in root.glob(depth_glob)
            if p.suffix.lower() in CHECKPOINT_SUFFIXES and p.is_file() and not p.name.startswith(".")
        ]
    found: dict[int, Path] = {}
    skipped: list[tuple[Path, str]] = []
    for path in sorted(candidates):
        step = parse_step(path, root)
        if step is None:
            skipped.append((path, "no training step in its name"))
            continue
        if step in found:
            raise CheckpointError(f"has the same step ({step}) as {found[step]}", path)
        found[step] = path
    refs = [CheckpointRef(found[s], s) for s in sorted(found)]
    if not refs:
        raise CheckpointError(
            "no checkpoints found (looked for *.safetensors, *.pt, *.pth, *.bin, *.ckpt "
            "named with their training step, e.g. step_000100.safetensors)",
            root,
        )
    if len(refs) < 2:
        raise CheckpointError(
            f"only one checkpoint ({refs[0].path.name}); a film needs at least two", root
        )
    return refs, skipped


class TensorSource(Protocol):
    """What the extract stage needs from one checkpoint."""

    path: Path
    metadata: dict[str, str]

    def shapes(self) -> dict[str, tuple[int, ...]]: ...

    def read(self, name: str, index: np.ndarray | None = None, axis: int = 0) -> np.ndarray: ...


class SafetensorsFile:
    """A validated, memory-mapped safetensors file (no torch needed).

    ``read(name, index, axis)`` returns a float32 copy of the rows (``axis=0``)
    or columns (``axis=1``) in ``index`` of a 2-D tensor, or of the whole tensor.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    raise CheckpointError(
                        "not a safetensors file: " + ("empty file" if size == 0 else "truncated header"),
                        self.path,
                    )
                (n,) = struct.unpack("<Q", head)
                if n > _MAX_HEADER or 8 + n > size:
                    raise CheckpointError(
                        f"corrupt safetensors header (declares {n} header bytes, file has {size})",
                        self.path,
                    )
                raw = f.read(n)
        except OSError as e:
            raise CheckpointError(f"cannot read: {e.strerror or e}", self.path) from None
        try:
            header = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise CheckpointError("corrupt safetensors header (not valid JSON)", self.path) from None
        if not isinstance(header, dict):
            raise CheckpointError("corrupt safetensors header (not a JSON object)", self.path)
        meta = header.pop("__metadata__", None) or {}
        self.metadata = {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}
        self._data_start = 8 + n
        self._map: np.memmap | None = None
        data_len = size - self._data_start
        self._entries: dict[str, tuple[str, tuple[int, ...], int]] = {}
        for name, e in header.items():
            try:
                dtype, shape, (begin, end) = e["dtype"], tuple(e["shape"]), e["data_offsets"]
            except (TypeError, KeyError, ValueError):
                raise CheckpointError(f"corrupt safetensors header entry for {name!r}", self.path) from None
            if dtype not in _DTYPES:
                # Unknown dtypes (F8, complex ...) are fine as long as nobody draws them.
                self._entries[name] = (dtype, shape, -1)
                continue
            if not all(isinstance(d, int) and d >= 0 for d in shape):
                raise CheckpointError(f"tensor {name!r} has an invalid shape {list(shape)}", self.path)
            nbytes = math.prod(shape) * _DTYPES[dtype].itemsize
            if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end):
                raise CheckpointError(f"tensor {name!r} has invalid data offsets", self.path)
            if end - begin != nbytes:
                raise CheckpointError(
                    f"tensor {name!r} declares {end - begin} bytes but its shape needs {nbytes}",
                    self.path,
                )
            if end > data_len:
                raise CheckpointError(
                    f"truncated: tensor {name!r} ends at byte {end} of a {data_len}-byte data section",
                    self.path,
                )
            self._entries[name] = (dtype, shape, begin)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: shape for k, (dtype, shape, _) in self._entries.items() if dtype in _FLOAT_DTYPES}

    def read(self, name: str, index: np.ndarray | None = None, axis: int = 0) -> np.ndarray:
        dtype, shape, begin = self._entries[name]
        if math.prod(shape) == 0:
            arr = np.zeros(shape, dtype=np.float32)
        else:
            data = self._map
            if data is None:  # one mapping per file, views per tensor (a race maps twice: harmless)
                data = self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
            start = self._data_start + begin
            nbytes = math.prod(shape) * _DTYPES[dtype].itemsize
            arr = data[start:start + nbytes].view(_DTYPES[dtype]).reshape(shape)
        if index is not None and not _is_everything(index, arr.shape[axis]):
            arr = arr[index] if axis == 0 else arr[:, index]
        out = _to_float32(arr, dtype)  # in storage order: converting a strided view is slower
        return np.ascontiguousarray(out.T) if axis == 1 else out


def _is_everything(index: np.ndarray, n: int) -> bool:
    """Whether a sorted, duplicate-free ``index`` picks all ``n`` entries (no gather needed)."""
    return len(index) == n and (n == 0 or (index[0] == 0 and index[-1] == n - 1))


def _to_float32(arr: np.ndarray, dtype: str) -> np.ndarray:
    """A C-contiguous float32 copy of ``arr`` (a view of the stored dtype; any strides)."""
    if dtype == "BF16":
        return np.ascontiguousarray((arr.astype(np.uint32) << 16).view(np.float32))
    if dtype == "F16" and arr.ndim == 2:
        from ._kernels import half_to_float_kernel  # numba only once a tensor is read

        out = np.empty(arr.shape, dtype=np.float32)
        half_to_float_kernel(arr.view(np.uint16), out)
        return out
    return np.array(arr, dtype=np.float32, order="C")


class TorchFile:
    """A torch pickle read with ``weights_only=True``; tensors converted on read."""

    _CONTAINER_KEYS = ("state_dict", "model", "model_state_dict", "module", "params")

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            import torch
        except ImportError:
            raise CheckpointError(
                "reading torch pickles needs torch: pip install 'layerfilm[torch]' "
                "(or convert the checkpoint to safetensors)",
                self.path,
            ) from None
        import pickle

        if self.path.stat().st_size == 0:
            raise CheckpointError("empty file", self.path)
        try:
            obj = torch.load(self.path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise CheckpointError(
                "refused: this pickle needs code execution to load (torch.load weights_only=True "
                "rejected it); convert it to safetensors",
                self.path,
            ) from None
        except Exception as e:  # zip/EOF/runtime errors from a broken file
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"cannot load: {first}", self.path) from None
        self.metadata: dict[str, str] = {}
        tensors = self._find_tensors(obj, torch)
        if not tensors:
            raise CheckpointError("contains no tensors", self.path)
        self._tensors = {_strip_prefixes(k): v for k, v in tensors.items()}

    def _find_tensors(self, obj, torch) -> dict:
        if not isinstance(obj, dict):
            return {}
        for key in ("global_step", "iter_num", "step"):
            if isinstance(obj.get(key), int):
                self.metadata["step"] = str(obj[key])
        direct = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor) and isinstance(k, str)}
        if direct:
            return direct
        for key in self._CONTAINER_KEYS:
            if isinstance(obj.get(key), dict):
                found = self._find_tensors(obj[key], torch)
                if found:
                    return found
        nested = [v for v in obj.values() if isinstance(v, dict)]
        for v in nested:
            found = self._find_tensors(v, torch)
            if found:
                return found
        return {}

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in self._tensors.items() if v.is_floating_point()}

    def read(self, name: str, index: np.ndarray | None = None, axis: int = 0) -> np.ndarray:
        t = self._tensors[name]
        if index is not None:
            import torch

            t = t.index_select(axis, torch.as_tensor(index, dtype=torch.long))
            if axis == 1:
                t = t.T
        return t.detach().to("cpu").float().contiguous().numpy()


def _strip_prefixes(name: str) -> str:
    for prefix in ("_orig_mod.", "module."):
        name = name.replace(prefix, "")
    return name


def open_checkpoint(path: str | os.PathLike) -> TensorSource:
    """Open one checkpoint file for lazy reading (validating what it can up front)."""
    path = Path(path)
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        return SafetensorsFile(path)
    if path.suffix.lower() in TORCH_SUFFIXES:
        return TorchFile(path)
    raise CheckpointError(f"unknown checkpoint format {path.suffix!r}", path)


@dataclasses.dataclass(frozen=True)
class LossCurve:
    """A training loss logged by step; ``at(step)`` is the last value logged at or before it."""

    steps: np.ndarray  # (n,) int64, increasing
    values: np.ndarray  # (n,) float64
    source: str

    def at(self, step: float) -> float | None:
        i = int(np.searchsorted(self.steps, step, side="right")) - 1
        return None if i < 0 else float(self.values[i])


def load_loss_curve(folder: str | os.PathLike, refs: Iterable[CheckpointRef] = ()) -> LossCurve | None:
    """The loss curve logged beside the checkpoints, or ``None``.

    Looks for ``metrics.jsonl`` / ``log.jsonl`` / ``metrics.csv`` (columns ``step``
    and ``loss`` or ``train_loss``) and ``trainer_state.json`` (``log_history``);
    falls back to a ``loss`` entry in each safetensors file's metadata.
    """
    folder = Path(folder)
    for name in METRICS_NAMES:
        path = folder / name
        if path.is_file():
            pairs = _read_metrics(path)
            if pairs:
                return _curve(pairs, str(path))
    states = sorted(folder.glob("*/trainer_state.json"), key=lambda p: parse_step(p, folder) or 0)
    if states:
        pairs = _read_metrics(states[-1])
        if pairs:
            return _curve(pairs, str(states[-1]))
    pairs = []
    for ref in refs:
        if ref.path.suffix.lower() in SAFETENSORS_SUFFIXES:
            try:
                meta = SafetensorsFile(ref.path).metadata
            except CheckpointError:
                continue
            loss = _float(meta.get("loss", meta.get("train_loss")))
            if loss is not None:
                pairs.append((ref.step, loss))
    return _curve(pairs, "checkpoint metadata") if pairs else None


def _curve(pairs: list[tuple[int, float]], source: str) -> LossCurve:
    by_step = dict(sorted(pairs))
    return LossCurve(
        np.fromiter(by_step.keys(), np.int64), np.fromiter(by_step.values(), np.float64), source
    )


def _float(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _read_metrics(path: Path) -> list[tuple[int, float]]:
    """(step, loss) pairs from a JSONL/CSV log or a trainer_state.json; bad lines skipped."""
    rows: list[dict] = []
    try:
        if path.name == "trainer_state.json":
            rows = json.loads(path.read_text()).get("log_history", [])
        elif path.suffix == ".csv":
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
        else:
            for line in path.read_text().splitlines():
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
        loss = _float(row.get("loss", row.get("train_loss")))
        if step is not None and loss is not None:
            pairs.append((int(step), loss))
    return pairs


def load_loss_file(path: str | os.PathLike) -> LossCurve:
    """The loss curve in one file given by the user (``--metrics``): JSONL, CSV (columns
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
        pairs = _read_metrics(path)
    if not pairs:
        raise CheckpointError("no (step, loss) values found (JSONL or CSV with columns step and loss, "
                              "or a trainer_state.json)", path)
    return _curve(pairs, str(path))
