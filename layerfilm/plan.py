"""What a film will draw, decided before any layout is computed (``layerfilm info`` prints it):
the checkpoints (in step order), the panels and their points, and the loss curve."""

from __future__ import annotations

import dataclasses
from pathlib import Path, PurePath

import numpy as np

from . import checkpoints, extract
from .checkpoints import LOCAL, Storage
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
    url: str | None = None  # the URL given, for remote checkpoints
    ignored: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # Hub refs, no step

    @property
    def where(self) -> str:
        """The checkpoints' folder or URL, as given."""
        return self.url or str(self.folder)

    def display(self, path: PurePath) -> str:
        """A checkpoint path as messages show it (a URL for remote ones)."""
        return self.storage.display(path)

    def stored_bytes(self) -> int:
        """Bytes of every file of the checkpoints drawn (what a full download would cost)."""
        return sum(self.storage.size(p) for ref in self.refs for p in ref.files())

    def drawn(self) -> list[tuple[str, "np.ndarray | None", int]]:
        """``(tensor, index, axis)`` of every read a keyframe makes."""
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
        if self.storage is LOCAL:
            return Path(self.folder).resolve().name
        return self.folder.name or (self.url or "").rstrip("/").rsplit("/", 1)[-1].split("@")[0]

    def reordered(self, order: list[int]) -> "Plan":
        """The same plan with its panels in ``order`` (indices into ``layers``)."""
        return dataclasses.replace(self, layers=[self.layers[l] for l in order])


def make_plan(selection: Selection, metrics: Path | None = None) -> Plan:
    """Discover the checkpoints of ``selection.checkpoints``, pick ``selection.steps`` and plan
    the panels from the first one (``points``/``tensor``/``layer_pattern``/``max_points``/
    ``seed``: what to draw, see :func:`extract.plan_panels`).

    With ``skip_bad`` every checkpoint is opened (headers only where the format allows)
    and checked against the plan here; those that cannot be read or no longer fit join
    ``skipped`` with the problem instead of stopping.  The loss curve comes from
    ``metrics`` when given, else from what lies beside the checkpoints.
    """
    sel = selection
    location = sel.checkpoints
    pins = dict(getattr(location, "revisions", ()) or ()) or None
    source = checkpoints.open_source(location, sel.storage_options, sel.revisions,
                                     sel.keep_downloads, pins)
    folder, storage = source.root, source.storage
    refs, skipped = checkpoints.discover(folder, sel.skip_bad, storage)
    ignored = [(storage.display(p), why) for p, why in source.skipped]
    if sel.steps is not None:
        picked = checkpoints.select_steps(refs, *sel.step_range)
        if len(picked) < 2:
            text = ":".join("" if v is None else str(v) for v in sel.step_range)
            raise CheckpointError(
                f"--steps {text} keeps {len(picked)} of the {len(refs)} checkpoints (steps "
                f"{refs[0].step}..{refs[-1].step}); a film needs at least two", location)
        refs = picked
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
            skipped.append((e.path if e.path else storage.display(ref.path), e.problem))
            continue
        if layers is None:
            try:
                layers = extract.plan_panels(shapes, sel.max_points, sel.seed, sel.points, sel.tensor,
                                             sel.layer_pattern)
            except CheckpointError as e:
                raise CheckpointError(e.problem, ckpt.where) from None
        good.append(ref)
        del ckpt
        if not sel.skip_bad:
            good = refs  # the keyframe pass reads (and so checks) the others
            break
    if len(good) < 2 or layers is None:
        raise CheckpointError(f"only {len(good)} of {len(refs)} checkpoints could be read; "
                              "a film needs at least two", location)
    loss = (checkpoints.load_loss_file(metrics) if metrics is not None
            else checkpoints.load_loss_curve(folder, good, storage))
    skipped = [(storage.display(p) if isinstance(p, PurePath) else p, why) for p, why in skipped]
    plan = Plan(folder, good, skipped, layers, loss, storage, source.url, ignored)
    if storage is not LOCAL:
        storage.wanted = plan.drawn()  # each file's drawn rows are then fetched in one go
        storage.traffic.add(stored=plan.stored_bytes())
    return plan


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


def describe(plan: Plan, fps: int, frames_per_keyframe: int) -> list[str]:
    """What ``layerfilm info`` prints: the checkpoints, the film's length, the bytes read and
    the panels."""
    steps = plan.steps
    gaps = sorted({int(b - a) for a, b in zip(steps[:-1], steps[1:])})
    every = f"every {gaps[0]}" if len(gaps) == 1 else f"gaps {gaps[0]}..{gaps[-1]}"
    frames = (len(steps) - 1) * frames_per_keyframe + 1
    kinds = sorted({r.kind for r in plan.refs})
    first, last = (_rel(r.path, plan.folder) for r in (plan.refs[0], plan.refs[-1]))
    loss = plan.loss
    stored, reads = read_estimate(plan)
    human = checkpoints.human_bytes
    out = [f"{'source' if plan.url else 'folder':<11} {plan.where}",
           f"format      {'; '.join(kinds)}",
           f"keyframes   {len(steps)} checkpoints, steps {steps[0]:,} .. {steps[-1]:,} ({every})",
           f"first/last  {first} .. {last}"]
    tokens = [r.tokens for r in plan.refs if r.tokens is not None]
    if tokens:
        out.append(f"tokens      {_count(tokens[0])} .. {_count(tokens[-1])} tokens seen")
    out += [f"loss        {f'{len(loss.steps)} values from {loss.source}' if loss else 'none found'}",
            f"film        {frames} frames, {frames / fps:.1f} s at {fps} fps, "
            f"{frames_per_keyframe} frames per checkpoint"]
    if len(gaps) > 1:
        out.append("            (uneven gaps: --timeline step spaces keyframes by training step)")
    out.append(f"bytes       {human(stored)} stored; a render reads {human(reads)} of them "
               f"({100 * reads / max(stored, 1):.1f} %)")
    traffic = getattr(plan.storage, "traffic", None)
    if traffic is not None:
        out.append(f"            this look fetched {human(traffic.fetched)} in "
                   f"{traffic.data_requests} data and {traffic.requests} other requests")
    out += [f"panels      {len(plan.layers)}", "",
            f"  {'panel':<10} {'drawn':>7} {'of':>7} {'width':>6}  tensors (rows R / columns C)"]
    for layer in plan.layers:
        tensors = ", ".join(
            f"{s.tensor[len(layer.prefix):] if layer.prefix and s.tensor.startswith(layer.prefix) else s.tensor}"
            f" {'R' if s.axis == 0 else 'C'}" for s in layer.sources)
        out.append(f"  {layer.label:<10} {layer.n_points:>7,} {layer.total:>7,} {layer.dim:>6}  {tensors}")
    out += [f"skipped     {path}: {why}" for path, why in plan.ignored + plan.skipped]
    return out


def _count(n: int) -> str:
    """``4_000_000_000`` -> ``"4B"``."""
    for unit, v in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= v:
            return f"{n / v:g}{unit}"
    return str(n)


def _rel(path: PurePath, root: PurePath) -> str:
    """``path`` relative to ``root`` (a checkpoint folder's own name when it is one)."""
    try:
        return str(path.relative_to(root)) if path != root else path.name
    except ValueError:
        return str(path)
