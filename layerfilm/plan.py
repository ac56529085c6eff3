"""What a film will draw, decided before any layout is computed (``layerfilm info`` prints it):
the checkpoints (in step order), the panels and their points, and the loss curve."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path, PurePath
from typing import Callable

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
    skipped: list[tuple[str, str]]  # (file or URL as shown, why)
    layers: list[extract.Layer]
    loss: checkpoints.LossCurve | None
    storage: Storage = dataclasses.field(default=LOCAL, compare=False, repr=False)
    # (K,) training tokens seen at each checkpoint, NaN where unknown (checkpoints.checkpoint_tokens)
    tokens: np.ndarray | None = dataclasses.field(default=None, compare=False, repr=False)
    url: str | None = None  # the URL given, for remote checkpoints
    ignored: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # Hub refs, no step
    # Per checkpoint, each file's identity taken before any of its bytes were read
    # (CheckpointRef.file_identities): what the cache keys and the manifest say was read.
    identities: tuple[tuple[tuple[PurePath, str], ...], ...] = \
        dataclasses.field(default=(), compare=False, repr=False)
    # --points activations: the probe whose tokens' hidden states the panels hold
    # (activations.Probe); None for weight panels.
    probe: object | None = dataclasses.field(default=None, compare=False, repr=False)

    @property
    def where(self) -> str:
        """The checkpoints' folder or URL, as given."""
        return self.url or str(self.folder)

    def stored_bytes(self) -> int:
        """Bytes of every file of the checkpoints drawn (what a full download would cost)."""
        return sum(self.storage.size(p) for ref in self.refs for p in ref.files())

    def drawn(self) -> list[tuple[str, "np.ndarray | None", int]]:
        """``(tensor, index, axis)`` of every read a keyframe makes (a model run on a probe
        reads every tensor whole)."""
        if self.probe is not None:
            return [(name, None, 0) for name in self.probe.tensors]
        return [(s.tensor, s.index, s.axis) for layer in self.layers for s in layer.sources]

    @property
    def steps(self) -> np.ndarray:
        return np.array([r.step for r in self.refs], dtype=np.int64)

    @property
    def starts(self) -> np.ndarray:
        """(L+1,) offsets of each panel's points in the flat point arrays."""
        return np.concatenate([[0], np.cumsum([l.n_points for l in self.layers])]).astype(np.int64)

    @property
    def name(self) -> str:
        """The run's name: its folder's (a repository's for a Hub repository)."""
        if isinstance(self.storage, LocalStorage):
            return Path(self.folder).resolve().name
        return self.folder.name or (self.url or "").rstrip("/").rsplit("/", 1)[-1].split("@")[0]

    def identity(self, k: int) -> str:
        """Checkpoint ``k``'s identity as it was before anything was read (the cache key's)."""
        return self.refs[k].identity(self.identities[k])

    def changed(self, k: int | None = None) -> list[str]:
        """The files (as shown) of checkpoint ``k`` (default: of every one) whose identity
        differs now from the one taken before they were read: what a render read of them may
        be old bytes, new bytes or a mix."""
        out = []
        for files in self.identities if k is None else [self.identities[k]]:
            for path, ident in files:
                try:
                    now = self.storage.identity(path)
                except OSError:
                    now = None
                if now != ident:
                    out.append(self.storage.display(path))
        return out

    def reordered(self, order: list[int]) -> "Plan":
        """The same plan with its panels in ``order`` (indices into ``layers``)."""
        return dataclasses.replace(self, layers=[self.layers[l] for l in order])


# Checkpoints in memory at once while layouts are made: the one projected and the next, whose
# drawn rows are fetched meanwhile (clouds.py).
IN_FLIGHT = 2


def available_memory() -> int | None:
    """Bytes of memory available to this process now (``MemAvailable``: free memory plus what
    the kernel can reclaim), else free pages; ``None`` where the system does not say."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def check_memory(where: str, itemsize: int | None, layers: list[extract.Layer], shapes: dict,
                 budget: int | None, given: bool) -> None:
    """Refuse (:class:`CheckpointError` naming the checkpoint) a plan whose reads would take
    more than ``budget`` bytes (``given``: it is ``--max-memory``, else what is available),
    before a byte of data is read: a declared 10^6 x 10^6 tensor otherwise reads until the
    process is killed."""
    if budget is None:
        return
    need, tensor, alone = extract.read_memory(layers, shapes, itemsize)
    need *= IN_FLIGHT
    if need > budget:
        human = checkpoints.human_bytes
        limit = "--max-memory" if given else "available memory"
        raise CheckpointError(
            f"reading the drawn points would take about {human(need)} of memory (tensor "
            f"{tensor!r}, shape {list(shapes.get(tensor, ()))}, {human(alone)} alone), more than "
            f"the {human(budget)} of {limit}; draw fewer points (--max-points, --tensor) or "
            "raise --max-memory", where)


def make_plan(selection: Selection, metrics: Path | None = None,
              check_panels: Callable[[list[extract.Layer]], None] | None = None) -> Plan:
    """Discover the checkpoints of ``selection.checkpoints``, pick ``selection.steps`` and plan
    the panels from the first one (``points``/``tensor``/``layer_pattern``/``max_points``/
    ``seed``: what to draw, see :func:`extract.plan_panels`).

    Every checkpoint is opened (headers only where the format allows) and checked against the
    plan here, before any data is read; one that cannot be read or no longer fits stops the
    film with a one-line error, or with ``skip_bad`` joins ``skipped`` with the problem.  The
    checkpoints must be one training run (``checkpoints.check_one_run``; ``selection.run``
    picks one of several).  The loss curve comes from ``metrics`` when given, else from what
    lies beside the checkpoints.

    The panels are checked as soon as they are planned from the first checkpoint, before any
    other is opened: against ``check_panels`` (a render: do they fit in the frame?) and
    against the memory their reads take (:func:`check_memory`, ``selection.max_memory`` or what
    is available).
    """
    sel = selection
    location = sel.checkpoints
    pins = dict(getattr(location, "revisions", ()) or ()) or None
    source = checkpoints.open_source(location, sel.storage_options, sel.revisions,
                                     sel.keep_downloads, pins)
    folder, storage = source.root, source.storage
    refs, skipped = checkpoints.discover(folder, sel.skip_bad, storage, sel.run)
    newest = refs[-1].step  # the one a run still training may be writing now
    ignored = [(storage.display(p), why) for p, why in source.skipped]
    if sel.steps is not None:
        picked = checkpoints.select_steps(refs, *sel.step_range)
        if len(picked) < 2:
            text = ":".join("" if v is None else str(v) for v in sel.step_range)
            raise CheckpointError(
                f"--steps {text} keeps {len(picked)} of the {len(refs)} checkpoints (steps "
                f"{refs[0].step}..{refs[-1].step}); a film needs at least two", location)
        refs = picked
    # Every checkpoint is opened (headers, indexes, DCP metadata) and checked against the plan
    # before any data is read: a bad one late in a long series fails in seconds, not after
    # minutes of work, and --skip-bad knows what it leaves out before the film starts.
    budget = sel.memory_budget
    given = budget is not None
    budget = budget if given else available_memory()
    planned: list[list[extract.Layer]] = []

    def plan_first(where: str, shapes: dict, itemsize: int | None) -> None:
        # The panels are planned, and checked, from the first checkpoint that opens, before any
        # other is opened: panels that cannot fit, or reads too big for memory, fail at once.
        if sel.points == "activations":  # panels of a model's hidden states: activations.make_plan
            planned.append([])
            return
        try:
            layers = extract.plan_panels(shapes, sel.max_points, sel.seed, sel.points, sel.tensor,
                                         sel.layer_pattern)
        except CheckpointError as e:
            raise CheckpointError(e.problem, where) from None
        if check_panels is not None:
            check_panels(layers)
        check_memory(where, itemsize, layers, shapes, budget, given)
        planned.append(layers)

    metadata: dict = {}  # the safetensors files' metadata, read with their headers
    headers = _headers(refs, sel.skip_bad, newest, skipped, storage, plan_first, metadata)
    odd = checkpoints.check_one_run([(ref, shapes) for ref, _, shapes, _, _ in headers], folder, storage)
    layers = planned[0] if planned else None
    good: list[checkpoints.CheckpointRef] = []
    identities = []
    for ref, where, shapes, files, itemsize in headers:
        try:
            for layer in layers:
                extract.check_fits(where, layer, shapes)
            check_memory(where, itemsize, layers, shapes, budget, given)
            if ref in odd:
                raise CheckpointError(odd[ref], where)
        except CheckpointError as e:
            if not sel.skip_bad:
                raise in_the_way(e, ref.step == newest) from None
            skipped.append((e.path, e.problem))
            continue
        good.append(ref)
        identities.append(files)
    if len(good) < 2 or layers is None:
        why = f" (skipped {skipped[0][0]}: {skipped[0][1]}{' and more' if len(skipped) > 1 else ''})" \
            if skipped else ""
        raise CheckpointError(f"only {len(good)} of {len(refs)} checkpoints could be read{why}; "
                              "a film needs at least two", location)
    loss = (checkpoints.load_loss_file(metrics) if metrics is not None
            else checkpoints.load_loss_curve(folder, good, storage, metadata))
    skipped = [(storage.display(p) if isinstance(p, PurePath) else p, why) for p, why in skipped]
    plan = Plan(folder, good, skipped, layers, loss, storage,
                checkpoints.checkpoint_tokens(good, loss, storage), source.url, ignored,
                tuple(identities))
    if storage is not LOCAL:
        storage.traffic.add(stored=plan.stored_bytes())
    return plan


def _headers(refs: list[checkpoints.CheckpointRef], skip_bad: bool, newest: int, skipped: list,
             storage: Storage, first: Callable[[str, dict, int | None], None], metadata: dict
             ) -> list[tuple[checkpoints.CheckpointRef, str, dict, tuple, int | None]]:
    """``(ref, where, shapes, identities, itemsize)`` of every checkpoint that opens: its files'
    identities taken first, then headers only, so what each holds is known before any data is
    read; ``first(where, shapes, itemsize)`` is called on the first that opens, before any
    other is opened.  One that does not open stops the film (``skip_bad``: it joins
    ``skipped``).  A safetensors file's metadata goes into ``metadata`` (path -> dict), so the
    loss it may hold is not read again."""
    out = []
    for ref in refs:
        try:
            files = ref.file_identities()  # before its first byte is read: a rewrite shows
            ckpt = ref.open()
            out.append((ref, ckpt.where, ckpt.shapes(), files, getattr(ckpt, "itemsize", None)))
            if isinstance(ckpt, checkpoints.SafetensorsFile):
                metadata[ref.path] = ckpt.metadata
            del ckpt  # a torch pickle holds its tensors: one at a time
        except CheckpointError as e:
            if not skip_bad:
                raise in_the_way(e, ref.step == newest) from None
            skipped.append((e.path if e.path else storage.display(ref.path), e.problem))
            continue
        if len(out) == 1:
            first(*out[0][1:3], out[0][4])
    return out


def in_the_way(error: CheckpointError, newest: bool) -> CheckpointError:
    """``error`` (one checkpoint that cannot be used) with the way past it: ``--skip-bad``
    leaves it out; the newest one is most often still being written by a run in progress."""
    why = "it is the newest checkpoint, which a run may still be writing: " if newest else ""
    return CheckpointError(f"{error.problem}; {why}--skip-bad leaves it out", error.path)


def read_estimate(plan: Plan) -> tuple[int, int]:
    """``(bytes stored, bytes a render reads)`` of the checkpoints drawn: every file's size,
    and what the drawn rows and headers take (the first checkpoint's ranges, for each; a
    format read whole counts whole)."""
    stored = plan.stored_bytes()
    first = plan.refs[0].open()
    ranges = checkpoints.drawn_ranges(first, plan.drawn())
    del first
    if ranges is None:
        return stored, stored
    per = sum(e - s for r in ranges.values() for s, e in r)
    return stored, per * len(plan.refs)
