"""``LayerfilmCallback`` for the Hugging Face ``transformers.Trainer``::

    from layerfilm.integrations.transformers import LayerfilmCallback

    trainer = Trainer(..., callbacks=[LayerfilmCallback("film.webm", size="960x540")])

At train start, when ``output_dir`` holds no step-0 checkpoint, the initial weights are saved
as the Trainer saves a checkpoint -- ``checkpoint-0/`` with ``model.safetensors`` (and
``config.json``, through ``save_pretrained``) and ``trainer_state.json`` written last -- by the
processes that save (``args.should_save``); so the film starts at initialisation.  After each
save (every ``every``-th) the main process (``state.is_world_process_zero``) brings the film
up to date in a separate low-priority process, and at train end it makes the final film and
publishes it when asked (see :mod:`layerfilm.integrations._runner`).

The class is a ``transformers.TrainerCallback`` subclass, so this module needs transformers;
without it, importing it raises one line naming the extra to install.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

try:
    from transformers import TrainerCallback
except ImportError:
    raise ImportError("layerfilm.integrations.transformers needs transformers, which is not "
                      "installed: pip install 'layerfilm[transformers]'") from None

from ._runner import LOG, Runner, has_step_zero

STEP_ZERO = "checkpoint-0"


class LayerfilmCallback(TrainerCallback):
    """Film the run while it trains (module docstring).  ``output``: the film (its suffix picks
    the format); ``every``: update the film after every this many saves; ``publish``: where the
    final film goes (``"USER/NAME"``, ``"hf://buckets/USER/NAME[/FOLDER]"`` or a mapping of
    ``layerfilm publish`` options); ``render_options``: ``layerfilm render``'s options by their
    Python names (``size="960x540"``, ``fps=10``), checked here, before training."""

    def __init__(self, output: str | os.PathLike, every: int = 1,
                 publish: str | Mapping[str, Any] | None = None, **render_options: Any):
        self.runner = Runner(output, every, publish, **render_options)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step != 0 or not args.should_save or model is None:
            return  # resumed (the weights are no longer the initial ones), or not a saving process
        if _value(args.save_strategy) == "no":
            if state.is_world_process_zero:
                LOG.warning("layerfilm: save_strategy is 'no': no checkpoints, so no film")
            return
        run_dir = Path(args.output_dir)
        if has_step_zero(run_dir):
            return
        if _sharded(model):
            LOG.warning("layerfilm: the model is sharded across processes (FSDP, DeepSpeed "
                        "ZeRO-3): its step-0 weights were not saved, and the film starts at the "
                        "first save (docs/while_it_trains.md says how to add step 0 by hand)")
            return
        save_step_zero(model, state, run_dir / STEP_ZERO)

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.runner.saved(args.output_dir)

    def on_step_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.runner.poll()

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.runner.finish(args.output_dir)


def save_step_zero(model, state, folder: Path) -> None:
    """The model's weights as the Trainer saves a checkpoint's (``save_pretrained``, or a
    ``model.safetensors`` of its state dict for a model that has none), then the Trainer's
    state with ``global_step`` 0, last: its ``trainer_state.json`` is how a reader (and
    ``layerfilm watch``) knows the folder is complete."""
    folder.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(folder, is_main_process=True)
    else:
        import safetensors.torch

        safetensors.torch.save_file(model.state_dict(), str(folder / "model.safetensors"),
                                    metadata={"format": "pt"})
    state.save_to_json(str(folder / "trainer_state.json"))


def _value(strategy) -> str:
    return str(getattr(strategy, "value", strategy))


def _sharded(model) -> bool:
    """Whether each process holds only part of the weights (FSDP's flat parameters or DTensors,
    DeepSpeed ZeRO-3's partitioned parameters), so that one process cannot save them alone."""
    if type(model).__name__ == "FullyShardedDataParallel":
        return True
    return any(type(p).__name__ in ("DTensor", "FlatParameter") or hasattr(p, "ds_id")
               for p in model.parameters())
