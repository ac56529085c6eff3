"""Checkpoints -> aligned 2-D keyframe layouts of every panel (the ``project`` stage driven over
a run), and each layer's drift measured in the same pass: the clouds read from one
:class:`~layerfilm.clouds.CloudStream` (one checkpoint in memory at a time, the next one's read
ahead), layers projected in parallel threads, results memoised in the cache.  The bytes each
pass reads are hashed as they are read (:data:`READ_DIGEST`) and the digests come back with its
results, for the manifest."""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import json

import numpy as np

from . import cache, clouds, cluster, extract, pca, project
from .drift import Drift, DriftMeter, drift_of, needs_sketches, unsketched
from .errors import ConfigError
from .plan import Plan
from .progress import QUIET, Progress

# The digest of the drawn bytes that a pass over every checkpoint makes as it reads them
# (Keyframes.read): the manifest's read_xxh3.
READ_DIGEST = "xxh3"


@dataclasses.dataclass(frozen=True)
class Keyframes:
    """Aligned 2-D layouts: P (K, N, 2) float32, NaN where a weight was not finite; and per
    panel what its projection did (``panels``: method, exact solves, corrections, the share
    of variance the drawn axes hold, the Fourier frequency, ...)."""

    P: np.ndarray
    nonfinite: int  # points hidden because their weights had NaN/Inf
    panels: tuple[dict, ...] = ()
    # (L, K, DRIFT_WIDTH) float64: each layer's :func:`~layerfilm.drift.measure_cloud` at each
    # keyframe, when measured in this pass.
    drift_sums: np.ndarray | None = None
    # The digests of what this pass read (local safetensors file, as text -> header_sha256,
    # read_xxh3, read_bytes), hashed as it was read; empty when it read nothing (the cache).
    read: dict[str, dict] = dataclasses.field(default_factory=dict, compare=False)

    def reordered(self, order: list[int], starts: np.ndarray) -> "Keyframes":
        """The same layouts with the panels (``starts``: (L+1,) offsets) in ``order``."""
        points = np.concatenate([np.arange(starts[l], starts[l + 1]) for l in order])
        panels = tuple(self.panels[l] for l in order) if self.panels else ()
        sums = self.drift_sums[order] if self.drift_sums is not None else None
        return Keyframes(self.P[:, points], self.nonfinite, panels, sums, self.read)


def fourier_reference(plan: Plan, fourier_ref: int | None) -> int:
    """The index of the checkpoint whose embedding fixes the Fourier plane: the one at step
    ``fourier_ref``, else the last (where a trained model's structure is)."""
    if fourier_ref is None:
        return len(plan.refs) - 1
    steps = [r.step for r in plan.refs]
    if fourier_ref not in steps:
        near = min(steps, key=lambda s: abs(s - fourier_ref))
        raise ConfigError(f"--fourier-ref {fourier_ref}: no checkpoint at that step (the nearest is "
                          f"{near:,}; steps {steps[0]:,}..{steps[-1]:,})", field="fourier_ref")
    return steps.index(fourier_ref)


def projections(plan: Plan, projection: str, seed: int, fourier_ref: int | None = None,
                run: cluster.InProcess | cluster.Dask | None = None) -> list[project.Projection]:
    """The projection of each panel for ``--projection`` (the one place its name is read: the
    layout stage decides by these objects).  ``fourier`` lays out token-embedding panels in one
    fixed plane -- of their strongest frequency at the reference checkpoint
    (:func:`fourier_reference`; fitted where the bytes are, by ``run``) -- and every other panel
    by PCA."""
    pca = project.PCA(seed)
    if projection == "umap":
        return [project.UMAP(seed) for _ in plan.layers]
    embeds = [l for l, layer in enumerate(plan.layers) if extract.is_token_embedding(layer)]
    if projection != "fourier" or not embeds:
        return [pca] * len(plan.layers)
    ref = fourier_reference(plan, fourier_ref)
    fitted, = (run or cluster.InProcess()).map(fit_fourier, [ref], plan, embeds)
    return [fitted.get(l, pca) for l in range(len(plan.layers))]


def fit_fourier(plan: Plan, layers: list[int], k: int, advance=None) -> dict[int, project.Fourier]:
    """A task: the Fourier plane of each of ``layers`` (token embeddings) at keyframe ``k``."""
    frame = clouds.of(plan, layers).open(k)
    return {l: project.Fourier.fit(frame.cloud(l), plan.layers[l].sources[0].index, plan.layers[l].total,
                                   frame.step) for l in layers}


def axis_shares(plan: Plan, how: list[project.Projection], seed: int = 0
                ) -> list[tuple[float, float]]:
    """Per panel, the share of its variance that the two drawn axes hold at the first and at
    the last keyframe: its top two principal axes (also for UMAP, as a yardstick), or its
    Fourier plane (``how``: the panels' projections, :func:`projections`).  Reads two
    checkpoints (``layerfilm info`` prints it)."""
    shares = []
    for frame in clouds.stream(plan, [0, len(plan.refs) - 1]):
        row = []
        for X, projected in zip(frame.clouds(), how):
            if isinstance(projected, project.Fourier) and projected.plane is not None:
                ok = np.isfinite(X).all(axis=1)
                row.append(project.plane_share(X[ok], projected.ids[ok], projected.period,
                                               projected.plane))
            else:
                row.append(pca.axis_share(X, seed))
        shares.append(row)
    return list(zip(*shares))


def _sequential(how: list[project.Projection]) -> bool:
    """Whether any panel's projection is warm-started from keyframe to keyframe (UMAP)."""
    return any(p.sequential for p in how)


def _threads(how: list[project.Projection]) -> int:
    """Layers are projected in parallel threads (the wide-layer PCA and alignment are numba
    kernels that release the GIL and call no BLAS); a sequential projection (UMAP) brings its
    own threading, so it runs alone."""
    return 1 if _sequential(how) else cluster.threads()


def chunks(n_keyframes: int, sequential: bool = False) -> list[range]:
    """The keyframes each task reads: runs of :data:`~layerfilm.pca.CHUNK`, where tracked
    planes restart from an exact solve (so a chunk needs nothing from the one before it); a
    ``sequential`` projection (UMAP, warm-started from keyframe to keyframe) is one run."""
    size = n_keyframes if sequential else pca.CHUNK
    return [range(a, min(a + size, n_keyframes)) for a in range(0, n_keyframes, size)]


@dataclasses.dataclass
class ChunkLayouts:
    """What a layout task returns: its keyframes' layouts, each panel aligned from keyframe to
    keyframe *within* the chunk (the first only centred), and what each panel's projection did."""

    start: int
    P: np.ndarray  # (len(chunk), N, 2) float32
    panels: list[dict]
    fixed: list[bool]  # panels drawn in a fixed frame (never turned)
    drift_sums: np.ndarray | None = None  # (L, len(chunk), DRIFT_WIDTH), see Keyframes
    tracks: list[project.Track] | None = None  # each panel's state after the last keyframe
    read: dict[str, dict] = dataclasses.field(default_factory=dict)  # its keyframes' files, see Keyframes


@dataclasses.dataclass
class Resumed:
    """A chunk to lay out from where an earlier film's shorter run of the same keyframes
    ended (``done``: its :class:`ChunkLayouts`, with its tracks)."""

    chunk: range
    done: ChunkLayouts

    def __len__(self) -> int:
        return len(self.chunk) - len(self.done.P)


def _previous_clouds(source: clouds.CloudSource, k: int) -> list[np.ndarray | None]:
    """Every panel's cloud at keyframe ``k - 1`` (for the change into ``k``), or none at 0."""
    return source.open(k - 1).clouds() if k > 0 else [None] * len(source.panels)


def _read_in(source: clouds.CloudSource, chunk: range) -> dict[str, dict]:
    """The digests ``source`` made of the files of the keyframes in ``chunk`` as it read them
    (the one before, read again for the drift into the first, is its own chunk's)."""
    return {path: d for k in chunk for path, d in source.read.get(k, {}).items()}


def project_chunk(plan: Plan, how: list[project.Projection], drift: bool, chunk: range | Resumed,
                  advance=None) -> ChunkLayouts:
    """A task: read and project the keyframes in ``chunk`` (one checkpoint in memory at a
    time; the next one's drawn rows are prefetched while this one is projected).

    BLAS runs single-threaded here: the matrices are small, and a multi-threaded OpenBLAS
    sharing cores with any other busy process (a training run, ffmpeg) was measured 20-60x
    slower than one thread.  A :class:`Resumed` chunk goes on from its tracks' state (the
    same layouts, bit for bit, as laying out the whole chunk).
    """
    import scipy.linalg  # noqa: F401  (scipy has its own BLAS: load it before limiting threads)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        return _project_chunk(plan, how, drift, chunk, advance or (lambda n=1: None))


def _project_chunk(plan: Plan, how: list[project.Projection], drift: bool, chunk: range | Resumed,
                   advance) -> ChunkLayouts:
    starts = plan.starts
    done = chunk.done if isinstance(chunk, Resumed) else None
    chunk = chunk.chunk if isinstance(chunk, Resumed) else chunk
    P = np.empty((len(chunk), starts[-1], 2), dtype=np.float32)
    tracks = done.tracks if done is not None else [project.Track() for _ in plan.layers]
    first = chunk.start + (len(done.P) if done is not None else 0)
    threads = _threads(how)
    # The layers' drift is measured from the very clouds projected (a film reads only what it
    # draws); the change into a chunk's first keyframe needs the keyframe before it too.
    source = clouds.of(plan, digest=READ_DIGEST)
    meter = DriftMeter(chunk, _previous_clouds(source, first), needs_sketches(plan.steps)) if drift else None
    if done is not None:
        P[:len(done.P)] = done.P
        if meter is not None:
            meter.sums[:, :len(done.P)] = done.drift_sums

    def project_layer(frame: clouds.Keyframe, l: int) -> None:
        k = frame.index
        cloud = frame.cloud(l)
        if meter is not None:
            meter.measure(l, k, cloud)
        tracks[l].keyframe = k
        P[k - chunk.start, starts[l]:starts[l + 1]] = project.project_keyframe(cloud, how[l], tracks[l])

    # Each layer has its own track, so which thread projects it never changes the result: the
    # threads share each keyframe's layers as they come free (a fixed share each left a core
    # idle 11 % of the layout phase).  The next keyframe is fetched once the one before is
    # done and half of this one's layers are read (their bytes let go): 1.5 keyframes at most.
    rounds = cluster.Rounds(len(plan.layers), first)
    with contextlib.ExitStack() as stack:
        pools = [stack.enter_context(concurrent.futures.ThreadPoolExecutor(1)) for _ in range(threads)]
        stack.callback(lambda: [pool.shutdown(cancel_futures=True) for pool in pools])  # on errors
        frames, before = clouds.CloudStream(source, range(first, chunk.stop)), []
        for frame in frames:
            layers, work = rounds.round(), functools.partial(project_layer, frame)
            parts = [pool.submit(rounds.run, frame.index, layers, work) for pool in pools]
            del frame
            _finished(before, advance)
            rounds.wait_taken(layers, len(plan.layers) // 2)
            frames.read_ahead()  # the next one's rows are fetched while this one is projected
            before = parts
        _finished(before, advance)
    panels = [{"label": layer.label, **t.stats.as_dict(), **t.info} for layer, t in zip(plan.layers, tracks)]
    return ChunkLayouts(chunk.start, P, panels, [t.fixed_frame for t in tracks],
                        meter.sums if meter is not None else None, tracks, _read_in(source, chunk))


def _finished(parts: list[concurrent.futures.Future], advance) -> None:
    """Wait for one keyframe's parts (raising what any raised) and count it done."""
    for part in parts:
        part.result()
    if parts:
        advance(1)


def stitch(parts: list[ChunkLayouts], starts: np.ndarray) -> tuple[np.ndarray, list[dict], np.ndarray | None]:
    """The chunks' layouts as one film: each chunk turned (rotation/reflection, per panel) onto
    where the previous one ended, as the keyframes within a chunk are; and each panel's
    projection record over the whole film."""
    P = _joined(parts)
    for i in range(1, len(parts)):
        a, b = parts[i].start, parts[i - 1].start + len(parts[i - 1].P) - 1
        for l in range(len(starts) - 1):
            if parts[i].fixed[l]:
                continue
            span = slice(starts[l], starts[l + 1])
            R = project.rotation_onto(P[a, span], P[b, span])
            end = a + len(parts[i].P)
            P[a:end, span] = (P[a:end, span].astype(np.float64) @ R).astype(np.float32)
    panels = [pca.PlaneStats.merged([c.panels[l] for c in parts]) for l in range(len(starts) - 1)]
    sums = (np.concatenate([c.drift_sums for c in parts], axis=1)
            if all(c.drift_sums is not None for c in parts) else None)
    return P, panels, sums


def _joined(parts: list[ChunkLayouts]) -> np.ndarray:
    """The chunks' keyframes in one array (a single chunk's as it is), each chunk's ``P``
    becoming its part of it once copied, so that its own is let go: the film's layouts are
    held once, not twice (189 MB on the bench film, the peak of its layout phase)."""
    if len(parts) == 1:
        return parts[0].P
    P, at = np.empty((sum(len(c.P) for c in parts),) + parts[0].P.shape[1:], parts[0].P.dtype), 0
    for c in parts:
        P[at:at + len(c.P)] = c.P
        c.P, at = P[at:at + len(c.P)], at + len(c.P)
    return P


def keyframe_layouts(plan: Plan, projection: str = "pca", seed: int = 0,
                     progress: Progress = QUIET, fourier_ref: int | None = None,
                     run: cluster.InProcess | cluster.Dask | None = None,
                     drift: bool = False, use_cache: bool = False, only_cached: bool = False
                     ) -> Keyframes | None:
    """Read, extract and project every keyframe, in chunks of keyframes run by ``run`` (this
    process by default, else a Dask cluster: the same tasks, the same layouts bit for bit);
    with ``drift``, each layer's drift is measured in the same pass (``drift_sums``).  With
    ``use_cache``, chunks laid out before (by this film, or by one of fewer checkpoints of the
    same run: ``layerfilm watch``) come from the cache, and those computed go there;
    ``only_cached``: ``None`` unless every chunk is there (nothing is read)."""
    run = run or cluster.InProcess()
    runs = chunks(len(plan.refs), projection == "umap")  # UMAP: warm-started over the whole run
    memo = _chunk_options(plan, projection, seed, fourier_ref) if use_cache else None
    parts: list = [_cached_chunk(plan, memo, c, drift, progress, seed) for c in runs]
    if memo is not None and projection != "umap":  # the run grew: go on from a shorter film's
        parts = [part or _resumable(plan, memo, c, drift, seed, progress) for c, part in zip(runs, parts)]
    todo = [(i, part or runs[i]) for i, part in enumerate(parts)
            if part is None or isinstance(part, Resumed)]
    if todo and only_cached:
        return None
    how = projections(plan, projection, seed, fourier_ref, run) if todo else []
    made = run.map(project_chunk, [t for _, t in todo], plan, how, drift, stage="Loading + projecting",
                   progress=progress, weights=[len(t) for _, t in todo]) if todo else []
    unkept = None
    for (i, task), part in zip(todo, made):
        parts[i] = part
        if memo is not None:
            unkept = _keep_chunk(plan, memo, runs[i], part) or unkept
            if isinstance(task, Resumed):  # the shorter run is not needed again
                cache.drop_chunk(plan, memo, range(task.chunk.start, task.chunk.start + len(task.done.P)))
    if unkept is not None:
        progress.warn(f"{unkept}: the layouts are not cached")
    P, panels, sums = stitch(parts, plan.starts)
    read = {path: d for c in parts for path, d in c.read.items()}
    return Keyframes(P, project.hidden_points(P), tuple(panels), sums, read)


def _chunk_options(plan: Plan, projection: str, seed: int, fourier_ref: int | None) -> str:
    """What besides its checkpoints decides a chunk's layouts: the options, and where a
    Fourier plane is fitted (at one checkpoint: the last, unless ``--fourier-ref``), its
    identity too (see :func:`projections`)."""
    options = cache_key(projection, seed, fourier_ref)
    if projection == "fourier" and any(extract.is_token_embedding(l) for l in plan.layers):
        options += f"|fitted at {plan.identity(fourier_reference(plan, fourier_ref))}"
    return options


def _cached_chunk(plan: Plan, memo: str | None, chunk: range, drift: bool,
                  progress: Progress, seed: int) -> ChunkLayouts | None:
    """The chunk's layouts as a film of the same keyframes left them in the cache, with the
    panels' tracks to go on from when they were kept (``seed``: the projection's), or
    ``None``."""
    found = cache.load_chunk(plan, memo, chunk, progress.warn) if memo is not None else None
    if found is None:
        return None
    L, n = len(plan.layers), plan.starts[-1]
    try:
        P, fixed, panels = found["P"], found["fixed"], json.loads(str(found["panels"]))
        sums = found["drift_sums"] if "drift_sums" in found else None
        ok = (P.shape == (len(chunk), n, 2) and fixed.shape == (L,) and len(panels) == L
              and (sums is not None and sums.shape[:2] == (L, len(chunk)) or not drift))
        tracks = project.tracks_of(found, P[-1], plan.starts, seed) if ok else None
    except (KeyError, ValueError, TypeError, IndexError):
        ok = False
    if not ok:
        return None
    return ChunkLayouts(chunk.start, P, panels, [bool(f) for f in fixed], sums if drift else None,
                        tracks)


def _resumable(plan: Plan, memo: str, chunk: range, drift: bool, seed: int,
               progress: Progress) -> Resumed | None:
    """``chunk``, to go on from the longest run of its first keyframes that a film of fewer
    checkpoints laid out (``layerfilm watch``: the one before this), or ``None``."""
    for stop in range(chunk.stop - 1, chunk.start, -1):
        done = _cached_chunk(plan, memo, range(chunk.start, stop), drift, progress, seed)
        if done is not None and done.tracks is not None:
            return Resumed(chunk, done)
    return None


def _keep_chunk(plan: Plan, memo: str, chunk: range, part: ChunkLayouts) -> str | None:
    extra = {"drift_sums": part.drift_sums} if part.drift_sums is not None else {}
    if part.tracks is not None:
        extra.update(project.track_arrays(part.tracks))
    return cache.keep(plan, lambda: cache.store_chunk(plan, memo, chunk, P=part.P, fixed=np.array(part.fixed),
                                                      panels=np.array(json.dumps(part.panels)), **extra))


def drift_chunk(plan: Plan, chunk: range, advance=None) -> tuple[np.ndarray, dict[str, dict]]:
    """A task: each layer's drift sums (see :class:`Keyframes`) over the keyframes in ``chunk``,
    reading only (for when the layouts came from the cache), and the digests of what it read
    (see ``Keyframes.read``)."""
    source = clouds.of(plan, digest=READ_DIGEST)
    meter = DriftMeter(chunk, _previous_clouds(source, chunk.start), needs_sketches(plan.steps))
    for frame in clouds.CloudStream(source, chunk):
        for l, cloud in enumerate(frame.clouds()):
            meter.measure(l, frame.index, cloud)
        if advance is not None:
            advance(1)
    return meter.sums, _read_in(source, chunk)


def drift_sums(plan: Plan, progress: Progress = QUIET,
               run: cluster.InProcess | cluster.Dask | None = None
               ) -> tuple[np.ndarray, dict[str, dict]]:
    """Each layer's drift sums over every keyframe (:func:`drift_chunk` in chunks, on ``run``),
    and the digests of what was read (see ``Keyframes.read``)."""
    runs = chunks(len(plan.refs))
    parts = (run or cluster.InProcess()).map(drift_chunk, runs, plan, stage="Measuring layers",
                                             progress=progress, weights=[len(c) for c in runs])
    return (np.concatenate([sums for sums, _ in parts], axis=1),
            {path: d for _, read in parts for path, d in read.items()})


def cache_key(projection: str, seed: int, fourier_ref: int | None) -> str:
    """The layout cache's name for the options that decide the layouts (``--projection``,
    ``--seed``, ``--fourier-ref``): made here only, and byte for byte as it always was, so
    existing caches stay valid."""
    return f"{projection}|{seed}" + (f"|fourier_ref={fourier_ref}" if fourier_ref is not None else "")


def load_cached(plan: Plan, projection: str = "pca", seed: int = 0,
                fourier_ref: int | None = None, progress: Progress = QUIET) -> Keyframes | None:
    """The keyframe layouts a render with these options cached, or ``None`` (nothing read or
    computed; a damaged entry is removed, with a warning)."""
    return (_load_cached(plan, cache_key(projection, seed, fourier_ref), progress)
            or keyframe_layouts(plan, projection, seed, progress, fourier_ref, use_cache=True,
                                only_cached=True))


def _load_cached(plan: Plan, key: str, progress: Progress) -> Keyframes | None:
    """A whole film's layouts (UMAP's; other projections' are cached in chunks)."""
    found = cache.load_layouts(plan, key, progress.warn)
    if found is None:
        return None
    P, nonfinite, info = found
    return Keyframes(P, nonfinite, tuple(json.loads(info)) if info else ())


def cached_keyframe_layouts(plan: Plan, projection: str = "pca", seed: int = 0,
                            progress: Progress = QUIET, use_cache: bool = True,
                            fourier_ref: int | None = None,
                            run: cluster.InProcess | cluster.Dask | None = None,
                            drift: bool = False) -> Keyframes:
    """:func:`keyframe_layouts`, memoised on disk (see :mod:`layerfilm.cache`): in chunks of
    keyframes, UMAP's (one chunk, warm-started) as a whole; ``drift`` is measured only when the
    layouts are computed (``drift_sums`` may be ``None`` from the cache).  Layouts are cached
    only when no checkpoint changed while they were read, and a cache that cannot be written
    is a warning, never a failed render."""
    key = cache_key(projection, seed, fourier_ref)
    keys = _load_cached(plan, key, progress) if use_cache and projection == "umap" else None
    if keys is None:
        keys = keyframe_layouts(plan, projection, seed, progress, fourier_ref, run, drift,
                                use_cache and projection != "umap")
        if use_cache and projection == "umap":
            why = cache.keep(plan, lambda: cache.store_layouts(
                plan, key, keys.P, keys.nonfinite, json.dumps(list(keys.panels))))
            if why is not None:
                progress.warn(f"{why}: the layouts are not cached")
    return keys


def layouts_and_drift(plan: Plan, projection: str, seed: int, progress: Progress = QUIET,
                      use_cache: bool = True, drift: bool = True, fourier_ref: int | None = None,
                      run=None) -> tuple[Keyframes, Drift | None]:
    """The keyframe layouts (:func:`cached_keyframe_layouts`, on ``run``) and, when ``drift``,
    each layer's :class:`~layerfilm.drift.Drift` -- measured in the same pass over the
    checkpoints when the layouts have to be computed, read from the cache when it was measured
    before.  The layouts' ``read`` holds the digests of what the pass that read the
    checkpoints read (empty when none did)."""
    found = None
    if drift and use_cache:
        cached = cache.load_arrays("drift", plan, progress.warn)
        if (cached is not None and cached["norm"].shape == (len(plan.layers), len(plan.refs))
                and "growth" in cached):
            growth = cached["growth"]
            found = Drift(plan.steps, [l.label for l in plan.layers],
                          np.array([l.n_points for l in plan.layers], dtype=np.int64),
                          cached["norm"], cached["rel_prev"], growth if growth.size else None)
    keys = cached_keyframe_layouts(plan, projection, seed, progress, use_cache, fourier_ref,
                                   run, drift=drift and found is None)
    if drift and found is None:
        sums = keys.drift_sums  # None from the cache; without sketches if an even film cached them
        alone = sums is None or needs_sketches(plan.steps) and unsketched(sums)
        if alone:  # then this is the pass that reads the checkpoints: its digests go with the layouts
            sums, read = drift_sums(plan, progress, run)
            keys = dataclasses.replace(keys, read=read)
        found = drift_of(sums, plan.steps, plan.layers)
        if use_cache:
            growth = found.growth if found.growth is not None else np.zeros(0)
            why = cache.keep(plan, lambda: cache.store_arrays("drift", plan, norm=found.norm,
                                                              rel_prev=found.rel_prev, growth=growth))
            if why is not None and alone:  # else the layouts' store just said why
                progress.warn(f"{why}: the layers' drift is not cached")
    return keys, found
