"""The training callbacks (issue 25), in real training loops: tiny models trained for a few dozen
steps by the real transformers ``Trainer`` and Lightning ``Trainer`` (one process and two),
saving through their own code.  The film after training covers every saved step from 0 (the
step-0 weights the callback saved, equal to the initial ones) and decodes to exactly the
frames a plain render of the run writes; the update runs in its own low-priority process, one
at a time; a failing update never stops training; the options are checked before training;
and the modules say in one line which extra to install when the library is missing."""

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import ROOT, decode, write_run
from layerfilm.checkpoints import discover, open_checkpoint
from layerfilm.cli import app
from layerfilm.errors import ConfigError
from layerfilm.integrations._runner import Runner, update_command

runner = CliRunner()
FILM = dict(size="160x90", fps=4, frames_per_keyframe=2)
FILM_ARGS = ["--size", "160x90", "--fps", "4", "--frames-per-keyframe", "2", "-q"]


def filmed_steps(film: Path) -> list[int]:
    """The checkpoint steps the film's manifest lists."""
    doc = json.loads(Path(f"{film}.json").read_text())
    return sorted({f["step"] for f in doc["checkpoints"]["files"]})


def assert_plain_render_frames(film: Path, run: Path, tmp_path: Path) -> None:
    """``film`` decodes, frame for frame, to the PNG frames a plain ``layerfilm render`` of
    ``run`` with the same options writes: lossless, and the film of the whole run."""
    pngs = tmp_path / "frames"
    result = runner.invoke(app, ["render", str(run), str(tmp_path / "plain.mkv"), *FILM_ARGS,
                                 "--frames", str(pngs)])
    assert result.exit_code == 0, result.output
    frames = decode(film)
    names = sorted(p.name for p in pngs.glob("*.png"))
    assert len(names) == len(frames) > 2
    for i, name in enumerate(names):
        assert np.array_equal(decode(pngs / name)[0], frames[i]), name


def subprocess_env() -> dict:
    """This environment, with this checkout first on the path (for scripts run as processes)."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path}


# -- transformers Trainer ------------------------------------------------------------------

def _gpt2_trainer(out: Path, callback, max_steps: int):
    """A 2-layer GPT-2 (width 32, vocabulary 64) and a Trainer saving every 10 steps; returns
    ``(trainer, initial weights)``."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")  # the Trainer's own requirement
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=32,
                                  bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(cfg)
    initial = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    data = [{"input_ids": x, "labels": x} for x in torch.randint(0, 64, (64, 16), generator=g)]
    args = transformers.TrainingArguments(
        str(out), max_steps=max_steps, save_steps=10, per_device_train_batch_size=4,
        logging_steps=5, learning_rate=1e-3, report_to=[], use_cpu=True, disable_tqdm=True)
    return transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=[callback]), initial


def test_trainer_callback_films_every_save_from_initialisation(tmp_path):
    from layerfilm.integrations.transformers import LayerfilmCallback

    run, film = tmp_path / "run", tmp_path / "film.webm"
    callback = LayerfilmCallback(film, **FILM)
    trainer, initial = _gpt2_trainer(run, callback, max_steps=30)
    trainer.train()

    saved = sorted(int(p.name.split("-")[1]) for p in run.glob("checkpoint-*"))
    assert saved == [0, 10, 20, 30]
    zero = run / "checkpoint-0"
    assert {"model.safetensors", "config.json", "trainer_state.json"} <= {p.name for p in zero.iterdir()}
    assert json.loads((zero / "trainer_state.json").read_text())["global_step"] == 0
    weights = open_checkpoint(zero / "model.safetensors")
    assert "transformer.h.1.attn.c_attn.weight" in weights.shapes()
    for name in weights.shapes():  # the initial weights, not those after a step
        np.testing.assert_array_equal(weights.read(name), initial[name], err_msg=name)
    refs, _ = discover(run)
    assert [r.step for r in refs] == saved and all(r.kind.startswith("Hugging Face Trainer") for r in refs)

    assert callback.runner.film == film and callback.runner.error is None
    assert filmed_steps(film) == saved
    updates = callback.runner.updates
    assert updates[0].save is not None and updates[-1].save is None  # in training, then the final
    assert [u.returncode for u in updates] == [0] * len(updates), updates
    assert_plain_render_frames(film, run, tmp_path)

    # Resumed: the weights are no longer the initial ones, so no step 0 is saved again; the
    # same film grows by the new checkpoint.
    before = (zero / "model.safetensors").stat().st_mtime_ns
    again = LayerfilmCallback(film, **FILM)
    trainer, _ = _gpt2_trainer(run, again, max_steps=40)
    trainer.train(resume_from_checkpoint=True)
    assert (zero / "model.safetensors").stat().st_mtime_ns == before
    assert filmed_steps(film) == [0, 10, 20, 30, 40] and again.runner.error is None


def test_a_failing_update_never_stops_training(tmp_path, caplog):
    """A damaged checkpoint in the run: every update fails, each says so in one line, training
    goes on to its end, and the final film's failure is reported with the command to retry."""
    from layerfilm.integrations.transformers import LayerfilmCallback

    run, film = tmp_path / "run", tmp_path / "film.webm"
    damaged = run / "checkpoint-15"
    damaged.mkdir(parents=True)
    (damaged / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00" + b"{" * 16 + b"\0" * 64)
    (damaged / "trainer_state.json").write_text('{"global_step": 15}')
    callback = LayerfilmCallback(film, **FILM)
    trainer, _ = _gpt2_trainer(run, callback, max_steps=20)
    with caplog.at_level("WARNING", logger="layerfilm"):
        result = trainer.train()
    assert result.global_step == 20  # trained to the end
    assert sorted(p.name for p in run.glob("checkpoint-*")) == [
        "checkpoint-0", "checkpoint-10", "checkpoint-15", "checkpoint-20"]
    assert callback.runner.film is None and not film.exists()
    updates = callback.runner.updates
    assert updates and all(u.returncode == 1 for u in updates), updates
    said = [r.getMessage() for r in caplog.records if r.name == "layerfilm"]
    assert all("\n" not in line and "checkpoint-15" in line for line in said), said
    assert said[-1].startswith(f"layerfilm: the final film {film} was not made: ")
    assert f"(to try again: layerfilm watch {run} {film} --once" in said[-1]
    assert [r.levelname for r in caplog.records if r.name == "layerfilm"] == (
        ["WARNING"] * (len(updates) - 1) + ["ERROR"])


# -- Lightning -------------------------------------------------------------------------------

LIGHTNING_MODULE = """
import torch
from torch import nn
import lightning as L


class Module(L.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True, dropout=0.0)
        self.model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(16, 1)

    def training_step(self, batch, i):
        loss = self.head(self.model(batch[0])).pow(2).mean()
        self.log("train_loss", loss, on_step=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def data(n):
    torch.manual_seed(1)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(n, 4, 16)),
                                       batch_size=2)
"""


@pytest.fixture
def lightning_module(tmp_path, monkeypatch):
    """The module above, importable (as ``lf_module``) here and by the processes of a DDP run."""
    pytest.importorskip("lightning")
    (tmp_path / "lf_module.py").write_text(LIGHTNING_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    sys.modules.pop("lf_module", None)
    return importlib.import_module("lf_module")


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A small Hub on 127.0.0.1 (test_publish's), where the callback's ``layerfilm publish``
    process sends the film."""
    from test_publish import TOKEN, FakeHub

    server = FakeHub()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    for name in list(os.environ):
        if name.startswith("HF_") or name.lower() in ("http_proxy", "https_proxy", "all_proxy"):
            monkeypatch.delenv(name)
    for name, value in dict(HF_ENDPOINT=server.url, HF_TOKEN=TOKEN, HF_HOME=str(tmp_path / "hf_home"),
                            HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1",
                            HF_HUB_DISABLE_PROGRESS_BARS="1", NO_PROXY="127.0.0.1").items():
        monkeypatch.setenv(name, value)
    yield server
    server.shutdown()
    server.server_close()


def test_lightning_callback_films_every_save_from_initialisation_and_publishes(
        tmp_path, lightning_module, hub):
    import lightning as L

    from layerfilm.integrations.lightning import LayerfilmCallback

    film = tmp_path / "film.webm"
    callback = LayerfilmCallback(film, publish="alice/films", **FILM)
    module = lightning_module.Module()
    initial = {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}
    trainer = L.Trainer(
        max_steps=20, default_root_dir=tmp_path, accelerator="cpu", devices=1,
        logger=L.pytorch.loggers.CSVLogger(tmp_path), log_every_n_steps=1,
        callbacks=[L.pytorch.callbacks.ModelCheckpoint(every_n_train_steps=5, save_top_k=-1), callback],
        enable_progress_bar=False, enable_model_summary=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, lightning_module.data(40))

    version = tmp_path / "lightning_logs" / "version_0"
    refs, _ = discover(version)
    assert [r.step for r in refs] == [0, 5, 10, 15, 20]
    assert refs[0].path == version / "checkpoints" / "epoch=0-step=0.ckpt"  # ModelCheckpoint's naming
    weights = open_checkpoint(refs[0].path)
    assert "model.layers.1.linear1.weight" in weights.shapes()
    for name in weights.shapes():
        np.testing.assert_array_equal(weights.read(name), initial[name], err_msg=name)

    assert callback.runner.film == film and callback.runner.error is None
    assert filmed_steps(film) == [0, 5, 10, 15, 20]
    doc = json.loads(Path(f"{film}.json").read_text())
    assert doc["checkpoints"]["folder"] == str(version)  # the folder above checkpoints/ ...
    assert doc["checkpoints"]["loss"]["path"] == "metrics.csv"  # ... for the loss beside it
    assert [u.returncode for u in callback.runner.updates] == [0] * len(callback.runner.updates)
    assert_plain_render_frames(film, version, tmp_path)

    # Published: one commit holding the film (through LFS, intact), its manifest and a card.
    header, ops = hub.commit()
    assert sorted(ops) == ["README.md", "film.webm", "film.webm.json"]
    assert hashlib.sha256(film.read_bytes()).hexdigest() in hub.blobs


def test_the_lightning_callback_is_a_callback_of_both_packages():
    lightning = pytest.importorskip("lightning")
    pytorch_lightning = pytest.importorskip("pytorch_lightning")
    from layerfilm.integrations.lightning import LayerfilmCallback

    callback = LayerfilmCallback("film.webm")
    assert isinstance(callback, lightning.pytorch.Callback)
    assert isinstance(callback, pytorch_lightning.Callback)


# -- several processes -------------------------------------------------------------------------

def _report(rank_expr: str) -> str:
    return textwrap.dedent(f"""
        with open(os.path.join(out, f"rank{{{rank_expr}}}.json"), "w") as f:
            json.dump({{"updates": len(cb.runner.updates), "saves": cb.runner.saves,
                       "film": cb.runner.film and str(cb.runner.film)}}, f)
        """)


TRAINER_DDP = """
import json, os, sys
import torch, transformers
from layerfilm.integrations.transformers import LayerfilmCallback

out = sys.argv[1]
torch.manual_seed(0)
cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=32,
                              bos_token_id=0, eos_token_id=0)
g = torch.Generator().manual_seed(0)
data = [{"input_ids": x, "labels": x} for x in torch.randint(0, 64, (64, 16), generator=g)]
args = transformers.TrainingArguments(os.path.join(out, "run"), max_steps=12, save_steps=4,
    per_device_train_batch_size=2, report_to=[], use_cpu=True, disable_tqdm=True)
cb = LayerfilmCallback(os.path.join(out, "film.webm"), size="160x90", fps=4, frames_per_keyframe=2)
transformers.Trainer(model=transformers.GPT2LMHeadModel(cfg), args=args, train_dataset=data,
                     callbacks=[cb]).train()
"""

LIGHTNING_DDP = """
import json, os, sys, warnings
import lightning as L
from lf_module import Module, data
from layerfilm.integrations.lightning import LayerfilmCallback

warnings.simplefilter("ignore")
out = sys.argv[1]
cb = LayerfilmCallback(os.path.join(out, "film.webm"), size="160x90", fps=4, frames_per_keyframe=2)
trainer = L.Trainer(max_steps=12, default_root_dir=out, accelerator="cpu", devices=2, strategy="ddp",
    logger=L.pytorch.loggers.CSVLogger(out), log_every_n_steps=1,
    callbacks=[L.pytorch.callbacks.ModelCheckpoint(every_n_train_steps=4, save_top_k=-1), cb],
    enable_progress_bar=False, enable_model_summary=False)
trainer.fit(Module(), data(48))
"""


@pytest.mark.parametrize("library", ["transformers", "lightning"])
def test_two_processes_save_step_zero_once_and_only_rank_zero_films(tmp_path, library):
    """Two training processes (DDP over gloo on the CPU): step 0 is saved once (for Lightning,
    by the collective ``save_checkpoint`` on both ranks), rank 0 alone runs updates and makes
    the film, and nothing hangs."""
    pytest.importorskip("transformers" if library == "transformers" else "lightning")
    script = tmp_path / "train.py"
    env = subprocess_env()
    if library == "transformers":
        pytest.importorskip("accelerate")
        script.write_text(TRAINER_DDP + _report("args.process_index"))
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                   str(script), str(tmp_path)]
        run = tmp_path / "run"
    else:
        (tmp_path / "lf_module.py").write_text(LIGHTNING_MODULE)
        script.write_text(LIGHTNING_DDP + _report("trainer.global_rank"))
        command = [sys.executable, str(script), str(tmp_path)]
        env["PYTHONPATH"] += os.pathsep + str(tmp_path)
        run = tmp_path / "lightning_logs" / "version_0"
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["updates"] >= 2 and ranks[0]["saves"] == 3
    assert ranks[0]["film"] == str(tmp_path / "film.webm")
    assert ranks[1] == {"updates": 0, "saves": 0, "film": None}
    assert [r.step for r in discover(run)[0]] == [0, 4, 8, 12]
    assert filmed_steps(tmp_path / "film.webm") == [0, 4, 8, 12]


# -- the runner both callbacks share -------------------------------------------------------

def _update_processes(output: Path) -> list[int]:
    """Running update commands for ``output`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0") if entry.name.isdigit() else []
        except OSError:
            continue
        if b"watch" in argv and str(output).encode() in argv and b"--once" in argv and b"nice" not in argv[0]:
            found.append(int(entry.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads /proc")
def test_saves_during_an_update_wait_for_it_and_the_update_runs_low_and_narrow(tmp_path):
    """One update at a time: saves while one runs only leave one pending, started by the first
    poll after it ends.  The update is a process of its own, at the lowest priority, with one
    thread per numeric library."""
    run = write_run(tmp_path / "run", n=3)
    film = tmp_path / "film.webm"
    r = Runner(film, **FILM)
    r.saved(run)
    process = r._running[0]
    r.saved(run)
    r.saved(run)
    assert r.pending and r._running[0] is process and len(r.updates) == 1
    deadline = time.monotonic() + 60
    while not _update_processes(film) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)  # until `nice` has become the update itself
    (pid,) = _update_processes(film)
    assert os.getpriority(os.PRIO_PROCESS, pid) == 19
    environ = dict(v.split(b"=", 1) for v in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in v)
    assert all(environ[name] == b"1" for name in (b"OMP_NUM_THREADS", b"NUMBA_NUM_THREADS"))
    assert process.wait(timeout=120) == 0
    r.poll()
    assert not r.pending and len(r.updates) == 2 and r._running[0] is not process
    r.poll()
    assert len(r.updates) == 2  # nothing more was pending
    assert r.finish() == film and [u.returncode for u in r.updates] == [0, 0, 0]
    assert r.updates[-1].said.endswith("is up to date: 3 checkpoints, steps 0..200")
    assert filmed_steps(film) == [0, 100, 200]


def test_every_nth_save_updates(tmp_path):
    run = write_run(tmp_path / "run", n=2)
    r = Runner(tmp_path / "film.webm", every=3, **FILM)
    r.saved(run, now=False)
    r.saved(run)
    assert not r.pending and r._running is None and not r.updates
    r.saved(run, now=False)  # the 3rd save: due, started at the next poll
    assert r.pending and r._running is None
    r.poll()
    assert r._running is not None and r.updates[0].save == 3
    assert r._running[0].wait(timeout=120) == 0


def test_the_update_command():
    assert update_command("/runs/a", "/films/a.webm", ["--size", "160x90"]) == [
        sys.executable, "-m", "layerfilm", "watch", "/runs/a", "/films/a.webm", "--once", "--settle",
        "0", "-q", "--size", "160x90"]


def test_options_are_checked_before_training(tmp_path):
    r = Runner(tmp_path / "f.webm", size="320x180", cache=False, loss_strip=True, drift=False,
               fps=10, layer_pattern=r"^(h\.\d+)\.", publish={"repo_id": "a/b", "private": True})
    assert r.render_args == ["--size", "320x180", "--no-cache", "--loss-strip", "--fps", "10",
                             "--layer-pattern", r"^(h\.\d+)\."]
    assert r.publish_args == ["--repo-id", "a/b", "--private"]
    assert Runner(tmp_path / "f.webm", publish="hf://buckets/a/b/films").publish_args == [
        "--bucket", "a/b/films"]
    assert Runner(tmp_path / "not-yet" / "f.gif").output == tmp_path / "not-yet" / "f.gif"
    for kwargs, message in [
        (dict(sise="320x180"), "'sise' is not an option here (did you mean 'size'?)"),
        (dict(size="320x18O"), "--size"),
        (dict(fps=0), "--fps must be between 1 and 240, got 0"),
        (dict(frames_dir=tmp_path / "pngs"), "'frames_dir' is not an option here (render the frames once"),
        (dict(every=0), "every must be a whole number of saves, at least 1, got 0"),
        (dict(publish="not a repo"), "--repo-id must look like USER/NAME"),
        (dict(publish={"bucket": "a/b", "repo_id": "c/d"}), "give --repo-id or --bucket, not both"),
    ]:
        with pytest.raises(ConfigError) as e:
            Runner(tmp_path / "f.webm", **kwargs)
        assert message in str(e.value) and "\n" not in str(e.value), (kwargs, str(e.value))
    with pytest.raises(ConfigError, match="unknown output format '.avi'"):
        Runner(tmp_path / "f.avi")


# -- without the library -----------------------------------------------------------------------

@pytest.mark.parametrize("module, hidden, extra", [
    ("transformers", ["transformers"], "transformers"),
    ("lightning", ["lightning", "pytorch_lightning"], "lightning"),
])
def test_without_the_library_the_import_says_which_extra(module, hidden, extra):
    code = "; ".join([
        "import sys",
        *(f"sys.modules[{name!r}] = None" for name in hidden),
        "import layerfilm.integrations, layerfilm.integrations._runner",
        "heavy = {'torch', 'transformers', 'lightning', 'pytorch_lightning'} & {m for m, v in sys.modules.items() if v}",
        "assert not heavy, heavy",
        f"import layerfilm.integrations.{module}",
    ])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=subprocess_env(), timeout=120)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last == (f"ImportError: layerfilm.integrations.{module} needs {extra}, which is not "
                    f"installed: pip install 'layerfilm[{extra}]'"), done.stderr
    assert "During handling" not in done.stderr  # one error, not a chain

