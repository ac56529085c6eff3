"""Checkpoints: where their bytes are (``storage``), which ones there are and their steps
(``discover``), how bytes become tensors (``formats``) and the loss logged beside them
(``losslog``).  torch is imported only by the readers that need it."""

from .discover import (CHECKPOINT_SUFFIXES, HF_WEIGHTS, SAFETENSORS_SUFFIXES, TORCH_SUFFIXES,
                       CheckpointRef, discover, parse_step, parse_tokens, select_steps)
from .formats import (DcpCheckpoint, SafetensorsFile, ShardedCheckpoint, TensorSource, TorchFile,
                      open_checkpoint, open_file)
from .losslog import (METRICS_NAMES, LossCurve, checkpoint_tokens, load_captions, load_loss_curve,
                      load_loss_file)
from .storage import LOCAL, LocalStorage, Storage, coalesce

__all__ = [
    "CHECKPOINT_SUFFIXES", "HF_WEIGHTS", "SAFETENSORS_SUFFIXES", "TORCH_SUFFIXES", "CheckpointRef",
    "discover", "parse_step", "parse_tokens", "select_steps", "DcpCheckpoint", "SafetensorsFile",
    "ShardedCheckpoint", "TensorSource", "TorchFile", "open_checkpoint", "open_file",
    "METRICS_NAMES", "LossCurve", "checkpoint_tokens", "load_captions", "load_loss_curve", "load_loss_file", "LOCAL", "LocalStorage",
    "Storage", "coalesce",
]
