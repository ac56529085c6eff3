"""Render on a real Dask cluster (a scheduler and two single-thread workers on 127.0.0.1): the
same film, bit for bit, as on one machine -- through a worker lost mid-run too; bad clusters
and Ctrl-C leave no output."""

import hashlib
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("distributed")

from layerfilm.cli import app  # noqa: E402

from conftest import SAMPLE, decode, write_run  # noqa: E402
import dask_procs  # noqa: E402
from dask_procs import DaskProcs  # noqa: E402

procs = dask_procs.procs  # the module's scheduler and two workers (a fixture)

runner = CliRunner()


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _render(*args):
    result = runner.invoke(app, ["render", *map(str, args), "-q", "--no-cache"])
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.parametrize("fmt, jobs", [("gif", "3"), ("webm", "2")])
def test_the_sample_on_a_cluster_is_the_one_machine_film(tmp_path, procs, fmt, jobs):
    here, there = tmp_path / f"here.{fmt}", tmp_path / f"there.{fmt}"
    options = ["--size", "320x180", "--frames-per-keyframe", "2", "--jobs", jobs, "--loss-strip",
               "--stills"]
    _render(SAMPLE, here, *options, tmp_path / "stills-here")
    _render(SAMPLE, there, *options, tmp_path / "stills-there", "--scheduler", procs.address)
    assert _sha(here) == _sha(there)
    assert np.array_equal(decode(here), decode(there))
    for name in ("first.png", "last.png", "contact_sheet.png"):
        assert _sha(tmp_path / "stills-here" / name) == _sha(tmp_path / "stills-there" / name)


def test_a_long_tracked_series_in_chunks_is_the_same_film(tmp_path, procs, fetched):
    """70 keyframes of 80-wide layers: two layout chunks (tracked planes restart exactly at
    keyframe 64) stitched here, whether the chunks ran here or on the workers.  The digests of
    the drawn bytes come back from the workers with the layouts: the manifest is the same, and
    this machine reads no drawn row for it."""
    run = write_run(tmp_path / "run", n=70, seed=5, d=80, blocks=2, vocab=100, every=10)
    here, there = tmp_path / "here.gif", tmp_path / "there.gif"
    _render(run, here, "--size", "256x144", "--fps", "2", "--jobs", "2")
    assert fetched  # here, the rows past the first 64 KiB of each file are fetched
    fetched.clear()
    _render(run, there, "--size", "256x144", "--fps", "2", "--jobs", "2", "--scheduler", procs.address)
    assert _sha(here) == _sha(there)
    assert fetched == []
    files = [json.loads(f.with_name(f.name + ".json").read_text())["checkpoints"]["files"]
             for f in (here, there)]
    assert files[0] == files[1] and all("read_xxh3" in e for e in files[0])


def test_dask_scheduler_address_variable_is_honoured(tmp_path, procs, monkeypatch):
    """Without --scheduler the render runs on the cluster the variable names: the scheduler's
    own task stream shows the layout and segment tasks, run by its workers (a render that
    ignored the variable would write the same film here and leave the stream empty)."""
    from distributed import Client

    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", procs.address)
    out = tmp_path / "f.gif"
    with Client(procs.address, timeout="10s", set_as_default=False) as client:
        workers = set(client.scheduler_info(n_workers=-1)["workers"])
        start = time.time()
        client.get_task_stream(start=start)  # the scheduler records tasks from now on
        _render(SAMPLE, out, "--size", "160x90", "--fps", "1", "--steps", "::1000")
        ran = client.get_task_stream(start=start)
    assert out.exists()
    prefixes = {str(t["key"]).split("-")[0] for t in ran}
    assert {"project_chunk", "render_segment"} <= prefixes, prefixes
    assert {t["worker"] for t in ran} <= workers


def test_a_worker_killed_mid_render_changes_nothing(tmp_path):
    from distributed import Client

    run = write_run(tmp_path / "run", n=70, seed=5, d=80, blocks=2, vocab=100, every=10)
    local = tmp_path / "local.gif"
    _render(run, local, "--size", "320x180", "--fps", "4", "--jobs", "4")
    with DaskProcs(tmp_path / "dask") as p:
        p.wait_for_workers(2)
        out = tmp_path / "there.gif"
        proc = subprocess.Popen([sys.executable, "-m", "layerfilm", "render", str(run), str(out), "-q",
                                 "--no-cache", "--size", "320x180", "--fps", "4", "--jobs", "4",
                                 "--scheduler", p.address], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        killed = None
        with Client(p.address, timeout="10s", set_as_default=False) as client:
            names = {addr: info["name"] for addr, info in client.scheduler_info(n_workers=-1)["workers"].items()}
            deadline = time.monotonic() + 60
            while killed is None and time.monotonic() < deadline and proc.poll() is None:
                busy = [a for a, tasks in client.processing().items() if tasks]
                if busy:
                    killed = names[busy[0]]
                    p.kill(killed)
                time.sleep(0.05)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()
        assert killed is not None  # a worker was lost while it had work
    assert _sha(out) == _sha(local)


def test_an_unreachable_scheduler_is_one_line_and_no_output(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "f.gif"
    result = runner.invoke(app, ["render", str(SAMPLE), str(out), "--scheduler", f"tcp://127.0.0.1:{port}"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and f"cannot reach the dask scheduler at tcp://127.0.0.1:{port}" in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_frames_folder_stays_on_one_machine(tmp_path, procs):
    result = runner.invoke(app, ["render", str(SAMPLE), str(tmp_path / "f.gif"), "--frames",
                                 str(tmp_path / "pngs"), "--scheduler", procs.address])
    assert result.exit_code == 2 and "--frames writes every frame as a PNG on this machine" in result.output


def test_ctrl_c_cancels_and_leaves_no_output(tmp_path, procs):
    run = write_run(tmp_path / "run", n=70, seed=5, d=80, blocks=2, vocab=100, every=10)
    out = tmp_path / "out" / "f.webm"
    out.parent.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "layerfilm", "render", str(run), str(out), "-q",
                             "--no-cache", "--size", "640x360", "--fps", "10", "--jobs", "4",
                             "--scheduler", procs.address],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(4)
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    assert err.decode().strip() == "layerfilm: error: interrupted; no output was written"
    time.sleep(1)
    assert list(out.parent.iterdir()) == []


def test_stats_on_a_cluster_are_the_one_machine_numbers(tmp_path, procs):
    """layerfilm stats --scheduler: the same CSV, byte for byte (70 keyframes: two chunks, the
    update cosine and the change from the first keyframe carried across their border)."""
    run = write_run(tmp_path / "run", n=70, seed=5, d=24, blocks=2, vocab=50, every=10)
    for where, extra in (("here", []), ("there", ["--scheduler", procs.address])):
        result = runner.invoke(app, ["stats", str(run), "--out", str(tmp_path / where), "-q", *extra])
        assert result.exit_code == 0, result.output
    assert _sha(tmp_path / "here" / "layer_stats.csv") == _sha(tmp_path / "there" / "layer_stats.csv")


def test_an_activation_film_with_prompts_on_a_cluster_is_the_one_machine_film(tmp_path, procs):
    """--points activations on the workers: each builds its own model from the plan (a plan
    sent to a worker carries no model) and runs the sample's probe; the film, its answers and
    its manifest's probe entry are this machine's, bit for bit."""
    pytest.importorskip("transformers")
    here, there = tmp_path / "here.gif", tmp_path / "there.gif"
    options = ["--size", "320x180", "--frames-per-keyframe", "2", "--steps", "::500", "--points",
               "activations", "--probe", SAMPLE / "probe.txt", "--probe-positions", "-1",
               "--prompt", "12 + 45 ="]
    _render(SAMPLE, here, *options)
    _render(SAMPLE, there, *options, "--scheduler", procs.address)
    assert _sha(here) == _sha(there)
    docs = [json.loads((tmp_path / f"{n}.gif.json").read_text()) for n in ("here", "there")]
    assert docs[0]["probe"] == docs[1]["probe"] and docs[0]["completions"] == docs[1]["completions"]
    assert docs[0]["completions"]["checkpoints"][-1]["completions"] == {"12 + 45 =": "57"}
