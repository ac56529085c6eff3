import numpy as np
import pytest
from safetensors.numpy import save_file

from layerfilm.checkpoints import open_checkpoint
from layerfilm.errors import CheckpointError
from layerfilm.extract import plan_layers, read_layer

from conftest import gpt_state

D = 8


def sources(layer):
    return {(s.tensor, s.axis, len(s.index)) for s in layer.sources}


def test_nanogpt_names():
    shapes = {k: v.shape for k, v in gpt_state(np.random.default_rng(0), d=D, blocks=3, vocab=20).items()}
    layers = plan_layers(shapes, max_points=10_000)
    assert [l.label for l in layers] == ["embed", "L0", "L1", "L2"]
    assert sources(layers[0]) == {("transformer.wte.weight", 0, 20)}  # wpe is not the token embedding
    p = "transformer.h.1."
    assert sources(layers[2]) == {(p + "attn.c_attn.weight", 0, 3 * D), (p + "attn.c_proj.weight", 1, D),
                                  (p + "mlp.c_fc.weight", 0, 4 * D), (p + "mlp.c_proj.weight", 1, 4 * D)}
    assert layers[2].n_points == layers[2].total == 12 * D and layers[2].dim == D


def test_gpt2_conv1d_transposed():
    # GPT-2's Conv1D stores (in, out): c_attn (d, 3d) -> its columns are the d-vectors.
    shapes = {"wte.weight": (50, D), "wpe.weight": (10, D), "h.0.attn.c_attn.weight": (D, 3 * D),
              "h.0.attn.c_attn.bias": (3 * D,), "h.0.mlp.c_fc.weight": (D, 4 * D),
              "h.0.mlp.c_proj.weight": (4 * D, D), "h.0.attn.c_proj.weight": (D, D)}
    embed, block = plan_layers(shapes)
    assert embed.sources[0].tensor == "wte.weight"
    assert sources(block) == {("h.0.attn.c_attn.weight", 1, 3 * D), ("h.0.mlp.c_fc.weight", 1, 4 * D),
                              ("h.0.mlp.c_proj.weight", 0, 4 * D), ("h.0.attn.c_proj.weight", 0, D)}


def test_llama_names_with_gqa():
    shapes = {"model.embed_tokens.weight": (100, D), "lm_head.weight": (100, D), "model.norm.weight": (D,)}
    for i in range(2):
        p = f"model.layers.{i}."
        shapes |= {p + "self_attn.q_proj.weight": (D, D), p + "self_attn.k_proj.weight": (D // 2, D),
                   p + "mlp.gate_proj.weight": (3 * D, D), p + "mlp.down_proj.weight": (D, 3 * D),
                   p + "input_layernorm.weight": (D,)}
    layers = plan_layers(shapes)
    assert [l.label for l in layers] == ["embed", "L0", "L1"]
    assert layers[0].sources[0].tensor == "model.embed_tokens.weight"
    assert ("model.layers.1.mlp.down_proj.weight", 1, 3 * D) in sources(layers[2])
    assert ("model.layers.1.self_attn.k_proj.weight", 0, D // 2) in sources(layers[2])


def test_block_order_is_numeric_and_stacks_are_labelled():
    shapes = {f"encoder.layer.{i}.output.dense.weight": (D, 2 * D) for i in (10, 2, 1)}
    assert [l.label for l in plan_layers(shapes)] == ["L1", "L2", "L10"]
    shapes = {"encoder.block.0.layer.0.SelfAttention.q.weight": (D, D),
              "decoder.block.0.layer.0.SelfAttention.q.weight": (D, D), "shared.weight": (30, D)}
    assert [l.label for l in plan_layers(shapes)] == ["embed", "enc L0", "dec L0"]


def test_hourglass_widths():
    shapes = {k: v.shape for k, v in gpt_state(np.random.default_rng(0), d=D, blocks=3, ff=[32, 8, 32]).items()}
    counts = [l.n_points for l in plan_layers(shapes)]
    assert counts[1:] == [4 * D + 2 * 32, 4 * D + 2 * 8, 4 * D + 2 * 32]


def test_unknown_names_list_prefixes():
    with pytest.raises(CheckpointError, match="prefixes found: conv1, fc"):
        plan_layers({"conv1.weight": (3, 3), "fc.bias": (4,)})


def test_max_points_is_seeded_and_stable(tmp_path):
    rng = np.random.default_rng(0)
    shapes = {k: v.shape for k, v in gpt_state(rng, d=D, blocks=2).items()}
    a, b = plan_layers(shapes, max_points=30, seed=3), plan_layers(shapes, max_points=30, seed=3)
    c = plan_layers(shapes, max_points=30, seed=4)
    for la, lb in zip(a, b):
        assert la.n_points == 30 and la.total == (40 if la.label == "embed" else 12 * D)
        assert all(np.array_equal(x.index, y.index) for x, y in zip(la.sources, lb.sources))
    assert any(not np.array_equal(x.index, y.index) for x, y in zip(a[1].sources, c[1].sources))


def test_read_layer_follows_identity(tmp_path):
    rng = np.random.default_rng(0)
    sd = gpt_state(rng, d=D, blocks=1)
    save_file(sd, str(tmp_path / "a.safetensors"))
    ck = open_checkpoint(tmp_path / "a.safetensors")
    _, block = plan_layers(ck.shapes(), max_points=25, seed=0)
    cloud = read_layer(ck, block, ck.shapes())
    # Independent reconstruction: all d-vectors of the block, in plan order, then the same subsample.
    expected = []
    for s in block.sources:
        w = sd[s.tensor]
        expected.append((w if s.axis == 0 else w.T)[s.index])
    np.testing.assert_array_equal(cloud, np.concatenate(expected))
    assert cloud.shape == (25, D)
    sd["transformer.h.0.mlp.c_fc.weight"] = rng.normal(size=(2, 2 * D)).astype(np.float32)
    save_file(sd, str(tmp_path / "b.safetensors"))
    ck2 = open_checkpoint(tmp_path / "b.safetensors")
    with pytest.raises(CheckpointError, match="no longer fits"):
        read_layer(ck2, block, ck2.shapes())


def test_points_and_tensor_choose_what_is_drawn():
    from layerfilm.extract import is_token_embedding, plan_panels

    shapes = {k: v.shape for k, v in gpt_state(np.random.default_rng(0), d=D, blocks=2, vocab=20).items()}
    assert [(l.label, sources(l)) for l in plan_panels(shapes)] == \
        [(l.label, sources(l)) for l in plan_layers(shapes)]
    only_fc = plan_panels(shapes, tensor=r"mlp\.c_fc")
    assert [l.label for l in only_fc] == ["L0", "L1"]
    assert sources(only_fc[1]) == {("transformer.h.1.mlp.c_fc.weight", 0, 4 * D)}
    emb = plan_panels(shapes, points="embeddings")
    assert [l.label for l in emb] == ["embed"] and is_token_embedding(emb[0])
    assert not any(is_token_embedding(l) for l in plan_layers(shapes)[1:])
    rows = plan_panels(shapes, points="rows", tensor="c_proj|wte")
    assert [(l.label, l.dim, l.n_points) for l in rows] == [
        ("embed", D, 20), ("L0 attn.c_proj", D, D), ("L0 mlp.c_proj", 4 * D, D),
        ("L1 attn.c_proj", D, D), ("L1 mlp.c_proj", 4 * D, D)]
    cols = plan_panels(shapes, points="cols", tensor=r"h\.0\.mlp|wpe")
    assert [(l.label, l.dim, l.n_points, l.sources[0].axis) for l in cols] == [
        ("L0 mlp.c_fc", 4 * D, D, 1), ("L0 mlp.c_proj", D, 4 * D, 1), ("transformer.wpe", 8, D, 1)]
    # Filtering happens before subsampling: a chosen tensor keeps up to max_points points.
    assert plan_panels(shapes, max_points=30, tensor="c_fc")[0].n_points == 30
    with pytest.raises(CheckpointError, match="no tensors to draw"):
        plan_panels(shapes, tensor="nope")


def test_rows_panels_read_through_the_plan(tmp_path):
    from layerfilm.extract import plan_panels

    sd = gpt_state(np.random.default_rng(1), d=D, blocks=1, vocab=10)
    save_file(sd, str(tmp_path / "m.safetensors"))
    ckpt = open_checkpoint(tmp_path / "m.safetensors")
    for points, want in (("rows", sd["transformer.h.0.mlp.c_proj.weight"]),
                         ("cols", sd["transformer.h.0.mlp.c_proj.weight"].T)):
        (layer,) = plan_panels(ckpt.shapes(), points=points, tensor="mlp.c_proj")
        np.testing.assert_array_equal(read_layer(ckpt, layer, ckpt.shapes()), want)
