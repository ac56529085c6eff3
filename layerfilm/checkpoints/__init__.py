"""Checkpoints: where their bytes are (``storage``: local; ``remote``/``transfer``: what remote
storages share; ``hub``, ``fsspec_storage``, ``buckets``: the Hub, fsspec URLs, Storage
Buckets; ``sources``: a folder or URL -> storage), which ones there are and their steps
(``discover``), that they are one run (``runs``), how bytes become tensors (``formats``) and
the loss logged beside them (``losslog``).  torch, fsspec and the Hub client are imported only where they are needed."""

from .discover import CheckpointRef, discover, parse_step, parse_tokens, select_steps
from .formats import (CHECKPOINT_SUFFIXES, HF_WEIGHTS, READ_DIGESTS, SAFETENSORS_SUFFIXES,
                      TORCH_SUFFIXES, DcpCheckpoint, SafetensorsFile, ShardedCheckpoint, TensorSource,
                      TorchFile, drawn_ranges, open_checkpoint, open_file, read_digests,
                      read_whole_hashed)
from .runs import check_one_run
from .losslog import (METRICS_NAMES, LossCurve, checkpoint_tokens, load_loss_curve,
                      load_loss_file)
from .sources import Source, is_url, open_source
from .storage import LOCAL, LocalStorage, Storage, cache_root, coalesce
from .transfer import TOTAL, RemoteError, Traffic, human_bytes

__all__ = [
    "CHECKPOINT_SUFFIXES", "HF_WEIGHTS", "READ_DIGESTS", "SAFETENSORS_SUFFIXES", "TORCH_SUFFIXES",
    "CheckpointRef",
    "discover", "check_one_run", "parse_step", "parse_tokens", "select_steps", "DcpCheckpoint", "SafetensorsFile",
    "ShardedCheckpoint", "TensorSource", "TorchFile", "drawn_ranges", "open_checkpoint", "open_file",
    "read_digests", "read_whole_hashed",
    "METRICS_NAMES", "LossCurve", "checkpoint_tokens", "load_loss_curve",
    "load_loss_file", "LOCAL", "LocalStorage", "Storage", "coalesce", "cache_root", "Source",
    "is_url", "open_source", "RemoteError", "Traffic", "TOTAL", "human_bytes",
]
