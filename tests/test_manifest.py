"""Manifests (OUT.json) and re-rendering from them, bit for bit."""

import hashlib
import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from layerfilm import cache, encode
from layerfilm.cli import app

from conftest import capture, decode, write_run

runner = CliRunner()


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def header_sha(path) -> str:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return hashlib.sha256(raw[:8 + n]).hexdigest()


def drawn_bytes(path, run, **selection) -> bytes:
    """The bytes of every drawn row (columns: the whole tensor), each once, in file order,
    found from the safetensors header by hand (not by layerfilm's reader) and read with plain
    file reads."""
    from conftest import plan_of

    plan = plan_of(run, **selection)
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    spans = set()
    for layer in plan.layers:
        for src in layer.sources:
            if src.tensor not in header:  # a shard: another shard holds it
                continue
            e = header[src.tensor]
            begin, end = (8 + n + o for o in e["data_offsets"])
            if src.axis == 0 and len(e["shape"]) == 2:
                row = (end - begin) // e["shape"][0]
                spans |= {(begin + int(r) * row, begin + (int(r) + 1) * row) for r in src.index}
            else:
                spans.add((begin, end))
    bytes_ = bytearray()
    covered = -1
    for a, b in sorted(spans):
        a = max(a, covered)
        if b > a:
            bytes_ += raw[a:b]
            covered = b
    return bytes(bytes_)


def drawn_digest(path, run, digest="xxh3", **selection) -> str:
    """XXH3-128 (or sha256) of the bytes of every drawn row, in file order (:func:`drawn_bytes`)."""
    import xxhash

    return (xxhash.xxh3_128 if digest == "xxh3" else hashlib.sha256)(
        drawn_bytes(path, run, **selection)).hexdigest()


def render(*args):
    result = runner.invoke(app, ["render", *map(str, args), "-q"])
    assert result.exit_code == 0, result.output
    return result


def test_manifest_records_inputs_options_encoder_and_film(tmp_path, run_dir):
    (run_dir / "config.json").write_text('{"n_layer": 2, "n_embd": 16}')
    out = tmp_path / "film.webm"
    render(run_dir, out, "--fps", "3", "--size", "160x90", "--cmap", "viridis")
    doc = json.loads((tmp_path / "film.webm.json").read_text())
    assert doc["layerfilm"] == __import__("layerfilm").__version__
    files = sorted(run_dir.glob("step_*.safetensors"))
    assert [f["path"] for f in doc["checkpoints"]["files"]] == [f.name for f in files]
    assert [f["step"] for f in doc["checkpoints"]["files"]] == [0, 100, 200, 300]
    assert [f["header_sha256"] for f in doc["checkpoints"]["files"]] == [header_sha(f) for f in files]
    assert [f["read_xxh3"] for f in doc["checkpoints"]["files"]] == \
        [drawn_digest(f, run_dir) for f in files]
    assert [f["bytes"] for f in doc["checkpoints"]["files"]] == [f.stat().st_size for f in files]
    assert [f["mtime_ns"] for f in doc["checkpoints"]["files"]] == [f.stat().st_mtime_ns for f in files]
    assert all("sha256" not in f for f in doc["checkpoints"]["files"])  # no full-file hashing
    assert doc["checkpoints"]["folder"] == str(run_dir)
    assert doc["model_config"] == {"n_layer": 2, "n_embd": 16}
    opts = doc["options"]
    assert (opts["fps"], opts["size"], opts["cmap"], opts["frames_per_keyframe"]) == (3, [160, 90], "viridis", None)
    film = doc["film"]
    frames = decode(out)
    assert film["sha256"] == sha(out) and film["bytes"] == out.stat().st_size
    assert film["frames"] == len(frames) == 3 * 3 + 1 and film["fps"] == 3
    assert film["duration_s"] == pytest.approx(len(frames) / 3) and film["size"] == [160, 90]
    import imageio_ffmpeg

    enc = doc["encoder"]
    assert enc["ffmpeg"] == imageio_ffmpeg.get_ffmpeg_version()
    cmd = enc["command"]
    assert cmd[0] == "ffmpeg" and cmd[-1] == "OUTPUT" and "160x90" in cmd
    args = list(encode.FORMATS["webm"].args)
    assert any(cmd[i:i + len(args)] == args for i in range(len(cmd)))
    assert enc["jobs"] == 1 and enc["join"] is None


@pytest.mark.parametrize("suffix, extra", [(".webm", []), (".gif", []), (".webm", ["--jobs", "2"]),
                                           (".mkv", ["--jobs", "2"])])
def test_from_manifest_rerenders_a_bit_identical_film(tmp_path, run_dir, monkeypatch, suffix, extra):
    out = tmp_path / f"first{suffix}"
    render(run_dir, out, "--fps", "4", "--size", "176x96", "--color-scale", "linear",
           "--max-points", "30", "--seed", "3", "--cmap", "magma", *extra)
    # A config file in the current folder does not apply: the manifest has every option.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "layerfilm.toml").write_text('fps = 9\ncmap = "viridis"\n')
    again = tmp_path / "again" / f"second{suffix}"
    again.parent.mkdir()
    result = render("--from-manifest", f"first{suffix}.json", again, "--no-cache")
    assert "identical to the film recorded in" in result.output
    assert again.read_bytes() == out.read_bytes()
    a, b = decode(out), decode(again)
    assert a.shape == b.shape and a.shape[0] == 4 * 3 + 1 and np.array_equal(a, b)
    first, second = (json.loads(p.read_text()) for p in (tmp_path / f"first{suffix}.json",
                                                          again.parent / f"second{suffix}.json"))
    assert second["options"] == {**first["options"], "cache": False}  # as given on the command line
    assert first["checkpoints"] == second["checkpoints"]


def test_from_manifest_without_output_restores_the_film(tmp_path, run_dir):
    out = tmp_path / "f.gif"
    render(run_dir, out, "--fps", "2", "--size", "128x72")
    original = out.read_bytes()
    out.unlink()
    render("--from-manifest", tmp_path / "f.gif.json")
    assert out.read_bytes() == original


def test_from_manifest_takes_overrides_and_other_folder(tmp_path, run_dir, monkeypatch):
    out = tmp_path / "f.gif"
    render(run_dir, out, "--fps", "2", "--size", "128x72", "--frames", tmp_path / "pngs")
    moved = tmp_path / "moved" / run_dir.name
    moved.parent.mkdir()
    run_dir.rename(moved)
    seen = capture(monkeypatch, "render")
    runner.invoke(app, ["render", "--from-manifest", str(tmp_path / "f.gif.json"), str(moved),
                        str(tmp_path / "g.gif"), "--cmap", "magma"])
    cfg = seen[-1]
    assert (cfg.checkpoints, cfg.output, cfg.cmap, cfg.fps, cfg.size) == \
        (moved, tmp_path / "g.gif", "magma", 2, (128, 72))
    assert cfg.frames_dir is None  # extra outputs are not written again unless asked


def test_frames_folder_gets_the_manifest(tmp_path, run_dir):
    render(run_dir, tmp_path / "f.gif", "--fps", "2", "--size", "128x72", "--frames", tmp_path / "pngs")
    doc = json.loads((tmp_path / "pngs" / "manifest.json").read_text())
    assert doc["frames"] == {"dir": str(tmp_path / "pngs"), "pattern": "frame_%06d.png", "count": 7}
    assert len(list((tmp_path / "pngs").glob("frame_*.png"))) == 7
    assert doc["film"]["sha256"] == sha(tmp_path / "f.gif")


def test_changed_or_missing_checkpoint_is_refused(tmp_path, sent):
    run = write_run(tmp_path / "run", n=3)
    out = tmp_path / "f.gif"
    render(run, out, "--fps", "2", "--size", "128x72")
    write_run(tmp_path / "run", n=3, seed=1)  # same names, other weights
    sent.clear()
    result = runner.invoke(app, ["render", "--from-manifest", str(tmp_path / "f.gif.json"),
                                 str(tmp_path / "g.gif")])
    assert result.exit_code == 1 and sent == []  # no frame made
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "step_000000.safetensors: changed since" in lines[0], result.output
    assert not (tmp_path / "g.gif").exists()
    (run / "step_000000.safetensors").unlink()
    result = runner.invoke(app, ["render", "--from-manifest", str(tmp_path / "f.gif.json"),
                                 str(tmp_path / "g.gif")])
    assert result.exit_code == 1 and "step_000000.safetensors: listed in" in result.output
    assert "missing" in result.output and not (tmp_path / "g.gif").exists()


def test_failed_render_keeps_the_old_film_and_manifest(tmp_path, run_dir, monkeypatch):
    out = tmp_path / "f.gif"
    render(run_dir, out, "--fps", "2", "--size", "128x72")
    before = out.read_bytes(), (tmp_path / "f.gif.json").read_bytes()

    def broken(self, frame):
        raise encode.EncodeError("disk full", self.path)

    monkeypatch.setattr(encode.FilmWriter, "write", broken)
    result = runner.invoke(app, ["render", str(run_dir), str(out), "--fps", "3", "-q"])
    assert result.exit_code == 1 and "disk full" in result.output
    assert (out.read_bytes(), (tmp_path / "f.gif.json").read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.gif", "f.gif.json", "run"]


@pytest.mark.parametrize("content, message", [
    (None, "no such manifest"),
    ("{not json", "not a layerfilm manifest (invalid JSON"),
    ('{"a": 1}', "not a layerfilm manifest (no 'layerfilm_manifest' key)"),
    ('{"layerfilm_manifest": 1, "film": {}, "checkpoints": {}, "options": {"fps": "x"}}',
     "m.json: fps: expected a whole number"),
    ('{"layerfilm_manifest": 1, "film": {}, "checkpoints": {}, "options": {"nosuch": 1}}',
     "m.json: unknown key 'nosuch'"),
])
def test_bad_manifest_is_one_line(tmp_path, content, message):
    path = tmp_path / "m.json"
    if content is not None:
        path.write_text(content)
    result = runner.invoke(app, ["render", "--from-manifest", str(path), str(tmp_path / "o.gif")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.output


def test_sha256_memo_follows_the_file(tmp_path):
    p = tmp_path / "x.bin"
    p.write_bytes(b"a" * 10)
    assert cache.sha256_file(p) == hashlib.sha256(b"a" * 10).hexdigest()
    p.write_bytes(b"b" * 11)  # new size (and mtime): hashed again
    assert cache.sha256_file(p) == hashlib.sha256(b"b" * 11).hexdigest()


def test_inputs_are_kept_and_output_folders_dropped_on_rerender(tmp_path, run_dir, monkeypatch):
    metrics = tmp_path / "log.jsonl"
    metrics.write_text("".join(f'{{"step": {s}, "loss": {5 - s / 100}}}\n' for s in range(0, 301, 50)))
    render(run_dir, tmp_path / "f.gif", "--fps", "2", "--size", "128x72", "--loss-strip",
           "--metrics", metrics, "--stills", tmp_path / "shots")
    doc = json.loads((tmp_path / "f.gif.json").read_text())
    assert doc["checkpoints"]["loss"]["sha256"] == sha(metrics)
    seen = capture(monkeypatch, "render")
    runner.invoke(app, ["render", "--from-manifest", str(tmp_path / "f.gif.json"), str(tmp_path / "g.gif")])
    assert seen[-1].metrics == metrics and seen[-1].loss_strip is True
    assert seen[-1].stills_dir is None
    metrics.write_text("changed\n")
    result = runner.invoke(app, ["render", "--from-manifest", str(tmp_path / "f.gif.json"),
                                 str(tmp_path / "g.gif")])
    assert result.exit_code == 1 and "log.jsonl: changed since" in result.output


def test_manifest_records_how_each_panel_was_projected(tmp_path):
    """Per panel: the method, the exact solves and exact checks of a tracked plane, a lower
    bound on the share of the exact top-two variance it held at every keyframe (that it is one
    is tested in test_project.py), the share of variance on the drawn axes (checked here with
    numpy)."""
    from layerfilm import pca

    run = write_run(tmp_path / "run", n=4, seed=3, d=80, blocks=2, vocab=120)
    render(run, tmp_path / "f.gif", "--fps", "2", "--size", "128x72")
    panels = json.loads((tmp_path / "f.gif.json").read_text())["projection"]["panels"]
    assert [p["label"] for p in panels] == ["embed", "L0", "L1"]
    for p in panels:
        assert p["method"] == "tracked pca" and p["keyframes"] == 4 and p["exact"] >= 1
        assert 0.99 <= p["captured_min"] <= 1.0 and 0 < p["share_min"] <= p["share_max"] <= 1
        assert 0 <= p["exact_checks"] < p["keyframes"]  # a chunk's first keyframe is solved exactly
    # The recorded shares lie within what exact PCA gives at the keyframes (numpy, the embedding).
    from safetensors.numpy import load_file

    exact = []
    for step in (0, 100, 200, 300):
        W = load_file(str(run / f"step_{step:06d}.safetensors"))["transformer.wte.weight"]
        s = np.linalg.svd(W - W.mean(axis=0), compute_uv=False)
        exact.append((s[:2] ** 2).sum() / (s ** 2).sum())
        assert abs(pca.axis_share(W) - exact[-1]) < 1e-6
    assert 0.99 * min(exact) <= panels[0]["share_min"] and panels[0]["share_max"] <= max(exact) + 1e-6


def test_panels_too_wide_for_an_eigendecomposition_render(tmp_path, monkeypatch):
    """The route real-size wide panels take (Llama-1B: 2,000 points x 2,048, beyond
    EXACT_BASIS_MAX), through a whole render with its threads: here every panel is made "too
    wide" by lowering the limits.  From 2026-12-05 to 12-06 every such film crashed (a negative
    seed for the certificate) and only the real-size bench could have shown it.  The film is
    written and decodes, and its manifest records a certified bound in (0, 1] for every panel
    (that it is a lower bound: test_project.py)."""
    from layerfilm import pca

    monkeypatch.setattr(pca, "EXACT_CHECK_MAX", 0)
    monkeypatch.setattr(pca, "EXACT_BASIS_MAX", 16)
    run = write_run(tmp_path / "run", n=4, seed=3, d=80, blocks=2, vocab=120)
    render(run, tmp_path / "f.gif", "--fps", "2", "--size", "128x72", "--frames-per-keyframe", "2")
    assert len(decode(tmp_path / "f.gif")) == 4 * 2 - 1
    panels = json.loads((tmp_path / "f.gif.json").read_text())["projection"]["panels"]
    assert [p["label"] for p in panels] == ["embed", "L0", "L1"]
    for p in panels:
        assert p["method"] == "tracked pca" and p["keyframes"] == 4 and p["exact"] >= 1
        assert 0.0 < p["captured_min"] <= 1.0


def test_render_reads_no_checkpoint_whole_for_the_manifest(tmp_path, run_dir, monkeypatch):
    hashed = []
    original = cache.sha256_file

    def spy(path, use_cache=True):
        hashed.append(path.name)
        return original(path, use_cache)

    monkeypatch.setattr(cache, "sha256_file", spy)
    render(run_dir, tmp_path / "f.gif", "--fps", "2", "--size", "128x72")
    assert hashed == ["f.gif"]  # the film itself, never a checkpoint
    render(run_dir, tmp_path / "g.gif", "--fps", "2", "--size", "128x72", "--verify-inputs")
    doc = json.loads((tmp_path / "g.gif.json").read_text())
    files = sorted(run_dir.glob("step_*.safetensors"))
    assert [f["sha256"] for f in doc["checkpoints"]["files"]] == [sha(f) for f in files]


@pytest.mark.parametrize("verify", [[], ["--verify-inputs"], ["--no-cache"]])
def test_from_manifest_refuses_a_drawn_value_changed_in_place(tmp_path, verify, sent):
    """One drawn weight changed in place, the file's size and modification time restored: the
    layout cache and the digest memo would both take it for the same file.  Found before the
    render (the whole file's sha256 with --verify-inputs) or once it has read the drawn bytes
    (the layouts cached: read for the check alone; --no-cache: as the layouts read them),
    before a frame is made, leaving no film, manifest or temporary behind."""
    import os

    from conftest import plan_of

    run = write_run(tmp_path / "run", n=3)
    render(run, tmp_path / "f.gif", "--fps", "2", "--size", "128x72", *verify)
    target = run / "step_000100.safetensors"
    plan = plan_of(run)
    src = plan.layers[1].sources[0]
    raw = bytearray(target.read_bytes())
    n = int.from_bytes(raw[:8], "little")
    e = json.loads(raw[8:8 + n])[src.tensor]
    row = int(src.index[0])
    at = 8 + n + e["data_offsets"][0] + row * e["shape"][1] * 4
    st = target.stat()
    raw[at:at + 4] = np.float32(123.5).tobytes()
    target.write_bytes(bytes(raw))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert target.stat().st_size == st.st_size and target.stat().st_mtime_ns == st.st_mtime_ns
    sent.clear()
    result = runner.invoke(app, ["render", "--from-manifest", str(tmp_path / "f.gif.json"),
                                 str(tmp_path / "g.gif")])
    assert result.exit_code == 1 and sent == []  # no frame made
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "step_000100.safetensors: changed since" in lines[0], result.output
    assert ("sha256 differs" if "--verify-inputs" in verify else "read_xxh3 differs") in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.gif", "f.gif.json", "run"]


def test_a_manifest_with_the_older_read_sha256_is_checked_with_sha256(tmp_path):
    """Manifests written before read_xxh3 recorded the sha256 of the drawn bytes: they are
    checked with it -- accepted while the drawn bytes are the same, refused when one changes."""
    run = write_run(tmp_path / "run", n=3)
    render(run, tmp_path / "f.gif", "--fps", "2", "--size", "128x72")
    path = tmp_path / "f.gif.json"
    doc = json.loads(path.read_text())
    for entry in doc["checkpoints"]["files"]:
        assert entry.pop("read_xxh3") == drawn_digest(run / entry["path"], run)
        entry["read_sha256"] = drawn_digest(run / entry["path"], run, digest="sha256")
    path.write_text(json.dumps(doc))
    assert "identical to the film recorded" in \
        render("--from-manifest", path, tmp_path / "g.gif").output
    doc["checkpoints"]["files"][1]["read_sha256"] = "0" * 64  # as if the bytes had changed
    path.write_text(json.dumps(doc))
    result = runner.invoke(app, ["render", "--from-manifest", str(path), str(tmp_path / "h.gif")])
    assert result.exit_code == 1 and "read_sha256 differs" in result.output
    assert not (tmp_path / "h.gif").exists()


def test_from_manifest_accepts_an_untouched_copy_with_new_times(tmp_path):
    import os
    import shutil

    run = write_run(tmp_path / "run", n=3)
    render(run, tmp_path / "f.gif", "--fps", "2", "--size", "128x72")
    moved = tmp_path / "elsewhere" / "run"  # the film shows the run's name
    shutil.copytree(run, moved)
    for f in moved.iterdir():
        os.utime(f, (1, 1))
    result = render("--from-manifest", tmp_path / "f.gif.json", moved, tmp_path / "g.gif")
    assert "identical to the film recorded" in result.output


# Read once: the drawn bytes are hashed as the film reads them, never read again for the
# manifest or for --from-manifest's check.

def _big_run(folder):
    """fp16 checkpoints whose drawn rows lie well past the first 64 KiB (read with the
    header), some tensors drawn by rows (a subset), some by columns (whole)."""
    run = write_run(folder, n=4, d=64, vocab=3000, dtype=np.float16)
    assert min(f.stat().st_size for f in run.glob("*.safetensors")) > 8 * 65536
    return run


def _fetched_once(fetched, names):
    """Each file's drawn rows fetched in exactly one ranged read, no byte of it twice."""
    from collections import Counter

    from layerfilm.checkpoints import coalesce

    assert Counter(name for name, _ in fetched) == {n: 1 for n in names}, fetched
    for name, ranges in fetched:
        assert sum(e - s for s, e in ranges) == sum(e - s for s, e in coalesce(ranges)), name


def _read_digests_are_the_files(doc, run):
    """Every entry's digests equal XXH3-128 and sha256 computed here over the file's bytes."""
    import xxhash

    files = sorted(run.glob("*.safetensors"))
    assert [e["path"] for e in doc["checkpoints"]["files"]] == [f.name for f in files]
    for entry, f in zip(doc["checkpoints"]["files"], files):
        drawn = drawn_bytes(f, run)
        assert entry["read_xxh3"] == xxhash.xxh3_128(drawn).hexdigest(), f.name
        assert entry["read_bytes"] == len(drawn) and entry["header_sha256"] == header_sha(f)


def test_the_drawn_bytes_are_hashed_as_the_film_reads_them(tmp_path, fetched):
    """The manifest's digests equal XXH3-128 over the drawn bytes read by plain file reads;
    a render fetches each file's drawn rows once, and nothing reads them again for the
    manifest.  A re-render from the cache reads nothing (the digests were remembered as the
    first render read); with that memo gone they are read once, by the manifest."""
    from layerfilm import cache

    run = _big_run(tmp_path / "run")
    names = sorted(f.name for f in run.glob("*.safetensors"))
    docs = []
    for i, (flags, reads) in enumerate([(["--no-cache"], names), ([], names), ([], []),
                                        ("memo gone", names)]):
        if flags == "memo gone":
            shutil.rmtree(cache.cache_dir() / "read-digests")
            flags = []
        fetched.clear()
        render(run, tmp_path / f"f{i}.gif", "--fps", "2", "--size", "160x90", *flags)
        _fetched_once(fetched, reads)
        docs.append(json.loads((tmp_path / f"f{i}.gif.json").read_text()))
        _read_digests_are_the_files(docs[-1], run)
    assert all(d["checkpoints"]["files"] == docs[0]["checkpoints"]["files"] for d in docs)


@pytest.mark.parametrize("flags", [["--no-cache"], []])
def test_from_manifest_reads_the_drawn_bytes_once(tmp_path, fetched, flags):
    """The check of the drawn bytes is made on what the render reads, not by reading them
    before it: once per file, whether the render reads them (no cache) or only the check does
    (layouts from the cache, whose keys cannot see a value changed in place)."""
    run = _big_run(tmp_path / "run")
    names = sorted(f.name for f in run.glob("*.safetensors"))
    render(run, tmp_path / "f.gif", "--fps", "2", "--size", "160x90", *flags)
    fetched.clear()
    result = render("--from-manifest", tmp_path / "f.gif.json", tmp_path / "g.gif")
    assert "identical to the film recorded" in result.output
    _fetched_once(fetched, names)
    doc = json.loads((tmp_path / "g.gif.json").read_text())
    assert doc["checkpoints"]["files"] == \
        json.loads((tmp_path / "f.gif.json").read_text())["checkpoints"]["files"]
    _read_digests_are_the_files(doc, run)


def test_a_sharded_run_is_hashed_shard_by_shard_as_it_is_read(tmp_path, fetched):
    """Checkpoint folders of two safetensors shards and an index: each shard's digests are made
    as its rows are fetched (one read per shard) and equal the bytes' own."""
    from safetensors.numpy import load_file, save_file

    flat = _big_run(tmp_path / "flat")
    run = tmp_path / "run"
    for f in sorted(flat.glob("*.safetensors")):
        sd, folder = load_file(str(f)), run / f"checkpoint-{int(f.stem.split('_')[1])}"
        folder.mkdir(parents=True)
        names = sorted(sd)
        shards = {"model-00001-of-00002.safetensors": names[::2],
                  "model-00002-of-00002.safetensors": names[1::2]}
        for shard, keys in shards.items():
            save_file({k: sd[k] for k in keys}, str(folder / shard))
        (folder / "model.safetensors.index.json").write_text(json.dumps(
            {"weight_map": {k: shard for shard, keys in shards.items() for k in keys}}))
    fetched.clear()
    render(run, tmp_path / "f.gif", "--fps", "2", "--size", "160x90", "--no-cache")
    shard_files = sorted(run.glob("*/*.safetensors"))
    from collections import Counter

    assert Counter(name for name, _ in fetched) == Counter(f.name for f in shard_files)
    entries = {e["path"]: e for e in json.loads((tmp_path / "f.gif.json").read_text())
               ["checkpoints"]["files"]}
    import xxhash

    for f in shard_files:
        entry = entries[f"{f.parent.name}/{f.name}"]
        assert entry["read_xxh3"] == xxhash.xxh3_128(drawn_bytes(f, run)).hexdigest()
        assert entry["header_sha256"] == header_sha(f) and "sha256" not in entry
