"""The cluster runner against real ``dask scheduler`` / ``dask worker`` processes on
127.0.0.1: results in order, faults survived, every bad situation one line."""

import os
import socket
import threading
import time

import numpy as np
import pytest

pytest.importorskip("distributed")

from layerfilm import __version__, cluster  # noqa: E402
from layerfilm.errors import CheckpointError  # noqa: E402

from cluster_tasks import fails, scaled, slow_marked  # noqa: E402
import dask_procs  # noqa: E402
from dask_procs import DaskProcs  # noqa: E402

procs = dask_procs.procs  # the module's scheduler and two workers (a fixture)


def test_map_returns_results_in_order_with_progress(procs):
    class Count:
        def __init__(self):
            self.n = 0

        def stage(self, name, total):
            import contextlib

            @contextlib.contextmanager
            def cm():
                yield lambda n=1: setattr(self, "n", self.n + n)
            return cm()

        def warn(self, message):
            pass

    counted = Count()
    with cluster.runner(procs.address) as run:
        assert run.workers == 2
        assert run.map(scaled, list(range(20)), 3, stage="x", progress=counted) == [3 * i for i in range(20)]
    assert counted.n == 20
    assert cluster.InProcess().map(scaled, list(range(5)), 2) == [0, 2, 4, 6, 8]


def test_a_task_error_is_the_tasks_own_one_line_error(procs):
    with cluster.runner(procs.address) as run, pytest.raises(CheckpointError) as e:
        run.map(fails, list(range(6)), None)
    assert str(e.value) == "ckpts/step_3.safetensors: truncated: nothing to read"


def test_a_worker_killed_mid_run_loses_nothing(tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    with DaskProcs(tmp_path / "dask") as p:
        p.wait_for_workers(2)
        pids = {p.procs[n].pid: n for n in ("w0", "w1")}

        def kill_when_running():
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                for f in marks.glob("*.pid"):
                    pid = int(f.read_text() or 0)
                    if pid in pids:
                        p.kill(pids[pid])
                        return
                time.sleep(0.02)

        killer = threading.Thread(target=kill_when_running)
        killer.start()
        with cluster.runner(p.address) as run:
            assert run.map(slow_marked, list(range(8)), str(marks)) == [i * i for i in range(8)]
        killer.join()
        assert sum(proc.poll() is not None for name, proc in p.procs.items() if name != "scheduler") == 1


def test_unreachable_and_silent_schedulers_are_one_line_and_quick(monkeypatch):
    monkeypatch.setattr(cluster, "CONNECT_S", 2.0)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    silent = socket.socket()  # a port that accepts but never speaks dask
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    try:
        for address in (f"tcp://127.0.0.1:{closed}", f"tcp://127.0.0.1:{silent.getsockname()[1]}"):
            t = time.monotonic()
            with pytest.raises(cluster.ClusterError) as e:
                cluster.Dask(address, timeout=2.0)
            assert time.monotonic() - t < 10
            assert address in str(e.value) and "\n" not in str(e.value)
    finally:
        silent.close()


@pytest.mark.parametrize("stub, message", [
    ("__version__ = '0.0.0-other'\n", "has layerfilm 0.0.0-other"),
    ("raise ModuleNotFoundError(\"No module named 'layerfilm'\")\n", "cannot import layerfilm"),
])
def test_workers_without_this_layerfilm_are_named(tmp_path, stub, message):
    package = tmp_path / "stub" / "layerfilm"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(stub)
    path = os.pathsep.join([str(tmp_path / "stub"), os.environ.get("PYTHONPATH", "")])
    with DaskProcs(tmp_path / "dask", n_workers=1, worker_envs=[{"PYTHONPATH": path}]) as p:
        p.wait_for_workers(1)
        with pytest.raises(cluster.ClusterError) as e:
            cluster.Dask(p.address)
    assert message in str(e.value) and f"needs layerfilm {__version__}" in str(e.value)


def test_dask_scheduler_address_is_dasks_own_variable(monkeypatch):
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    assert cluster.scheduler_address(None) is None
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", "tcp://127.0.0.1:8786")
    assert cluster.scheduler_address(None) == "tcp://127.0.0.1:8786"
    assert cluster.scheduler_address("tcp://127.0.0.1:9") == "tcp://127.0.0.1:9"


def _rounds_driven(rounds, n_rounds: int, threads: int, work) -> list:
    """Every round submitted at once to ``threads`` one-thread pools (as the layout pass does,
    less its reading), so a thread free early runs ahead into the next round."""
    import concurrent.futures
    import functools

    pools = [concurrent.futures.ThreadPoolExecutor(1) for _ in range(threads)]
    try:
        futures = []
        for k in range(n_rounds):
            items = rounds.round()
            futures += [pool.submit(rounds.run, k, items, functools.partial(work, k)) for pool in pools]
        return [f.exception(timeout=30) for f in futures]
    finally:
        for pool in pools:
            pool.shutdown(cancel_futures=True)


def test_rounds_share_items_and_keep_each_items_rounds_in_order():
    # Items of uneven cost, the last of each round the slowest: threads take whichever is
    # next, and one that runs ahead into the next round reaches the last item while another
    # is still on it in the round before -- and waits, never working on it out of order.
    rng = np.random.default_rng(3)
    cost = rng.uniform(0, 0.001, size=(8, 7))
    cost[:, -1] = 0.01
    spans, by, lock = {i: [] for i in range(7)}, set(), threading.Lock()

    def work(k: int, i: int) -> None:
        began = time.perf_counter()
        time.sleep(cost[k, i])
        with lock:
            spans[i].append((k, began, time.perf_counter()))
            by.add(threading.get_ident())

    assert _rounds_driven(cluster.Rounds(7), 8, 3, work) == [None] * 24
    for i, done in spans.items():  # each item's rounds one after the other, in order
        assert [k for k, _, _ in done] == list(range(8)), i
        assert all(a[2] <= b[1] for a, b in zip(done, done[1:])), i
    assert len(by) == 3


def test_rounds_stop_every_thread_after_a_failure():
    done, lock = [], threading.Lock()

    def work(k: int, i: int) -> None:
        if (k, i) == (2, 3):
            raise CheckpointError("bad tensor", "ckpt-2")
        time.sleep(0.001)
        with lock:
            done.append((k, i))

    errors = _rounds_driven(cluster.Rounds(6), 10, 2, work)
    assert [type(e) for e in errors if e is not None] == [CheckpointError]
    assert max(k for k, _ in done) <= 3  # the others stopped at their next item


def test_rounds_wait_until_items_are_taken():
    # What the layout pass waits for before it fetches the next keyframe: half of this one's
    # layers taken (and so read); a failure ends the wait too.
    import concurrent.futures

    rounds, gate = cluster.Rounds(6), threading.Event()

    def work(i: int) -> None:
        if i >= 2:
            gate.wait(10)

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        items = rounds.round()
        futures = [pool.submit(rounds.run, 0, items, work) for _ in range(2)]
        rounds.wait_taken(items, 4)  # 0 and 1 done at once, then 2 and 3 taken, held at the gate
        assert items.taken == 4
        gate.set()
        assert [f.result(10) for f in futures] == [None, None] and items.taken == 6

    rounds = cluster.Rounds(4)

    def fails(i: int) -> None:
        raise CheckpointError("bad tensor", "ckpt-0")

    items = rounds.round()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(rounds.run, 0, items, fails)
        rounds.wait_taken(items, 4)  # returns: the round failed after one item
        assert items.taken == 1 and isinstance(future.exception(10), CheckpointError)
