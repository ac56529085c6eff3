"""Find checkpoints, order them by training step, read tensors lazily.

A checkpoint is one file (safetensors or a torch pickle), a Hugging Face
sharded checkpoint (``*.index.json`` + shards) or a PyTorch Distributed
Checkpoint folder (``.metadata`` + ``*.distcp``).  Safetensors files are parsed
here without torch: the header is validated (size, JSON, dtypes, shapes,
offsets) before any tensor data is touched, and tensors are memory-mapped so
only the rows that are drawn get read.  Torch pickles (``.pt .pth .bin .ckpt``)
are read with ``torch.load(weights_only=True, mmap=True)`` only, and a DCP
folder's pickled ``.metadata`` through an unpickler that admits nothing but
DCP's own metadata classes; torch is imported inside the function that needs it.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import mmap
import os
import re
import struct
from pathlib import Path
from typing import Iterable, Iterator, Protocol

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
    """One checkpoint and the training step it was saved at.

    ``path`` is a weights file, a sharded checkpoint's ``*.index.json`` or a
    Distributed Checkpoint folder; ``kind`` names the layout (``layerfilm info``
    prints it).
    """

    path: Path
    step: int
    kind: str = ""

    def files(self) -> list[Path]:
        """Every file this checkpoint is made of (for cache keys)."""
        if self.path.is_dir():
            return sorted(p for p in self.path.iterdir() if p.is_file())
        if self.path.name.endswith(".index.json"):
            try:
                shards = set(json.loads(self.path.read_text())["weight_map"].values())
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                shards = set()
            return [self.path] + sorted(self.path.parent / str(s) for s in shards)
        return [self.path]


# Hugging Face weights inside one checkpoint folder, most preferred first.
HF_WEIGHTS = ("model.safetensors.index.json", "model.safetensors",
              "pytorch_model.bin.index.json", "pytorch_model.bin")
# Files trainers write beside the weights that are not the model (HF Trainer, Lightning, ...).
_NOT_WEIGHTS = re.compile(r"^(?:optimizer|optim|scheduler|lr_scheduler|rng_state|training_args|"
                          r"scaler|trainer_state|ema_state)", re.I)
_SHARD = re.compile(r"-\d+-of-\d+$")
_MAX_DEPTH = 3  # sub-folder levels searched below the folder given


def parse_step(path: Path, root: Path | None = None) -> int | None:
    """The training step encoded in a checkpoint's name, or ``None``.

    The file's stem is tried first (a keyword-tagged number such as ``step_100``,
    else its last number), then each parent folder up to ``root``: a tagged
    number (``checkpoint-300/model.safetensors`` is step 300) or a name that is
    only a number (``300/model.safetensors``).
    """
    parts = [path.stem if path.suffix in CHECKPOINT_SUFFIXES or path.suffix == ".json" else path.name]
    for parent in path.parents:
        if root is not None and parent == root:
            break
        parts.append(parent.name)
    for i, part in enumerate(parts):
        for pattern in _STEP_PATTERNS:
            found = pattern.findall(part)
            if found:
                return int(found[-1])
        if i == 0:
            m = _LAST_NUMBER.search(part)
            if m:
                return int(m.group(1))
        elif part.isdigit():
            return int(part)
    return None


def _trainer_state_step(folder: Path) -> int | None:
    """``global_step`` from a Hugging Face ``trainer_state.json`` in ``folder``."""
    try:
        step = json.loads((folder / "trainer_state.json").read_text()).get("global_step")
    except (OSError, ValueError, AttributeError):
        return None
    return step if isinstance(step, int) and step >= 0 else None


def _find_units(root: Path) -> Iterator[tuple[Path, str, str | None]]:
    """``(path, kind, why_not)`` for every checkpoint-looking thing under ``root``.

    ``why_not`` is a reason to skip it (``None`` for a usable checkpoint).
    """
    def visit(folder: Path, depth: int) -> Iterator[tuple[Path, str, str | None]]:
        try:
            entries = sorted(folder.iterdir())
        except OSError:
            return
        names = {p.name for p in entries}
        if ".metadata" in names and any(p.suffix == ".distcp" for p in entries):
            yield folder, "Distributed Checkpoint (.metadata + .distcp)", None
            return
        hf = next((n for n in HF_WEIGHTS if n in names and (folder / n).is_file()), None)
        if hf is not None:
            kind = {HF_WEIGHTS[0]: "sharded safetensors (model.safetensors.index.json)",
                    HF_WEIGHTS[1]: "safetensors",
                    HF_WEIGHTS[2]: "sharded torch pickles (pytorch_model.bin.index.json)",
                    HF_WEIGHTS[3]: "torch pickle (pytorch_model.bin)"}[hf]
            if "trainer_state.json" in names:
                kind = f"Hugging Face Trainer, {kind}"
            yield folder / hf, kind, None
        indexed = any(n.endswith(".index.json") for n in names)
        for p in entries:
            if p.name.startswith("."):
                continue
            if p.is_dir():
                if depth < _MAX_DEPTH:
                    yield from visit(p, depth + 1)
                continue
            if p.suffix.lower() not in CHECKPOINT_SUFFIXES or _NOT_WEIGHTS.match(p.name):
                continue
            if hf is not None and p.suffix.lower() in CHECKPOINT_SUFFIXES:
                continue  # other weights beside a Hugging Face checkpoint's own (adapters, ...)
            if _SHARD.search(p.stem):
                if not indexed:
                    yield p, "", "a shard without its index (*.index.json)"
                continue
            kind = ("safetensors" if p.suffix.lower() in SAFETENSORS_SUFFIXES
                    else f"torch pickle ({p.suffix.lower()})")
            yield p, kind, None

    yield from visit(root, 0)


def discover(folder: str | os.PathLike, skip_bad: bool = False
             ) -> tuple[list[CheckpointRef], list[tuple[Path, str]]]:
    """Checkpoints under ``folder`` (up to three sub-folders deep), ordered by step.

    Finds single files, Hugging Face checkpoint folders (``checkpoint-N/`` with
    ``model.safetensors``, ``pytorch_model.bin`` or a sharded ``*.index.json``;
    the step from the folder name, else ``trainer_state.json``) and Distributed
    Checkpoint folders.  Returns ``(checkpoints, skipped)`` where ``skipped``
    lists what looks like weights but cannot be placed (no step in its name),
    with the reason.  Raises :class:`CheckpointError` when there is nothing to
    film or two checkpoints claim the same step (with ``skip_bad`` the later one
    is skipped instead).
    """
    root = Path(folder)
    if not root.exists():
        raise CheckpointError("no such folder", root)
    if not root.is_dir():
        raise CheckpointError("is a file; give the folder that holds the checkpoints", root)
    found: dict[int, CheckpointRef] = {}
    skipped: list[tuple[Path, str]] = []
    for path, kind, why_not in _find_units(root):
        if why_not is not None:
            skipped.append((path, why_not))
            continue
        step = parse_step(path, root) if path != root else 0  # the folder is one checkpoint
        if step is None and kind.startswith("Hugging Face Trainer"):
            step = _trainer_state_step(path.parent)
        if step is None:
            skipped.append((path, "no training step in its name"))
            continue
        if step in found:
            problem = f"has the same step ({step}) as {found[step].path}"
            if not skip_bad:
                raise CheckpointError(problem, path)
            skipped.append((path, problem))
            continue
        found[step] = CheckpointRef(path, step, kind)
    refs = [found[s] for s in sorted(found)]
    if not refs:
        raise CheckpointError(
            "no checkpoints found (looked for *.safetensors, *.pt, *.pth, *.bin, *.ckpt named "
            "with their training step, e.g. step_000100.safetensors, Hugging Face checkpoint-N/ "
            "folders and Distributed Checkpoint folders)",
            root,
        )
    if len(refs) < 2:
        raise CheckpointError(
            f"only one checkpoint ({_relative(refs[0].path, root)}); a film needs at least two", root
        )
    return refs, skipped


def _relative(path: Path, root: Path) -> str:
    return "the folder itself" if path == root else str(path.relative_to(root))


def select_steps(refs: list[CheckpointRef], start: int | None = None, stop: int | None = None,
                 every: int | None = None) -> list[CheckpointRef]:
    """The keyframes ``--steps START:STOP:EVERY`` picks: steps in ``[start, stop]`` (both
    inclusive), each at least ``every`` steps after the previous one kept."""
    kept: list[CheckpointRef] = []
    for ref in refs:
        if (start is not None and ref.step < start) or (stop is not None and ref.step > stop):
            continue
        if every is not None and kept and ref.step - kept[-1].step < every:
            continue
        kept.append(ref)
    return kept


class TensorSource(Protocol):
    """What the extract stage needs from one checkpoint."""

    path: Path
    metadata: dict[str, str]

    def shapes(self) -> dict[str, tuple[int, ...]]: ...

    def read(self, name: str, index: np.ndarray | None = None, axis: int = 0) -> np.ndarray: ...


def _map_file(path: Path) -> np.ndarray:
    """The whole file as a read-only uint8 array backed by the page cache (a plain ndarray:
    slicing an ``np.memmap`` costs a Python-level ``__array_finalize__`` per view)."""
    with open(path, "rb") as f:
        return np.frombuffer(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), dtype=np.uint8)


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
        self._map: np.ndarray | None = None
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
                data = self._map = _map_file(self.path)
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
    """A torch pickle read with ``weights_only=True`` (memory-mapped when it is a zip-format
    file, so only drawn tensors are read); tensors converted on read.

    The tensors are the first dict of tensors found: the top level (a plain
    state_dict), else under ``state_dict`` (Lightning), ``model`` (nanoGPT),
    ``model_state_dict``, ``module`` or ``params``, else under any one key.
    ``_orig_mod.`` (torch.compile) and leading ``module.`` (DDP) are dropped from
    names, and Lightning's ``model.`` prefix when every name has it.
    """

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

        try:
            if self.path.stat().st_size == 0:
                raise CheckpointError("empty file", self.path)
            with open(self.path, "rb"):
                pass  # an unreadable file is named as such, not as a broken pickle
        except OSError as e:
            raise CheckpointError(f"cannot read: {e.strerror or e}", self.path) from None
        try:
            try:
                obj = torch.load(self.path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap" not in str(e):
                    raise
                # Legacy (pre-zip) format: cannot be mapped, read whole (one checkpoint at a time).
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
        names = {k: _strip_prefixes(k) for k in tensors}
        lightning = isinstance(obj, dict) and "pytorch-lightning_version" in obj
        if lightning and all(n.startswith("model.") for n in names.values()):
            names = {k: n[len("model."):] for k, n in names.items()}
        self._tensors = {names[k]: v for k, v in tensors.items()}

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
    """Drop the wrappers' name parts: every ``_orig_mod`` (torch.compile), leading ``module`` (DDP)."""
    parts = [p for p in name.split(".") if p != "_orig_mod"]
    while len(parts) > 1 and parts[0] == "module":
        parts.pop(0)
    return ".".join(parts)


class ShardedCheckpoint:
    """A Hugging Face sharded checkpoint: ``*.index.json`` whose ``weight_map`` names the shard
    (safetensors or torch pickle) holding each tensor.  Every shard is opened (and so
    validated) up front; tensors are read from their shard on demand."""

    def __init__(self, index: str | os.PathLike):
        self.path = Path(index)
        try:
            weight_map = json.loads(self.path.read_text())["weight_map"]
        except OSError as e:
            raise CheckpointError(f"cannot read: {e.strerror or e}", self.path) from None
        except (ValueError, KeyError, TypeError):
            raise CheckpointError("not a sharded-checkpoint index (no valid JSON 'weight_map')",
                                  self.path) from None
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError("its 'weight_map' is empty or not a JSON object", self.path)
        self.metadata: dict[str, str] = {}
        shards: dict[str, TensorSource] = {}
        for shard in sorted(set(map(str, weight_map.values()))):
            if Path(shard).name != shard or shard.startswith("."):
                raise CheckpointError(f"the index names a shard outside its folder: {shard!r}", self.path)
            p = self.path.parent / shard
            if not p.is_file():
                raise CheckpointError(f"shard {shard} listed in the index is missing", self.path)
            shards[shard] = _open_file(p)
        self._where: dict[str, TensorSource] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        for shard, source in shards.items():
            for name, shape in source.shapes().items():
                if weight_map.get(name) == shard:
                    self._where[name] = source
                    self._shapes[name] = shape

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return dict(self._shapes)

    def read(self, name: str, index: np.ndarray | None = None, axis: int = 0) -> np.ndarray:
        return self._where[name].read(name, index, axis)


# What a Distributed Checkpoint's pickled .metadata may refer to: DCP's own metadata classes and
# the plain values inside them.  Anything else (os.system, ...) is refused, never called.
_DCP_GLOBALS = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata", "TensorStorageMetadata", "TensorProperties", "ChunkStorageMetadata",
        "BytesStorageMetadata", "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING"},
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size", "float64", "float32", "float16", "bfloat16", "int64", "int32", "int16",
              "int8", "uint8", "bool", "complex64", "complex128", "float8_e4m3fn", "float8_e5m2"},
    "pathlib": {"PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath", "Path"},
    "collections": {"OrderedDict"},
}
# Top-level groups of a training state saved with DCP that are not the model's weights.
_DCP_NOT_MODEL = ("optimizer", "optim", "optimizer_states", "lr_scheduler", "lr_schedulers",
                  "scheduler", "dataloader", "train_state", "extra_state")


class _Forbidden(Exception):
    """A pickle referred to something outside :data:`_DCP_GLOBALS`."""


def _safe_dcp_metadata(path: Path):
    import pickle

    class _Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str):
            if name in _DCP_GLOBALS.get(module, ()):
                return super().find_class(module, name)
            raise _Forbidden(f"{module}.{name} is not part of checkpoint metadata")

    with open(path, "rb") as f:
        return _Unpickler(f).load()


class DcpCheckpoint:
    """A PyTorch Distributed Checkpoint folder (``.metadata`` + ``*.distcp``, as FSDP2 /
    torchtitan write them), read with ``torch.distributed.checkpoint``'s own
    ``FileSystemReader`` in this one process, no process group.  Tensors are read one at a
    time; groups that are not the model (``optimizer.*``, ``lr_scheduler.*``, ...) are left out."""

    def __init__(self, folder: str | os.PathLike):
        self.path = Path(folder)
        try:
            import torch  # noqa: F401
        except ImportError:
            raise CheckpointError("reading Distributed Checkpoint folders needs torch: "
                                  "pip install 'layerfilm[torch]'", self.path) from None
        meta_path = self.path / ".metadata"
        try:
            if meta_path.stat().st_size == 0:
                raise CheckpointError("empty .metadata file", self.path)
            self._meta = _safe_dcp_metadata(meta_path)
        except OSError as e:
            raise CheckpointError(f"cannot read .metadata: {e.strerror or e}", self.path) from None
        except _Forbidden as e:
            raise CheckpointError(f"refused .metadata: {e}; it was not unpickled", self.path) from None
        except Exception as e:  # truncated / garbage pickles
            text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"corrupt .metadata ({text})", self.path) from None
        from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata

        if not isinstance(self._meta, Metadata):
            raise CheckpointError("corrupt .metadata (not checkpoint metadata)", self.path)
        self.metadata: dict[str, str] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._dtypes: dict = {}
        for name, md in self._meta.state_dict_metadata.items():
            if (isinstance(md, TensorStorageMetadata) and md.properties.dtype.is_floating_point
                    and name.split(".")[0] not in _DCP_NOT_MODEL):
                self._shapes[name] = tuple(int(d) for d in md.size)
                self._dtypes[name] = md.properties.dtype
        if not self._shapes:
            raise CheckpointError("contains no model tensors", self.path)
        # Every data file the model's tensors live in must exist and be long enough.
        for index, info in (self._meta.storage_data or {}).items():
            if index.fqn not in self._shapes:
                continue
            p = self.path / str(info.relative_path)
            if Path(str(info.relative_path)).name != str(info.relative_path):
                raise CheckpointError(f"metadata names a data file outside the folder: "
                                      f"{info.relative_path!r}", self.path)
            try:
                size = p.stat().st_size
            except OSError:
                raise CheckpointError(f"data file {info.relative_path} is missing", self.path) from None
            if size < info.offset + info.length:
                raise CheckpointError(f"truncated: data file {info.relative_path} has {size} bytes, "
                                      f"tensor {index.fqn!r} needs {info.offset + info.length}", self.path)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return dict(self._shapes)

    def read(self, name: str, index: np.ndarray | None = None, axis: int = 0) -> np.ndarray:
        import warnings

        import torch
        import torch.distributed.checkpoint as dcp

        meta = self._meta

        class _Reader(dcp.FileSystemReader):
            def read_metadata(self, *args, **kwargs):  # the safely unpickled metadata, not pickle.load
                return meta

        t = torch.empty(self._shapes[name], dtype=self._dtypes[name])
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "no process group: loading in a single process"
                dcp.load({name: t}, storage_reader=_Reader(self.path), no_dist=True)
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"cannot read tensor {name!r}: {first}", self.path) from None
        if index is not None:
            t = t.index_select(axis, torch.as_tensor(index, dtype=torch.long))
            if axis == 1:
                t = t.T
        return t.float().contiguous().numpy()


def _open_file(path: Path) -> TensorSource:
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        return SafetensorsFile(path)
    if path.suffix.lower() in TORCH_SUFFIXES:
        return TorchFile(path)
    raise CheckpointError(f"unknown checkpoint format {path.suffix!r}", path)


def open_checkpoint(path: str | os.PathLike) -> TensorSource:
    """Open one checkpoint for lazy reading, validating what it can up front.

    ``path`` is a weights file, a sharded checkpoint's ``*.index.json``, a
    Distributed Checkpoint folder or a Hugging Face checkpoint folder.
    """
    path = Path(path)
    if path.is_dir():
        if (path / ".metadata").exists():
            return DcpCheckpoint(path)
        hf = next((path / n for n in HF_WEIGHTS if (path / n).is_file()), None)
        if hf is None:
            raise CheckpointError("not a checkpoint folder (no .metadata, model.safetensors, "
                                  "pytorch_model.bin or *.index.json)", path)
        path = hf
    if path.name.endswith(".index.json"):
        return ShardedCheckpoint(path)
    return _open_file(path)


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
    and ``loss`` or ``train_loss``) in ``folder`` and the folders down to the
    checkpoints, and ``trainer_state.json`` (``log_history``) beside the last checkpoint;
    falls back to a ``loss`` entry in each safetensors file's metadata.
    """
    folder = Path(folder)
    refs = list(refs)
    # The folder given, then the folders between it and the checkpoints (Lightning's CSVLogger
    # writes version_N/metrics.csv beside version_N/checkpoints/).
    places = [folder]
    for ref in refs[:1]:
        places += [p for p in reversed(ref.path.parents) if p != folder and folder in p.parents]
    for place in places:
        for name in METRICS_NAMES if place == folder else METRICS_NAMES[:-1]:
            path = place / name
            if path.is_file():
                pairs = _read_metrics(path)
                if pairs:
                    return _curve(pairs, str(path))
    # Hugging Face Trainer: each checkpoint-N/trainer_state.json holds the whole log so far.
    states = [(r.path if r.path.is_dir() else r.path.parent) / "trainer_state.json" for r in refs]
    states = [p for p in states if p.is_file()] or sorted(
        folder.glob("*/trainer_state.json"), key=lambda p: parse_step(p, folder) or 0)
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
        loss = _float(row.get("loss", row.get("train_loss", row.get("train_loss_step"))))
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
