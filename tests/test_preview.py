"""``--preview FILE.mp4``: the small lossy H.264 copy written from the film's own frames."""

from __future__ import annotations

import json
import subprocess

import imageio_ffmpeg
import numpy as np
import pytest
from typer.testing import CliRunner

from layerfilm import encode, pipeline
from layerfilm.cli import app
from layerfilm.config import RenderConfig
from layerfilm.encode import preview as previews

from conftest import SAMPLE, decode

runner = CliRunner()


def frames_at(path, indices, size) -> np.ndarray:
    """Frames ``indices`` of a film as ``(n, H, W, 3)`` uint8, decoded to rgb24 by ffmpeg (the
    preview's BT.709 tag is honoured), without decoding every frame into memory."""
    w, h = size
    pick = "+".join(f"eq(n\\,{i})" for i in indices)
    out = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-vf",
                          f"select='{pick}'", "-fps_mode", "passthrough", "-f", "rawvideo",
                          "-pix_fmt", "rgb24", "-"], capture_output=True, check=True).stdout
    return np.frombuffer(out, np.uint8).reshape(-1, h, w, 3)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def test_preview_of_the_sample_at_720p(tmp_path):
    """The preview has every frame of the film, at most 8 MB a minute, its label in the corner
    and the film's picture elsewhere; the film is the same bytes with and without it."""
    film, plain, mp4 = tmp_path / "f.gif", tmp_path / "plain" / "f.gif", tmp_path / "f.mp4"
    args = [str(SAMPLE), "--steps", "::500", "--size", "1280x720", "-q"]
    r = runner.invoke(app, ["render", args[0], str(film), *args[1:], "--preview", str(mp4)])
    assert r.exit_code == 0, r.output
    assert f"wrote {mp4} (lossy preview, H.264" in r.output
    plain.parent.mkdir()
    r = runner.invoke(app, ["render", args[0], str(plain), *args[1:]])
    assert r.exit_code == 0, r.output
    assert film.read_bytes() == plain.read_bytes()  # the lossless film does not change

    manifest = json.loads((tmp_path / "f.gif.json").read_text())
    n, seconds = manifest["film"]["frames"], manifest["film"]["duration_s"]
    assert manifest["preview"]["path"] == str(mp4)
    assert manifest["preview"]["bytes"] == mp4.stat().st_size
    assert manifest["preview"]["settings"]["pix_fmt"] == "yuv420p"
    assert "+faststart" in manifest["preview"]["command"]
    assert imageio_ffmpeg.count_frames_and_secs(str(mp4))[0] == n
    per_minute = mp4.stat().st_size * 60 / seconds
    assert per_minute <= 8e6, per_minute

    picks = [0, n // 3, n - 1]
    lossy, exact = frames_at(mp4, picks, (1280, 720)), frames_at(film, picks, (1280, 720))
    assert lossy.shape == exact.shape == (3, 720, 1280, 3)
    patch = previews.label_patch((1280, 720))[0]
    ph, pw = patch.shape[:2]
    x, y = 0, 720 - ph  # no caption: the bottom-left corner
    outside = np.ones((720, 1280), bool)
    outside[y:y + ph, x:x + pw] = False
    for a, b in zip(lossy, exact):
        corner = np.abs(a[y:y + ph, x:x + pw].astype(int) - b[y:y + ph, x:x + pw]).max(axis=2)
        assert (corner > 10).mean() > 0.9  # the dark plate over the black background
        assert (corner > 100).mean() > 0.05  # and the text on it
        assert psnr(a[outside], b[outside]) > 30


def test_preview_label_moves_to_the_header_over_a_caption(tmp_path, run_dir):
    film, mp4 = tmp_path / "f.mkv", tmp_path / "p.mp4"
    r = runner.invoke(app, ["render", str(run_dir), str(film), "--size", "641x361", "--fps", "2",
                            "--caption", "a model", "--preview", str(mp4), "-q"])
    assert r.exit_code == 0, r.output
    lossy, exact = decode(mp4), decode(film)
    assert lossy.shape[1:] == (362, 642, 3)  # yuv420p: even, one row and column of background
    assert len(lossy) == len(exact)
    assert (lossy[:, -1, :, :] < 40).all() and (lossy[:, :, -1, :] < 40).all()
    ph, pw = previews.label_patch((641, 361))[0].shape[:2]
    for a, b in zip(lossy[:, :361, :641], exact):
        assert psnr(a[-ph:, :pw], b[-ph:, :pw]) > 25  # the caption line is left alone
        r, g, bl = (a[:30].astype(int)[..., c] for c in range(3))
        ink = (r > 190) & (g > 150) & (g < 240) & (bl < 160)  # the label's amber text
        assert ink.sum() > 20  # in the header


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_preview_with_jobs_has_every_frame_and_leaves_no_chunks(tmp_path, run_dir, jobs):
    film, mp4 = tmp_path / "f.webm", tmp_path / "p.mp4"
    r = runner.invoke(app, ["render", str(run_dir), str(film), "--size", "192x108", "--fps", "5",
                            "-j", jobs, "--preview", str(mp4), "-q"])
    assert r.exit_code == 0, r.output
    exact = decode(film)
    lossy = decode(mp4)
    assert lossy.shape == exact.shape == (16, 108, 192, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.webm", "f.webm.json", "p.mp4", "run"]


def test_a_failed_or_interrupted_preview_leaves_no_film_and_no_preview(tmp_path, run_dir, monkeypatch):
    (tmp_path / "p.mp4").write_bytes(b"older")
    original = previews.PreviewWriter.write

    def write(self, frame):
        if self.frames_written == 3:
            raise encode.EncodeError("disk full", self.path)
        original(self, frame)

    monkeypatch.setattr(previews.PreviewWriter, "write", write)
    r = runner.invoke(app, ["render", str(run_dir), str(tmp_path / "f.gif"), "--fps", "2",
                            "--preview", str(tmp_path / "p.mp4"), "-q"])
    assert r.exit_code == 1 and "disk full" in r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.mp4", "run"]
    assert (tmp_path / "p.mp4").read_bytes() == b"older"

    def interrupt(self, frame):
        if self.frames_written == 3:
            raise KeyboardInterrupt
        original(self, frame)

    monkeypatch.setattr(previews.PreviewWriter, "write", interrupt)
    config = RenderConfig(checkpoints=run_dir, output=tmp_path / "f.gif", fps=2,
                          preview=tmp_path / "p.mp4")
    with pytest.raises(KeyboardInterrupt):
        pipeline.render(config)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.mp4", "run"]


def test_preview_option_is_checked_and_read_from_config_files(tmp_path, run_dir, monkeypatch):
    r = runner.invoke(app, ["render", str(run_dir), str(tmp_path / "f.gif"), "--preview",
                            str(tmp_path / "p.webm")])
    assert r.exit_code == 2 and "--preview writes an H.264 .mp4" in r.output
    r = runner.invoke(app, ["render", str(run_dir), str(tmp_path / "f.mp4"), "--preview",
                            str(tmp_path / "f.mp4")])
    assert r.exit_code == 2 and "must not be the film itself" in r.output
    monkeypatch.chdir(tmp_path)
    (tmp_path / "layerfilm.toml").write_text('preview = "small/p.mp4"\nfps = 2\n')
    r = runner.invoke(app, ["render", "--print-config"])
    assert r.exit_code == 2 and "layerfilm.toml: preview" in r.output  # blamed on the file
    (tmp_path / "small").mkdir()
    r = runner.invoke(app, ["render", "--print-config"])
    assert 'preview = "' in r.output
    r = runner.invoke(app, ["render", str(run_dir), "f.gif", "-q"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "small" / "p.mp4").is_file()
