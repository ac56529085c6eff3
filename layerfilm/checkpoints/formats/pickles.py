"""Torch pickles (``.pt .pth .bin .ckpt``), loaded with ``torch.load(weights_only=True)`` only.

Zip-format files are memory-mapped, so only drawn tensors are read; a pickle that needs code
execution to load is refused, never run.  torch is imported here, when such a file is opened.
"""

from __future__ import annotations

import collections
from pathlib import Path, PurePath

import numpy as np

from ...errors import CheckpointError, first_line
from ..storage import LOCAL, Storage


class TorchFile:
    """A torch pickle read with ``weights_only=True``; tensors converted on read.

    The tensors are the dict holding the most weight tensors: the top level (a plain
    state_dict), ``state_dict`` (Lightning), ``model`` (nanoGPT), ``model_state_dict``,
    ``module``, ``params`` or any other.  ``global_step``/``iter_num``/``step`` become
    ``metadata["step"]``.
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
        import warnings

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch's own advice precedes a refusal; ours is the line
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
        """The dict of tensors that is the model: of the top level and every dict inside it,
        the one holding the most floating-point tensors of one or more dimensions (nanoGPT's
        ``train.py`` keeps a 0-d ``best_val_loss`` beside ``model``; an optimizer's per-parameter
        states hold two or three each), ties going to the first found."""
        if not isinstance(obj, dict):
            return {}
        for key in ("global_step", "iter_num", "step"):
            if isinstance(obj.get(key), int) and not isinstance(obj.get(key), bool):
                self.metadata.setdefault("step", str(obj[key]))
        best: dict = {}
        best_count = 0
        stack, seen = collections.deque([obj]), 0  # breadth first: the shallowest wins ties
        while stack and seen < 10_000:  # bounded: a pickle may hold many small dicts
            d = stack.popleft()
            seen += 1
            tensors = {k: v for k, v in d.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
            count = sum(1 for v in tensors.values() if v.dim() >= 1 and v.is_floating_point())
            if count > best_count:
                best, best_count = tensors, count
            keys = [k for k in self._CONTAINER_KEYS if isinstance(d.get(k), dict)]
            keys += [k for k, v in d.items() if isinstance(v, dict) and k not in keys]
            stack.extend(d[k] for k in keys)
        return best

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
