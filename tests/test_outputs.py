"""A render's outputs as one: the film and its manifest (and --stills/--frames folders) are
replaced together or not at all, every temporary name belongs to one process, and a render
killed outright leaves no ffmpeg running and no temporary that the next render keeps."""

import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

from typer.testing import CliRunner

from layerfilm.cli import app

from conftest import decode, write_run

runner = CliRunner()


def render_args(run, film, *extra):
    return ["render", str(run), str(film), "--fps", "2", "--size", "128x72", "-q", *map(str, extra)]


def render_here(run, film, *extra):
    result = runner.invoke(app, render_args(run, film, *extra))
    assert result.exit_code == 0, result.output
    return result


def render_process(run, film, *extra, **popen):
    """``layerfilm render`` as a real process of its own (stdout and stderr piped)."""
    return subprocess.Popen([sys.executable, "-m", "layerfilm", *render_args(run, film, *extra)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


def processes_mentioning(text: str) -> list[int]:
    """Running processes whose command line contains ``text`` (from /proc: psutil is not
    guaranteed; zombies have no command line)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if text.encode() in cmdline:
                found.append(int(entry.name))
    return found


def running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_until(condition, seconds: float) -> bool:
    """Poll ``condition`` until it holds or ``seconds`` have passed (a bound, not a timing)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def pair(film: Path) -> tuple[bytes, bytes]:
    return film.read_bytes(), film.with_name(film.name + ".json").read_bytes()


def assert_matches_manifest(film: Path) -> None:
    doc = json.loads(film.with_name(film.name + ".json").read_text())["film"]
    data = film.read_bytes()
    assert (len(data), hashlib.sha256(data).hexdigest()) == (doc["bytes"], doc["sha256"])
    assert decode(film).shape[0] == doc["frames"]


def test_a_manifest_that_cannot_be_written_leaves_the_older_film(tmp_path, run_dir):
    out = tmp_path / "out"
    out.mkdir()
    film = out / "f.webm"
    render_here(run_dir, film, "--cmap", "viridis")
    older = film.read_bytes()
    manifest = out / "f.webm.json"
    manifest.unlink()
    manifest.mkdir()  # the manifest cannot be written, only found out once the film is made
    result = runner.invoke(app, render_args(run_dir, film, "--cmap", "magma", "--stills",
                                            out / "shots"))
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"layerfilm: error: {manifest}: is a folder, so the file cannot be written there; "
        "nothing was replaced"]
    assert film.read_bytes() == older
    assert sorted(p.name for p in out.iterdir()) == ["f.webm", "f.webm.json"]  # no stills, no .part


def test_a_failed_encode_leaves_the_older_pair_and_names_the_film(tmp_path, run_dir):
    """A file-size limit (a full disk, for ffmpeg) stops the new film's chunks part way."""
    out = tmp_path / "out"
    out.mkdir()
    film = out / "f.webm"
    render_here(run_dir, film, "--size", "640x360")  # also caches the layouts for the next one
    older = pair(film)

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails, not kills
        resource.setrlimit(resource.RLIMIT_FSIZE, (len(older[0]) // 4, resource.RLIM_INFINITY))

    proc = render_process(run_dir, film, "--size", "640x360", "--cmap", "magma", "-j", "2",
                          preexec_fn=small_files)
    _, err = proc.communicate(timeout=300)
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, err
    assert lines[0].startswith(f"layerfilm: error: {film}: ffmpeg "), lines
    assert ".part" not in lines[0]
    assert pair(film) == older
    assert sorted(p.name for p in out.iterdir()) == ["f.webm", "f.webm.json"]


def test_a_checkpoint_deleted_mid_render_is_named_and_the_pair_matches(tmp_path):
    """A trainer's save_total_limit deletes a checkpoint while the film is being encoded (after
    every checkpoint was read): the render finishes from what it read, says so in one warning
    naming the file, and the film and manifest put in place together describe each other."""
    run = write_run(tmp_path / "run", n=6)
    out = tmp_path / "out"
    out.mkdir()
    film = out / "film.webm"
    render_here(run, film)
    older = pair(film)
    proc = render_process(run, film, "--fps", "100", "--size", "640x360")
    assert wait_until(lambda: list(out.glob(".film.webm.*.part")) or proc.poll() is not None, 120)
    gone = run / "step_000500.safetensors"
    gone.unlink()  # while the film is being encoded
    _, err = proc.communicate(timeout=300)
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 0 and len(lines) == 1, err
    assert lines[0].startswith(f"warning: {gone} changed or vanished after it was read"), lines
    assert pair(film) != older
    assert_matches_manifest(film)
    entry = next(f for f in json.loads(film.with_name("film.webm.json").read_text())["checkpoints"]["files"]
                 if f["path"] == gone.name)
    assert entry["changed_while_read"] is True and "sha256" not in entry
    assert sorted(p.name for p in out.iterdir()) == ["film.webm", "film.webm.json"]


def test_two_renders_at_once_to_one_film_leave_a_matching_pair(tmp_path, run_dir):
    out = tmp_path / "out"
    out.mkdir()
    film = out / "film.webm"
    for _ in range(3):
        procs = [render_process(run_dir, film, "--fps", "6", "-j", "2") for _ in range(2)]
        for proc in procs:
            _, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err
        assert_matches_manifest(film)
        assert sorted(p.name for p in out.iterdir()) == ["film.webm", "film.webm.json"]


def test_a_quote_in_the_path_with_jobs(tmp_path, run_dir):
    out = tmp_path / "it's"
    out.mkdir()
    film = out / "a'b.webm"
    result = render_here(run_dir, film, "-j", "2")
    assert "2 jobs" in result.output
    assert_matches_manifest(film)
    assert decode(film).shape[0] == 3 * 2 + 1


def test_a_child_started_by_layerfilm_dies_with_it():
    """A process killed by SIGKILL cannot stop its ffmpeg itself: the kernel must."""
    parent = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys\n"
         "from layerfilm.encode import dies_with_us\n"
         "child = subprocess.Popen(['sleep', '300'], preexec_fn=dies_with_us())\n"
         "print(child.pid, flush=True)\n"
         "sys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    assert running(child)
    parent.kill()
    parent.wait(timeout=30)
    assert wait_until(lambda: not running(child), 30)


def test_kill_9_leaves_no_ffmpeg_and_the_next_render_sweeps_its_temporaries(tmp_path):
    run = write_run(tmp_path / "run", n=6)
    out = tmp_path / "out"
    out.mkdir()
    film = out / "film.webm"
    proc = render_process(run, film, "--fps", "100", "--size", "640x360", "-j", "2",
                          "--stills", out / "shots", start_new_session=True)
    temporary = str(out / ".film.webm.")  # in ffmpeg's command lines, not in layerfilm's
    assert wait_until(lambda: processes_mentioning(temporary) or proc.poll() is not None, 120)
    assert proc.poll() is None, proc.communicate()
    proc.kill()  # SIGKILL, mid-encode
    proc.communicate(timeout=30)
    assert wait_until(lambda: not processes_mentioning(temporary), 30), processes_mentioning(temporary)
    left = sorted(p.name for p in out.iterdir())
    assert left and all(name.endswith(f".{proc.pid}.{name[-13:-5]}.part") for name in left), left
    live = out / f".film.webm.{os.getpid()}.abcd1234.part"  # a render running now (this process)
    live.write_bytes(b"")
    render_here(run, film, "--stills", out / "shots")
    assert sorted(p.name for p in out.iterdir()) == [live.name, "film.webm", "film.webm.json",
                                                    "shots"]
