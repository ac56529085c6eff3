"""Torch pickles: read with weights_only=True, never executed."""

import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from layerfilm.checkpoints import discover, open_checkpoint
from layerfilm.errors import CheckpointError

from conftest import Evil, gpt_state, plan_of


def _state(seed):
    return {k: torch.from_numpy(v) for k, v in gpt_state(np.random.default_rng(seed), d=8, blocks=2).items()}


def test_plain_and_nanogpt_style_pickles(tmp_path):
    torch.save(_state(0), tmp_path / "ckpt_100.pt")
    compiled = {"_orig_mod." + k: v for k, v in _state(1).items()}
    torch.save({"model": compiled, "iter_num": 200, "model_args": {"n_layer": 2}}, tmp_path / "ckpt_200.pt")
    refs, _ = discover(tmp_path)
    assert [r.step for r in refs] == [100, 200]
    a, b = open_checkpoint(refs[0].path), open_checkpoint(refs[1].path)
    assert a.shapes() == b.shapes() and "transformer.h.1.mlp.c_fc.weight" in b.shapes()
    assert b.metadata["step"] == "200"
    np.testing.assert_array_equal(b.read("transformer.wte.weight", np.array([3, 5])),
                                  _state(1)["transformer.wte.weight"].numpy()[[3, 5]])
    assert [l.label for l in plan_of(tmp_path).layers] == ["embed", "L0", "L1"]


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "step_100.pt"
    torch.save({"weights": torch.zeros(2, 2), "payload": Evil(marker)}, bad,
               pickle_module=pickle)
    with pytest.raises(CheckpointError, match="refused: this pickle needs code execution") as e:
        open_checkpoint(bad)
    assert str(bad) in str(e.value) and "safetensors" in str(e.value)
    assert not marker.exists()


def test_pickle_without_tensors(tmp_path):
    torch.save({"note": "hello", "epoch": 3}, tmp_path / "step_1.pt")
    with pytest.raises(CheckpointError, match="contains no tensors"):
        open_checkpoint(tmp_path / "step_1.pt")


def test_wrapper_prefixes_are_whole_name_parts(tmp_path):
    sd = {"module._orig_mod.transformer.h.0.submodule.weight": torch.zeros(2, 2)}
    torch.save(sd, tmp_path / "a.pt")
    assert list(open_checkpoint(tmp_path / "a.pt").shapes()) == ["transformer.h.0.submodule.weight"]


def test_nanogpt_train_py_checkpoint_with_its_0d_best_val_loss(tmp_path):
    """The exact dict nanoGPT's train.py saves: the model is found beside a 0-d tensor, and the
    step comes from iter_num when the file name (ckpt.pt) has none."""
    for step, seed in ((0, 0), (250, 1)):
        folder = tmp_path / f"out-{'a' if step == 0 else 'b'}"
        folder.mkdir()
        model = {"_orig_mod." + k: v for k, v in _state(seed).items()}
        optimizer = {"state": {0: {"exp_avg": torch.zeros(3), "exp_avg_sq": torch.zeros(3)}},
                     "param_groups": [{"lr": 6e-4, "params": [0]}]}
        torch.save({"model": model, "optimizer": optimizer, "model_args": {"n_layer": 2, "n_embd": 8},
                    "iter_num": step, "best_val_loss": torch.tensor(2.5), "config": {"dataset": "x"}},
                   folder / "ckpt.pt")
    refs, skipped = discover(tmp_path)
    assert [(r.path.parent.name, r.step) for r in refs] == [("out-a", 0), ("out-b", 250)] and not skipped
    ckpt = open_checkpoint(refs[1].path)
    assert "best_val_loss" not in ckpt.shapes() and "transformer.h.1.mlp.c_fc.weight" in ckpt.shapes()
    np.testing.assert_array_equal(ckpt.read("transformer.wte.weight"), _state(1)["transformer.wte.weight"].numpy())
    assert [l.label for l in plan_of(tmp_path).layers] == ["embed", "L0", "L1"]


def test_lightning_last_ckpt_steps_from_inside_and_never_doubles_a_named_one(tmp_path):
    torch.save({"state_dict": _state(0), "global_step": 100}, tmp_path / "epoch=0-step=100.ckpt")
    torch.save({"state_dict": _state(1), "global_step": 200}, tmp_path / "last.ckpt")  # no step in name
    refs, skipped = discover(tmp_path)
    assert [(r.path.name, r.step) for r in refs] == [("epoch=0-step=100.ckpt", 100), ("last.ckpt", 200)]
    torch.save({"state_dict": _state(1), "global_step": 200}, tmp_path / "epoch=1-step=200.ckpt")
    refs, skipped = discover(tmp_path)  # now last.ckpt is a copy of a named checkpoint
    assert [r.path.name for r in refs] == ["epoch=0-step=100.ckpt", "epoch=1-step=200.ckpt"]
    assert [(p.name, why) for p, why in skipped] == [("last.ckpt", f"its step (200) is that of {tmp_path / 'epoch=1-step=200.ckpt'}")]


def test_refusal_is_one_line_without_torchs_own_warning(tmp_path, capfd):
    from typer.testing import CliRunner

    from layerfilm.cli import app

    torch.save({"w": torch.zeros(2, 2), "x": Evil(tmp_path / "pwned")}, tmp_path / "step_1.pt", pickle_module=pickle)
    torch.save(_state(0), tmp_path / "step_2.pt")
    result = CliRunner().invoke(app, ["info", str(tmp_path)])
    assert result.exit_code == 1 and "refused" in result.output
    assert "Warning" not in capfd.readouterr().err and not (tmp_path / "pwned").exists()
