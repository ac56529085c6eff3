"""The one stream of point clouds: every pass over a run's checkpoints reads them here.

A *source* of point clouds says, per checkpoint, what each panel's cloud is: ``(n, d)`` float32
rows with a stable identity per row (row ``i`` is the same point at every keyframe).  Today's
source is the run's weights (:class:`WeightClouds`: each panel's drawn rows/columns,
:mod:`layerfilm.extract`); the next is hidden states (each checkpoint run on a probe text).
Everything after -- projection, alignment, drift, stats, ``info`` -- reads a
:class:`CloudStream` and does not know which source it is: this module is the seam where a new
source plugs in (docs/internals.md, "a new source of point clouds").

The stream hands out one :class:`Keyframe` at a time, in order, whose clouds are read when
asked for (``keyframe.cloud(l)``, from any thread).  The next keyframe's data is fetched
*ahead*: when the consumer says its reads of the current one are under way
(:meth:`CloudStream.read_ahead`, so fetching overlaps the work on this one), else when it asks
for the next.  At most two checkpoints are in memory: the one read and the one fetched
(:data:`layerfilm.plan.IN_FLIGHT`).

What a film read is identified as it is read: a source told to (``digest``) has each local
safetensors file's drawn bytes hashed as they are fetched, in file order, and keeps the digests
(:attr:`WeightClouds.read`) for the manifest -- which then reads nothing again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Protocol, Sequence

import numpy as np

from . import activations, checkpoints, extract

if TYPE_CHECKING:
    from .checkpoints import CheckpointRef
    from .plan import Plan


class Keyframe(Protocol):
    """One checkpoint's clouds.  ``index``: the keyframe's place in the run (0..K-1); ``step``:
    its training step."""

    index: int
    step: int

    def cloud(self, l: int) -> np.ndarray:
        """Panel ``l``'s cloud: ``(n_l, d_l)`` float32, rows in the panel's fixed order."""
        ...

    def clouds(self) -> list[np.ndarray]:
        """The clouds of the panels the stream was asked for, in order."""
        ...


class CloudSource(Protocol):
    """Where clouds come from: ``open(k)`` starts fetching what keyframe ``k``'s clouds need
    (a file's drawn rows; a model's weights) and returns it without waiting for the clouds."""

    def open(self, k: int) -> Keyframe: ...


class WeightKeyframe:
    """A checkpoint opened for its panels' drawn weights (see :class:`WeightClouds`);
    ``digests``: each of its files' digests of the bytes fetched (``digest`` given), else
    ``None``."""

    def __init__(self, index: int, ref: CheckpointRef, layers: Sequence[extract.Layer],
                 panels: Sequence[int], digest: str | None = None):
        self.index, self.step, self.ref = index, ref.step, ref
        self._layers, self._panels = layers, panels
        self._ckpt = ref.open()
        extract.prefetch(self._ckpt, [layers[l] for l in panels], digest)
        self.digests = checkpoints.read_digests(self._ckpt) if digest is not None else None
        self._shapes = self._ckpt.shapes()

    def cloud(self, l: int) -> np.ndarray:
        """Panel ``l``'s drawn rows/columns (:func:`~layerfilm.extract.read_layer`); read again
        if asked again (a local file's fetched rows are let go once read)."""
        return extract.read_layer(self._ckpt, self._layers[l], self._shapes)

    def clouds(self) -> list[np.ndarray]:
        return [self.cloud(l) for l in self._panels]


class WeightClouds:
    """The clouds of a run's weights: per checkpoint (``refs``), each panel's drawn rows or
    columns (``layers``: :class:`~layerfilm.extract.Layer`).  ``panels``: the panels read
    (indices into ``layers``; all by default): only their rows are fetched.

    ``digest`` (a name in :data:`~layerfilm.checkpoints.formats.digests.READ_DIGESTS`),
    with every panel read: each checkpoint opened has its files' drawn bytes hashed as they are
    fetched; ``read[k]``: checkpoint ``k``'s digests (file, as text -> ``header_sha256``,
    ``read_<digest>``, ``read_bytes``), for the formats that read ranges (safetensors)."""

    def __init__(self, refs: Sequence[CheckpointRef], layers: Sequence[extract.Layer],
                 panels: Sequence[int] | None = None, digest: str | None = None):
        self.refs, self.layers = refs, layers
        self.panels = list(range(len(layers)) if panels is None else panels)
        # Only a read of every panel's rows is what a film reads (and a manifest names).
        self.digest = digest if sorted(set(self.panels)) == list(range(len(layers))) else None
        self.read: dict[int, dict[str, dict]] = {}

    def open(self, k: int) -> WeightKeyframe:
        """Checkpoint ``k`` opened, its panels' drawn rows fetched (in one go where the reader
        can), its clouds not yet made."""
        frame = WeightKeyframe(k, self.refs[k], self.layers, self.panels, self.digest)
        if frame.digests is not None:
            self.read[k] = {str(p): d for p, d in frame.digests.items()}
        return frame

    def stream(self, keyframes: Iterable[int] | None = None) -> CloudStream:
        """A :class:`CloudStream` over ``keyframes`` (indices into ``refs``; all by default)."""
        return CloudStream(self, range(len(self.refs)) if keyframes is None else keyframes)


def of(plan: Plan, panels: Sequence[int] | None = None, digest: str | None = None
       ) -> WeightClouds | activations.ActivationClouds:
    """The source of ``plan``'s clouds, for ``panels`` (indices into ``plan.layers``; all by
    default): its weights, or with a probe (``--points activations``) the hidden states of
    its tokens (:class:`~layerfilm.activations.ActivationClouds`); ``digest``: local files'
    drawn bytes hashed as they are read (see :class:`WeightClouds`; remote files are
    identified by what their server lists)."""
    local = isinstance(plan.storage, checkpoints.LocalStorage)
    if plan.probe is not None:
        return activations.ActivationClouds(plan, panels, digest if local else None)
    return WeightClouds(plan.refs, plan.layers, panels, digest if local else None)


def stream(plan: Plan, keyframes: Iterable[int] | None = None,
           panels: Sequence[int] | None = None) -> CloudStream:
    """``plan``'s clouds over ``keyframes`` (all by default), for ``panels`` (all by default)."""
    return CloudStream(of(plan, panels), range(len(plan.refs)) if keyframes is None else keyframes)


class CloudStream:
    """The keyframes ``keyframes`` of ``source``, one after the other (an iterator of
    :class:`Keyframe`), each opened once, the next one fetched ahead.

    A consumer that reads a keyframe's clouds elsewhere (threads) calls :meth:`read_ahead`
    once those reads are under way, so that fetching the next keyframe overlaps them; one that
    reads them itself just iterates (the next one is then fetched when asked for)."""

    def __init__(self, source: CloudSource, keyframes: Iterable[int]):
        self.source = source
        self.keyframes = list(keyframes)
        self._at = 0  # the next keyframe handed out
        self._ahead: Keyframe | None = None  # it, opened early by read_ahead

    def __iter__(self) -> CloudStream:
        return self

    def __next__(self) -> Keyframe:
        if self._at >= len(self.keyframes):
            raise StopIteration
        frame = self._ahead if self._ahead is not None else self.source.open(self.keyframes[self._at])
        self._ahead = None
        self._at += 1
        return frame

    def read_ahead(self) -> None:
        """Open the next keyframe and fetch its data now (nothing when there is none, or when
        it already is)."""
        if self._ahead is None and self._at < len(self.keyframes):
            self._ahead = self.source.open(self.keyframes[self._at])
