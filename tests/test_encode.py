"""Every format decodes back bit-exact; failures leave no file and no ffmpeg behind."""

import os
import subprocess

import numpy as np
import pytest

from layerfilm.encode import FORMATS, FilmWriter
from layerfilm.errors import EncodeError
from layerfilm.config import SUFFIXES
from layerfilm.shade import palette

from conftest import decode


def frames(n, w=96, h=64, seed=0):
    """Index frames that use the whole palette but 255, like real films."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        f = np.zeros((h, w), np.uint8)
        f[rng.integers(0, h, 400), rng.integers(0, w, 400)] = rng.integers(1, 255, 400)
        f[:, i % w] = 200  # a moving bar, so frames differ
        out.append(f)
    return out


def test_suffixes_and_encoders_agree():
    assert set(SUFFIXES.values()) == set(FORMATS)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_lossless_roundtrip(tmp_path, fmt):
    pal = palette("inferno")
    sent = frames(12)
    path = tmp_path / f"film.{fmt}"
    with FilmWriter(path, (96, 64), 25, fmt, pal) as w:
        for f in sent:
            w.write(f)
    got = decode(path)
    assert got.shape == (12, 64, 96, 3)
    for i, f in enumerate(sent):
        np.testing.assert_array_equal(got[i], pal[f], err_msg=f"{fmt} frame {i}")
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # as any new file, not mkstemp's 0o600


def _ffmpeg_children():
    out = subprocess.run(["ps", "-eo", "ppid,comm"], capture_output=True, text=True).stdout
    return [l for l in out.splitlines() if l.split()[0] == str(os.getpid()) and "ffmpeg" in l]


def test_error_mid_film_leaves_nothing(tmp_path):
    path = tmp_path / "film.webm"
    path.write_bytes(b"an older film")  # must survive a failed re-render
    with pytest.raises(RuntimeError):
        with FilmWriter(path, (96, 64), 25, "webm", palette("inferno")) as w:
            for f in frames(3):
                w.write(f)
            raise RuntimeError("boom")
    assert path.read_bytes() == b"an older film"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["film.webm"]
    assert _ffmpeg_children() == []


def test_ffmpeg_failure_is_an_encode_error(tmp_path, monkeypatch):
    from layerfilm import encode

    bad = encode.Encoder("rgb24", ("-c:v", "no-such-codec"), "webm")
    monkeypatch.setitem(encode.FORMATS, "webm", bad)
    path = tmp_path / "film.webm"
    with pytest.raises(EncodeError) as e:
        with FilmWriter(path, (96, 64), 25, "webm", palette("inferno")) as w:
            for f in frames(50):
                w.write(f)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []
    assert _ffmpeg_children() == []


def test_ffmpeg_stdin_pipe_is_widened_where_the_system_allows(tmp_path):
    """A 1080p RGB frame is 6 MB: the writer asks for a 1 MiB pipe (Linux) so both ends wake
    ~6 times a frame, not ~95; a frame shorter than that gets the largest power of two it
    fills (so it can be handed over without a copy), a tiny one the default 64 KiB."""
    import fcntl
    import sys

    if not sys.platform.startswith("linux"):
        pytest.skip("F_SETPIPE_SZ is Linux's")
    limit = int(open("/proc/sys/fs/pipe-max-size").read())
    for size, want in (((1920, 1080), min(1 << 20, limit)), ((640, 360), min(1 << 19, limit)),
                       ((64, 32), 1 << 16)):
        with FilmWriter(tmp_path / "a.mkv", size, 5, "mkv", palette("magma")) as w:
            got = fcntl.fcntl(w._proc.stdin.fileno(), fcntl.F_GETPIPE_SZ)
            w.write(np.zeros(size[::-1], np.uint8))
        assert got == want or (want == 1 << 20 and got >= want), size
        assert (tmp_path / "a.mkv").stat().st_size > 0


@pytest.mark.parametrize("fmt", ["mkv", "gif"])
def test_frames_handed_to_the_pipe_without_a_copy_arrive_exact(tmp_path, fmt):
    """Frames at least as long as the pipe are handed over by vmsplice (Linux): the pipe reads
    the writer's own buffers after the call returns, so it sends from two in turn.  The frames
    come from one caller buffer rewritten after every write (as a render's are), each unlike
    the last in every row, and decode bit-exact."""
    import sys

    pal, (w, h), n = palette("viridis"), (640, 360), 10
    rng = np.random.default_rng(3)
    sent, buf = [], np.empty((h, w), np.uint8)
    with FilmWriter(tmp_path / f"f.{fmt}", (w, h), 25, fmt, pal) as writer:
        if sys.platform.startswith("linux"):
            assert writer._pipe.spliced
        for _ in range(n):
            buf[...] = rng.integers(0, 255, (h, w), dtype=np.uint8)  # the same buffer, rewritten
            sent.append(buf.copy())
            writer.write(buf)
    got = decode(tmp_path / f"f.{fmt}")
    assert got.shape == (n, h, w, 3)
    for i, f in enumerate(sent):
        np.testing.assert_array_equal(got[i], pal[f], err_msg=f"{fmt} frame {i}")


@pytest.mark.parametrize("suffix, per_pixel", [(".gif", 1), (".mkv", 3)])
def test_bench_captures_the_exact_frames_sent_to_ffmpeg(tmp_path, suffix, per_pixel):
    # `make bench`'s encode-only floor replays what a render sent ffmpeg, recorded by a hook on
    # the writer: it must keep up with the writer (a renamed attribute once broke `make bench`).
    import importlib.util

    from conftest import ROOT, SAMPLE
    from layerfilm.config import RenderConfig
    from layerfilm.encode.ffmpeg import palette_bytes

    spec = importlib.util.spec_from_file_location("bench_main", ROOT / "bench" / "bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    raw = tmp_path / "raw"
    r = bench.run_layerfilm(dict(ckpts=str(SAMPLE), out=str(tmp_path / f"c{suffix}"), fps=4, fpk=2,
                                 size=[160, 90], max_points=64, capture=str(raw)))
    frame = 160 * 90 * per_pixel + (1024 if per_pixel == 1 else 0)
    data = raw.read_bytes()
    assert r["frames"] > 1 and len(data) == r["frames"] * frame
    if per_pixel == 1:  # each index frame followed by the palette ffmpeg is sent
        assert data[frame - 1024:frame] == palette_bytes(palette(RenderConfig.cmap))
    else:  # the RGB frames are the lossless film's
        first = decode(tmp_path / f"c{suffix}")[0]
        assert np.frombuffer(data[:frame], np.uint8).reshape(90, 160, 3).tolist() == first.tolist()
