"""Real ``dask scheduler`` and ``dask worker`` processes on 127.0.0.1, started and stopped by
the tests (no LocalCluster, no mocks).

Every process has its own session, so stopping its group also stops what it spawned; workers
are stopped before the scheduler (stopping both at once can hang a worker's close); an idle
scheduler exits by itself after five minutes should a test runner die without stopping it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


class DaskProcs:
    def __init__(self, workdir: Path, n_workers: int = 2, worker_envs: list[dict] | None = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.n_workers = n_workers
        self.worker_envs = worker_envs or [{}] * n_workers
        self.procs: dict[str, subprocess.Popen] = {}
        self.address: str | None = None

    def env(self, extra: dict | None = None) -> dict:
        env = dict(os.environ)
        env.pop("DASK_SCHEDULER_ADDRESS", None)
        env["DASK_TEMPORARY_DIRECTORY"] = str(self.workdir / "tmp")  # not /tmp/dask-scratch-space
        # Workers import the task functions: layerfilm as the tests see it, and the tests' helpers.
        paths = [str(TESTS)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join(paths)
        env.update(extra or {})
        return env

    def _popen(self, name: str, argv: list[str], env: dict) -> subprocess.Popen:
        with open(self.workdir / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, start_new_session=True, cwd=self.workdir)
        self.procs[name] = proc
        return proc

    def start_scheduler(self, timeout: float = 30) -> str:
        path = self.workdir / "scheduler.json"
        path.unlink(missing_ok=True)
        proc = self._popen("scheduler", [
            sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port", "0",
            "--dashboard-address", "127.0.0.1:0", "--no-dashboard", "--scheduler-file", str(path),
            "--idle-timeout", "300s"], self.env())
        deadline = time.monotonic() + timeout
        while True:  # written non-atomically: poll until it parses
            try:
                self.address = json.loads(path.read_text())["address"]
                return self.address
            except (OSError, ValueError, KeyError):
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the scheduler did not start: " + self.log("scheduler")[-2000:])
            time.sleep(0.05)

    def start_worker(self, i: int, env: dict | None = None) -> subprocess.Popen:
        name = f"w{i}"
        return self._popen(name, [
            sys.executable, "-m", "dask", "worker", self.address, "--host", "127.0.0.1",
            "--nthreads", "1", "--nworkers", "1", "--name", name, "--no-dashboard",
            "--dashboard-address", "127.0.0.1:0", "--memory-limit", "0", "--no-nanny",
            "--local-directory", str(self.workdir / f"{name}-space"), "--death-timeout", "30"],
            self.env(env if env is not None else self.worker_envs[i]))

    def wait_for_workers(self, n: int, timeout: float = 60) -> None:
        from distributed import Client

        with Client(self.address, timeout="10s", set_as_default=False) as client:
            client.wait_for_workers(n, timeout=timeout)

    def start(self) -> "DaskProcs":
        self.start_scheduler()
        for i in range(self.n_workers):
            self.start_worker(i)
        return self

    def log(self, name: str) -> str:
        try:
            return (self.workdir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""

    def kill(self, name: str) -> None:
        """SIGKILL one process (a worker lost mid-run)."""
        try:
            os.killpg(self.procs[name].pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.procs[name].wait()

    def _stop(self, names: list[str], grace: float) -> None:
        for n in names:
            try:
                os.killpg(self.procs[n].pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        for n in names:
            try:
                self.procs[n].wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for n in names:  # a group may outlive its leader
            try:
                os.killpg(self.procs[n].pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.procs[n].wait()

    def stop(self, grace: float = 5.0) -> None:
        self._stop([n for n in self.procs if n != "scheduler"], grace)
        if "scheduler" in self.procs:
            self._stop(["scheduler"], grace)
        self.procs.clear()

    def __enter__(self) -> "DaskProcs":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def running_dask_processes() -> list[str]:
    """Command lines of dask processes this machine is running (to check none is left)."""
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if " -m dask " in line]


@pytest.fixture(scope="module")
def procs(tmp_path_factory):
    """A scheduler and two single-thread workers shared by a test module; afterwards, none of
    the processes they started may be left running."""
    with DaskProcs(tmp_path_factory.mktemp("dask")) as p:
        p.wait_for_workers(2)
        yield p
    assert not [line for line in running_dask_processes() if str(p.workdir) in line]
