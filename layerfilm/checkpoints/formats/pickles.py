"""Torch pickles (``.pt .pth .bin .ckpt``), loaded with ``torch.load(weights_only=True)`` only.

Zip-format files are memory-mapped, so only drawn tensors are read; a pickle that needs code
execution to load is refused, never run.  torch is imported here, when such a file is opened.
"""

from __future__ import annotations

from pathlib import Path, PurePath

import numpy as np

from ...errors import CheckpointError, first_line
from ..storage import LOCAL, Storage


class TorchFile:
    """A torch pickle read with ``weights_only=True``; tensors converted on read.

    The tensors are the first dict of tensors found: the top level (a plain
    state_dict), else under ``state_dict`` (Lightning), ``model`` (nanoGPT),
    ``model_state_dict``, ``module`` or ``params``, else under any one key.
    ``_orig_mod.`` (torch.compile) and leading ``module.`` (DDP) are dropped from
    names, and Lightning's ``model.`` prefix when every name has it.
    """

    _CONTAINER_KEYS = ("state_dict", "model", "model_state_dict", "module", "params")

    def __init__(self, path: PurePath | str, storage: Storage = LOCAL):
        self.path = path if isinstance(path, PurePath) else Path(path)
        self.where = storage.display(self.path)
        try:
            import torch
        except ImportError:
            raise CheckpointError(
                "reading torch pickles needs torch: pip install 'layerfilm[torch]' "
                "(or convert the checkpoint to safetensors)", self.where) from None
        import pickle

        try:
            local = storage.local_path(self.path)
            if local.stat().st_size == 0:
                raise CheckpointError("empty file", self.where)
            with open(local, "rb"):
                pass  # an unreadable file is named as such, not as a broken pickle
        except OSError as e:
            raise CheckpointError(f"cannot read: {e.strerror or e}", self.where) from None
        try:
            try:
                obj = torch.load(local, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap" not in str(e):
                    raise
                # Legacy (pre-zip) format: cannot be mapped, read whole (one checkpoint at a time).
                obj = torch.load(local, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise CheckpointError(
                "refused: this pickle needs code execution to load (torch.load weights_only=True "
                "rejected it); convert it to safetensors", self.where) from None
        except Exception as e:  # zip/EOF/runtime errors from a broken file
            raise CheckpointError(f"cannot load: {first_line(e)}", self.where) from None
        self.metadata: dict[str, str] = {}
        tensors = self._find_tensors(obj, torch)
        if not tensors:
            raise CheckpointError("contains no tensors", self.where)
        names = {k: strip_prefixes(k) for k in tensors}
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
        return tensor_to_numpy(self._tensors[name], index, axis)


def tensor_to_numpy(t, index: np.ndarray | None, axis: int) -> np.ndarray:
    """A torch tensor's rows (``axis=0``) or columns (``axis=1``, returned as rows) at
    ``index`` (or all of it) as a C-contiguous float32 array."""
    if index is not None:
        import torch

        t = t.index_select(axis, torch.as_tensor(index, dtype=torch.long))
        if axis == 1:
            t = t.T
    return t.detach().to("cpu").float().contiguous().numpy()


def strip_prefixes(name: str) -> str:
    """Drop the wrappers' name parts: every ``_orig_mod`` (torch.compile), leading ``module`` (DDP)."""
    parts = [p for p in name.split(".") if p != "_orig_mod"]
    while len(parts) > 1 and parts[0] == "module":
        parts.pop(0)
    return ".".join(parts)
