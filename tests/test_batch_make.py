"""examples/batch.mk: every run folder to films/<run>.webm/.gif + stills + stats, parallel,
incremental."""

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, decode, write_run

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
BATCH = ROOT / "examples" / "batch.mk"
LAYERFILM = f"{sys.executable} -m layerfilm"


def make(project, *args):
    return subprocess.run(["make", "-f", str(BATCH), f"LAYERFILM={LAYERFILM}", *args], cwd=project,
                          capture_output=True, text=True, timeout=600)


def renders(output: str) -> list[str]:
    """The render commands in make's output, as 'RUN -> FILM'."""
    out = []
    for line in output.splitlines():
        if line.startswith(LAYERFILM + " render"):
            words = line.split()
            out.append(f"{words[-2]} -> {words[-1]}")
    return sorted(out)


def stats_runs(output: str) -> list[str]:
    """The stats commands in make's output, as 'RUN -> FOLDER'."""
    out = []
    for line in output.splitlines():
        if line.startswith(LAYERFILM + " stats"):
            words = line.split()
            out.append(f"{words[-1]} -> {words[words.index('--out') + 1]}")
    return sorted(out)


def bump(path, seconds=5):
    """Make ``path`` newer than everything rendered so far (no waiting for the clock)."""
    t = time.time() + seconds
    os.utime(path, (t, t))


@pytest.fixture
def project(tmp_path):
    write_run(tmp_path / "runs" / "a", n=3)
    write_run(tmp_path / "runs" / "b", n=3, seed=1, name="checkpoint-{step}/model.safetensors")
    (tmp_path / "layerfilm.toml").write_text('size = "160x90"\nfps = 2\n')
    return tmp_path


def test_dry_run_lists_one_render_per_run_and_format(project):
    result = make(project, "-n")
    assert result.returncode == 0, result.stderr
    assert renders(result.stdout) == ["runs/a -> films/a.gif", "runs/a -> films/a.webm",
                                      "runs/b -> films/b.gif", "runs/b -> films/b.webm"]
    lines = result.stdout.splitlines()
    webm = next(line for line in lines if line.endswith("films/a.webm"))
    assert "--config layerfilm.toml" in webm and "--stills films/a-stills" in webm
    assert "rm -rf films/a-stills" in lines
    assert "--stills" not in next(line for line in lines if line.endswith("films/a.gif"))
    assert stats_runs(result.stdout) == ["runs/a -> films/a-stats", "runs/b -> films/b-stats"]
    stats = lines.index(f"{LAYERFILM} stats --quiet --layouts --config layerfilm.toml "
                        "--out films/a-stats runs/a")
    assert stats > lines.index(webm)  # after the film whose cached layouts it reuses
    assert stats_runs(make(project, "-n", "STATS=").stdout) == []  # STATS empty: no stats
    assert not (project / "films").exists()  # -n renders nothing


def test_parallel_incremental_batch(project):
    result = make(project, "-j2")
    assert result.returncode == 0, result.stderr
    films = project / "films"
    for run in ("a", "b"):
        for fmt in ("webm", "gif"):
            frames = decode(films / f"{run}.{fmt}")
            assert frames.shape == (5, 90, 160, 3)  # from layerfilm.toml: 3 checkpoints, 2 fps
            doc = json.loads((films / f"{run}.{fmt}.json").read_text())
            assert doc["checkpoints"]["folder"] == str(project / "runs" / run)
            assert (doc["options"]["size"], doc["options"]["fps"]) == ([160, 90], 2)
        stills = sorted(p.name for p in (films / f"{run}-stills").iterdir())
        assert stills == ["contact_sheet.png", "first.png", "last.png"]
        webm = decode(films / f"{run}.webm")
        assert np.array_equal(decode(films / f"{run}-stills" / "last.png")[0], webm[-1])
    assert not [p for p in films.iterdir() if p.name.startswith(".")]  # no temporary files
    for run in ("a", "b"):
        # The same bytes as layerfilm stats run by hand with the same config; layout columns filled.
        assert sorted(p.name for p in (films / f"{run}-stats").iterdir()) == \
            ["layer_change.png", "layer_stats.csv"]
        by_hand = project / f"by-hand-{run}"
        done = subprocess.run([*LAYERFILM.split(), "stats", "--layouts", "-q", "--config",
                               "layerfilm.toml", "--out", str(by_hand), f"runs/{run}"],
                              cwd=project, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        text = (films / f"{run}-stats" / "layer_stats.csv").read_text()
        assert text == (by_hand / "layer_stats.csv").read_text()
        rows = list(csv.DictReader(io.StringIO(text)))
        assert [r["step"] for r in rows] == ["0"] * 3 + ["100"] * 3 + ["200"] * 3
        assert all(r["procrustes_residual"] != "" for r in rows[3:])
        shutil.rmtree(by_hand)

    # publish takes each film's stills and stats along.
    result = make(project, "publish", "REPO_ID=alice/films", "PUBLISH_FLAGS=--dry-run")
    assert result.returncode == 0, result.stderr
    listed = [line.split()[0] for line in result.stdout.splitlines() if line.startswith("  ")]
    for run in ("a", "b"):
        assert {f"{run}-stats/layer_stats.csv", f"{run}-stats/layer_change.png",
                f"{run}-stills/last.png", f"{run}.webm", f"{run}.gif.json"} <= set(listed)
    # ... or to a Storage Bucket.
    result = make(project, "publish", "PUBLISH_BUCKET=alice/films/runs", "PUBLISH_FLAGS=--dry-run")
    assert result.returncode == 0, result.stderr
    assert "would upload to hf://buckets/alice/films:" in result.stdout
    assert "  runs/a.webm " in result.stdout and "  runs/README.md " in result.stdout

    # Up to date: nothing to do.
    assert make(project, "-q").returncode == 0
    assert renders(make(project, "-n").stdout) == [] and stats_runs(make(project, "-n").stdout) == []

    # A touched checkpoint re-renders its run only.
    outputs = [*films.glob("*.json"), *films.glob("*-stats/*")]
    before = {p.relative_to(films).as_posix(): p.stat().st_mtime_ns for p in outputs}
    bump(project / "runs" / "b" / "checkpoint-100" / "model.safetensors")
    dry = make(project, "-n").stdout
    assert renders(dry) == ["runs/b -> films/b.gif", "runs/b -> films/b.webm"]
    assert stats_runs(dry) == ["runs/b -> films/b-stats"]
    result = make(project, "-j2")
    assert result.returncode == 0, result.stderr
    assert renders(result.stdout) == ["runs/b -> films/b.gif", "runs/b -> films/b.webm"]
    assert stats_runs(result.stdout) == ["runs/b -> films/b-stats"]
    after = {p.relative_to(films).as_posix(): p.stat().st_mtime_ns for p in outputs}
    assert [n for n in sorted(after) if after[n] != before[n]] == [
        "b-stats/layer_change.png", "b-stats/layer_stats.csv", "b.gif.json", "b.webm.json"]
    assert sorted(p.name for p in (films / "b-stills").iterdir()) == \
        ["contact_sheet.png", "first.png", "last.png"]

    # A changed config re-renders everything.
    (project / "layerfilm.toml").write_text('size = "128x72"\nfps = 2\n')
    bump(project / "layerfilm.toml", 10)
    dry = make(project, "-n").stdout
    assert len(renders(dry)) == 4 and len(stats_runs(dry)) == 2


def test_a_failing_run_stops_only_its_own_targets(project):
    bad = write_run(project / "runs" / "c", n=3, seed=2)
    (bad / "step_000100.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    result = make(project, "-j2", "-k")
    assert result.returncode != 0
    assert "runs/c/step_000100.safetensors: corrupt safetensors header" in result.stderr
    films = project / "films"
    assert sorted(p.name for p in films.iterdir()) == [
        "a-stats", "a-stills", "a.gif", "a.gif.json", "a.webm", "a.webm.json",
        "b-stats", "b-stills", "b.gif", "b.gif.json", "b.webm", "b.webm.json"]  # nothing of c, no .part
    # c is retried next time, a and b are not rendered again.
    dry = make(project, "-n").stdout
    assert renders(dry) == ["runs/c -> films/c.gif", "runs/c -> films/c.webm"]
    assert stats_runs(dry) == ["runs/c -> films/c-stats"]
