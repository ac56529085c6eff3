"""``layerfilm watch``: a film that grows with the run, never reading a checkpoint still being
written, always a complete film in place, and at the end the film a plain render makes."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import decode, gpt_state, write_run
from layerfilm.atomic import _locked
from layerfilm.checkpoints import discover
from layerfilm.checkpoints.unfinished import Stillness, why_unfinished

FILM = ["--size", "160x90", "--frames-per-keyframe", "2", "--fps", "4", "-q"]


def _lf(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "layerfilm", *map(str, args)], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _only(folder: Path, name: str):
    refs, _ = discover(folder, few=True)
    ref, = [r for r in refs if r.path.name == name or r.path.parent.name == name]
    return ref


# -- what a save in progress looks like --------------------------------------------------------

def test_a_safetensors_file_is_unfinished_until_its_last_byte(tmp_path):
    whole = (write_run(tmp_path / "src", n=1) / "step_000000.safetensors").read_bytes()
    folder = tmp_path / "run"
    folder.mkdir()
    target = folder / "step_000100.safetensors"
    n = int.from_bytes(whole[:8], "little")
    for cut in (0, 5, 8 + n // 2, 8 + n, 8 + n + 10, len(whole) - 1):
        target.write_bytes(whole[:cut])
        why = why_unfinished(_only(folder, target.name))
        assert why is not None and target.name in why, (cut, why)
    target.write_bytes(whole[:8 + n + 10])
    assert f"{8 + n + 10:,} of {len(whole):,} bytes written" in why_unfinished(_only(folder, target.name))
    target.write_bytes(whole)
    assert why_unfinished(_only(folder, target.name)) is None
    # A damaged file that is not being written (its header is not JSON) is for reading to report.
    target.write_bytes(whole[:8] + b"{" * n + whole[8 + n:])
    assert why_unfinished(_only(folder, target.name)) is None


def test_a_torch_archive_is_unfinished_until_its_end_record(tmp_path):
    torch = pytest.importorskip("torch")
    folder = tmp_path / "run"
    folder.mkdir()
    torch.save({"w": torch.zeros(8, 4)}, folder / "full.pt")
    whole = (folder / "full.pt").read_bytes()
    (folder / "full.pt").unlink()
    assert zipfile.is_zipfile(__import__("io").BytesIO(whole))
    target = folder / "step_100.pt"
    target.write_bytes(whole[:len(whole) - 30])
    assert "end is not written yet" in why_unfinished(_only(folder, target.name))
    target.write_bytes(whole)
    assert why_unfinished(_only(folder, target.name)) is None


def test_a_trainer_folder_waits_for_its_trainer_state(tmp_path):
    run = write_run(tmp_path / "run", n=2, name="checkpoint-{step}/model.safetensors")
    for k, step in enumerate((0, 100)):
        (run / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    shutil.copytree(run / "checkpoint-100", run / "checkpoint-200")
    (run / "checkpoint-200" / "trainer_state.json").unlink()
    assert why_unfinished(_only(run, "checkpoint-200"), states_expected=True) == \
        "trainer_state.json not written yet"
    assert why_unfinished(_only(run, "checkpoint-100"), states_expected=True) is None
    # The Trainer's staging folder is never a checkpoint, for watch or render.
    shutil.copytree(run / "checkpoint-100", run / "tmp-checkpoint-300")
    refs, skipped = discover(run)
    assert [r.step for r in refs] == [0, 100, 200]
    assert any("tmp-checkpoint-300" in str(p) and "save in progress" in why for p, why in skipped)


def test_a_file_that_changed_since_the_last_look_is_not_still(tmp_path):
    run = write_run(tmp_path / "run", n=2)
    ref = _only(run, "step_000100.safetensors")
    old = time.time() - 60
    os.utime(ref.path, (old, old))
    still = Stillness(settle=5)
    assert still.still(ref)
    os.utime(ref.path, (old + 1, old + 1))  # rewritten (same size), long ago by its clock
    assert not still.still(ref)
    assert still.still(ref)
    os.utime(ref.path, None)  # just now
    assert not Stillness(settle=5).still(ref)
    assert Stillness(settle=0).still(ref)


# -- the watch ---------------------------------------------------------------------------------

def _steps_in(manifest: dict) -> list[int]:
    return [f["step"] for f in manifest["checkpoints"]["files"]]


def _snapshot(out: Path) -> tuple[dict, bytes] | None:
    """The film and its manifest as one render left them (read under the lock that putting
    them in place holds)."""
    with _locked([out.parent]):
        if not out.exists():
            return None
        return json.loads(Path(f"{out}.json").read_text()), out.read_bytes()


def test_watch_follows_a_run_being_written(tmp_path):
    """A writer saves six checkpoints slowly, one of them in two halves with a pause between:
    every film in place at any moment decodes and shows exactly the checkpoints complete then;
    the last is byte for byte the film a plain render of the finished folder makes."""
    src = write_run(tmp_path / "src", n=6)
    run = tmp_path / "run"
    run.mkdir()
    out = tmp_path / "live.gif"
    names = sorted(p.name for p in src.glob("*.safetensors"))
    complete: dict[str, float] = {}  # name -> when its last byte was written

    def writer():
        for i, name in enumerate(names):
            data = (src / name).read_bytes()
            with open(run / name, "wb") as f:
                if i == 3:  # half, a pause longer than the watch's settle time, the rest
                    f.write(data[:len(data) // 2])
                    f.flush()
                    time.sleep(1.5)
                f.write(data[len(data) // 2 if i == 3 else 0:])
            complete[name] = time.monotonic()
            time.sleep(0.9)

    watch = _lf("watch", run, out, *FILM, "--interval", "0.1", "--settle", "0.3", "--idle-exit", "4")
    thread = threading.Thread(target=writer)
    thread.start()
    seen: dict[bytes, tuple[dict, float]] = {}
    while watch.poll() is None:
        got = _snapshot(out)
        if got is not None and got[1] not in seen:
            seen[got[1]] = (got[0], time.monotonic())
        time.sleep(0.05)
    thread.join()
    stdout, stderr = watch.communicate()
    assert watch.returncode == 0, stderr
    assert "waiting for" in stdout and "bytes written" in stdout, stdout
    assert len(seen) >= 3, stdout  # the film grew in steps, each one seen in place
    steps_seen = []
    for film, (doc, when) in seen.items():
        steps = _steps_in(doc)
        # A prefix of the run, and only checkpoints whose last byte was written before then.
        assert steps == [100 * k for k in range(len(steps))]
        for f in doc["checkpoints"]["files"]:
            assert complete[f["path"]] < when
            assert f["bytes"] == (src / f["path"]).stat().st_size
        path = tmp_path / "seen.gif"
        path.write_bytes(film)
        frames = decode(path)
        assert len(frames) == doc["film"]["frames"] == 2 * (len(steps) - 1) + 1
        steps_seen.append(steps[-1])
    assert max(steps_seen) == 500
    # The last film is the film of the finished folder, as a plain render makes it.
    plain = tmp_path / "plain.gif"
    done = subprocess.run([sys.executable, "-m", "layerfilm", "render", run, plain, *FILM],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert _sha(out) == _sha(plain)
    assert not [p for p in tmp_path.iterdir() if ".part" in p.name or p.name.startswith(".")]


def test_watch_once_renders_what_is_complete_and_only_when_it_changed(tmp_path):
    run = write_run(tmp_path / "run", n=3)
    whole = (run / "step_000200.safetensors").read_bytes()
    (run / "step_000200.safetensors").write_bytes(whole[:len(whole) - 100])
    out = tmp_path / "film.gif"
    once = ["watch", run, out, *FILM, "--once", "--settle", "0"]
    first = subprocess.run([sys.executable, "-m", "layerfilm", *map(str, once)], capture_output=True,
                           text=True)
    assert first.returncode == 0, first.stderr
    assert "step_000200.safetensors" in first.stdout and "bytes written" in first.stdout
    doc = json.loads(Path(f"{out}.json").read_text())
    assert _steps_in(doc) == [0, 100]
    assert doc["options"]["steps"] == ":100:"
    stamp = out.stat().st_mtime_ns
    again = subprocess.run([sys.executable, "-m", "layerfilm", *map(str, once)], capture_output=True,
                           text=True)
    assert "is up to date" in again.stdout and out.stat().st_mtime_ns == stamp
    (run / "step_000200.safetensors").write_bytes(whole)
    third = subprocess.run([sys.executable, "-m", "layerfilm", *map(str, once)], capture_output=True,
                           text=True)
    assert third.returncode == 0, third.stderr
    assert _steps_in(json.loads(Path(f"{out}.json").read_text())) == [0, 100, 200]
    assert len(decode(out)) == 5


def test_ctrl_c_leaves_the_last_complete_film(tmp_path):
    run = write_run(tmp_path / "run", n=2)
    out = tmp_path / "film.gif"
    watch = _lf("watch", run, out, *FILM, "--interval", "0.1", "--settle", "0")
    deadline = time.monotonic() + 60
    while not Path(f"{out}.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    first = _snapshot(out)
    rng = np.random.default_rng(5)
    from safetensors.numpy import save_file

    save_file({k: v.astype(np.float32) for k, v in gpt_state(rng).items()},
              str(run / "step_000200.safetensors"), metadata={"step": "200", "loss": "1"})
    time.sleep(0.3)  # the update under way, or done
    watch.send_signal(signal.SIGINT)
    stdout, stderr = watch.communicate(timeout=60)
    assert watch.returncode == 130, stderr
    assert "stopped: " in stdout and str(out) in stdout
    doc, film = _snapshot(out)
    assert _steps_in(doc) in ([0, 100], [0, 100, 200])
    assert _steps_in(first[0]) == [0, 100]
    path = tmp_path / "check.gif"
    path.write_bytes(film)
    assert len(decode(path)) == doc["film"]["frames"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["check.gif", "film.gif", "film.gif.json", "run"]


def test_ctrl_c_while_ffmpeg_is_started_still_stops_the_watch(tmp_path):
    # A SIGINT that lands while the process forks is raised inside Python's at-fork hooks,
    # which print it ("Exception ignored") and go on: the watcher once watched on for ever.
    # Here the signal is sent from such a hook, at the first fork after the first film.
    run = write_run(tmp_path / "run", n=2)
    script = tmp_path / "watcher.py"
    script.write_text(f"""
import os, signal, subprocess, sys
from pathlib import Path
from layerfilm.config import RenderConfig
from layerfilm.watch import watch

armed = []
os.register_at_fork(after_in_parent=lambda: armed and armed.pop() and os.kill(os.getpid(), signal.SIGINT))

def say(line):
    print(line, flush=True)
    if line.startswith("{tmp_path / 'film.gif'}:"):  # the first film is written
        armed.append(True)
        from layerfilm.encode.ffmpeg import dies_with_us

        subprocess.run(["true"], preexec_fn=dies_with_us())  # a fork, as ffmpeg is started

try:
    watch(RenderConfig(checkpoints=Path({str(run)!r}), output=Path({str(tmp_path / 'film.gif')!r}),
                       size=(160, 90), frames_per_keyframe=2), interval=0.05, settle=0, say=say)
except KeyboardInterrupt:
    sys.exit(130)
""")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert "Exception ignored" in done.stderr and "KeyboardInterrupt" in done.stderr, done.stderr
    assert done.returncode == 130, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1].startswith("stopped: "), done.stdout
    assert len(decode(tmp_path / "film.gif")) > 0


def test_watch_refuses_what_a_rewritten_film_cannot_keep(tmp_path):
    run = write_run(tmp_path / "run", n=2)
    for extra in (["--frames", tmp_path / "frames"], ["--stills", tmp_path / "stills"],
                  ["--idle-exit", "-1"]):
        done = subprocess.run([sys.executable, "-m", "layerfilm", "watch", str(run), str(tmp_path / "a.gif"),
                               *map(str, extra)], capture_output=True, text=True)
        assert done.returncode != 0
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("layerfilm: error: ") and str(extra[0]) in lines[0]
    assert not (tmp_path / "a.gif").exists()


def test_watch_waits_for_a_folder_that_is_not_there_yet(tmp_path):
    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "layerfilm", "watch", str(run), str(tmp_path / "a.gif"),
                           "--interval", "0.1", "--idle-exit", "0.5"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "waiting for checkpoints" in done.stdout and "done" in done.stdout
    assert not (tmp_path / "a.gif").exists()


# -- what an update costs ----------------------------------------------------------------------

def test_a_grown_film_goes_on_from_the_cached_layouts_and_is_the_same_film(tmp_path, monkeypatch):
    """A film grown by a checkpoint reads only the new checkpoint (and, for the change into
    it, the one before), lays out only it -- whole chunks from the cache, the last chunk going
    on from its tracked planes -- and is bit for bit the film rendered afresh.  Chunks of 4
    keyframes here (64 in films), so that growing crosses a chunk's end; panels 80 wide, so
    their planes are tracked."""
    import dataclasses

    from layerfilm import pca
    from layerfilm.checkpoints import CheckpointRef, SafetensorsFile
    from layerfilm.config import RenderConfig
    from layerfilm.pipeline import render

    monkeypatch.setattr(pca, "CHUNK", 4)
    src = write_run(tmp_path / "src", n=9, d=80)
    run = tmp_path / "run"
    run.mkdir()
    reads = []
    for name in ("prefetch", "read", "read_into"):
        original = getattr(SafetensorsFile, name)

        def recorded(self, *a, _original=original, **kw):
            reads.append(Path(str(self.path)).name)
            return _original(self, *a, **kw)

        monkeypatch.setattr(SafetensorsFile, name, recorded)
    assert CheckpointRef  # opened by name only: what matters is which files' data is read
    base = RenderConfig(checkpoints=run, output=tmp_path / "grown.gif", size=(160, 90),
                        frames_per_keyframe=2, fps=4)
    names = sorted(p.name for p in src.glob("*.safetensors"))
    for n in (6, 7, 9):
        for name in names[:n]:
            if not (run / name).exists():
                shutil.copy2(src / name, run / name)
        reads.clear()
        grown = render(base)
        assert any(p["method"] == "tracked pca" for p in grown.panels)
        if n == 7:  # from 6: the 7th read, and the 6th for the change into it; nothing else
            assert set(reads) == {names[5], names[6]}, sorted(set(reads))
        if n == 9:  # from 7: chunk [4, 8) goes on from [4, 7), chunk [8, 9) is new
            assert set(reads) == {names[6], names[7], names[8]}, sorted(set(reads))
        fresh = render(dataclasses.replace(base, output=tmp_path / "fresh.gif", cache=False))
        assert _sha(tmp_path / "grown.gif") == _sha(tmp_path / "fresh.gif"), n
        assert grown.panels == fresh.panels
        docs = [json.loads(Path(f"{tmp_path / name}.json").read_text()) for name in ("grown.gif", "fresh.gif")]
        assert docs[0]["drawing"] == docs[1]["drawing"]
        # The digests of what each file's drawn rows hold: from this pass for what it read, from
        # the earlier ones for the rest -- the same as a render that read them all.
        assert docs[0]["checkpoints"]["files"] == docs[1]["checkpoints"]["files"]
        assert all("read_xxh3" in f for f in docs[0]["checkpoints"]["files"])


def test_a_trainer_rotating_its_checkpoints_is_followed(tmp_path):
    """``save_total_limit``: the trainer deletes its oldest checkpoint as it saves a new one;
    the next film shows the checkpoints there are then (and says nothing of a damaged file)."""
    from layerfilm.config import RenderConfig
    from layerfilm.watch import watch

    src = write_run(tmp_path / "src", n=5)
    names = sorted(p.name for p in src.glob("*.safetensors"))
    run = tmp_path / "run"
    run.mkdir()
    for name in names[:3]:
        shutil.copy2(src / name, run / name)
    said, looks = [], []

    def sleep(seconds):
        looks.append(len(said))
        if len(looks) == 1:
            (run / names[0]).unlink()
            shutil.copy2(src / names[3], run / names[3])
        if len(looks) == 2:
            (run / names[1]).unlink()
            shutil.copy2(src / names[4], run / names[4])
        assert len(looks) < 10, said

    config = RenderConfig(checkpoints=run, output=tmp_path / "live.gif", size=(160, 90),
                          frames_per_keyframe=2, fps=4)
    updates = watch(config, interval=0, settle=0, idle_exit=3, say=said.append, sleep=sleep,
                    clock=lambda: float(len(looks)))
    assert [u.steps for u in updates] == [(0, 100, 200), (100, 200, 300), (200, 300, 400)], said
    assert all(u.error is None for u in updates) and not any("damaged" in s for s in said), said
    assert len(decode(tmp_path / "live.gif")) == 5
