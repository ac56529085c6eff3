"""Which reader a weights file needs, told by its name: the suffixes of single weights files, the
file names a Hugging Face checkpoint folder holds, and :func:`open_file`.  Discovery, the
formats' own package and the sharded reader all take these from here, below all of them."""

from __future__ import annotations

from pathlib import PurePath

from ...errors import CheckpointError
from ..storage import LOCAL, Storage
from .pickles import TorchFile
from .safetensors import SafetensorsFile

SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
CHECKPOINT_SUFFIXES = SAFETENSORS_SUFFIXES + TORCH_SUFFIXES

# Hugging Face weights inside one checkpoint folder, most preferred first.
HF_WEIGHTS = ("model.safetensors.index.json", "model.safetensors",
              "pytorch_model.bin.index.json", "pytorch_model.bin")


def open_file(path: PurePath, storage: Storage = LOCAL) -> SafetensorsFile | TorchFile:
    """One weights file, by its suffix."""
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        return SafetensorsFile(path, storage)
    if path.suffix.lower() in TORCH_SUFFIXES:
        return TorchFile(path, storage)
    raise CheckpointError(f"unknown checkpoint format {path.suffix!r}", storage.display(path))
