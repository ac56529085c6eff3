"""The one stream of point clouds: it yields each checkpoint's drawn rows as the files hold
them, fetches the next checkpoint before it lets go of the current one, and is the only reader
of checkpoint data for a render, a drift pass, ``stats`` and ``info``."""

import sys
import weakref
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file
from typer.testing import CliRunner

from layerfilm import clouds
from layerfilm.checkpoints import CheckpointRef, SafetensorsFile
from layerfilm.cli import app

from conftest import plan_of, write_run

runner = CliRunner()
CLOUDS = clouds.__file__


def _by_numpy(path: Path, layer) -> np.ndarray:
    """A panel's cloud read independently: the safetensors file loaded whole by the library,
    its drawn rows (or columns, as rows) stacked in the panel's order, as float32."""
    tensors = load_file(str(path))
    parts = [tensors[s.tensor][s.index] if s.axis == 0 else tensors[s.tensor][:, s.index].T
             for s in layer.sources]
    return np.concatenate(parts).astype(np.float32)


def test_the_stream_yields_the_files_rows(tmp_path):
    plan = plan_of(write_run(tmp_path / "run", n=4, dtype=np.float16), max_points=30)
    assert any(s.axis == 1 for layer in plan.layers for s in layer.sources)  # columns too
    seen = []
    for frame in clouds.stream(plan):
        seen.append(frame.index)
        assert frame.step == plan.refs[frame.index].step
        for l, (cloud, layer) in enumerate(zip(frame.clouds(), plan.layers)):
            want = _by_numpy(plan.refs[frame.index].path, layer)
            assert cloud.dtype == np.float32 and cloud.shape == (layer.n_points, layer.dim)
            np.testing.assert_array_equal(cloud, want)
            np.testing.assert_array_equal(frame.cloud(l), want)  # asked again: read again
    assert seen == list(range(len(plan.refs)))
    # A choice of keyframes (in any order) and of panels.
    picked = [(f.index, f.clouds()) for f in clouds.stream(plan, [3, 1], panels=[2, 0])]
    assert [k for k, _ in picked] == [3, 1]
    for k, got in picked:
        for cloud, l in zip(got, [2, 0]):
            np.testing.assert_array_equal(cloud, _by_numpy(plan.refs[k].path, plan.layers[l]))


@pytest.fixture
def events(monkeypatch):
    """What happens to checkpoints, in order: ``(what, file, through the stream)`` for every
    open and every read of tensor data (the readers' own interface: prefetch, read,
    read_into)."""
    log = []

    def through_stream() -> bool:
        f = sys._getframe(2)
        while f is not None:
            if f.f_code.co_filename == CLOUDS:
                return True
            f = f.f_back
        return False

    def record(cls, name, path):
        original = getattr(cls, name)

        def recorded(self, *args, **kwargs):
            log.append((name, Path(str(path(self))).name, through_stream()))
            return original(self, *args, **kwargs)

        monkeypatch.setattr(cls, name, recorded)

    record(CheckpointRef, "open", lambda ref: ref.path)
    for name in ("prefetch", "read", "read_into"):
        record(SafetensorsFile, name, lambda f: f.path)
    return log


def test_the_next_checkpoint_is_fetched_before_the_current_one_is_let_go(tmp_path, events):
    plan = plan_of(write_run(tmp_path / "run", n=4))
    names = [Path(r.path).name for r in plan.refs]
    events.clear()  # the plan's own look at the headers

    def at(what: str, k: int) -> int:
        return next(i for i, (w, name, _) in enumerate(events) if w == what and name == names[k])

    def reads(k: int) -> list[int]:
        return [i for i, (w, name, _) in enumerate(events) if name == names[k] and w.startswith("read")]

    # As the layouts read: this one's clouds read (in threads), then the next one asked for
    # ahead, so that fetching it overlaps the work on this one.
    stream = clouds.stream(plan)
    for frame in stream:
        weakref.finalize(frame, events.append, ("released", names[frame.index], True))
        frame.clouds()
        stream.read_ahead()
        del frame
    for k in range(len(names)):
        assert at("open", k) < at("prefetch", k) < min(reads(k))
        if k + 1 < len(names):
            assert max(reads(k)) < at("open", k + 1) < at("prefetch", k + 1) < at("released", k)
    assert [name for w, name, _ in events if w == "open"] == names  # each opened once
    # A reader that just iterates: the next is fetched when asked for, still before the release.
    events.clear()
    for frame in clouds.stream(plan):
        weakref.finalize(frame, events.append, ("released", names[frame.index], True))
        frame.clouds()
    for k in range(len(names) - 1):
        assert max(reads(k)) < at("prefetch", k + 1) < at("released", k)
    assert [name for w, name, _ in events if w == "open"] == names


def _cli(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def test_the_stream_is_the_only_reader(tmp_path, events, monkeypatch):
    """A render (layouts and drift in one pass), a drift pass alone (layouts cached), a cached
    render, ``stats`` and ``info``: every byte of tensor data is read through the stream, and
    each pass opens and fetches each checkpoint once."""
    run = write_run(tmp_path / "run", n=5)
    names = sorted(p.name for p in run.glob("*.safetensors"))
    render = ("render", run, tmp_path / "f.gif", "--size", "160x90", "--frames-per-keyframe", "1", "-q")

    def opened_once(what: str) -> None:
        assert all(through for w, _, through in events if w != "open"), what  # data: the stream only
        for kind in ("open", "prefetch"):
            got = sorted(name for w, name, through in events if w == kind and through)
            assert got == names, (what, kind, got)
        events.clear()

    _cli(*render)  # layouts and drift in one pass
    opened_once("layouts + drift")
    _cli(*render)  # all cached: no data read
    assert not [e for e in events if e[0] != "open"] and not [e for e in events if e[2]]
    events.clear()
    monkeypatch.setenv("LAYERFILM_CACHE_DIR", str(tmp_path / "cache"))
    _cli(*render, "--no-cues")  # layouts alone
    opened_once("layouts")
    _cli(*render)  # layouts cached, drift measured alone
    opened_once("drift")
    _cli("stats", run, "--out", tmp_path / "s", "-q")
    opened_once("stats")
    _cli("info", run)
    assert all(through for w, _, through in events if w != "open")
    assert sorted(name for w, name, through in events if w == "open" and through) == [names[0], names[-1]]
