"""Where the film's work runs: in this process, or on a Dask cluster (``--scheduler ADDRESS``,
else ``$DASK_SCHEDULER_ADDRESS``).

Both runners offer one call, :meth:`map`: apply a module-level function to items, with small
shared arguments, and return the results in order while a progress bar advances as each
finishes.  The same functions run either way, so the film is the same bits either way.  On a
cluster, tasks take small arguments (checkpoint references, a plan, a chunk of keyframes or
frames) and return small results (2-D layouts, encoded film segments): no checkpoint bytes
pass through the client.  ``dask[distributed]`` is imported only when a scheduler is given.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import Any, Callable, Iterator, Sequence

from . import __version__
from .errors import LayerfilmError, first_line
from .progress import QUIET, Progress

_LOGGERS = ("distributed", "distributed.client", "distributed.gc", "distributed.worker",
            "distributed.scheduler", "distributed.core", "distributed.comm", "tornado",
            "tornado.application", "bokeh")
CONNECT_S = 10.0  # the scheduler must answer within this
NO_WORKERS_S = 30.0  # a cluster without workers for this long gives up


def threads() -> int:
    """Threads for work in this process: this machine's cores (those this process may use), at
    most 4 (the work split this way is small)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cpus, 4))


class ClusterError(LayerfilmError):
    """The cluster cannot do the work: unreachable, no workers, the wrong layerfilm on them."""


def scheduler_address(given: str | None) -> str | None:
    """``--scheduler`` if given, else dask's own ``$DASK_SCHEDULER_ADDRESS``, else ``None``
    (run here).  Never a local cluster started behind the user's back."""
    return given or os.environ.get("DASK_SCHEDULER_ADDRESS") or None


class Rounds:
    """Items worked on round after round by several threads (a film's layers, keyframe after
    keyframe), each item's rounds in order (its state passes from one to the next).

    In each round every thread takes the next item not yet taken (:meth:`run`, all of them on
    the one iterator :meth:`round` gives), so the threads end a round within an item of each
    other, where a fixed share each left one waiting while another ended its share.  An item
    is taken only once its previous round is done; a failure stops every thread at its next
    item (and is raised by the thread it happened in)."""

    def __init__(self, items: int, first: int = 0):
        self._order = threading.Condition()
        self._done = [first - 1] * items  # each item's last round done
        self._failed = False

    def round(self) -> "_Round":
        """A round's items, to be shared by the threads that work on it."""
        return _Round(len(self._done))

    def wait_taken(self, items: "_Round", count: int) -> None:
        """Wait until ``count`` of a round's items are taken (or a thread failed)."""
        with self._order:
            self._order.wait_for(lambda: items.taken >= count or self._failed)

    def run(self, k: int, items: "_Round", work: Callable[[int], None]) -> None:
        """``work(item)`` for each item of round ``k`` that this thread takes from ``items``."""
        while True:
            with self._order:
                i = next(items, None)
                self._order.notify_all()  # for wait_taken
                self._order.wait_for(lambda: i is None or self._failed or self._done[i] >= k - 1)
            if i is None or self._failed:
                return
            try:
                work(i)
            except BaseException:
                self._failed = True
                raise
            finally:
                with self._order:
                    self._done[i] = k
                    self._order.notify_all()


class _Round:
    """One round's items, handed out in order (under :class:`Rounds`' lock), counting how
    many are taken."""

    def __init__(self, items: int):
        self.items, self.taken = items, 0

    def __iter__(self) -> "_Round":
        return self

    def __next__(self) -> int:
        if self.taken >= self.items:
            raise StopIteration
        self.taken += 1
        return self.taken - 1


class InProcess:
    """Runs every task here, one after the other, in order."""

    workers = 1

    def map(self, fn: Callable, items: Sequence, *shared: Any, stage: str = "",
            progress: Progress = QUIET, weights: Sequence[int] | None = None) -> list:
        """``[fn(*shared, item, advance=...) for item in items]``: each task advances the
        progress bar itself (by its weight in all)."""
        out = []
        with progress.stage(stage, sum(weights) if weights else len(items)) as advance:
            for i, item in enumerate(items):
                out.append(fn(*shared, item, advance=advance if weights else None))
                if not weights:
                    advance(1)
        return out

    def close(self) -> None:
        pass


class Dask:
    """Runs tasks on the Dask cluster at ``address`` (see the module docstring).

    Connecting is bounded in time (a port that accepts but never answers hangs dask's own
    connect forever); every worker must import this very layerfilm (a worker without it would
    drop its tasks silently); a cluster left without workers gives up after
    :data:`NO_WORKERS_S`.  A task that fails stops the others; Ctrl-C cancels them.
    """

    def __init__(self, address: str, timeout: float = CONNECT_S):
        try:
            import distributed  # noqa: F401
        except ImportError:
            raise ClusterError("--scheduler needs dask.distributed: pip install 'layerfilm[dask]'") from None
        import logging

        for name in _LOGGERS:  # distributed gives each its own stderr handler
            logging.getLogger(name).setLevel(logging.CRITICAL)
        self.address = address
        self.client = _connect(address, timeout)
        try:
            self.workers = self._check_workers()
        except BaseException:
            self.close()
            raise

    def _check_workers(self) -> int:
        deadline = time.monotonic() + CONNECT_S
        while not (found := self.client.scheduler_info(n_workers=-1)["workers"]):
            if time.monotonic() > deadline:
                raise ClusterError(f"the dask scheduler at {self.address} has no workers")
            time.sleep(0.2)
        # eval is pickled by reference to builtins, so every worker can run it: it reports the
        # layerfilm that worker really imports.
        versions = self.client.run(eval, "__import__('layerfilm').__version__", on_error="return")
        wrong = {w: v for w, v in versions.items() if v != __version__}
        if wrong:
            worker, got = sorted(wrong.items())[0]
            what = ("cannot import layerfilm" if isinstance(got, BaseException)
                    else f"has layerfilm {got}")
            raise ClusterError(f"dask worker {worker} {what}; every worker (and the scheduler) needs "
                               f"layerfilm {__version__}")
        return len(found)

    def map(self, fn: Callable, items: Sequence, *shared: Any, stage: str = "",
            progress: Progress = QUIET, weights: Sequence[int] | None = None) -> list:
        """``[fn(*shared, item) for item in items]`` on the cluster, in order; the progress bar
        advances (by each task's weight) as tasks finish."""
        from distributed import wait

        client = self.client
        scattered = client.scatter(list(shared), broadcast=True, hash=False) if shared else []
        futures = client.map(fn, *([s] * len(items) for s in scattered), list(items), pure=False)
        index = {f.key: i for i, f in enumerate(futures)}
        results: list = [None] * len(items)
        pending, alone_since = set(futures), None
        try:
            with progress.stage(stage, sum(weights) if weights else len(items)) as advance:
                while pending:
                    try:
                        with client.as_current():
                            done, pending = wait(pending, timeout=1.0, return_when="FIRST_COMPLETED")
                    except TimeoutError:
                        done = set()
                    for f in done:
                        i = index[f.key]
                        results[i] = f.result()  # a task's own error is raised here
                        f.release()
                        advance(weights[i] if weights else 1)
                    if not done:
                        alone_since = self._watch(alone_since, len(pending))
        except BaseException as e:
            client.cancel(list(pending))
            if isinstance(e, (LayerfilmError, KeyboardInterrupt)):
                raise
            if type(e).__module__.startswith(("distributed", "concurrent")):
                raise ClusterError(f"the dask cluster at {self.address} failed: {type(e).__name__}: "
                                   f"{first_line(e)}") from None
            raise
        finally:
            for s in scattered:
                s.release()
        return results

    def _watch(self, alone_since: float | None, left: int) -> float | None:
        """A cluster whose workers are all gone would wait forever: give up after a while."""
        if self.client.scheduler_info(n_workers=-1)["workers"]:
            return None
        now = time.monotonic()
        if alone_since is not None and now - alone_since > NO_WORKERS_S:
            raise ClusterError(f"the dask cluster at {self.address} has had no workers for "
                               f"{NO_WORKERS_S:.0f} s; {left} task(s) were left")
        return alone_since if alone_since is not None else now

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close(timeout=5)


def _connect(address: str, timeout: float):
    """A ``distributed.Client`` for ``address``, or a one-line :class:`ClusterError` within
    ``timeout`` seconds whatever is (or is not) listening there."""
    from distributed import Client

    box: dict = {}

    def target() -> None:
        try:
            box["client"] = Client(address, timeout=f"{timeout}s", set_as_default=False)
        except BaseException as e:  # noqa: BLE001 -- reported below, in the caller's thread
            box["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout + 2.0)
    if thread.is_alive():
        raise ClusterError(f"no dask scheduler answered at {address} within {timeout:.0f} s")
    if "error" in box:
        raise ClusterError(f"cannot reach the dask scheduler at {address}: {first_line(box['error'])}")
    return box["client"]


@contextlib.contextmanager
def runner(address: str | None) -> Iterator[InProcess | Dask]:
    """The runner for ``address`` (``None``: this process), closed afterwards."""
    run = InProcess() if address is None else Dask(address)
    try:
        yield run
    finally:
        run.close()
