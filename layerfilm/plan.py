"""What a film will draw, decided before any layout is computed (``layerfilm info`` prints it):
the checkpoints (in step order), the panels and their points, and the loss curve."""

from __future__ import annotations

import dataclasses
from pathlib import Path, PurePath

import numpy as np

from . import checkpoints, extract
from .checkpoints import LOCAL, LocalStorage, Storage
from .config import Selection
from .errors import CheckpointError


@dataclasses.dataclass(frozen=True)
class Plan:
    """The checkpoints (``refs``, with ``skipped``: ``(path, problem)`` for those left out),
    the panels (``layers``) and the loss curve of a run in ``folder`` (inside ``storage``)."""

    folder: PurePath
    refs: list[checkpoints.CheckpointRef]
    skipped: list[tuple[PurePath, str]]
    layers: list[extract.Layer]
    loss: checkpoints.LossCurve | None
    storage: Storage = dataclasses.field(default=LOCAL, compare=False, repr=False)
    # (K,) training tokens seen at each checkpoint, NaN where unknown (checkpoints.checkpoint_tokens)
    tokens: np.ndarray | None = dataclasses.field(default=None, compare=False, repr=False)

    @property
    def steps(self) -> np.ndarray:
        return np.array([r.step for r in self.refs], dtype=np.int64)

    @property
    def starts(self) -> np.ndarray:
        """(L+1,) offsets of each panel's points in the flat point arrays."""
        return np.concatenate([[0], np.cumsum([l.n_points for l in self.layers])]).astype(np.int64)

    @property
    def name(self) -> str:
        """The run's name: its folder's."""
        return Path(self.folder).resolve().name if isinstance(self.storage, LocalStorage) else self.folder.name

    def reordered(self, order: list[int]) -> "Plan":
        """The same plan with its panels in ``order`` (indices into ``layers``)."""
        return dataclasses.replace(self, layers=[self.layers[l] for l in order])


def make_plan(selection: Selection, metrics: Path | None = None) -> Plan:
    """Discover the checkpoints of ``selection.checkpoints``, pick ``selection.steps`` and plan
    the panels from the first one (``points``/``tensor``/``layer_pattern``/``max_points``/
    ``seed``: what to draw, see :func:`extract.plan_panels`).

    Every checkpoint is opened (headers only where the format allows) and checked against the
    plan here, before any data is read; one that cannot be read or no longer fits stops the
    film with a one-line error, or with ``skip_bad`` joins ``skipped`` with the problem.  The loss curve comes from
    ``metrics`` when given, else from what lies beside the checkpoints.
    """
    folder, storage, sel = selection.checkpoints, LOCAL, selection
    refs, skipped = checkpoints.discover(folder, sel.skip_bad, storage)
    if sel.steps is not None:
        picked = checkpoints.select_steps(refs, *sel.step_range)
        if len(picked) < 2:
            text = ":".join("" if v is None else str(v) for v in sel.step_range)
            raise CheckpointError(
                f"--steps {text} keeps {len(picked)} of the {len(refs)} checkpoints (steps "
                f"{refs[0].step}..{refs[-1].step}); a film needs at least two", folder)
        refs = picked
    # Every checkpoint is opened (headers, indexes, DCP metadata) and checked against the plan
    # before any data is read: a bad one late in a long series fails in seconds, not after
    # minutes of work, and --skip-bad knows what it leaves out before the film starts.
    layers: list[extract.Layer] | None = None
    good: list[checkpoints.CheckpointRef] = []
    for ref in refs:
        try:
            ckpt = ref.open()
            shapes = ckpt.shapes()
            if layers is not None:
                for layer in layers:
                    extract.check_fits(ckpt, layer, shapes)
        except CheckpointError as e:
            if not sel.skip_bad:
                raise
            skipped.append((Path(e.path) if e.path else ref.path, e.problem))
            continue
        if layers is None:
            try:
                layers = extract.plan_panels(shapes, sel.max_points, sel.seed, sel.points, sel.tensor,
                                             sel.layer_pattern)
            except CheckpointError as e:
                raise CheckpointError(e.problem, ckpt.where) from None
        good.append(ref)
        del ckpt
    if len(good) < 2 or layers is None:
        why = f" (skipped {skipped[0][0]}: {skipped[0][1]}{' and more' if len(skipped) > 1 else ''})" \
            if skipped else ""
        raise CheckpointError(f"only {len(good)} of {len(refs)} checkpoints could be read{why}; "
                              "a film needs at least two", folder)
    loss = (checkpoints.load_loss_file(metrics) if metrics is not None
            else checkpoints.load_loss_curve(folder, good, storage))
    return Plan(Path(folder), good, skipped, layers, loss, storage,
                checkpoints.checkpoint_tokens(good, loss, storage))
