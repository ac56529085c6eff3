"""``layerfilm watch``: a film that grows with the run.

Each look at the checkpoints finds the ones that are *complete* (their format shows every
byte written, and their files have held still: :mod:`layerfilm.checkpoints.unfinished`), in
step order up to the first one still being written; when that set differs from the one the
film shows, the film is rendered again from exactly those checkpoints, through the ordinary
render (:func:`layerfilm.pipeline.render`: the film and its manifest replaced together, so
``OUT`` is at every moment a complete film).  What an update costs beyond the new checkpoint's
own reading and projection is the drawing and encoding of the film: the layouts of the
checkpoints it already showed come from the layout cache.

A checkpoint still being written is never read: the film is cut at the step before it, with
``--steps``' STOP (what the manifest records), and the checkpoint is waited for.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import threading
import time
from pathlib import Path, PurePath
from typing import Callable

from . import checkpoints
from .checkpoints import CheckpointRef
from .checkpoints.unfinished import Stillness, why_unfinished
from .config import RenderConfig, parse_steps
from .errors import CheckpointError, ConfigError, LayerfilmError
from .progress import QUIET, Progress

LOCAL_INTERVAL = 2.0  # seconds between looks at a local folder
REMOTE_INTERVAL = 60.0  # ... at a Hub repository or a bucket (each look lists it)
SETTLE = 2.0  # a file is read once it has not changed for this long


@dataclasses.dataclass(frozen=True)
class Look:
    """What one look found: ``ready``, the checkpoints a film may show now (in step order, up to
    the first unfinished one); ``waiting``, ``(where, why)`` of those still being written."""

    ready: tuple[CheckpointRef, ...]
    waiting: tuple[tuple[str, str], ...]
    key: tuple  # what the ready ones are (paths and file identities): a new film when it changes

    @property
    def steps(self) -> tuple[int, ...]:
        return tuple(r.step for r in self.ready)


def look(config: RenderConfig, stillness: Stillness, finished: set | None = None) -> Look:
    """The checkpoints under ``config.checkpoints`` that are complete now, and those that are
    not (see the module docstring); ``config``'s ``--run`` and ``--steps`` apply.
    ``finished``: what earlier looks found complete (path and identity), not looked into again
    (a header read is a request, for a checkpoint on the Hub or in a bucket)."""
    finished = set() if finished is None else finished
    source = checkpoints.open_source(config.checkpoints, config.storage_options, config.revisions,
                                     config.keep_downloads)
    refs, _ = checkpoints.discover(source.root, True, source.storage, config.run, few=True)
    if config.step_range is not None:
        start, stop, every = config.step_range
        refs = checkpoints.select_steps(refs, start, stop, every)
    states = any(r.kind.startswith("Hugging Face Trainer") for r in refs)
    ready: list[tuple[CheckpointRef, str]] = []
    waiting: list[tuple[str, str]] = []
    for ref in refs:
        try:
            known = (str(ref.path), ref.identity())
        except CheckpointError as e:  # gone since it was listed (a trainer's rotation)
            waiting.append((ref.storage.display(ref.path), e.problem))
            continue
        why = None if known in finished else why_unfinished(ref, states)
        if why is None and not stillness.still(ref):
            why = "still changing"
        if why is None:
            finished.add(known)
        else:
            waiting.append((ref.storage.display(ref.path), why))
        if why is None and not waiting:
            ready.append((ref, known[1]))
    key = tuple((str(r.path), r.step, ident) for r, ident in ready)
    return Look(tuple(r for r, _ in ready), tuple(waiting), key)


def shown_by_output(config: RenderConfig, found: Look) -> bool:
    """Whether ``config.output`` is already the film of ``found.ready`` with these options (its
    manifest lists exactly their files, at the size and time they have now, and the options),
    so that a watch started again (``--once`` after every save) does not make it again."""
    from . import manifest

    if not isinstance(config.checkpoints, PurePath) or not config.output.is_file():
        return False
    try:
        doc = manifest.load(manifest.manifest_path(config.output))
        recorded = [(f["path"], f["step"], f["bytes"], f["mtime_ns"]) for f in doc["checkpoints"]["files"]]
        same_film = doc["film"]["bytes"] == config.output.stat().st_size
        options = doc["options"]
    except (LayerfilmError, OSError, KeyError, TypeError):
        return False
    root = config.checkpoints
    now = []
    for ref in found.ready:
        for path, ident in ref.file_identities():
            size, mtime_ns = checkpoints.LocalStorage.size_and_time(ident)
            now.append((Path(os.path.relpath(path, root)).as_posix(), ref.step, size, mtime_ns))
    want = json.loads(json.dumps(manifest.recorded_options(cut(config, found.ready)), default=str))
    return same_film and recorded == now and options == want


def cut(config: RenderConfig, ready: tuple[CheckpointRef, ...]) -> RenderConfig:
    """``config`` drawing exactly the ``ready`` checkpoints: ``--steps`` stopped at the last of
    them (unchanged when the run has nothing after it)."""
    start, stop, every = parse_steps(config.steps) if config.steps is not None else (None, None, None)
    last = ready[-1].step
    if stop is not None and stop <= last:
        return config
    text = ":".join("" if v is None else str(v) for v in (start, last, every))
    return dataclasses.replace(config, steps=text)


@dataclasses.dataclass
class Update:
    """One film written (or not) by :func:`watch`."""

    steps: tuple[int, ...]
    seconds: float
    error: str | None = None  # the one line a failed render gave (the film is the one before)


class _Watcher:
    """What a watch remembers from look to look, and what it does with each look."""

    def __init__(self, config: RenderConfig, progress: Progress, say: Callable[[str], None],
                 clock: Callable[[], float]):
        self.config, self.progress, self.say, self.clock = config, progress, say, clock
        self.shown: tuple | None = None  # the key of the checkpoints the film shows (or failed to)
        self.told: tuple = ()  # the waiting ones last said
        self.said_few = False
        self.updates: list[Update] = []
        self.last_new = clock()  # when the set of complete checkpoints last changed

    def saw(self, found: Look) -> None:
        config, say = self.config, self.say
        if found.waiting and found.waiting != self.told:
            where, why = found.waiting[0]
            more = f" (and {len(found.waiting) - 1} more)" if len(found.waiting) > 1 else ""
            say(f"waiting for {where}{more}: {why}")
        self.told = found.waiting
        if len(found.ready) < 2:
            if self.shown is None and not self.said_few:
                say(f"waiting for checkpoints in {config.checkpoints} (a film needs two complete ones)")
                self.said_few = True
            return
        if self.shown is None and shown_by_output(config, found):
            self.shown = found.key
            say(f"{config.output} is up to date: {len(found.ready)} checkpoints, steps "
                f"{found.steps[0]:,}..{found.steps[-1]:,}")
        if found.key != self.shown:
            self.shown, self.last_new = found.key, self.clock()
            self.updates.append(_update(config, found, self.progress, say, self.clock))

    def stopped(self) -> None:
        good = [u for u in self.updates if u.error is None]
        self.say(f"stopped: {self.config.output} is the film of steps {good[-1].steps[0]:,}.."
                 f"{good[-1].steps[-1]:,}" if good else "stopped: no film was written")


def watch(config: RenderConfig, *, interval: float | None = None, settle: float = SETTLE,
          idle_exit: float | None = None, once: bool = False, progress: Progress = QUIET,
          say: Callable[[str], None] = print, clock: Callable[[], float] = time.monotonic,
          sleep: Callable[[float], None] = time.sleep) -> list[Update]:
    """Bring ``config.output`` up to date with the complete checkpoints, then (unless ``once``)
    again at every look that finds the set changed, until ``idle_exit`` seconds pass without a
    new complete checkpoint (forever when ``None``; Ctrl-C ends it and leaves the last film).
    Returns what each update did.  Options that make no sense for a film that is rewritten
    (``--frames``, ``--from-manifest``) were refused by the caller.  A look that fails (the
    network) is said and tried again, except the first: a wrong folder or URL is an error."""
    config = config.validated()
    remote = not isinstance(config.checkpoints, PurePath)
    interval = interval if interval is not None else (REMOTE_INTERVAL if remote else LOCAL_INTERVAL)
    stillness, finished = Stillness(settle), set()
    w = _Watcher(config, progress, say, clock)
    with _remembered_interrupts() as interrupted:
        try:
            _loop(w, stillness, finished, interval, idle_exit, once, interrupted, sleep)
        except KeyboardInterrupt:
            w.stopped()
            raise
    return w.updates


def _loop(w: _Watcher, stillness: Stillness, finished: set, interval: float, idle_exit: float | None,
          once: bool, interrupted: Callable[[], bool], sleep: Callable[[float], None]) -> None:
    looked = False
    while True:
        try:
            found = look(w.config, stillness, finished)
        except ConfigError:
            raise
        except LayerfilmError as e:
            if not looked:
                raise
            w.say(f"cannot look at the checkpoints now ({e}); trying again")
        else:
            w.saw(found)
        looked = True
        if once:
            return
        if idle_exit is not None and w.clock() - w.last_new >= idle_exit:
            w.say(f"no new checkpoint for {idle_exit:g} s: done")
            return
        if interrupted():
            raise KeyboardInterrupt
        sleep(interval)


@contextlib.contextmanager
def _remembered_interrupts():
    """Ctrl-C and SIGTERM raise ``KeyboardInterrupt`` as ever, and are remembered too (yields
    ``interrupted()``): one that lands while the process forks (ffmpeg being started) is raised
    inside Python's at-fork hooks (logging's), which print it as "Exception ignored" and go on,
    and the watcher would then watch for ever.  Off the main thread signals cannot be caught:
    nothing changes there."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    hit: list[int] = []

    def remember(signum, frame):
        hit.append(signum)
        raise KeyboardInterrupt

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in before:
        signal.signal(s, remember)
    try:
        yield lambda: bool(hit)
    finally:
        for s, handler in before.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)


def _update(config: RenderConfig, found: Look, progress: Progress, say, clock) -> Update:
    """Render the film of ``found.ready``; a render that fails on the checkpoints (one damaged,
    one gone) leaves the film before it in place and is said, not raised."""
    from .pipeline import render

    t = clock()
    try:
        render(cut(config, found.ready), progress)
    except ConfigError:
        raise
    except LayerfilmError as e:
        say(f"not updated: {e}; waiting for the checkpoints to change")
        return Update(found.steps, clock() - t, str(e))
    say(f"{config.output}: {len(found.ready)} checkpoints, steps {found.steps[0]:,}.."
        f"{found.steps[-1]:,} ({clock() - t:.1f} s)")
    return Update(found.steps, clock() - t)
