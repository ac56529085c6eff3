"""Golden frames: whole films rendered through the command line and compared, pixel for pixel,
with frames recorded earlier (``tests/golden/*.npz``, a PNG beside each for people).

A change to projection, splatting, shading, layout or labels fails here even when every film
still decodes to the frames that were sent.  When a change to the picture is intended, look at
the new PNGs, then record them again with ``LAYERFILM_UPDATE_GOLDEN=1 pytest tests/test_golden.py``
and commit them with the change that made them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from layerfilm.cli import app

from conftest import SAMPLE, decode, write_run

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("LAYERFILM_UPDATE_GOLDEN") == "1"
runner = CliRunner()

# name -> (checkpoints ("sample"; "wide": a synthetic run whose layers are 80 wide, so their
# layouts are tracked rather than exact; "thirteen": 12 blocks and the embedding), options,
# frames kept)
CASES = {
    "sample_320x180": ("sample", ["--size", "320x180", "--frames-per-keyframe", "2"], (0, 51, 100)),
    "sample_640x360": ("sample", ["--size", "640x360", "--frames-per-keyframe", "2"], (0, 37, 100)),
    "sample_extras_480x270": ("sample", ["--size", "480x270", "--frames-per-keyframe", "2",
                                         "--loss-strip", "--drift", "--order", "settle",
                                         "--settle-threshold", "0.12"], (0, 63, 100)),
    "sample_fourier_320x180": ("sample", ["--size", "320x180", "--frames-per-keyframe", "2",
                                          "--projection", "fourier", "--points", "embeddings"],
                               (0, 100)),
    "wide_320x180": ("wide", ["--size", "320x180", "--fps", "4"], (0, 5, 20)),
    # 13 panels with every header field, a caption and a shared scale.
    "thirteen_640x360": ("thirteen", ["--size", "640x360", "--fps", "3", "--title", "thirteen blocks",
                                      "--caption", "a synthetic 12-block run", "--tokens-per-step",
                                      "65536", "--scale", "shared"], (0, 4, 9)),
}
# Every case is compared bit for bit, but for tracked planes: they are solved in float32, whose
# last bits depend on the CPU's BLAS kernels (AVX-512, AVX2, ...), so a few dots land a hair
# apart and a faint edge deposit comes or goes.  Measured between kernel families: at most 26
# of 57,600 pixels.  A turned, mirrored or moved panel changes hundreds
# (test_project.test_layouts_are_the_same_with_another_cpus_blas_kernels checks the planes).
MAY_DIFFER = {"wide_320x180": 0.002}


def _checkpoints(kind: str, tmp_path: Path) -> Path:
    if kind == "sample":
        return SAMPLE
    if kind == "thirteen":
        return write_run(tmp_path / "thirteen", n=4, seed=5, d=16, blocks=12, vocab=50)
    return write_run(tmp_path / "wide", n=6, seed=3, d=80, blocks=3, vocab=120)


@pytest.mark.parametrize("name", sorted(CASES))
def test_frames_equal_the_recorded_ones(tmp_path, name):
    kind, options, keep = CASES[name]
    frames_dir = tmp_path / "frames"
    result = runner.invoke(app, ["render", str(_checkpoints(kind, tmp_path)), str(tmp_path / "f.gif"),
                                 "--frames", str(frames_dir), "--no-cache", "-q", *options])
    assert result.exit_code == 0, result.output
    got = {f: decode(frames_dir / f"frame_{f:06d}.png")[0] for f in keep}
    path = GOLDEN / f"{name}.npz"
    if UPDATE:
        from PIL import Image

        GOLDEN.mkdir(exist_ok=True)
        np.savez_compressed(path, **{f"frame_{f}": got[f] for f in keep})
        for f in keep:
            Image.fromarray(got[f]).save(GOLDEN / f"{name}_frame{f}.png", optimize=True)
        pytest.skip("golden frames recorded")
    with np.load(path) as golden:
        assert sorted(golden.files) == sorted(f"frame_{f}" for f in keep)
        report = [difference(name, f, got[f], golden[f"frame_{f}"], MAY_DIFFER.get(name, 0.0))
                  for f in keep]
    report = [line for line in report if line]
    assert not report, "; ".join(report)


def difference(name: str, f: int, got: np.ndarray, want: np.ndarray, may_differ: float = 0.0) -> str:
    """How frame ``f`` differs from its recorded one: empty when equal (or when at most the
    fraction ``may_differ`` of its pixels differ), else how many pixels differ and by how much
    (the largest channel difference, and how many pixels differ by at most 8 and by more), so a
    run with other library versions (``make test-latest``) says whether a difference is a
    rounding or a changed picture."""
    if got.shape != want.shape:
        return f"{name} frame {f}: size {got.shape[1]}x{got.shape[0]}, recorded {want.shape[1]}x{want.shape[0]}"
    by = np.abs(got.astype(np.int16) - want.astype(np.int16)).max(axis=2)
    differ = by > 0
    if differ.sum() <= may_differ * differ.size:
        return ""
    small = int((differ & (by <= 8)).sum())
    return (f"{name} frame {f}: {int(differ.sum())} of {differ.size} pixels differ "
            f"(first at {tuple(int(i) for i in np.argwhere(differ)[0])}; largest channel difference "
            f"{int(by.max())}; {small} by at most 8, {int(differ.sum()) - small} by more)")
