"""Cluster row: a render on a real local Dask cluster (a scheduler and two single-thread
workers on 127.0.0.1) against the same render in one process, in the same run.

    python bench/cluster.py [--blocks 64 --keyframes 60]

Prints load+project and whole-render wall times and their ratios; asserts nothing.  On one
2-core machine the workers share the cores the in-process render would use, so this measures
the overhead of going through a cluster, not the speed-up more machines give.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench import make_series, run_layerfilm  # noqa: E402


def start_cluster(work: Path, workers: int = 2) -> tuple[str, list[subprocess.Popen]]:
    env = dict(os.environ, DASK_TEMPORARY_DIRECTORY=str(work / "tmp"))
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    sf = work / "scheduler.json"
    procs = [subprocess.Popen([sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1",
                               "--port", "0", "--dashboard-address", "127.0.0.1:0", "--no-dashboard",
                               "--scheduler-file", str(sf)], env=env, cwd=work,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)]
    deadline = time.monotonic() + 60
    while True:
        try:
            address = json.loads(sf.read_text())["address"]
            break
        except (OSError, ValueError, KeyError):
            if time.monotonic() > deadline:
                raise SystemExit("the scheduler did not start")
            time.sleep(0.05)
    for i in range(workers):
        procs.append(subprocess.Popen([sys.executable, "-m", "dask", "worker", address, "--host",
                                       "127.0.0.1", "--nthreads", "1", "--no-nanny", "--no-dashboard",
                                       "--dashboard-address", "127.0.0.1:0", "--memory-limit", "0",
                                       "--local-directory", str(work / f"w{i}")], env=env, cwd=work,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      start_new_session=True))
    from distributed import Client

    with Client(address, timeout="10s", set_as_default=False) as client:
        client.wait_for_workers(workers, timeout=60)
    return address, procs


def stop(procs: list[subprocess.Popen]) -> None:
    for p in reversed(procs):  # workers first, then the scheduler
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, default=64)
    ap.add_argument("--keyframes", type=int, default=130)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "layerfilm-bench")
    a = ap.parse_args()
    work = a.workdir
    work.mkdir(parents=True, exist_ok=True)
    ckpts = make_series(work / f"ckpts-{a.blocks}x{a.keyframes}", a.blocks, 128, a.keyframes)
    base = dict(ckpts=str(ckpts), fps=25, fpk=2, size=(1280, 720), max_points=2000, jobs=2)
    run_layerfilm(dict(base, out=str(work / "warm.gif")))  # numba's cache warm for every row
    cluster_dir = Path(tempfile.mkdtemp(prefix="layerfilm-dask-"))
    address, procs = start_cluster(cluster_dir)
    try:
        rows = {}
        for name, extra in (("in-process", {}), ("2 workers", {"scheduler": address})):
            rows[name] = run_layerfilm(dict(base, out=str(work / f"cluster-{len(rows)}.gif"), **extra))
    finally:
        stop(procs)
    here, there = rows["in-process"], rows["2 workers"]
    print(f"series: {a.blocks} blocks, {a.keyframes} keyframes; GIF 1280x720, --jobs 2")
    for name, r in rows.items():
        print(f"{name:<11} wall {r['process']:6.1f} s   load+project {r['seconds']['load+project']:6.1f} s")
    print(f"2 workers / in-process: whole render {there['process'] / here['process']:.2f}, "
          f"load+project {there['seconds']['load+project'] / here['seconds']['load+project']:.2f}")


if __name__ == "__main__":
    main()
