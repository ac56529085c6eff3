"""The layout cache never draws stale data and never breaks a render: entries are keyed by the
checkpoints' identities taken before they were read, carry a checksum of their own bytes, and
a cache that cannot be written (a full disk) is a warning that leaves nothing behind."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from layerfilm import cache

from conftest import write_run

FILM = ["--size", "128x72", "--fps", "2", "-q"]


def layerfilm(*args) -> subprocess.CompletedProcess:
    """``layerfilm ARGS`` in its own process (with this test's cache folder)."""
    return subprocess.run([sys.executable, "-m", "layerfilm", *map(str, args)], capture_output=True,
                          text=True)


def render_ok(run, out, *extra) -> str:
    """Render in a process; the film must be written with no traceback; returns its stderr."""
    done = layerfilm("render", run, out, *FILM, *extra)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    return done.stderr


def warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("warning:")]


class RewriteAfterFirstKeyframe:
    """A progress reporter that, once the first keyframe has been read and projected, rewrites
    a checkpoint with other weights of the same shapes (a trainer saving over it), and keeps
    the warnings it is given."""

    def __init__(self, target, replacement):
        self.target, self.replacement, self.done = target, replacement, False
        self.warned: list[str] = []

    @contextlib.contextmanager
    def stage(self, name, total):
        def advance(n=1):
            if name == "Loading + projecting" and not self.done:
                self.done = True
                shutil.copyfile(self.replacement, self.target)  # in place, as save_file does
        yield advance

    def warn(self, message):
        self.warned.append(message)


def test_a_checkpoint_rewritten_while_read_is_not_cached(tmp_path):
    from layerfilm import manifest, pipeline  # noqa: F401
    from layerfilm.config import RenderConfig

    run = write_run(tmp_path / "run", n=3)
    other = write_run(tmp_path / "other", n=3, seed=5)
    target = run / "step_000000.safetensors"
    before = target.stat()
    report = RewriteAfterFirstKeyframe(target, other / target.name)
    config = RenderConfig(checkpoints=run, output=tmp_path / "a.gif", size=(128, 72), fps=2)
    result = pipeline.render(config, report)
    assert report.done and target.read_bytes() == (other / target.name).read_bytes()
    changed = [w for w in report.warned if "changed while it was read" in w]
    assert len(changed) == 1 and str(target) in changed[0], report.warned
    assert list(cache.cache_dir().glob("chunk-*")) == []
    assert list(cache.cache_dir().glob("drift-*")) == []
    # The manifest records what was read (the size and time from before) and no digest of the
    # new bytes (nor of the mix the render hashed as it read them); a re-render from it is
    # refused.
    doc = result.manifest  # written by the render, with the film
    entry = next(f for f in doc["checkpoints"]["files"] if f["path"] == target.name)
    assert entry[manifest.CHANGED] is True and entry["mtime_ns"] == before.st_mtime_ns
    assert not {"read_xxh3", "read_sha256", "header_sha256", "sha256"} & set(entry)
    # Nor remembered for a re-render: the digest memo holds the two other checkpoints only.
    assert len(list((cache.cache_dir() / "read-digests").glob("*.json"))) == 2
    refused = layerfilm("render", "--from-manifest", tmp_path / "a.gif.json", tmp_path / "b.gif")
    assert refused.returncode == 1 and "changed while the film was read" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and not (tmp_path / "b.gif").exists()
    # The next render draws the new bytes: the same film as one that uses no cache at all.
    render_ok(run, tmp_path / "cached.gif")
    render_ok(run, tmp_path / "fresh.gif", "--no-cache")
    assert (tmp_path / "cached.gif").read_bytes() == (tmp_path / "fresh.gif").read_bytes()


def _truncate(raw: bytes) -> bytes:
    return raw[:len(raw) // 2]


def _flip(raw: bytes) -> bytes:
    at = len(raw) * 2 // 3
    return raw[:at] + bytes([raw[at] ^ 0x01]) + raw[at + 1:]


@pytest.mark.parametrize("damage", [_truncate, lambda raw: b"", _flip], ids=["truncated", "empty", "flipped"])
def test_a_damaged_entry_is_a_miss_removed(tmp_path, run_dir, damage):
    render_ok(run_dir, tmp_path / "first.gif")
    render_ok(run_dir, tmp_path / "fresh.gif", "--no-cache")
    found = sorted(cache.cache_dir().glob("*.lfc"))
    # The film's layouts (its one run of keyframes: what a grown film reuses too) and its drift.
    assert [p.name.split("-")[0] for p in found] == sorted(["drift", "chunk"])
    damaged = {p: damage(p.read_bytes()) for p in found}
    for p, raw in damaged.items():
        p.write_bytes(raw)
    said = warnings(render_ok(run_dir, tmp_path / "again.gif"))
    assert (tmp_path / "again.gif").read_bytes() == (tmp_path / "fresh.gif").read_bytes()
    assert len(said) == 2 and all("damaged cache entry" in w for w in said), said
    for p, raw in damaged.items():  # stored again, whole
        assert p.read_bytes() != raw and cache.read_entry(p) is not None
    # stats reads the layouts entry too: damaged, it is removed and the columns left empty.
    layout = next(cache.cache_dir().glob("chunk-*.lfc"))
    layout.write_bytes(damage(layout.read_bytes()))
    done = layerfilm("stats", run_dir, "--out", tmp_path / "stats")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "layout columns: empty" in done.stdout
    assert len(warnings(done.stderr)) == 1 and str(layout) in done.stderr
    assert not layout.exists()


def test_entries_are_never_unpickled(tmp_path, run_dir):
    """An entry with a valid checksum around an object array (a pickle) is refused, not run."""
    from conftest import Evil, plan_of
    from layerfilm import layouts

    plan = plan_of(run_dir)
    layouts.cached_keyframe_layouts(plan)
    path = next(cache.cache_dir().glob("chunk-*.lfc"))
    payload = cache._arrays_payload(P=np.array([Evil(tmp_path / "ran")], dtype=object),
                                    fixed=np.zeros(0), panels=np.array(""))
    cache.write_entry(path, payload)
    warned = []

    class Warn:
        warn = staticmethod(warned.append)

    assert layouts.load_cached(plan, progress=Warn()) is None
    assert not (tmp_path / "ran").exists() and not path.exists() and len(warned) == 1


@contextlib.contextmanager
def small_tmpfs(folder, size: str):
    """A tmpfs of ``size`` mounted on ``folder`` (root only; the test is skipped elsewhere)."""
    folder.mkdir()
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def _free(folder) -> int:
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


def test_a_full_cache_disk_is_a_warning_and_leaves_nothing(tmp_path, run_dir, monkeypatch):
    render_ok(run_dir, tmp_path / "fresh.gif", "--no-cache")
    with small_tmpfs(tmp_path / "disk", "1m") as disk:
        monkeypatch.setenv("LAYERFILM_CACHE_DIR", str(disk / "cache"))
        (disk / "cache").mkdir()
        filler = disk / "filler"
        with open(filler, "wb") as f:  # all but 12 KiB: a layout entry takes 16 KiB
            f.write(b"\0" * (_free(disk) - 12 * 1024))
        free = _free(disk)
        said = warnings(render_ok(run_dir, tmp_path / "full.gif"))
        assert len(said) == 1 and "No space left on device" in said[0] and "not cached" in said[0]
        assert (tmp_path / "full.gif").read_bytes() == (tmp_path / "fresh.gif").read_bytes()
        # No layouts and no temporary file of them left: what the disk lost is only the small
        # entries that did fit (the drift's, digests).
        assert list((disk / "cache").rglob("*.part")) == []
        assert list((disk / "cache").glob("chunk-*")) == []
        kept = sum(-(-p.stat().st_size // 4096) * 4096 for p in (disk / "cache").rglob("*") if p.is_file())
        assert _free(disk) >= free - kept


def test_leftover_part_files_are_counted_cleared_and_swept(tmp_path, run_dir):
    """What a render killed mid-write leaves: ``layerfilm cache`` counts it, a render sweeps
    the ones an hour old, ``--clear`` removes the rest."""
    folder = cache.cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    old = folder / ".layouts-0123.lfc.k1ll3d.part"
    new = folder / "sha256" / ".abcd.x9.part"
    for path, age in ((old, 2 * 3600), (new, 0)):
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"\0" * 1000)
        then = time.time() - age
        os.utime(path, (then, then))
    shown = layerfilm("cache")
    assert shown.returncode == 0 and "unfinished  2 .part files, 0.0 MB" in shown.stdout
    render_ok(run_dir, tmp_path / "a.gif")  # stores entries: sweeps the stale one only
    assert not old.exists() and new.exists()
    assert "unfinished  1 .part files" in layerfilm("cache").stdout
    cleared = layerfilm("cache", "--clear")
    assert cleared.returncode == 0 and not new.exists()
    assert "unfinished  0 .part files" in layerfilm("cache").stdout
    assert [p for p in folder.rglob("*") if p.is_file()] == []


def test_the_digest_memo_is_checked_too(tmp_path):
    """A memo of a file's sha256 with one character changed is not believed."""
    import hashlib

    p = tmp_path / "x.bin"
    p.write_bytes(b"a" * 10)
    right = hashlib.sha256(b"a" * 10).hexdigest()
    assert cache.sha256_file(p) == right
    memo, = (cache.cache_dir() / "sha256").iterdir()
    raw = memo.read_bytes()
    memo.write_bytes(raw[:-1] + (b"0" if raw[-1:] != b"0" else b"1"))
    assert cache.sha256_file(p) == right
    assert cache.read_entry(memo) is not None  # written again, whole


def test_layouts_that_older_code_computed_are_not_reused(tmp_path, run_dir, monkeypatch):
    """The layout and drift entries are keyed by what the code computes (cache.LAYOUTS): once
    it changes, an entry stored before is a miss, and the layouts are computed again."""
    from conftest import plan_of
    from layerfilm import layouts

    render_ok(run_dir, tmp_path / "first.gif")
    plan = plan_of(run_dir)
    assert layouts.load_cached(plan) is not None
    stored = sorted(p.name for p in cache.cache_dir().glob("*.lfc"))
    monkeypatch.setattr(cache, "LAYOUTS", cache.LAYOUTS + 1)
    assert layouts.load_cached(plan) is None
    keys = layouts.cached_keyframe_layouts(plan)
    assert layouts.load_cached(plan) is not None
    assert len(sorted(cache.cache_dir().glob("*.lfc"))) > len(stored)
    assert np.isfinite(keys.P).all()
