"""Checkpoints as the real libraries save them (folders and files): Hugging Face
``save_pretrained`` (whole, sharded, safetensors and torch pickles), Lightning's
``ModelCheckpoint`` and ``torch.distributed.checkpoint.save``.  Each is discovered with
no flags, read back equal to what was saved, and rendered."""

import dataclasses
import json
import pickle
import warnings

import numpy as np
import pytest
from typer.testing import CliRunner

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from layerfilm.checkpoints import (DcpCheckpoint, ShardedCheckpoint, discover,  # noqa: E402
                                   load_loss_curve, open_checkpoint)
from layerfilm.cli import app  # noqa: E402
from layerfilm.errors import CheckpointError  # noqa: E402
from layerfilm import extract  # noqa: E402
from layerfilm.extract import plan_layers, read_layer  # noqa: E402

from conftest import Evil, decode, plan_of  # noqa: E402

runner = CliRunner()
STEPS = (10, 20, 30)


def _gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=50, n_positions=16)
    return transformers.GPT2LMHeadModel(cfg)


def _nudge(model, k):
    g = torch.Generator().manual_seed(k)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * k * torch.randn(p.shape, generator=g))


def _state(model) -> dict[str, np.ndarray]:
    return {k: v.detach().float().numpy().copy() for k, v in model.state_dict().items()}


def _trainer_files(folder, step):
    """What HF Trainer writes beside the weights: its state (step, loss log) and non-weights."""
    log = [{"step": s, "loss": 5.0 / s, "learning_rate": 1e-3} for s in range(1, step + 1)]
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": log}))
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin"):
        torch.save({"junk": torch.zeros(3)}, folder / name)


@pytest.fixture(scope="module")
def hf_runs(tmp_path_factory):
    """One GPT-2 run saved four ways; returns (root, {layout: folder}, {step: state})."""
    from huggingface_hub import split_torch_state_dict_into_shards

    root = tmp_path_factory.mktemp("hf")
    model, states, runs = _gpt2(), {}, {}
    for step in STEPS:
        _nudge(model, step)
        states[step] = _state(model)
        for layout, kw in (("safetensors", {}), ("sharded", {"max_shard_size": "20KB"})):
            d = root / layout / f"checkpoint-{step}"
            model.save_pretrained(d, **kw)
            _trainer_files(d, step)
        # Torch-pickle checkpoints as transformers wrote them (torch.save of the state dict,
        # sharded by huggingface_hub with the pytorch_model.bin.index.json naming).
        sd = {k: v.clone() for k, v in model.state_dict().items()}
        d = root / "bin" / f"checkpoint-{step}"
        d.mkdir(parents=True)
        torch.save(sd, d / "pytorch_model.bin")
        _trainer_files(d, step)
        d = root / "binsharded" / f"checkpoint-{step}"
        d.mkdir(parents=True)
        split = split_torch_state_dict_into_shards(sd, filename_pattern="pytorch_model{suffix}.bin",
                                                   max_shard_size="20KB")
        for file, names in split.filename_to_tensors.items():
            torch.save({n: sd[n] for n in names}, d / file)
        (d / "pytorch_model.bin.index.json").write_text(json.dumps(
            {"metadata": split.metadata, "weight_map": split.tensor_to_filename}))
        _trainer_files(d, step)
    # The final model beside the checkpoints, as Trainer.save_model leaves it: no step.
    model.save_pretrained(root / "safetensors")
    runs = {name: root / name for name in ("safetensors", "sharded", "bin", "binsharded")}
    return root, runs, states


@pytest.mark.parametrize("layout, kind, shards", [
    ("safetensors", "Hugging Face Trainer, safetensors", 1),
    ("sharded", "Hugging Face Trainer, sharded safetensors (model.safetensors.index.json)", 2),
    ("bin", "Hugging Face Trainer, torch pickle (pytorch_model.bin)", 1),
    ("binsharded", "Hugging Face Trainer, sharded torch pickles (pytorch_model.bin.index.json)", 2),
])
def test_hf_checkpoints_read_back_exactly(hf_runs, layout, kind, shards):
    _, runs, states = hf_runs
    refs, skipped = discover(runs[layout])
    assert [r.step for r in refs] == list(STEPS) and {r.kind for r in refs} == {kind}
    # Only the weights count: optimizer.pt, rng_state.pth, training_args.bin are not checkpoints.
    assert [(p.name, why) for p, why in skipped] == (
        [("model.safetensors", "no training step in its name or inside it")] if layout == "safetensors" else [])
    assert len([p for p in refs[0].files() if "index" not in p.name]) == shards
    for ref in refs:
        ckpt = open_checkpoint(ref.path)
        assert isinstance(ckpt, ShardedCheckpoint) == (shards > 1)
        state = states[ref.step]
        shapes = ckpt.shapes()
        assert set(shapes) <= set(state) and "transformer.h.1.attn.c_attn.weight" in shapes
        for name in shapes:
            np.testing.assert_array_equal(ckpt.read(name), state[name], err_msg=name)
        # GPT-2's Conv1D stores (in, out): the block's c_attn d-vectors are its columns.
        block = plan_layers(shapes)[1]
        cloud = read_layer(ckpt, block, shapes)
        w = state["transformer.h.0.attn.c_attn.weight"]
        assert block.dim == 16 and any(s.tensor.endswith("c_attn.weight") and s.axis == 1
                                       for s in block.sources)
        np.testing.assert_array_equal(cloud[:48], w.T)
    loss = load_loss_curve(runs[layout], refs)
    assert loss.source.endswith("checkpoint-30/trainer_state.json") and len(loss.steps) == 30
    assert loss.at(30) == pytest.approx(5.0 / 30)


def test_hf_step_from_trainer_state_when_folder_names_carry_none(hf_runs, tmp_path):
    import shutil

    _, runs, _ = hf_runs
    for i, step in enumerate(STEPS):
        shutil.copytree(runs["safetensors"] / f"checkpoint-{step}", tmp_path / "run" / f"saved-{'abc'[i]}")
    assert [r.step for r in discover(tmp_path / "run")[0]] == list(STEPS)


@pytest.mark.parametrize("layout", ["safetensors", "sharded", "binsharded"])
def test_hf_render_and_info_with_no_flags(hf_runs, tmp_path, layout):
    _, runs, _ = hf_runs
    info = runner.invoke(app, ["info", str(runs[layout])])
    assert info.exit_code == 0, info.output
    assert "3 checkpoints, steps 10 .. 30 (every 10)" in info.output
    assert "30 values from" in info.output and "embed" in info.output and "L1" in info.output
    out = tmp_path / "f.gif"
    result = runner.invoke(app, ["render", str(runs[layout]), str(out), "--size", "192x108",
                                 "--fps", "3", "-q"])
    assert result.exit_code == 0, result.output
    assert decode(out).shape[0] == 7
    # The manifest lists (and hashes) every file each checkpoint is made of.
    listed = json.loads((tmp_path / "f.gif.json").read_text())["checkpoints"]["files"]
    shards = [p for p in (runs[layout] / "checkpoint-10").iterdir() if "model" in p.name]
    assert sorted(f["path"] for f in listed if f["step"] == 10) == sorted(
        f"checkpoint-10/{p.name}" for p in shards)


def test_sharded_index_problems_name_the_file(hf_runs, tmp_path):
    import shutil

    _, runs, _ = hf_runs
    d = tmp_path / "c"
    shutil.copytree(runs["sharded"] / "checkpoint-10", d)
    index = d / "model.safetensors.index.json"
    shard = sorted(d.glob("model-0000*.safetensors"))[1]
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt safetensors header|truncated") as e:
        open_checkpoint(index)
    assert str(shard) in str(e.value)
    shard.unlink()
    with pytest.raises(CheckpointError, match=f"shard {shard.name} listed in the index is missing"):
        open_checkpoint(index)
    index.write_text(json.dumps({"weight_map": {"w": "../../etc/passwd"}}))
    with pytest.raises(CheckpointError, match="outside its folder"):
        open_checkpoint(index)
    index.write_text("{not json")
    with pytest.raises(CheckpointError, match="not a sharded-checkpoint index"):
        open_checkpoint(index)


# --- Lightning -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lightning_run(tmp_path_factory):
    """Three ModelCheckpoint files from a 3-step CPU fit, with Lightning's CSV log, in
    Lightning's default layout: lightning_logs/version_0/{checkpoints/, metrics.csv}."""
    L = pytest.importorskip("lightning")
    from torch import nn

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.save_hyperparameters()
            torch.manual_seed(0)
            layer = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True, dropout=0.0)
            self.model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.head = nn.Linear(8, 1)
            self.saved: dict[int, dict] = {}

        def training_step(self, batch, i):
            loss = self.head(self.model(batch[0])).pow(2).mean()
            self.log("train_loss", loss, on_step=True)
            return loss

        def on_save_checkpoint(self, checkpoint):
            self.saved[checkpoint["global_step"]] = {
                k: v.detach().float().numpy().copy() for k, v in self.state_dict().items()}

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.5)

    root = tmp_path_factory.mktemp("lightning")
    torch.manual_seed(1)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(6, 3, 8)), batch_size=2)
    module = Module()
    trainer = L.Trainer(
        max_steps=3, default_root_dir=root, accelerator="cpu", devices=1,
        logger=L.pytorch.loggers.CSVLogger(root), log_every_n_steps=1,
        callbacks=[L.pytorch.callbacks.ModelCheckpoint(every_n_train_steps=1, save_top_k=-1)],
        enable_progress_bar=False, enable_model_summary=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, data)
    return root, module.saved


def test_lightning_checkpoints(lightning_run, tmp_path):
    root, saved = lightning_run
    ckpts = sorted((root / "lightning_logs" / "version_0" / "checkpoints").iterdir())
    assert [p.name for p in ckpts] == ["epoch=0-step=1.ckpt", "epoch=0-step=2.ckpt", "epoch=0-step=3.ckpt"]
    refs, _ = discover(root)  # three folders above the files
    assert [r.step for r in refs] == [1, 2, 3]
    for ref in refs:
        ckpt = open_checkpoint(ref.path)
        assert ckpt.metadata["step"] == str(ref.step)
        shapes = ckpt.shapes()
        assert "model.layers.1.linear1.weight" in shapes
        for name in shapes:
            np.testing.assert_array_equal(ckpt.read(name), saved[ref.step][name], err_msg=name)
    plan = plan_of(root)
    assert [l.label for l in plan.layers] == ["L0", "L1"]
    # nn.TransformerEncoder: in_proj (3d, d) rows, out_proj (d, d) rows, linear1 (ff, d) rows,
    # linear2 (d, ff) columns: 3*8 + 8 + 16 + 16 points of width 8.
    assert all(l.n_points == 64 and l.dim == 8 for l in plan.layers)
    assert plan.loss is not None and plan.loss.source.endswith("version_0/metrics.csv")
    assert list(plan.loss.steps) == [0, 1, 2]  # Lightning logs the step before it is counted
    out = tmp_path / "f.gif"
    result = runner.invoke(app, ["render", str(root), str(out), "--size", "192x108", "--fps", "2", "-q"])
    assert result.exit_code == 0, result.output
    assert decode(out).shape[0] == 5


# --- Distributed Checkpoint ------------------------------------------------------------------

def _encoder(seed):
    from torch import nn

    torch.manual_seed(seed)
    return nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), 2,
                                 enable_nested_tensor=False)


@pytest.fixture(scope="module")
def dcp_run(tmp_path_factory):
    """Three DCP folders holding model + optimizer + step, as a training loop saves them."""
    import torch.distributed.checkpoint as dcp

    root = tmp_path_factory.mktemp("dcp")
    model = _encoder(0)
    opt = torch.optim.AdamW(model.parameters())
    states = {}
    for step in (100, 200, 300):
        model(torch.randn(2, 3, 8)).pow(2).sum().backward()
        opt.step()
        opt.zero_grad()
        states[step] = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "no process group: saving in a single process"
            dcp.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step},
                     checkpoint_id=root / f"step-{step}")
    return root, states


def test_dcp_folders(dcp_run, tmp_path):
    root, states = dcp_run
    refs, _ = discover(root)
    assert [r.step for r in refs] == [100, 200, 300]
    assert refs[0].path == root / "step-100" and refs[0].kind.startswith("Distributed Checkpoint")
    assert {p.name for p in refs[0].files()} == {".metadata", "__0_0.distcp"}
    for ref in refs:
        ckpt = open_checkpoint(ref.path)
        assert isinstance(ckpt, DcpCheckpoint)
        shapes = ckpt.shapes()
        # The model only: AdamW's exp_avg/exp_avg_sq tensors are left out.
        assert set(shapes) == {f"model.{k}" for k in states[ref.step]}
        for name in shapes:
            np.testing.assert_array_equal(ckpt.read(name), states[ref.step][name[len("model."):]])
        np.testing.assert_array_equal(ckpt.read("model.layers.0.linear2.weight", np.array([1, 5]), 1),
                                      states[ref.step]["layers.0.linear2.weight"][:, [1, 5]].T)
    result = runner.invoke(app, ["info", str(root)])
    assert result.exit_code == 0 and "Distributed Checkpoint" in result.output
    out = tmp_path / "f.gif"
    result = runner.invoke(app, ["render", str(root), str(out), "--size", "192x108", "--fps", "2", "-q"])
    assert result.exit_code == 0, result.output
    assert decode(out).shape[0] == 5
    listed = json.loads((tmp_path / "f.gif.json").read_text())["checkpoints"]["files"]
    assert [(f["path"], f["step"]) for f in listed][:2] == [("step-100/.metadata", 100),
                                                            ("step-100/__0_0.distcp", 100)]


def test_dcp_metadata_never_runs_code(dcp_run, tmp_path):
    import shutil

    root, _ = dcp_run
    bad = tmp_path / "step-100"
    shutil.copytree(root / "step-100", bad)
    marker = tmp_path / "pwned"
    (bad / ".metadata").write_bytes(pickle.dumps(Evil(marker)))
    with pytest.raises(CheckpointError, match="refused .metadata: io.open is not part of checkpoint metadata") as e:
        open_checkpoint(bad)
    assert str(bad) in str(e.value) and not marker.exists()
    (bad / ".metadata").write_bytes(b"\x80\x04garbage")
    with pytest.raises(CheckpointError, match="corrupt .metadata"):
        open_checkpoint(bad)
    shutil.copy(root / "step-100" / ".metadata", bad / ".metadata")
    data = bad / "__0_0.distcp"
    data.write_bytes(data.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated: data file __0_0.distcp"):
        open_checkpoint(bad)
    data.unlink()
    with pytest.raises(CheckpointError, match="data file __0_0.distcp is missing"):
        open_checkpoint(bad)


# --- naming schemes, from the real model classes ---------------------------------------------

def _shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if v.is_floating_point()}


def test_naming_schemes_of_real_models():
    d, ff, kv = 16, 40, 4
    tf = transformers
    # GPT-NeoX / Pythia: gpt_neox.layers.N, fused query_key_value (3d, d), embed_in.
    neox = tf.GPTNeoXForCausalLM(tf.GPTNeoXConfig(hidden_size=d, num_hidden_layers=2, num_attention_heads=2,
                                                  intermediate_size=ff, vocab_size=60))
    layers = plan_layers(_shapes(neox))
    assert [l.label for l in layers] == ["embed", "L0", "L1"]
    assert layers[0].sources[0].tensor == "gpt_neox.embed_in.weight" and layers[0].n_points == 60
    assert layers[1].prefix == "gpt_neox.layers.0." and layers[1].n_points == 3 * d + d + ff + ff
    # Llama / Mistral with grouped-query attention: k/v have fewer rows.
    for cls, cfg in ((tf.LlamaForCausalLM, tf.LlamaConfig), (tf.MistralForCausalLM, tf.MistralConfig)):
        model = cls(cfg(hidden_size=d, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                        intermediate_size=ff, vocab_size=60))
        layers = plan_layers(_shapes(model))
        assert [l.label for l in layers] == ["embed", "L0", "L1"], cls
        assert layers[0].sources[0].tensor == "model.embed_tokens.weight"
        assert layers[2].prefix == "model.layers.1."
        assert layers[2].n_points == d + kv + kv + d + 3 * ff  # q, k, v, o rows; gate, up rows; down cols
    # BERT: encoder.layer.N, word embeddings (not position or token-type).
    bert = tf.BertForMaskedLM(tf.BertConfig(hidden_size=d, num_hidden_layers=3, num_attention_heads=2,
                                            intermediate_size=ff, vocab_size=70))
    layers = plan_layers(_shapes(bert))
    assert [l.label for l in layers] == ["embed", "L0", "L1", "L2"]
    assert layers[0].sources[0].tensor == "bert.embeddings.word_embeddings.weight"
    assert layers[1].prefix == "bert.encoder.layer.0."
    # Encoder-decoder (BART): two stacks, decoder blocks in their own row band.
    bart = tf.BartForConditionalGeneration(tf.BartConfig(d_model=d, encoder_layers=2, decoder_layers=2,
                                                         encoder_attention_heads=2, decoder_attention_heads=2,
                                                         encoder_ffn_dim=ff, decoder_ffn_dim=ff, vocab_size=60))
    layers = plan_layers(_shapes(bart))
    assert [(l.label, l.group) for l in layers] == [("embed", 0), ("enc L0", 0), ("enc L1", 0),
                                                    ("dec L0", 1), ("dec L1", 1)]


def test_encoder_decoder_film_has_two_rows(tmp_path):
    tf = transformers
    cfg = tf.BartConfig(d_model=16, encoder_layers=3, decoder_layers=3, encoder_attention_heads=2,
                        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, vocab_size=40)
    model = tf.BartForConditionalGeneration(cfg)
    for step in (0, 1):
        _nudge(model, step + 1)
        model.save_pretrained(tmp_path / "run" / f"checkpoint-{step}")
    plan = plan_of(tmp_path / "run")
    from layerfilm import grid

    layout = grid.arrange(grid.FrameSpec((1280, 720), tuple(l.label for l in plan.layers),
                                                   groups=tuple(l.group for l in plan.layers)))
    tops = {l.label: int(r[1]) for l, r in zip(plan.layers, layout.rects)}
    assert tops["embed"] == tops["enc L0"] == tops["enc L2"] < tops["dec L0"] == tops["dec L2"]


class _DictSource:
    """A state dict as the extract stage's TensorSource."""

    where = "state_dict"

    def __init__(self, sd):
        self.sd = sd

    def shapes(self):
        return {k: v.shape for k, v in self.sd.items()}

    def read(self, name, index=None, axis=0):
        a = self.sd[name]
        return np.ascontiguousarray((a if axis == 0 else a.T)[index]).astype(np.float32)


def _response(module, width):
    """What a linear-like module does to each basis vector: R[k] = f(e_k) - f(0), so R[k] is the
    vector input unit k writes, and R[:, i] the vector output unit i reads (Linear and Conv1D)."""
    with torch.no_grad():
        eye = torch.eye(width)
        return (module(eye) - module(torch.zeros(1, width))).numpy()


@pytest.mark.parametrize("family", ["gpt2", "nanogpt", "llama", "mistral", "neox", "bert", "t5"])
def test_square_weights_give_the_vectors_they_read_or_write(family):
    """For every weight of block 0 -- square ones above all -- the dots are what the module itself
    reads from the residual (q/k/v, MLP up: one vector per output unit) or writes into it
    (attention output, MLP down: one vector per input unit), found by feeding the module basis
    vectors -- Linear or Conv1D alike."""
    tf, d = transformers, 16
    make = {
        "gpt2": lambda: tf.GPT2LMHeadModel(tf.GPT2Config(n_embd=d, n_layer=1, n_head=2, vocab_size=50)),
        "llama": lambda: tf.LlamaForCausalLM(tf.LlamaConfig(hidden_size=d, num_hidden_layers=1,
                                                            num_attention_heads=2, intermediate_size=24,
                                                            vocab_size=50)),
        "mistral": lambda: tf.MistralForCausalLM(tf.MistralConfig(hidden_size=d, num_hidden_layers=1,
                                                                  num_attention_heads=2, intermediate_size=24,
                                                                  vocab_size=50)),
        "neox": lambda: tf.GPTNeoXForCausalLM(tf.GPTNeoXConfig(hidden_size=d, num_hidden_layers=1,
                                                               num_attention_heads=2, intermediate_size=24,
                                                               vocab_size=50)),
        "bert": lambda: tf.BertForMaskedLM(tf.BertConfig(hidden_size=d, num_hidden_layers=1,
                                                         num_attention_heads=2, intermediate_size=24,
                                                         vocab_size=50)),
        "t5": lambda: tf.T5ForConditionalGeneration(tf.T5Config(d_model=d, d_kv=8, d_ff=24, num_layers=1,
                                                                num_heads=2, vocab_size=50)),
    }
    if family == "nanogpt":  # nanoGPT's own module layout: nn.Linear everywhere, GPT-2's names
        model = torch.nn.ModuleDict({"transformer": torch.nn.ModuleDict({"h": torch.nn.ModuleList([
            torch.nn.ModuleDict({"attn": torch.nn.ModuleDict({"c_attn": torch.nn.Linear(d, 3 * d),
                                                              "c_proj": torch.nn.Linear(d, d)}),
                                 "mlp": torch.nn.ModuleDict({"c_fc": torch.nn.Linear(d, 4 * d),
                                                             "c_proj": torch.nn.Linear(4 * d, d)})})]),
            "wte": torch.nn.Embedding(50, d)})})
    else:
        model = make[family]()
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items() if v.is_floating_point()}
    layers = plan_layers({k: v.shape for k, v in sd.items()}, max_points=10_000)
    block = next(l for l in layers if l.label in ("L0", "enc L0"))
    source, checked = _DictSource(sd), 0
    for src in block.sources:
        module = model.get_submodule(src.tensor.removesuffix(".weight"))
        width = getattr(module, "in_features", None) or module.weight.shape[0]  # Linear / Conv1D
        R = _response(module, width)  # (in, out)
        if R.shape[0] != R.shape[1]:
            reads = R.shape[0] == d  # the residual is its input
        else:
            reads = src.tensor.split(".")[-2].lower() in ("q", "k", "v", "query", "key", "value",
                                                           "q_proj", "k_proj", "v_proj")
        want = R.T if reads else R  # one vector per output unit (reads), per input unit (writes)
        got = extract.read_layer(source, dataclasses.replace(block, sources=(src,)), source.shapes())
        np.testing.assert_allclose(got, want[src.index], rtol=1e-5, atol=1e-6, err_msg=src.tensor)
        checked += sd[src.tensor].shape[0] == sd[src.tensor].shape[1]
    assert checked >= 1 and len(block.sources) >= 4, [s.tensor for s in block.sources]
