"""PyTorch Distributed Checkpoint folders (``.metadata`` + ``*.distcp``, as FSDP2 and
torchtitan write them), read with ``torch.distributed.checkpoint``'s own reader in this one
process.  The pickled ``.metadata`` goes through an unpickler that admits nothing but DCP's own
metadata classes: plain ``pickle.load`` (what DCP itself does) would run whatever the file asks.
"""

from __future__ import annotations

from pathlib import Path, PurePath

import numpy as np

from ...errors import CheckpointError, first_line
from ...untrusted import within
from ..storage import LOCAL, Storage
from .pickles import tensor_to_numpy

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

    def __init__(self, folder: PurePath | str, storage: Storage = LOCAL):
        self.where = storage.display(folder)
        self.path = storage.local_path(folder if isinstance(folder, PurePath) else Path(folder))
        try:
            import torch  # noqa: F401
        except ImportError:
            raise CheckpointError("reading Distributed Checkpoint folders needs torch: "
                                  "pip install 'layerfilm[torch]'", self.where) from None
        meta_path = self.path / ".metadata"
        try:
            if meta_path.stat().st_size == 0:
                raise CheckpointError("empty .metadata file", self.where)
            self._meta = _safe_dcp_metadata(meta_path)
        except OSError as e:
            raise CheckpointError(f"cannot read .metadata: {e.strerror or e}", self.where) from None
        except _Forbidden as e:
            raise CheckpointError(f"refused .metadata: {e}; it was not unpickled", self.where) from None
        except Exception as e:  # truncated / garbage pickles
            raise CheckpointError(f"corrupt .metadata ({first_line(e)})", self.where) from None
        from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata

        if not isinstance(self._meta, Metadata):
            raise CheckpointError("corrupt .metadata (not checkpoint metadata)", self.where)
        self.metadata: dict[str, str] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._dtypes: dict = {}
        for name, md in self._meta.state_dict_metadata.items():
            if (isinstance(md, TensorStorageMetadata) and md.properties.dtype.is_floating_point
                    and name.split(".")[0] not in _DCP_NOT_MODEL):
                self._shapes[name] = tuple(int(d) for d in md.size)
                self._dtypes[name] = md.properties.dtype
        if not self._shapes:
            raise CheckpointError("contains no model tensors", self.where)
        # Every data file the model's tensors live in must exist and be long enough.
        for index, info in (self._meta.storage_data or {}).items():
            if index.fqn not in self._shapes:
                continue
            p = within(self.path, str(info.relative_path), self.where, "data file")
            if Path(str(info.relative_path)).name != str(info.relative_path):
                raise CheckpointError(f"metadata names a data file outside the folder: "
                                      f"{info.relative_path!r}", self.where)
            try:
                size = p.stat().st_size
            except OSError:
                raise CheckpointError(f"data file {info.relative_path} is missing", self.where) from None
            if size < info.offset + info.length:
                raise CheckpointError(f"truncated: data file {info.relative_path} has {size} bytes, "
                                      f"tensor {index.fqn!r} needs {info.offset + info.length}", self.where)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return dict(self._shapes)

    def itemsize(self, name: str) -> int:
        """Bytes per stored element of ``name`` (for the memory a read will take)."""
        return self._dtypes[name].itemsize

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
            raise CheckpointError(f"cannot read tensor {name!r}: {first_line(e)}", self.where) from None
        return tensor_to_numpy(t, index, axis)
