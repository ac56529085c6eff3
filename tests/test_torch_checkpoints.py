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
