import json
import struct
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from layerfilm.checkpoints import (SafetensorsFile, discover, load_loss_curve, open_checkpoint,
                                   parse_step)
from layerfilm.errors import CheckpointError

from conftest import spy_local_reads, write_run


@pytest.mark.parametrize("name, step", [
    ("step_000100.safetensors", 100),
    ("checkpoint-300/model.safetensors", 300),
    ("iter-2500.pt", 2500),
    ("ckpt_700.pth", 700),
    ("epoch=1-step=900.ckpt", 900),
    ("model_12.safetensors", 12),
    ("model.safetensors", None),
])
def test_parse_step(tmp_path, name, step):
    assert parse_step(tmp_path / name, tmp_path) == step


def test_discover_orders_by_step_not_name(tmp_path):
    folder = tmp_path / "hf"
    for s in (1000, 200, 30):  # name order would be 1000, 200, 30
        write_run(folder, n=1, seed=s, name=f"checkpoint-{s}/model.safetensors")
    # The final model: no step in its name, nor in its metadata (as save_pretrained writes it).
    save_file({"w": np.ones((2, 2), np.float32)}, str(folder / "model.safetensors"), metadata={"format": "pt"})
    refs, skipped = discover(folder)
    assert [r.step for r in refs] == [30, 200, 1000]
    assert refs[0].path == folder / "checkpoint-30" / "model.safetensors"
    assert [(p.name, why) for p, why in skipped] == [("model.safetensors", "no training step in its name or inside it")]
    # A step-less file whose header records its step is placed by it.
    save_file({"w": np.ones((2, 2), np.float32)}, str(folder / "model.safetensors"), metadata={"global_step": "500"})
    refs, skipped = discover(folder)
    assert [r.step for r in refs] == [30, 200, 500, 1000] and not skipped


def test_discover_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no such folder"):
        discover(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoints found"):
        discover(tmp_path / "empty")
    write_run(tmp_path / "one", n=1)
    with pytest.raises(CheckpointError, match="only one checkpoint"):
        discover(tmp_path / "one")
    run = write_run(tmp_path / "dup", n=2)
    (run / "step_000100.safetensors").rename(run / "iter_100.safetensors")
    (run / "step_100.safetensors").write_bytes((run / "iter_100.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match=r"same step \(100\)"):
        discover(run)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_reader_matches_safetensors_library(tmp_path, dtype):
    rng = np.random.default_rng(1)
    tensors = {"a": rng.normal(size=(7, 5)).astype(dtype), "b": rng.normal(size=(3,)).astype(dtype),
               "empty": np.zeros((0, 4), dtype)}
    save_file(tensors, str(tmp_path / "x.safetensors"), metadata={"step": "5"})
    ours, ref = SafetensorsFile(tmp_path / "x.safetensors"), load_file(str(tmp_path / "x.safetensors"))
    assert ours.metadata == {"step": "5"}
    assert ours.shapes() == {k: v.shape for k, v in ref.items()}
    for k in ref:
        np.testing.assert_array_equal(ours.read(k), ref[k].astype(np.float32))
    idx = np.array([0, 3, 6])
    np.testing.assert_array_equal(ours.read("a", idx, 0), ref["a"][idx].astype(np.float32))
    np.testing.assert_array_equal(ours.read("a", np.array([1, 4]), 1), ref["a"][:, [1, 4]].T.astype(np.float32))


def test_bf16_is_widened_exactly(tmp_path):
    # bfloat16 is the top half of a float32: build the file by hand, numpy has no bf16.
    values = np.array([[1.0, -2.5], [3.140625, 1e-3]], dtype=np.float32)
    bf16 = (values.view(np.uint32) >> 16).astype("<u2")
    header = json.dumps({"w": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 8]}}).encode()
    (tmp_path / "b.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bf16.tobytes())
    got = SafetensorsFile(tmp_path / "b.safetensors").read("w")
    expected = (bf16.astype(np.uint32) << 16).view(np.float32)
    np.testing.assert_array_equal(got, expected)
    assert got[0, 0] == 1.0 and got[0, 1] == -2.5
    f = SafetensorsFile(tmp_path / "b.safetensors")
    np.testing.assert_array_equal(f.read("w", np.array([1]), 0), expected[[1]])
    np.testing.assert_array_equal(f.read("w", np.array([0, 1]), 1), expected.T)
    np.testing.assert_array_equal(f.read("w", np.array([1]), 1), expected[:, [1]].T)


def _header_file(path, header: dict, data: bytes = b"", declared=None):
    raw = json.dumps(header).encode()
    n = len(raw) if declared is None else declared
    path.write_bytes(struct.pack("<Q", n) + raw + data)
    return path


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_bytes(b""), "empty file"),
    (lambda p: p.write_bytes(b"\x01\x02"), "truncated header"),
    (lambda p: _header_file(p, {}, declared=10**6), "corrupt safetensors header"),
    (lambda p: p.write_bytes(struct.pack("<Q", 4) + b"{{{{"), "not valid JSON"),
    (lambda p: _header_file(p, {"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}, b"\0" * 8),
     "truncated: tensor 'w'"),
    (lambda p: _header_file(p, {"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}}, b"\0" * 16),
     "declares 12 bytes but its shape needs 16"),
    (lambda p: _header_file(p, {"w": {"dtype": "F32", "shape": [-2, 2], "data_offsets": [0, 0]}}),
     "invalid shape"),
])
def test_bad_safetensors_named_in_one_line(tmp_path, make, message):
    path = tmp_path / "bad.safetensors"
    make(path)
    with pytest.raises(CheckpointError, match=message) as e:
        open_checkpoint(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_a_plan_reads_each_header_once_and_the_loss_from_it(tmp_path, monkeypatch):
    # The loss in the checkpoints' metadata comes from the headers the plan read to check
    # them, not from opening every file again (which took a third of planning 180 files).
    from conftest import plan_of

    run = write_run(tmp_path / "run", n=4)
    opened = []
    original = SafetensorsFile.__init__

    def counted(self, path, *args, **kwargs):
        opened.append(Path(str(path)).name)
        original(self, path, *args, **kwargs)

    monkeypatch.setattr(SafetensorsFile, "__init__", counted)
    plan = plan_of(run)
    assert sorted(opened) == sorted(Path(str(r.path)).name for r in plan.refs)  # once each
    want = load_loss_curve(run, discover(run)[0])  # the files opened for it (the old way)
    assert plan.loss.source == want.source == "checkpoint metadata"
    np.testing.assert_array_equal(plan.loss.steps, want.steps)
    np.testing.assert_array_equal(plan.loss.values, want.values)


def test_loss_curve_sources(tmp_path):
    run = write_run(tmp_path / "run", n=3)
    curve = load_loss_curve(run, discover(run)[0])
    assert curve.source == "checkpoint metadata"
    assert curve.at(150) == pytest.approx(2.0) and curve.at(-1) is None
    with open(run / "metrics.jsonl", "w") as f:
        for s in range(0, 300, 10):
            f.write(json.dumps({"step": s, "loss": 1.0 / (s + 1)}) + "\n")
        f.write("not json\n")
    curve = load_loss_curve(run)
    assert len(curve.steps) == 30 and curve.at(25) == pytest.approx(1 / 21)
    (run / "metrics.jsonl").unlink()
    (run / "trainer_state.json").write_text(json.dumps(
        {"global_step": 20, "log_history": [{"step": 10, "loss": 0.5}, {"step": 20, "eval_loss": 1},
                                            {"step": 20, "loss": 0.25}]}))
    curve = load_loss_curve(run)
    assert list(curve.steps) == [10, 20] and curve.at(20) == 0.25


@pytest.mark.parametrize("name, step", [
    ("300/model.safetensors", 300),  # a folder named only by its step
    ("version_0/checkpoints/last.ckpt", None),  # Lightning's logger version is not a step
    ("step-700/model.safetensors.index.json", 700),
])
def test_parse_step_parents(tmp_path, name, step):
    assert parse_step(tmp_path / name, tmp_path) == step


def test_header_is_validated_before_any_data_is_read(tmp_path, monkeypatch):
    reads = []
    spy_local_reads(monkeypatch, lambda path, ranges: reads.append((path, ranges)))
    good = tmp_path / "good.safetensors"
    save_file({"w": np.ones((512, 512), np.float32)}, str(good))  # more than the header's read
    opened = SafetensorsFile(good)  # opening validates the header only
    bad = _header_file(tmp_path / "bad.safetensors",
                       {"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}}, b"\0" * 32)
    with pytest.raises(CheckpointError, match="truncated: tensor 'w' ends at byte 64"):
        SafetensorsFile(bad)
    assert reads == []
    np.testing.assert_array_equal(opened.read("w"), np.ones((512, 512)))  # reading data reads it
    assert [p for p, _ in reads] == [good]


def test_local_reads_only_the_drawn_rows_and_keep_nothing(tmp_path, monkeypatch):
    """Local files are read by byte ranges: the drawn rows of a row-drawn tensor (coalesced),
    the whole tensor when it is drawn by columns, values equal to safetensors' own reader, and
    nothing kept after the read (a second read reads again), rows read ahead kept only until
    they are read."""
    from safetensors.numpy import load_file

    reads = []
    spy_local_reads(monkeypatch, lambda path, ranges: reads.append(ranges))
    rng = np.random.default_rng(0)
    path = tmp_path / "m.safetensors"
    save_file({"a": rng.normal(size=(1024, 32)).astype(np.float16),
               "b": rng.normal(size=(1024, 48)).astype(np.float32)}, str(path))
    want = load_file(str(path))
    f = SafetensorsFile(path)
    rows = np.array([1001, 1002, 1003, 1010, 1023])  # past the header's first read
    np.testing.assert_array_equal(f.read("a", rows), want["a"][rows].astype(np.float32))
    start = f.byte_ranges("a")[0][0]
    assert reads[-1] == [(start + 1001 * 64, start + 1004 * 64),
                         (start + 1010 * 64, start + 1011 * 64),
                         (start + 1023 * 64, start + 1024 * 64)]
    cols = np.array([0, 5, 47])
    np.testing.assert_array_equal(f.read("b", cols, axis=1), want["b"][:, cols].T)
    (s, e), = f.byte_ranges("b")  # the whole tensor, less what came with the header
    assert e - s == 1024 * 48 * 4 and reads[-1] == [(max(s, len(f._head)), e)]
    n = len(reads)
    f.read("a", rows)
    assert len(reads) == n + 1 and f._fetched == {}
    # Read ahead (the next checkpoint, while this one is projected): one read for both
    # tensors, then none; each tensor's bytes let go as soon as it has been read.
    g = SafetensorsFile(path)
    n = len(reads)
    g.prefetch([("a", rows, 0), ("b", cols, 1)])
    assert len(reads) == n + 1 and len(g._fetched) == 2
    n = len(reads)
    np.testing.assert_array_equal(g.read("b", cols, axis=1), want["b"][:, cols].T)
    assert len(g._fetched) == 1
    np.testing.assert_array_equal(g.read("a", rows), want["a"][rows].astype(np.float32))
    assert len(reads) == n and g._fetched == {}


def test_sharded_checkpoint_reads_ahead_shard_by_shard(tmp_path, monkeypatch):
    # The next checkpoint is read while this one is projected, sharded ones too: one read
    # per shard for the drawn rows it holds, then none while the layers are read.
    reads = []
    spy_local_reads(monkeypatch, lambda path, ranges: reads.append(path.name))
    rng = np.random.default_rng(2)
    want = {"a": rng.normal(size=(2000, 64)).astype(np.float32),
            "b": rng.normal(size=(64, 3000)).astype(np.float16)}
    save_file({"a": want["a"]}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({"b": want["b"]}, str(tmp_path / "model-00002-of-00002.safetensors"))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    ckpt = open_checkpoint(tmp_path / "model.safetensors.index.json")
    rows, cols = np.array([3, 500, 1999]), np.array([0, 9, 2999])
    reads.clear()
    ckpt.prefetch([("a", rows, 0), ("b", cols, 1), ("missing", rows, 0)])
    assert sorted(reads) == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    np.testing.assert_array_equal(ckpt.read("a", rows), want["a"][rows])
    np.testing.assert_array_equal(ckpt.read("b", cols, axis=1), want["b"][:, cols].T.astype(np.float32))
    assert len(reads) == 2


def _union_of(path, wanted) -> bytes:
    """The bytes the reads in ``wanted`` cover (rows of a tensor, or all of it for columns or
    ``None``), each once, in file order: found from the header by hand, read by plain reads."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    covered = np.zeros(len(raw), dtype=bool)
    for name, index, axis in wanted:
        if name not in header:
            continue
        e = header[name]
        begin, end = (8 + n + o for o in e["data_offsets"])
        if index is None or axis == 1:
            covered[begin:end] = True
        else:
            row = (end - begin) // e["shape"][0]
            for r in index:
                covered[begin + r * row:begin + (r + 1) * row] = True
    return np.frombuffer(raw, np.uint8)[covered].tobytes()


def _header_sha(path) -> str:
    import hashlib

    raw = path.read_bytes()
    return hashlib.sha256(raw[:8 + int.from_bytes(raw[:8], "little")]).hexdigest()


@pytest.mark.parametrize("digest", ["xxh3", "sha256"])
def test_prefetch_hashes_what_it_fetches_each_byte_once_in_file_order(tmp_path, digest):
    """Rows of one tensor, its columns (so all of it) and rows of another, asked for in any
    order: the digest is of the bytes they cover, each once, in file order -- what the manifest
    computes from :func:`drawn_ranges` by reading them (its fallback), and what hashing them
    here by hand gives."""
    import hashlib
    import itertools

    import xxhash

    from layerfilm import manifest
    from layerfilm.checkpoints import drawn_ranges

    rng = np.random.default_rng(4)
    path = tmp_path / "m.safetensors"
    save_file({"a": rng.normal(size=(3000, 32)).astype(np.float16),
               "b": rng.normal(size=(2000, 24)).astype(np.float32),
               "c": rng.normal(size=(50, 7)).astype(np.float32)}, str(path))
    wanted = [("b", np.array([5, 6, 7, 1500, 1999]), 0), ("a", np.array([0, 9, 2999]), 0),
              ("a", np.array([3, 4]), 1), ("a", np.array([2998, 2999]), 0)]
    union = _union_of(path, wanted)
    want = {"header_sha256": _header_sha(path), "read_bytes": len(union),
            f"read_{digest}": (xxhash.xxh3_128 if digest == "xxh3" else hashlib.sha256)(union).hexdigest()}
    for order in itertools.permutations(wanted):
        f = SafetensorsFile(path)
        f.prefetch(list(order), digest)
        assert f.read_digest == want
    ranges = drawn_ranges(SafetensorsFile(path), wanted)[path]
    assert manifest._read_digests(path, ranges, digest) == want
    # Apart (the usual case): each tensor's bytes in one go, still in file order.
    apart = [("b", np.array([1, 2]), 0), ("c", None, 0), ("a", np.array([7]), 0)]
    f = SafetensorsFile(path)
    f.prefetch(apart, digest)
    assert f.read_digest[f"read_{digest}"] == (xxhash.xxh3_128 if digest == "xxh3" else hashlib.sha256)(
        _union_of(path, apart)).hexdigest()
    # Without a digest asked for, or with rows fetched before: none (not all were hashed here).
    f = SafetensorsFile(path)
    f.prefetch(wanted)
    assert f.read_digest is None
    f.prefetch(wanted[:1] + [("c", None, 0)], digest)
    assert f.read_digest is None


def test_xxh3_kernel_is_the_xxhash_object():
    """The read digest's GIL-free path (python-xxhash's exported C functions, called from a
    kernel) gives what the xxhash object gives, fed the same buffers in the same order; it is
    available with the locked xxhash (else films would take the slower path unnoticed)."""
    import xxhash

    from layerfilm import _read_kernels

    fast = _read_kernels.xxh3()
    assert fast is not None
    rng = np.random.default_rng(6)
    for trial in range(20):
        bufs = [rng.integers(0, 256, int(n), dtype=np.uint8)
                for n in rng.choice([0, 1, 3, 16, 17, 128, 240, 241, 1024, 65536, 98304], size=7)]
        order = rng.permutation(len(bufs))[:rng.integers(0, len(bufs) + 1)].astype(np.int64)
        h = xxhash.xxh3_128()
        for j in order:
            h.update(bufs[j])
        addresses = np.array([b.ctypes.data for b in bufs], np.int64)
        sizes = np.array([len(b) for b in bufs], np.int64)
        assert fast.hexdigest(addresses, sizes, order) == h.hexdigest(), trial


def test_files_of_one_run_share_a_read_plan_and_read_their_own_bytes(tmp_path):
    """The checkpoints of a run list the same tensors, their metadata (and so where their data
    starts) aside: the rows a film asks for are planned once and each file reads its own bytes
    at its own offsets; the plan's digest is of each file's bytes."""
    import xxhash

    from layerfilm.checkpoints.formats import safetensors as st

    rng = np.random.default_rng(7)
    wanted = [("b", np.array([0, 1, 2, 40, 63]), 0), ("a", np.array([3, 5]), 1), ("c", None, 0),
              ("a", np.array([0, 31]), 0)]
    files, tensors = [], []
    for i, meta in enumerate(["1.5", "2.25 and a much longer note" * 9]):
        t = {"a": rng.normal(size=(32, 8)).astype(np.float16), "b": rng.normal(size=(64, 4)).astype(np.float32),
             "c": rng.normal(size=(3, 5)).astype(np.float32)}
        save_file(t, str(tmp_path / f"{i}.safetensors"), metadata={"loss": meta})
        files.append(SafetensorsFile(tmp_path / f"{i}.safetensors"))
        tensors.append(t)
    assert files[0]._entries is files[1]._entries and files[0]._data_start != files[1]._data_start
    assert st._read_plan(files[0]._entries, wanted) is st._read_plan(files[1]._entries, wanted)
    for f, t in zip(files, tensors):
        f.prefetch(wanted, "xxh3")
        assert f.read_digest["read_xxh3"] == xxhash.xxh3_128(_union_of(f.path, wanted)).hexdigest()
        np.testing.assert_array_equal(f.read("b", wanted[0][1]), t["b"][wanted[0][1]])
        np.testing.assert_array_equal(f.read("a", wanted[1][1], 1), t["a"][:, wanted[1][1]].T.astype(np.float32))
        np.testing.assert_array_equal(f.read("c", None), t["c"])
        np.testing.assert_array_equal(f.read("a", wanted[3][1]), t["a"][wanted[3][1]].astype(np.float32))


@pytest.mark.parametrize("kinds", [("F16",) * 4, ("BF16",) * 4, ("F16", "F32", "F16", "F16")])
def test_a_layers_tensors_read_in_one_call_are_each_tensor_read(tmp_path, kinds):
    """A layer's tensors widened by one kernel call (2-D 16-bit floats of one kind), or one by
    one (any other mix): the rows of each as a numpy conversion gives them, in turn, whether
    they were fetched ahead or not."""
    rng = np.random.default_rng(8)
    as_type = {"F16": np.float16, "F32": np.float32}
    tensors, raw = {}, {}
    for i, (kind, shape) in enumerate(zip(kinds, [(40, 12), (12, 50), (60, 12), (70, 12)])):
        x = rng.normal(size=shape).astype(np.float32)
        if kind == "BF16":
            bits = (x.view(np.uint32) >> 16).astype(np.uint16)
            tensors[f"t{i}"], raw[f"t{i}"] = bits, (bits.astype(np.uint32) << 16).view(np.float32)
        else:
            tensors[f"t{i}"] = x.astype(as_type[kind])
            raw[f"t{i}"] = tensors[f"t{i}"].astype(np.float32)
    path = tmp_path / "layer.safetensors"
    header, data = {}, b""
    for name, t in tensors.items():
        kind = kinds[int(name[1:])]
        header[name] = {"dtype": kind, "shape": list(t.shape), "data_offsets": [len(data), len(data) + t.nbytes]}
        data += t.tobytes()
    head = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(head)) + head + data)
    parts = [("t0", np.array([0, 3, 4, 39]), 0), ("t1", np.array([1, 11]), 1),
             ("t2", np.arange(60), 0), ("t3", np.array([2, 5, 6, 7, 68]), 0)]
    want = np.concatenate([raw[n][i] if a == 0 else raw[n][:, i].T for n, i, a in parts])
    for ahead in (False, True):
        f = SafetensorsFile(path)
        if ahead:
            f.prefetch(parts)
        out = np.full_like(want, np.nan)
        f.read_layer_into(parts, out)
        np.testing.assert_array_equal(out, want)


def test_a_sharded_checkpoint_is_hashed_shard_by_shard(tmp_path):
    """Each shard's digest is of the rows it holds; a shard that also holds a tensor the index
    places elsewhere gets none (the manifest counts what the file holds, the film reads what
    the index says), and then the checkpoint has no digests from its read."""
    import xxhash

    from layerfilm.checkpoints import read_digests

    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(900, 16)).astype(np.float32), rng.normal(size=(700, 16)).astype(np.float32)
    one, two = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
    save_file({"a": a}, str(tmp_path / one))
    save_file({"b": b}, str(tmp_path / two))
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"a": one, "b": two}}))
    wanted = [("a", np.array([1, 800]), 0), ("b", np.array([3]), 1)]
    ckpt = open_checkpoint(index)
    ckpt.prefetch(wanted, "xxh3")
    got = read_digests(ckpt)
    assert sorted(got) == [tmp_path / one, tmp_path / two]
    for name in (one, two):
        assert got[tmp_path / name] == {
            "header_sha256": _header_sha(tmp_path / name),
            "read_xxh3": xxhash.xxh3_128(_union_of(tmp_path / name, wanted)).hexdigest(),
            "read_bytes": len(_union_of(tmp_path / name, wanted))}
    save_file({"b": b, "a": a}, str(tmp_path / two))  # a stale copy of "a" in the second shard
    ckpt = open_checkpoint(index)
    ckpt.prefetch(wanted, "xxh3")
    assert read_digests(ckpt) is None


def test_trainer_files_and_unindexed_shards_are_not_checkpoints(tmp_path):
    run = write_run(tmp_path / "run", n=2)
    for name in ("optimizer.pt", "scheduler.pt", "rng_state_0.pth", "training_args.bin"):
        (run / name).write_bytes(b"not weights")
    write_run(tmp_path / "run" / "final", n=1, name="model-00001-of-00002.safetensors")
    refs, skipped = discover(run)
    assert [r.path.name for r in refs] == ["step_000000.safetensors", "step_000100.safetensors"]
    assert [(p.name, why) for p, why in skipped] == [
        ("model-00001-of-00002.safetensors", "a shard without its index (*.index.json)")]


def test_storage_seam_ranged_reads_equal_the_local_read(tmp_path):
    """Any storage is read by byte ranges: only the drawn rows, coalesced, and the values are
    those of the local read."""
    from layerfilm import extract
    from layerfilm.checkpoints import LocalStorage

    class Ranged(LocalStorage):
        first_read = 16  # the header's first request: the tensors come by ranged reads
        read_into = None  # as a remote storage: every read through read_ranges

        def __init__(self):
            self.ranges = []

        def read_ranges(self, path, ranges):
            self.ranges += list(ranges)
            return super().read_ranges(path, ranges)

    run = write_run(tmp_path / "run", n=2, dtype=np.float16)
    storage = Ranged()
    refs, _ = discover(run, storage=storage)
    assert all(r.storage is storage for r in refs)
    ckpt, local = refs[1].open(), open_checkpoint(refs[1].path)
    layers = extract.plan_panels(local.shapes(), max_points=30, seed=1)
    for layer in layers:
        np.testing.assert_array_equal(extract.read_layer(ckpt, layer, ckpt.shapes()),
                                      extract.read_layer(local, layer, local.shapes()))
    # Rows come as ranges of whole rows (30 of the 40 embedding rows: fewer bytes than the
    # tensor); columns need their whole tensor.
    embed = layers[0].sources[0]
    want = ckpt.byte_ranges(embed.tensor, embed.index, 0)
    assert all(r in storage.ranges for r in want)
    assert sum(e - s for s, e in want) == 30 * 16 * 2 < 40 * 16 * 2
    assert storage.ranges == sorted(set(storage.ranges), key=storage.ranges.index)  # no range twice


@pytest.mark.parametrize("name, tokens", [
    ("step1000-tokens4B", 4 * 10**9), ("stage1-step1000-tokens5B", 5 * 10**9),
    ("step-001000-2BT", 2 * 10**9), ("tokens_1.5B", 1_500_000_000), ("ckpt-tok300M", 300 * 10**6),
    ("step1000", None), ("128000", None), ("model_7B_step100", None), ("checkpoint-BT", None),
])
def test_tokens_from_names(name, tokens):
    from layerfilm.checkpoints import parse_tokens

    assert parse_tokens(name) == tokens


def test_discovered_refs_carry_tokens_from_their_names(tmp_path):
    run = write_run(tmp_path / "run", n=2, name="step{step}-tokens{step}M/model.safetensors")
    refs, _ = discover(run)
    assert [(r.step, r.tokens) for r in refs] == [(0, 0), (100, 100 * 10**6)]


def test_ranges_read_into_buffers_are_the_files_bytes(tmp_path, monkeypatch):
    """``LocalStorage.read_into`` (one loop of ``pread`` calls free of the GIL) against its twin,
    ``os.pread`` range by range: scattered, touching and overlapping ranges, one at the end of
    the file, to addresses inside one buffer in any order; and the ranges coalesced for the
    read-ahead advice by numpy (``coalesced``) as ``coalesce`` merges them."""
    import os

    from layerfilm.checkpoints import LOCAL
    from layerfilm.checkpoints.storage import coalesce, coalesced

    rng = np.random.default_rng(5)
    path = tmp_path / "blob"
    data = rng.integers(0, 256, 3 << 20, dtype=np.uint8)
    path.write_bytes(data.tobytes())
    starts = np.sort(rng.integers(0, len(data) - 5000, 400)).astype(np.int64)
    ends = starts + rng.integers(1, 5000, 400)
    starts[-1], ends[-1] = len(data) - 100, len(data)
    buf = np.zeros(int((ends - starts).sum()), np.uint8)
    at = np.r_[0, np.cumsum(ends - starts)[:-1]]
    order = rng.permutation(len(starts))  # the calls' order is not the buffer's
    assert LOCAL.read_into(path, starts[order], ends[order], (buf.ctypes.data + at)[order]) is None
    fd = os.open(path, os.O_RDONLY)
    try:
        want = b"".join(os.pread(fd, int(e - s), int(s)) for s, e in zip(starts, ends))
    finally:
        os.close(fd)
    assert buf.tobytes() == want
    for gap in (0, 1 << 12):
        a, b = coalesced(starts[order], ends[order], gap)
        assert list(zip(a.tolist(), b.tolist())) == coalesce(list(zip(starts.tolist(), ends.tolist())), gap)
    # A call that came back early (a signal) in the middle: that range is read again and the
    # loop goes on after it, with the same bytes.
    from layerfilm import _read_kernels

    real, calls = _read_kernels.pread_kernel, []

    def interrupted(fd, s, e, d):
        calls.append(len(s))
        if len(calls) > 1:
            return real(fd, s, e, d)
        real(fd, s[:7], e[:7], d[:7])
        return 7

    buf[:] = 0
    monkeypatch.setattr(_read_kernels, "pread_kernel", interrupted)
    assert LOCAL.read_into(path, starts, ends, buf.ctypes.data + at) is None
    assert calls == [400, 392] and buf.tobytes() == want
    monkeypatch.undo()
    # A range past the end of the file: which one, and how much of it there was.
    more = np.array([0, len(data) - 10], np.int64), np.array([10, len(data) + 90], np.int64)
    assert LOCAL.read_into(path, *more, np.array([buf.ctypes.data, buf.ctypes.data + 10])) == (1, 10)


def test_a_file_cut_short_after_its_header_was_read_is_one_clear_error(tmp_path):
    """A checkpoint truncated between opening (its header checked) and reading its rows (a
    training run rewriting it): the reader's bytes straight into buffers end early, and that is
    a CheckpointError naming the bytes, not a film of stale or zero rows."""
    path = tmp_path / "m.safetensors"
    save_file({"a": np.ones((4096, 64), np.float32)}, str(path))  # 1 MB: past the header's read
    f = SafetensorsFile(path)
    rows = np.arange(0, 4096, 7)
    with open(path, "r+b") as fh:
        fh.truncate(f.byte_ranges("a", rows)[-1][0] + 10)
    with pytest.raises(CheckpointError, match=r"short read: bytes \d+-\d+ came back as 10 bytes"):
        f.prefetch([("a", rows, 0)])
    with pytest.raises(CheckpointError, match="short read"):
        f.read("a", rows)  # asked for without the read-ahead
