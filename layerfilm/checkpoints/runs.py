"""One run per film: the checkpoints of a folder must come from one training run.

Two runs side by side (a 4-block and a 6-block model, two seeds in ``run1/`` and ``run2/``)
interleave by step into one film that shows neither.  A run is told from another by what is
known before any tensor data is read: the tensor names and shapes in the headers, a Hugging Face
checkpoint's ``config.json``, and its name (:func:`~.discover.run_name`: its run folder, or
what its file name says before the step).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import PurePath
from typing import Any

from ..errors import CheckpointError
from .discover import CheckpointRef, _relative, shown_run
from .formats import HF_WEIGHTS
from .storage import Storage

Shapes = dict[str, tuple[int, ...]]

# config.json keys that differ between saves of one run (the library that wrote it, where
# the model was loaded from, the dtype it was saved in).
_NOT_IDENTITY = ("_name_or_path", "transformers_version", "torch_dtype", "dtype", "_commit_hash")


def config_of(ref: CheckpointRef) -> dict[str, Any] | None:
    """The ``config.json`` of a Hugging Face checkpoint folder less :data:`_NOT_IDENTITY`, or
    ``None`` (another layout, none there, unreadable).  Only on local storage: on a remote
    one each would be a request more per checkpoint, and a Hub repository's revisions are one
    repository's anyway."""
    storage = ref.storage
    if not getattr(storage, "cheap_reads", False) or ref.path.name not in HF_WEIGHTS:
        return None
    path = ref.path.parent / "config.json"
    try:
        doc = json.loads(storage.read(path, 0, storage.size(path)))
    except (OSError, ValueError):
        return None
    return {k: v for k, v in doc.items() if k not in _NOT_IDENTITY} if isinstance(doc, dict) else None


def _same_or_grown(first: tuple[int, ...], later: tuple[int, ...]) -> bool:
    """A tensor of one run: the same shape, or grown along one axis (a vocabulary that got
    larger: embedding and lm_head rows)."""
    if len(first) != len(later):
        return False
    changed = [(a, b) for a, b in zip(first, later) if a != b]
    return not changed or (len(changed) == 1 and changed[0][1] > changed[0][0])


def tensors_differ(first: Shapes, later: Shapes, names: tuple[str, str]) -> str | None:
    """How ``later``'s tensors are not those of the model ``first`` holds, or ``None``
    (``names``: the two checkpoints, as the message names them)."""
    gone, new = [n for n in first if n not in later], [n for n in later if n not in first]
    if gone or new:
        parts = [f"{len(only)} tensor{'s' if len(only) > 1 else ''} only in {name}, e.g. {only[0]!r}"
                 for only, name in ((gone, names[0]), (new, names[1])) if only]
        return "different tensors (" + "; ".join(parts) + ")"
    for tensor, shape in first.items():
        if not _same_or_grown(shape, later[tensor]):
            return f"different shapes ({tensor!r} is {list(shape)} and {list(later[tensor])})"
    return None


def _configs_differ(first: dict | None, later: dict | None, names: tuple[str, str]) -> str | None:
    if first == later:
        return None
    if first is None or later is None:
        return f"a config.json only in {names[0] if later is None else names[1]}"
    key = next(k for k in sorted(first.keys() | later.keys()) if first.get(k) != later.get(k))
    return f"different config.json ({key!r} is {first.get(key)!r} and {later.get(key)!r})"


@dataclasses.dataclass
class _Model:
    """Checkpoints of one model: the first one's tensors and config, every member in step order."""

    shapes: Shapes
    config: dict | None
    refs: list[CheckpointRef]

    def why_not(self, other: "_Model", names: tuple[str, str] = ("one", "the other")) -> str | None:
        """Why ``other``'s first checkpoint is not of this model, or ``None``."""
        return (_configs_differ(self.config, other.config, names)
                or tensors_differ(self.shapes, other.shapes, names))


def _by_model(headers: list[tuple[CheckpointRef, Shapes]]) -> list[_Model]:
    """The checkpoints grouped by model, each joining the first model it fits."""
    models: list[_Model] = []
    for ref, shapes in headers:
        this = _Model(shapes, config_of(ref), [ref])
        home = next((m for m in models if m.why_not(this) is None), None)
        if home is None:
            models.append(this)
        else:
            home.refs.append(ref)
    return models


def _interleaved(refs: list[CheckpointRef]) -> tuple[list[CheckpointRef], list[CheckpointRef]] | None:
    """Two runs of one model told apart by their names, whose steps overlap; ``None`` when the
    names, in step order, follow one another (a run resumed into a new folder, Lightning's
    ``version_1/``: one run)."""
    by_name: dict[str, list[CheckpointRef]] = {}
    for ref in refs:
        by_name.setdefault(ref.run, []).append(ref)
    spans = sorted(by_name.values(), key=lambda rs: rs[0].step)
    for a, b in zip(spans, spans[1:]):
        if b[0].step < a[-1].step:
            return a, b
    return None


def check_one_run(headers: list[tuple[CheckpointRef, Shapes]], root: PurePath,
                  storage: Storage) -> dict[CheckpointRef, str]:
    """Raise :class:`CheckpointError` (one line naming the first checkpoint of two runs and how
    to pick one) unless ``headers`` (each checkpoint and its tensors' shapes, in step order) are
    one run.  A lone checkpoint unlike the others and named like them is not a run but a bad
    checkpoint: returned with its problem, for ``--skip-bad`` to leave out."""
    models = _by_model(headers)
    if not models:
        return {}
    for model in models:
        pair = _interleaved(model.refs)
        if pair is not None:
            raise _two_runs(*pair, "are named as two runs and their steps interleave", root, storage)
    main = max(models, key=lambda m: len(m.refs))  # the first of the largest
    odd: dict[CheckpointRef, str] = {}
    for model in models:
        if model is main:
            continue
        a, b = sorted((main, model), key=lambda m: m.refs[0].step)
        names = (_relative(a.refs[0].path, root), _relative(b.refs[0].path, root))
        why = a.why_not(b, names) or b.why_not(a, names[::-1])
        if len(model.refs) > 1 or model.refs[0].run != main.refs[0].run:
            raise _two_runs(a.refs, b.refs, f"have {why}", root, storage)
        n = len(main.refs)
        odd[model.refs[0]] = f"not the model of the other {n} checkpoint{'s' if n > 1 else ''}: {why}"
    return odd


def _two_runs(a: list[CheckpointRef], b: list[CheckpointRef], why: str, root: PurePath,
              storage: Storage) -> CheckpointError:
    """The one line for two runs: the first checkpoint of each, and how to film one of them."""
    def group(refs: list[CheckpointRef]) -> str:
        n = len(refs)
        return (f"{_relative(refs[0].path, root)} ({n} checkpoint{'s' if n > 1 else ''}, steps "
                f"{refs[0].step}..{refs[-1].step})")

    if a[0].run != b[0].run:
        how = f"film one with --run {shown_run(a[0].run)} or --run {shown_run(b[0].run)}"
    else:
        how = "they share a folder and a name: move one run's checkpoints into a folder of its own"
    return CheckpointError(f"holds two training runs, not one: {group(a)} and {group(b)} {why}; "
                           f"{how}", storage.display(root))
