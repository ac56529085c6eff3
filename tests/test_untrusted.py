"""Untrusted inputs (issue #29, the loading side), against real files, real processes and
moto's S3 server: names from outside never lead out of their folder; JSON nesting is bounded
(and the JSON and safetensors header parsers survive seeded random nesting and sizes); declared
sizes meet a memory budget and the panels the frame before any data is read; interrupted
remote renders remove their downloads; listings are retried; a checkpoint seen again through
a symbolic link is not a second one.  docs/security.md names each test."""

from __future__ import annotations

import json
import os
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from layerfilm.cli import app
from layerfilm.errors import CheckpointError

from conftest import gpt_state, write_run
from servers import Proxy, s3_put, tree

# Fixtures shared with the S3 tests: moto's server and the proxy that points fsspec at it.
try:
    from test_remote_s3 import moto, s3  # noqa: F401
except pytest.skip.Exception:  # no s3fs or moto here: the tests that need them skip
    pass

runner = CliRunner()
FAST = ["--fps", "2", "--size", "128x72", "-q", "--no-cache"]


def cli(*args):
    return runner.invoke(app, [*map(str, args)])


def one_line(result, start: str, words: str) -> str:
    """The one error line of ``result`` (exit 1, no traceback), checked."""
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert lines[0].startswith(f"layerfilm: error: {start}: ") and words in lines[0], lines[0]
    return lines[0]


# ---- names from outside: object keys with .. ----------------------------------------------

@pytest.fixture
def escape_bucket(tmp_path, request):
    """A bucket whose run holds a Distributed Checkpoint folder (step 100, between two good
    checkpoints) with object keys that climb out of it: ``run/step-100/../../../..<tmp>/x``,
    one naming a file that exists (``victim.txt``), one a new file."""
    pytest.importorskip("s3fs")
    pytest.importorskip("moto")
    moto = request.getfixturevalue("moto")
    request.getfixturevalue("s3")
    run = write_run(tmp_path / "run", n=2, every=200)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.txt").write_text("original")
    up = "../" * 40  # more than enough to reach / from any download folder
    files = {f"run/{k}": p for k, p in tree(run).items()}
    files["run/step-100/.metadata"] = b"never read"
    files["run/step-100/__0_0.distcp"] = b"never read"
    for name in ("victim.txt", "new.txt"):
        files[f"run/step-100/{up}{str(outside / name).lstrip('/')}"] = b"written by the bucket"
    bucket = "dots-" + tmp_path.name.lower().replace("_", "-")[-40:].strip("-")
    s3_put(moto, bucket, files)
    return f"s3://{bucket}/run", outside


def _untouched(outside):
    assert sorted(p.name for p in outside.iterdir()) == ["victim.txt"]
    assert (outside / "victim.txt").read_text() == "original"


@pytest.mark.parametrize("command", ["render", "info", "stats", "render --keep-downloads"])
def test_object_keys_with_dots_are_refused_and_nothing_is_written_outside(tmp_path, escape_bucket,
                                                                          command):
    url, outside = escape_bucket
    args = {"render": ["render", url, tmp_path / "f.gif", *FAST],
            "info": ["info", url],
            "stats": ["stats", url, "--out", tmp_path / "st", "-q"]}[command.split()[0]]
    args += command.split()[1:]
    line = one_line(cli(*args), f"{url}/step-100", "refused object name '..'")
    assert "leads outside its folder" in line
    _untouched(outside)
    kept = Path(os.environ["LAYERFILM_CACHE_DIR"]) / "downloads"
    assert not kept.exists() or not any(kept.rglob("*.distcp"))  # refused before any download
    assert not (tmp_path / "f.gif").exists() and not (tmp_path / "st").exists()
    skipped = cli(*args, "--skip-bad")
    assert skipped.exit_code == 0, skipped.output
    assert f"skipped {url}/step-100: refused object name '..'" in skipped.output \
        or f"skipped     {url}/step-100: refused object name '..'" in skipped.output, skipped.output
    _untouched(outside)


def test_manifest_entries_with_dots_are_refused(tmp_path):
    """--from-manifest checks each listed file: a manifest naming ``../secret`` is refused
    before that file is looked at, one line naming the manifest."""
    run = write_run(tmp_path / "run", n=3)
    assert cli("render", run, tmp_path / "f.gif", *FAST).exit_code == 0
    manifest = tmp_path / "f.gif.json"
    doc = json.loads(manifest.read_text())
    doc["checkpoints"]["files"][1]["path"] = "../secret/step_000100.safetensors"
    manifest.write_text(json.dumps(doc))
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "step_000100.safetensors").write_bytes(b"")
    result = cli("render", "--from-manifest", manifest, tmp_path / "g.gif")
    one_line(result, str(manifest), "refused file entry '../secret/step_000100.safetensors'")
    assert not (tmp_path / "g.gif").exists()


# ---- JSON nested 200,000 levels deep --------------------------------------------------------

DEEP = 200_000


def _deep(inner: str = "1", depth: int = DEEP) -> str:
    return "[" * depth + inner + "]" * depth


def _deep_header(run):
    p = run / "checkpoint-200" / "model.safetensors"
    header = _deep().encode()
    p.write_bytes(struct.pack("<Q", len(header)) + header)
    return p


def _deep_index(run):
    folder = run / "checkpoint-200"
    p = folder / "model.safetensors.index.json"
    (folder / "model.safetensors").rename(folder / "model-00001-of-00001.safetensors")
    p.write_text('{"weight_map": ' + _deep('"model-00001-of-00001.safetensors"') + "}")
    return p


def _deep_side_file(name):
    def corrupt(run):
        place = run if name == "metrics.jsonl" or name == "config.json" else run / "checkpoint-200"
        p = place / name
        text = _deep(depth=DEEP if name != "config.json" else 100_000)  # config.json: <= 256 kB read
        if name == "metrics.jsonl":
            text = '{"step": 0, "loss": 2.0}\n' + text + '\n{"step": 300, "loss": 1.0}\n'
        elif name == "trainer_state.json":
            text = '{"global_step": 200, "log_history": ' + text + "}"
        else:
            text = '{"model_type": ' + text + "}"
        p.write_text(text)
        return p
    return corrupt


# (corrupt the run, the problem printed, or None: a side file left out, the film made)
DEEP_CASES = {
    "safetensors header": (_deep_header, "corrupt safetensors header (JSON nested deeper than 64"),
    "sharded index": (_deep_index, "not a sharded-checkpoint index (JSON nested deeper than 64"),
    "metrics.jsonl": (_deep_side_file("metrics.jsonl"), None),
    "trainer_state.json": (_deep_side_file("trainer_state.json"), None),
    "config.json": (_deep_side_file("config.json"), None),
}


@pytest.mark.parametrize("case", list(DEEP_CASES))
def test_deeply_nested_json_is_one_line_or_skipped(tmp_path, case):
    corrupt, problem = DEEP_CASES[case]
    run = write_run(tmp_path / "run", n=4, name="checkpoint-{step}/model.safetensors")
    bad = corrupt(run)
    out = tmp_path / "out" / "f.gif"
    out.parent.mkdir()
    result = cli("render", run, out, *FAST)
    if problem is None:  # a log or config that cannot be read is left out, as any bad one
        assert result.exit_code == 0 and "Traceback" not in result.output, result.output
        assert out.exists()
        assert cli("info", run).exit_code == 0
        return
    one_line(result, str(bad), problem)
    assert list(out.parent.iterdir()) == []
    skipped = cli("render", run, out, *FAST, "--skip-bad")
    assert skipped.exit_code == 0, skipped.output
    assert f"warning: skipped {bad}: {problem}" in skipped.output
    info = cli("info", run, "--skip-bad")
    assert info.exit_code == 0 and "keyframes   3 checkpoints" in info.output, info.output


# ---- fuzzing the parsers: random nesting, random sizes ---------------------------------------

def _nested(rng, depth: int):
    """A random JSON value nested exactly ``depth`` levels (brackets inside strings too)."""
    value = rng.choice(["x", 1, 2.5, None, True, "[{\\\"}]"])
    for _ in range(depth):
        if rng.random() < 0.5:
            value = [value, "]]}{"] if rng.random() < 0.5 else [value]
        else:
            value = {"k[": value, "n": int(rng.integers(0, 9))}
    return value


def test_json_loading_fuzz_depth_limit():
    from layerfilm.untrusted import MAX_JSON_DEPTH, JSONTooDeep, json_depth, load_json

    rng = np.random.default_rng(29)
    for _ in range(300):
        depth = int(rng.integers(0, 3 * MAX_JSON_DEPTH))
        value = _nested(rng, depth)
        text = json.dumps(value, indent=None if rng.random() < 0.5 else 1)
        assert json_depth(text) == depth
        if depth <= MAX_JSON_DEPTH:
            assert load_json(text.encode()) == value
        else:
            with pytest.raises(JSONTooDeep):
                load_json(text.encode())
    for _ in range(200):  # random bytes: parsed, or a ValueError, never anything else
        raw = bytes(rng.choice(list(b'[]{}":,\\ 1a'), size=int(rng.integers(0, 400))).tolist())
        try:
            load_json(raw)
        except ValueError:
            pass
    # Nested far past the recursion limit, with strings, escapes and stray bytes on the way
    # (what json_depth drops before it counts): refused as too deep or bad, never recursed into.
    pieces = [b"[", b"{\"k\":", b'"\\"",', b'"[\\\\",', b"\\", b'"', b"\xc3\xa9", b"1,"]
    for _ in range(50):
        raw = b"".join(pieces[i] for i in rng.integers(0, len(pieces), size=4000))
        assert raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH
        try:
            load_json(raw)
        except ValueError:
            pass
    assert json_depth('{"a\\"[": [["]\\\\", {"\\u005b": []}]]}') == 5  # escapes and brackets in strings


def _header_file(path, header: bytes, declared: int | None = None, data: int = 0):
    path.write_bytes(struct.pack("<Q", len(header) if declared is None else declared) + header
                     + b"\0" * data)
    return path


def test_safetensors_header_fuzz_nesting_and_huge_sizes(tmp_path):
    """Random headers -- nested values, shapes of up to 10^12 per dimension, offsets past the
    end, wrong header lengths -- either open or raise :class:`CheckpointError`, quickly and
    without reading data."""
    from layerfilm.checkpoints import SafetensorsFile

    rng = np.random.default_rng(6)
    opened = refused = 0
    for i in range(400):
        shape = [int(rng.choice([0, 1, 3, 10**6, 10**12])) for _ in range(int(rng.integers(0, 4)))]
        n = int(np.prod(shape, dtype=object)) * 4 if shape else 4
        entry = {"dtype": str(rng.choice(["F32", "F16", "I64", "X9"])), "shape": shape,
                 "data_offsets": [0, n if rng.random() < 0.7 else int(rng.integers(0, 99))]}
        header = {"w": entry, "__metadata__": {"step": "1"}}
        kind = rng.integers(0, 4)
        if kind == 1:
            header["w"] = _nested(rng, int(rng.integers(0, 200)))
        elif kind == 2:
            header = _nested(rng, int(rng.integers(0, 200)))
        raw = json.dumps(header).encode()
        declared = None if rng.random() < 0.8 else int(rng.choice([0, 7, len(raw) + 5, 2**63]))
        path = _header_file(tmp_path / f"f{i}.safetensors", raw, declared, data=int(rng.integers(0, 64)))
        try:
            SafetensorsFile(path).shapes()
            opened += 1
        except CheckpointError as e:
            assert str(e).startswith(f"{path}: ") and "\n" not in str(e)
            refused += 1
    assert opened and refused


def test_safetensors_header_like_one_checked_before(tmp_path):
    """A run's files share their tensors' entries, not their metadata: a header whose tensors
    equal, as parsed, those of one checked before (with a data section as long) takes that
    check's entries; a float where an int was, or a shorter data section, is checked afresh
    and refused as it always was."""
    from layerfilm.checkpoints import SafetensorsFile
    from layerfilm.checkpoints.formats import safetensors as st

    tensors = {"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}
    values = np.arange(4, dtype="<f4")

    def write(name, header, data=values.tobytes()):
        raw = json.dumps(header).encode()
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
        return path

    a = SafetensorsFile(write("a", {"__metadata__": {"loss": "1.5"}, **tensors}))
    b = SafetensorsFile(write("b", {"__metadata__": {"loss": 2.25}, **tensors}))
    assert b._entries is a._entries and b.metadata == {"loss": "2.25"}
    np.testing.assert_array_equal(b.read("w"), values.reshape(2, 2))
    as_float = {"w": {**tensors["w"], "data_offsets": [0, 16.0]}}
    with pytest.raises(CheckpointError, match="invalid data offsets"):
        SafetensorsFile(write("c", as_float))
    with pytest.raises(CheckpointError, match="truncated"):
        SafetensorsFile(write("d", tensors, data=values.tobytes()[:8]))
    assert any(entries is a._entries for _, _, entries, _ in st._CHECKED)


# ---- declared sizes: memory and panels checked at plan time ---------------------------------

def _sparse_run(folder, rows: int, width: int):
    """Two checkpoints of one BF16 token embedding ``rows x width``, backed by sparse files
    (a few kB on disk, terabytes declared); skipped where the file system cannot hold them."""
    folder.mkdir()
    for step in (0, 100):
        header = json.dumps({"transformer.wte.weight": {
            "dtype": "BF16", "shape": [rows, width], "data_offsets": [0, rows * width * 2]}}).encode()
        path = folder / f"step_{step:06d}.safetensors"
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(header)) + header)
            try:
                f.truncate(8 + len(header) + rows * width * 2)
            except OSError as e:
                pytest.skip(f"no sparse file of {rows * width * 2} bytes here: {e}")
    return folder


def test_a_declared_huge_tensor_is_refused_before_it_is_read(tmp_path):
    """10^5 x 10^7 BF16 (2 TB declared, sparse): its 2,000 drawn rows take 40 GB as stored
    and 80 GB widened.  Refused at plan time against the memory available, and against
    --max-memory, in render, info and stats; nothing written."""
    run = _sparse_run(tmp_path / "run", 10**5, 10**7)
    first = run / "step_000000.safetensors"
    result = cli("info", run)
    line = one_line(result, str(first), "reading the drawn points would take about 240.0 GB")
    assert "tensor 'transformer.wte.weight', shape [100000, 10000000]" in line
    assert "of available memory" in line
    out = tmp_path / "out" / "f.gif"
    out.parent.mkdir()
    for args in (["render", run, out, *FAST], ["stats", run, "--out", tmp_path / "out" / "s", "-q"]):
        one_line(cli(*args, "--max-memory", "1GiB"), str(first), "more than the 1.1 GB of --max-memory")
    assert list(out.parent.iterdir()) == []


def test_max_memory_option(tmp_path, run_dir):
    from layerfilm.config import parse_memory

    assert [parse_memory(t) for t in ("8G", "512M", "1.5GiB", "1000", "2 kb")] == \
        [8 * 10**9, 512 * 10**6, 3 * 2**29, 1000, 2000]
    bad = cli("render", run_dir, tmp_path / "f.gif", "--max-memory", "lots")
    assert bad.exit_code == 2 and "--max-memory must be a size such as 8G" in bad.output
    small = cli("info", run_dir, "--max-memory", "10k")  # the tiny run needs ~100 kB
    one_line(small, str(run_dir / "step_000000.safetensors"), "of --max-memory")
    assert cli("info", run_dir, "--max-memory", "1M").exit_code == 0


def test_panels_that_cannot_fit_are_refused_before_the_other_checkpoints_are_opened(tmp_path):
    """3,000 panels in a 160x96 frame: refused as soon as they are planned from the first
    checkpoint -- the second, truncated, is never opened (it would be named otherwise)."""
    from safetensors.numpy import save_file

    run = tmp_path / "run"
    run.mkdir()
    sd = {f"w{i}": np.ones((4, 3), np.float32) for i in range(3000)}
    for step in (0, 100):
        save_file(sd, str(run / f"step_{step:06d}.safetensors"))
    late = run / "step_000100.safetensors"
    late.write_bytes(late.read_bytes()[:-10])
    result = cli("render", run, tmp_path / "f.gif", "--layer-pattern", r"^(w\d+)$", "--size", "160x96",
                 "-q")
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert "3000 panels do not fit in a 160x96 frame" in result.output
    assert not (tmp_path / "f.gif").exists()


# ---- interrupted remote renders remove their downloads ---------------------------------------

class HoldingProxy(Proxy):
    """A proxy that holds every GET whose path contains ``match`` until ``release`` is set:
    a download is then surely under way when the test sends its signal."""

    def __init__(self, upstream: str, match: str):
        self.match, self.held, self.release = match, threading.Event(), threading.Event()
        super().__init__(upstream)

    def _handle(self, h) -> None:
        if h.command == "GET" and self.match in h.path:
            self.held.set()
            self.release.wait(120)
        super()._handle(h)


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_interrupted_remote_render_removes_its_downloads(tmp_path, moto, monkeypatch, signame):
    """Torch pickles on S3 are downloaded whole into a ``layerfilm-downloads-*`` folder; a
    render interrupted (a real signal to a real process) while the third is downloading
    exits 130 and leaves no such folder."""
    torch = pytest.importorskip("torch")
    import signal
    import subprocess
    import sys

    rng = np.random.default_rng(0)
    files = {}
    for step in (0, 100, 200):
        path = tmp_path / f"step_{step:06d}.pt"
        torch.save({k: torch.from_numpy(v) for k, v in gpt_state(rng).items()}, path)
        files[f"run/{path.name}"] = path
    s3_put(moto, f"held-{signame.lower()}", files)
    proxy = HoldingProxy(moto, "step_000200")
    temp = tmp_path / "temp"
    temp.mkdir()
    for var, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                       ("AWS_DEFAULT_REGION", "us-east-1"), ("FSSPEC_S3_ENDPOINT_URL", proxy.url),
                       ("TMPDIR", str(temp))):
        monkeypatch.setenv(var, value)
    out = tmp_path / "out" / "f.gif"
    out.parent.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "layerfilm", "render",
                             f"s3://held-{signame.lower()}/run", str(out), "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proxy.held.wait(120), proc.communicate(timeout=60)
        assert [p.name[:len("layerfilm-downloads-")] for p in temp.iterdir()] == \
            ["layerfilm-downloads-"]  # the first two are down, the third is on its way
        proc.send_signal(getattr(signal, signame))
        _, err = proc.communicate(timeout=60)
    finally:
        proxy.release.set()
        if proc.poll() is None:
            proc.kill()
        proxy.close()
    assert proc.returncode == 130, err
    assert err.decode().strip() == "layerfilm: error: interrupted; no output was written"
    assert list(temp.iterdir()) == [] and list(out.parent.iterdir()) == []


# ---- listings retried; the same checkpoint through a symbolic link ---------------------------

def test_s3_listings_are_retried_like_reads(tmp_path, moto, s3):
    """Two 503s on listings (the root's first): retried, the film made, the retries counted;
    a listing that keeps failing is one line, not a folder that seems missing."""
    run = write_run(tmp_path / "run", n=3)
    s3_put(moto, "listed-twice", {f"run/{k}": p for k, p in tree(run).items()})
    s3.fail(503, n=2, match="list-type")
    result = cli("render", "s3://listed-twice/run", tmp_path / "f.gif", *FAST)
    assert result.exit_code == 0, result.output
    listings = [e for e in s3.gets("list-type")]
    assert [e[3] for e in listings[:3]] == [503, 503, 200]
    assert json.loads((tmp_path / "f.gif.json").read_text())["checkpoints"]["remote"]["retries"] == 2
    s3.clear()
    s3.fail(503, n=-1, match="list-type")
    failed = cli("info", "s3://listed-twice/run")
    line = one_line(failed, "s3://listed-twice/run", "gave up after 5 tries")
    assert "no such folder" not in line


def test_a_symlink_to_the_folder_itself_or_a_checkpoint_is_not_a_second_checkpoint(tmp_path):
    run = write_run(tmp_path / "run", n=4)
    (run / "self").symlink_to(".")
    (run / "again").symlink_to(run)
    (run / "step_000300_best.safetensors").symlink_to(run / "step_000300.safetensors")
    info = cli("info", run)
    assert info.exit_code == 0, info.output
    assert "keyframes   4 checkpoints" in info.output
    assert f"skipped     {run / 'step_000300_best.safetensors'}: the same file as " \
           f"{run / 'step_000300.safetensors'}" in info.output, info.output
    result = cli("render", run, tmp_path / "f.gif", *FAST)
    assert result.exit_code == 0, result.output
    # Two different files that claim one step are still refused.
    (run / "step_000300_best.safetensors").unlink()
    (run / "step_000300_best.safetensors").write_bytes((run / "step_000300.safetensors").read_bytes())
    one_line(cli("info", run), str(run / "step_000300_best.safetensors"), "has the same step (300)")
