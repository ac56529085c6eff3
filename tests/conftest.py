"""Shared fixtures: tiny training runs written with the real safetensors library,
and a decoder that reads films back with ffmpeg."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_checkpoints"


def gpt_state(rng, d=16, blocks=2, vocab=40, ff=None, prefix="transformer.h", dtype=np.float32):
    """A nanoGPT-style state dict (nn.Linear weights are (out, in))."""
    sd = {"transformer.wte.weight": rng.normal(size=(vocab, d)),
          "transformer.wpe.weight": rng.normal(size=(8, d))}
    for i in range(blocks):
        f = (ff[i] if isinstance(ff, (list, tuple)) else ff) or 4 * d
        p = f"{prefix}.{i}."
        sd[p + "ln_1.weight"] = np.ones(d)
        sd[p + "attn.c_attn.weight"] = rng.normal(size=(3 * d, d))
        sd[p + "attn.c_proj.weight"] = rng.normal(size=(d, d))
        sd[p + "mlp.c_fc.weight"] = rng.normal(size=(f, d))
        sd[p + "mlp.c_proj.weight"] = rng.normal(size=(d, f))
    return {k: v.astype(dtype) for k, v in sd.items()}


def odd_block_run(folder: Path, seed: int, blocks: int, odd: int, rate: float, odd_rate: float,
                  odd_from: int) -> Path:
    """Seven checkpoints (steps 0..600) of a small GPT-2 whose weights each move ``rate`` of
    their RMS per checkpoint, block ``odd``'s ``odd_rate`` from checkpoint ``odd_from`` on."""
    from safetensors.numpy import save_file

    folder.mkdir()
    rng = np.random.default_rng(seed)
    sd = gpt_state(rng, d=8, blocks=blocks, vocab=12)
    for k in range(7):
        for key, v in sd.items():
            if k:
                r = odd_rate if key.startswith(f"transformer.h.{odd}.") and k >= odd_from else rate
                sd[key] = (v + r * np.linalg.norm(v) / np.sqrt(v.size) * rng.normal(size=v.shape)
                           ).astype(np.float32)
        save_file(sd, str(folder / f"step_{k * 100:06d}.safetensors"))
    return folder


def rebel_run(folder: Path) -> Path:
    """Six blocks drift alike; L3 moves ten times faster from step 300 on (seven checkpoints)."""
    return odd_block_run(folder, 11, blocks=6, odd=3, rate=0.01, odd_rate=0.01 * 10.0, odd_from=3)


def write_run(folder: Path, n=4, seed=0, name="step_{step:06d}.safetensors", every=100, **kw) -> Path:
    """A run whose weights drift and grow a little each checkpoint."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    base = gpt_state(rng, **kw)
    for k in range(n):
        step = k * every
        sd = {key: (v * (1 + 0.2 * k) + 0.3 * k * rng.normal(size=v.shape)).astype(v.dtype)
              for key, v in base.items()}
        path = folder / name.format(step=step)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(sd, str(path), metadata={"step": str(step), "loss": str(4.0 / (k + 1))})
    return folder


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Each test gets its own layout cache, never the user's."""
    monkeypatch.setenv("LAYERFILM_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def run_dir(tmp_path) -> Path:
    return write_run(tmp_path / "run")


def decode(path: Path) -> np.ndarray:
    """All frames of a film as ``(n, H, W, 3)`` uint8, decoded by ffmpeg to rgb24."""
    import imageio_ffmpeg

    gen = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    meta = gen.__next__()
    w, h = meta["size"]
    frames = [np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in gen]
    return np.stack(frames)


class Evil:
    """Unpickling this creates the file ``path``: a stand-in for a pickle that runs code."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


class Recorder:
    """What the film encoders were handed: index frames and their RGB, in order, and the RGB
    per output file (with ``--jobs`` each chunk has its own file)."""

    def __init__(self):
        self.index: list[np.ndarray] = []
        self.rgb: list[np.ndarray] = []
        self.by_file: dict[str, list[np.ndarray]] = {}


@pytest.fixture
def recorder(monkeypatch):
    from layerfilm import encode

    rec = Recorder()
    original = encode.FilmWriter.write

    def write(self, frame):
        rgb = self.palette[frame]
        rec.index.append(frame.copy())
        rec.rgb.append(rgb)
        rec.by_file.setdefault(self.path.name, []).append(rgb)
        original(self, frame)

    monkeypatch.setattr(encode.FilmWriter, "write", write)
    return rec


@pytest.fixture
def sent(recorder):
    """The RGB of every frame handed to a film encoder, in order."""
    return recorder.rgb


@pytest.fixture
def index_frames(recorder):
    """Every palette-index frame handed to a film encoder, in order."""
    return recorder.index


@pytest.fixture
def sent_by_file(recorder):
    """The RGB handed to each film encoder, by output file name."""
    return recorder.by_file


@pytest.fixture
def headers(monkeypatch):
    """The step each frame's header shows, in the order frames are made."""
    from layerfilm import compose

    steps = []
    original = compose.FrameComposer.__call__

    def call(self, dots, time, step):
        steps.append(step)
        return original(self, dots, time, step)

    monkeypatch.setattr(compose.FrameComposer, "__call__", call)
    return steps


def spy_local_reads(monkeypatch, record) -> None:
    """Have ``record(path, [(start, end), ...])`` called at every ranged read of a local file's
    data, as the storage is asked for it (``LocalStorage.read_ranges``, or ``read_into``: the
    drawn rows straight into the reader's buffers), before it is made."""
    from layerfilm.checkpoints import LocalStorage

    ranges, into = LocalStorage.read_ranges, LocalStorage.read_into

    def read_ranges(self, path, asked):
        record(path, [(int(s), int(e)) for s, e in asked])
        return ranges(self, path, asked)

    def read_into(self, path, starts, ends, dests):
        record(path, list(zip(starts.tolist(), ends.tolist())))
        return into(self, path, starts, ends, dests)

    monkeypatch.setattr(LocalStorage, "read_ranges", read_ranges)
    monkeypatch.setattr(LocalStorage, "read_into", read_into)


@pytest.fixture
def fetched(monkeypatch):
    """Every ranged read of checkpoint data made in this process, as the storage is asked for
    it (:func:`spy_local_reads`: how the readers fetch the drawn rows, and how anything else
    would read them again): ``(file name, [(start, end), ...])`` per call.  The first bytes
    read with a safetensors header at each open are not in it."""
    log = []
    spy_local_reads(monkeypatch, lambda path, ranges: log.append((Path(path).name, ranges)))
    return log


def capture(monkeypatch, name):
    """Replace ``pipeline.<name>`` from now on by one that records its config and exits."""
    from layerfilm import pipeline

    got = []

    def fake(cfg, progress, **kwargs):
        got.append(cfg)
        raise SystemExit(0)

    monkeypatch.setattr(pipeline, name, fake)
    return got


@pytest.fixture
def seen(monkeypatch):
    """The configs the CLI hands to ``pipeline.render`` (nothing is rendered)."""
    return capture(monkeypatch, "render")


@pytest.fixture
def seen_stats(monkeypatch):
    """The configs the CLI hands to ``pipeline.measure`` (nothing is measured)."""
    return capture(monkeypatch, "measure")


def densest_pixel(P, times, n_frames, rasterizer, shape, frames=None) -> float:
    """The densest pixel of the given frames (default: every frame) of a film whose keyframes
    ``P`` sit at ``times``, by the numpy twins of the interpolation and splatting kernels, so
    the film's colour span is checked against an independent maximum."""
    from layerfilm import _draw_kernels, _kernels

    densest = 0.0
    for f in range(n_frames) if frames is None else frames:
        k = min(max(int(np.searchsorted(times, f, side="right")) - 1, 0), len(times) - 2)
        counts = np.zeros(shape, np.float32)
        _draw_kernels.splat_numpy(_kernels.hermite_numpy(P, times, k, float(f)), rasterizer.starts,
                                  rasterizer.xform, rasterizer.rects, *rasterizer.footprint, counts)
        densest = max(densest, float(counts.max()))
    return densest


def plan_of(folder, metrics=None, **selection):
    """``make_plan`` for a folder and selection options (``layer_pattern=...``, ...)."""
    from layerfilm.config import Selection
    from layerfilm.plan import make_plan

    return make_plan(Selection(checkpoints=Path(folder), **selection), metrics)
