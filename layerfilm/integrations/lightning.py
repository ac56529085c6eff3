"""``LayerfilmCallback`` for Lightning::

    from layerfilm.integrations.lightning import LayerfilmCallback

    trainer = L.Trainer(..., callbacks=[ModelCheckpoint(every_n_train_steps=50, save_top_k=-1),
                                        LayerfilmCallback("film.webm", size="960x540")])

The checkpoints filmed are those of the trainer's ``ModelCheckpoint`` (``trainer.checkpoint_callback``),
from its folder (from the folder above it in Lightning's default layout,
``version_N/checkpoints/``, so that ``version_N/metrics.csv``'s loss is found too).  At train
start, when there is no step-0 checkpoint, one is saved through that ``ModelCheckpoint``'s own
naming (``epoch=0-step=0.ckpt`` by default) with ``trainer.save_checkpoint``, on every process
(it is collective; whether to save is decided on rank 0 and broadcast).  Lightning calls
``on_save_checkpoint`` while it builds a checkpoint, before the file is written, so the film's
update starts at the next batch; only rank 0 (``trainer.is_global_zero``) renders.  At train
end the loggers are flushed (the loss log is read from them) and the final film made.

The class is a ``lightning.pytorch.Callback`` and, where ``pytorch_lightning`` is installed too
(``lightning`` depends on it), a ``pytorch_lightning.Callback``: it works with either
package's ``Trainer``.  Without either, importing this module raises one line naming the extra.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import PurePath
from typing import Any, Mapping

from ..checkpoints import parse_step
from ._runner import LOG, Runner, has_step_zero


def _bases() -> tuple[type, ...]:
    found = []
    for name in ("lightning.pytorch", "pytorch_lightning"):
        try:
            present = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a parent package missing, or None in sys.modules
            present = False
        if present:
            found.append(importlib.import_module(name).Callback)
    if not found:
        raise ImportError("layerfilm.integrations.lightning needs lightning, which is not "
                          "installed: pip install 'layerfilm[lightning]'")
    return tuple(found)


class LayerfilmCallback(*_bases()):
    """Film the run while it trains (module docstring).  ``output``: the film (its suffix picks
    the format); ``every``: update the film after every this many saves; ``publish``: where the
    final film goes (``"USER/NAME"``, ``"hf://buckets/USER/NAME[/FOLDER]"`` or a mapping of
    ``layerfilm publish`` options); ``render_options``: ``layerfilm render``'s options by their
    Python names (``size="960x540"``, ``fps=10``), checked here, before training."""

    def __init__(self, output: str | os.PathLike, every: int = 1,
                 publish: str | Mapping[str, Any] | None = None, **render_options: Any):
        self.runner = Runner(output, every, publish, **render_options)
        self._run_dir: str | None = None
        self._saving_step_zero = False
        self._last_saved_step: int | None = None

    def on_train_start(self, trainer, pl_module):
        ckpt = trainer.checkpoint_callback
        if ckpt is None or ckpt.dirpath is None:
            if trainer.is_global_zero:
                LOG.warning("layerfilm: the trainer has no ModelCheckpoint: no checkpoints, so no film")
            return
        self._run_dir = run_folder(trainer, ckpt)
        if trainer.global_step != 0:
            return  # resumed: the weights are no longer the initial ones
        path = step_zero_path(trainer, ckpt)
        missing = trainer.is_global_zero and not (has_step_zero(self._run_dir) or os.path.exists(path))
        if trainer.strategy.broadcast(missing, src=0):
            self._saving_step_zero = True
            try:
                trainer.save_checkpoint(path, weights_only=ckpt.save_weights_only)
            finally:
                self._saving_step_zero = False

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        # Called while the checkpoint is being built, before its file is written: the update
        # is started from the next hook (the next batch, or the end of training).
        step = trainer.global_step
        if self._saving_step_zero or step == self._last_saved_step or self._run_dir is None:
            return  # step 0 (no film yet), or a second file of the same save (last.ckpt)
        self._last_saved_step = step
        if trainer.is_global_zero:
            self.runner.saved(self._run_dir, now=False)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.is_global_zero:
            self.runner.poll()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.is_global_zero:
            self.runner.poll()

    def on_train_end(self, trainer, pl_module):
        if trainer.is_global_zero and self._run_dir is not None:
            for logger in trainer.loggers:
                logger.save()  # the loss log as far as it goes (CSVLogger writes in batches)
            self.runner.finish(self._run_dir)


def run_folder(trainer, ckpt) -> str:
    """The folder to film: the ``ModelCheckpoint``'s, or the one above it when that is the
    trainer's log folder (Lightning's default ``version_N/checkpoints/``, beside the loss log)."""
    dirpath = os.fspath(ckpt.dirpath)
    log_dir = trainer.log_dir
    parent = os.path.dirname(os.path.normpath(dirpath))
    if log_dir is not None and os.path.basename(os.path.normpath(dirpath)) == "checkpoints" and (
            os.path.normpath(os.fspath(log_dir)) == parent):
        return parent
    return dirpath


def step_zero_path(trainer, ckpt) -> str:
    """Where the ``ModelCheckpoint`` would save a checkpoint at step 0: its own file name
    template, or, when that names no step layerfilm can read, its default ``{epoch}-{step}``."""
    import torch

    metrics = dict(trainer.callback_metrics)
    metrics.update(epoch=torch.tensor(trainer.current_epoch), step=torch.tensor(0))
    path = ckpt.format_checkpoint_name(dict(metrics))
    if parse_step(PurePath(path)) != 0:
        path = ckpt.format_checkpoint_name(dict(metrics), filename="{epoch}-{step}")
    return path
