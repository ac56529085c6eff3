"""Tensors -> named layers -> point clouds with a stable identity per point.

A *plan* is made once, from the first checkpoint's tensor names and shapes:
which tensors form which panel, and which row or column of each tensor is
point number ``i`` of that panel.  Every keyframe is then read through the same
plan, so point ``i`` is the same neuron in every keyframe.

A block's points are the weight vectors that live in the residual stream: for
each 2-D weight of shape ``(a, b)``, its rows when only ``b == d_model``, its
columns when only ``a == d_model``; a square weight gives the vectors it reads
(q/k/v) or writes (attention output), by its name and the block's storage
convention (``nn.Linear`` ``(out, in)`` or GPT-2's ``Conv1D`` ``(in, out)``, told
from its siblings' shapes).  The token embedding is its own panel, one point per token.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re
import zlib

import numpy as np

from .checkpoints import TensorSource
from .errors import CheckpointError

# The shortest "<stack>.<N>." prefix: nanoGPT/GPT-2 "transformer.h.N.", Llama "model.layers.N.",
# BERT "encoder.layer.N.", "blocks.N.", T5 "encoder.block.N.", nn.TransformerEncoder "layers.N.".
BLOCK_RE = re.compile(
    r"^(?P<stack>(?:[^.]+\.)*?(?:h|layers|layer|blocks|block|decoder_layers|encoder_layers))\.(?P<idx>\d+)\."
)
EMBED_RE = re.compile(
    r"(?:^|\.)(?:wte|embed_tokens|tok_embeddings|word_embeddings|token_embedding|tok_emb|"
    r"embed_in|shared|embeddings?|embed)(?:\.weight)?$"
)
POSITION_RE = re.compile(r"wpe|pos|position", re.I)


@dataclasses.dataclass(frozen=True)
class PointSource:
    """Points taken from one tensor: its rows (``axis=0``) or columns (``axis=1``) at ``index``."""

    tensor: str
    axis: int
    index: np.ndarray  # (k,) int64, sorted


@dataclasses.dataclass(frozen=True)
class Layer:
    """One panel: a label, the residual width ``dim`` and where its points come from."""

    label: str
    prefix: str
    dim: int
    sources: tuple[PointSource, ...]
    total: int  # points available before subsampling
    group: int = 0  # row band of the film: 0, or 1 for a decoder stack beside an encoder

    @property
    def n_points(self) -> int:
        return sum(len(s.index) for s in self.sources)


def plan_layers(
    shapes: dict[str, tuple[int, ...]], max_points: int = 2000, seed: int = 0
) -> list[Layer]:
    """Group tensors into panels (token embedding first, then blocks in order).

    ``shapes`` maps float tensor names to shapes.  Each panel keeps at most
    ``max_points`` points, drawn with a generator seeded by ``seed`` and the
    panel's name.  Raises :class:`CheckpointError` when no layer is recognised.
    """
    blocks: dict[tuple[str, int], list[str]] = collections.defaultdict(list)
    outside: list[str] = []
    for name, shape in shapes.items():
        if len(shape) != 2 or 0 in shape:
            continue
        m = BLOCK_RE.match(name)
        if m:
            blocks[(m.group("stack"), int(m.group("idx")))].append(name)
        else:
            outside.append(name)

    embed = _find_embedding(outside, shapes)
    if embed:
        d_model = shapes[embed][1]
    else:
        dims = collections.Counter(d for names in blocks.values() for n in names for d in shapes[n])
        d_model = dims.most_common(1)[0][0] if dims else 0

    layers: list[Layer] = []
    if embed:
        rows = shapes[embed][0]
        layers.append(_subsample("embed", "", d_model, [PointSource(embed, 0, np.arange(rows))],
                                 max_points, seed))
    stacks = sorted({stack for stack, _ in blocks}, key=_stack_order)
    for stack, idx in sorted(blocks, key=lambda k: (_stack_order(k[0]), k[1])):
        names = sorted(blocks[(stack, idx)])
        dims = collections.Counter(d for n in names for d in shapes[n])
        dim = d_model if d_model in dims else dims.most_common(1)[0][0]
        sources = _residual_sources(names, shapes, dim)
        if not sources:
            continue
        label = f"L{idx}" if len(stacks) == 1 else f"{_stack_short(stack)} L{idx}"
        group = 1 if len(stacks) > 1 and _stack_order(stack)[0] == 1 else 0
        layers.append(_subsample(label, f"{stack}.{idx}.", dim, sources, max_points, seed, group))
    if not layers:
        raise CheckpointError(
            "no layers recognised: expected block names like 'h.N.', 'layers.N.', 'blocks.N.' or a "
            f"token embedding; tensor-name prefixes found: {name_prefixes(shapes) or 'none'}; "
            "pass --layer-pattern REGEX whose first group names the layer (e.g. --layer-pattern "
            "'^(features\\.\\d+)\\.' makes one panel per features.N)"
        )
    return layers


def name_prefixes(shapes: dict[str, tuple[int, ...]], limit: int = 12) -> str:
    """The distinct tensor-name prefixes (name without its last part, numbers as ``N``)."""
    seen: dict[str, None] = {}
    for name in shapes:
        parts = name.split(".")
        parts = parts[:-1] if len(parts) > 1 else parts
        seen[".".join("N" if p.isdigit() else p for p in parts)] = None
    found = sorted(seen)
    more = f" (+{len(found) - limit} more)" if len(found) > limit else ""
    return ", ".join(found[:limit]) + more


def plan_layers_by_pattern(shapes: dict[str, tuple[int, ...]], pattern: str, max_points: int = 2000,
                           seed: int = 0) -> list[Layer]:
    """Panels from ``--layer-pattern``: every 2-D tensor whose name ``pattern`` matches
    (``re.search``) joins the panel named by the match's ``layer`` group, else its first
    group, else the whole match.  Panels are ordered by that name, numbers numerically; a
    panel's points are the rows or columns of the width most of its tensors share.
    """
    rx = re.compile(pattern)
    groups: dict[str, list[str]] = collections.defaultdict(list)
    for name in sorted(shapes):
        shape = shapes[name]
        m = rx.search(name)
        if m is None or len(shape) != 2 or 0 in shape:
            continue
        key = m.group("layer") if "layer" in rx.groupindex else m.group(1) if rx.groups else m.group(0)
        if key:
            groups[key].append(name)
    layers = []
    for key in sorted(groups, key=_natural):
        names = groups[key]
        # Ties go to input widths (a lone (out, in) weight gives one point per output row).
        dims = collections.Counter(shapes[n][1] for n in names)
        dims.update(shapes[n][0] for n in names)
        dim = dims.most_common(1)[0][0]
        sources = _residual_sources(names, shapes, dim)
        label = f"L{key}" if key.isdigit() else key
        prefix = _common_prefix(names)
        layers.append(_subsample(label, prefix, dim, sources, max_points, seed))
    if not layers:
        raise CheckpointError(
            f"--layer-pattern {pattern!r} matches no 2-D tensor; tensor-name prefixes found: "
            f"{name_prefixes(shapes) or 'none'}"
        )
    return layers


def _natural(key: str) -> list:
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", key) if p]


def _common_prefix(names: list[str]) -> str:
    """The longest prefix ending in ``.`` that all ``names`` share."""
    first, last = min(names), max(names)
    i = 0
    while i < min(len(first), len(last)) and first[i] == last[i]:
        i += 1
    return first[:first.rfind(".", 0, i) + 1]


# What a weight does with the residual stream, from the last part of its name: input sides read
# from it (their d_model-long vectors are what a neuron reads), output sides write into it.
_READS = {"q_proj", "k_proj", "v_proj", "qkv_proj", "c_attn", "query_key_value", "qkv", "wqkv",
          "in_proj", "query", "key", "value", "q", "k", "v", "gate_proj", "up_proj", "c_fc",
          "fc1", "dense_h_to_4h", "wi", "wi_0", "wi_1", "w1", "w3", "lin1", "linear1",
          "gate_up_proj", "c_fc2"}
_WRITES = {"o_proj", "c_proj", "out_proj", "dense", "o", "down_proj", "fc2", "dense_4h_to_h", "wo",
           "w2", "lin2", "linear2", "out_lin"}


def _role(name: str) -> str | None:
    """``"reads"``, ``"writes"`` or ``None`` (unknown) for a weight tensor's name."""
    parts = name.split(".")
    stem = parts[-2] if parts[-1] in ("weight", "kernel") and len(parts) > 1 else parts[-1]
    stem = stem.lower()
    if stem == "dense" and len(parts) > 2:
        # BERT: attention.self.{query,key,value} read; attention.output.dense and output.dense
        # write; intermediate.dense reads.
        owner = parts[-3].lower()
        if owner == "intermediate":
            return "reads"
    if stem in _READS:
        return "reads"
    if stem in _WRITES:
        return "writes"
    return None


def stores_in_out(names: list[str], shapes: dict[str, tuple[int, ...]], dim: int) -> bool:
    """Whether a block's weights are stored ``(in, out)`` (GPT-2's ``Conv1D``) rather than
    ``(out, in)`` (``nn.Linear``, everyone else), told from a sibling whose role and shape
    leave no doubt: a non-square weight that reads from the residual is ``(k, d)`` as a
    Linear and ``(d, k)`` as a Conv1D (and the other way round for one that writes)."""
    for n in names:
        a, b = shapes[n]
        if a == b or dim not in (a, b):
            continue
        role = _role(n)
        if role == "reads":
            return a == dim
        if role == "writes":
            return b == dim
    return False


def _residual_sources(names: list[str], shapes: dict[str, tuple[int, ...]], dim: int
                      ) -> list[PointSource]:
    """Each 2-D tensor's residual-stream vectors: the ``dim``-long rows or columns.

    Where only one side is ``dim`` long that side is taken.  A square weight has both: then
    its role decides -- one that reads from the residual (q/k/v, MLP up) gives the vectors it
    reads, one that writes into it (attention output, MLP down) the vectors it writes, which
    are a Linear's columns but a Conv1D's rows (:func:`stores_in_out`).  A square weight of
    unknown role gives its rows.
    """
    conv1d = stores_in_out(names, shapes, dim)
    sources = []
    for n in names:
        a, b = shapes[n]
        if a == b == dim and _role(n) is not None:
            writes = _role(n) == "writes"
            axis = 0 if writes == conv1d else 1  # Linear: reads -> rows, writes -> columns
            sources.append(PointSource(n, axis, np.arange(a)))
        elif b == dim:
            sources.append(PointSource(n, 0, np.arange(a)))
        elif a == dim:
            sources.append(PointSource(n, 1, np.arange(b)))
    return sources


def _find_embedding(names: list[str], shapes: dict[str, tuple[int, ...]]) -> str | None:
    hits = [n for n in names if EMBED_RE.search(n) and not POSITION_RE.search(n)]
    # The token embedding is the one with the most rows (the vocabulary).
    return max(hits, key=lambda n: (shapes[n][0], n)) if hits else None


def _stack_order(stack: str) -> tuple[int, str]:
    # Encoders before decoders, otherwise alphabetical.
    return (1 if "decoder" in stack else 0, stack)


def _stack_short(stack: str) -> str:
    first = stack.split(".")[0]
    for word, short in (("encoder", "enc"), ("decoder", "dec")):
        if word in stack:
            return short
    return first


def _subsample(label: str, prefix: str, dim: int, sources: list[PointSource], max_points: int,
               seed: int, group: int = 0) -> Layer:
    total = sum(len(s.index) for s in sources)
    if total > max_points:
        # Seeded by the panel's name too, so adding a panel never changes another's points.
        rng = np.random.default_rng([seed, zlib.crc32(label.encode())])
        keep = np.sort(rng.choice(total, size=max_points, replace=False))
        picked, start = [], 0
        for s in sources:
            n = len(s.index)
            mine = keep[(keep >= start) & (keep < start + n)] - start
            if len(mine):
                picked.append(PointSource(s.tensor, s.axis, s.index[mine]))
            start += n
        sources = picked
    return Layer(label, prefix, dim, tuple(sources), total, group)


def read_layer(ckpt: TensorSource, layer: Layer, shapes: dict[str, tuple[int, ...]]) -> np.ndarray:
    """The layer's point cloud in one checkpoint: ``(layer.n_points, layer.dim)`` float32.

    ``shapes`` is the checkpoint's own ``shapes()``; a tensor that is missing or
    changed shape against the plan raises :class:`CheckpointError` naming the file.
    """
    check_fits(ckpt.where, layer, shapes)
    into = getattr(ckpt, "read_into", None)
    if into is None or len(layer.sources) == 1:
        parts = [ckpt.read(s.tensor, s.index, s.axis) for s in layer.sources]
        return np.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]
    cloud = np.empty((sum(len(s.index) for s in layer.sources), layer.dim), dtype=np.float32)
    at_once = getattr(ckpt, "read_layer_into", None)
    if at_once is not None:  # every tensor's rows in one call
        at_once([(s.tensor, s.index, s.axis) for s in layer.sources], cloud)
        return cloud
    at = 0
    for s in layer.sources:  # each tensor's rows widened straight into their place
        into(s.tensor, s.index, s.axis, cloud[at:at + len(s.index)])
        at += len(s.index)
    return cloud


def prefetch(ckpt: TensorSource, layers: list[Layer], digest: str | None = None) -> None:
    """Tell the checkpoint's reader which rows will be read next (readers that cannot use the
    hint ignore it); ``digest``: have it hash them as they come in
    (:func:`~layerfilm.checkpoints.read_digests`)."""
    hint = getattr(ckpt, "prefetch", None)
    if hint is not None:
        hint([(s.tensor, s.index, s.axis) for layer in layers for s in layer.sources], digest)


def check_fits(where: str, layer: Layer, shapes: dict[str, tuple[int, ...]]) -> None:
    """Raise :class:`CheckpointError` naming the file (``where``) unless every tensor ``layer``
    draws is in ``shapes`` with the planned width and at least the planned rows/columns.

    A tensor that grew (a larger vocabulary) fits: the planned rows keep their identity and
    the new ones are not drawn.
    """
    for s in layer.sources:
        shape = shapes.get(s.tensor)
        if shape is None:
            raise CheckpointError(f"tensor {s.tensor!r} is missing", where)
        need = int(s.index[-1]) + 1
        if len(shape) != 2 or shape[1 - s.axis] != layer.dim or shape[s.axis] < need:
            raise CheckpointError(
                f"tensor {s.tensor!r} has shape {list(shape)}, which no longer fits the layout "
                f"planned from the first checkpoint (needs width {layer.dim} and at least "
                f"{need} {'rows' if s.axis == 0 else 'columns'})", where)


def read_memory(layers: list[Layer], shapes: dict[str, tuple[int, ...]], itemsize=None
                ) -> tuple[int, str, int]:
    """``(bytes, tensor, its bytes)``: the memory that reading ``layers`` from one checkpoint
    takes -- the stored bytes fetched (a 2-D tensor's drawn rows; the whole tensor where
    columns or another rank are drawn, as the readers fetch them) and the float32 cloud each
    panel becomes -- and the tensor that takes most.  Computed from the declared shapes alone,
    so a header that declares 10^12 elements is refused before one is read.
    ``itemsize(name)``: bytes per stored element (4 when the reader does not say)."""
    total, worst, worst_bytes = 0, "", -1
    for layer in layers:
        for s in layer.sources:
            shape = shapes.get(s.tensor, ())
            size = itemsize(s.tensor) if itemsize is not None else 4
            if len(shape) == 2 and s.axis == 0:
                stored = len(s.index) * shape[1] * size
            else:
                stored = math.prod(shape) * size
            need = stored + len(s.index) * layer.dim * 4
            total += need
            if need > worst_bytes:
                worst, worst_bytes = s.tensor, need
    return total, worst, worst_bytes


POINT_KINDS = ("neurons", "embeddings", "rows", "cols")


def plan_panels(shapes: dict[str, tuple[int, ...]], max_points: int = 2000, seed: int = 0,
                points: str = "neurons", tensor: str | None = None,
                layer_pattern: str | None = None) -> list[Layer]:
    """Panels for ``--points`` and ``--tensor`` (``plan_layers`` is the default, neurons).

    * ``neurons``: residual-stream rows/columns of every block, as :func:`plan_layers`;
    * ``embeddings``: the token embedding alone (one point per token);
    * ``rows`` / ``cols``: one panel per 2-D weight, its rows (columns) as points.

    ``tensor`` is a regular expression searched in tensor names: only matching tensors
    are drawn, before subsampling.  ``layer_pattern`` groups tensors into blocks by
    :func:`plan_layers_by_pattern` instead of by known names.  Raises
    :class:`CheckpointError` when nothing is left.
    """
    def blocks(max_points: int) -> list[Layer]:
        if layer_pattern is not None:
            return plan_layers_by_pattern(shapes, layer_pattern, max_points, seed)
        return plan_layers(shapes, max_points, seed)

    if points == "neurons" and tensor is None:
        return blocks(max_points)
    keep = re.compile(tensor).search if tensor is not None else (lambda name: True)
    full = blocks(2**62)  # every point, nothing subsampled
    layers: list[Layer] = []
    if points in ("neurons", "embeddings"):
        for layer in full:
            if points == "embeddings" and not is_token_embedding(layer):
                continue
            sources = [s for s in layer.sources if keep(s.tensor)]
            if sources:
                layers.append(_subsample(layer.label, layer.prefix, layer.dim, sources, max_points,
                                         seed, layer.group))
    else:
        axis = 0 if points == "rows" else 1
        embed = next((l.sources[0].tensor for l in full if is_token_embedding(l)), None)
        labels = {s.tensor: l for l in full for s in l.sources}

        def order(name: str) -> tuple:
            # The token embedding, then blocks in the film's order, then everything else by name.
            owner = labels.get(name)
            rank = full.index(owner) if owner is not None else len(full)
            return (0 if name == embed else 1, rank, name)

        for name in sorted((n for n, s in shapes.items() if len(s) == 2 and 0 not in s), key=order):
            if not keep(name):
                continue
            owner = labels.get(name)
            if name == embed:
                label = owner.label
            elif owner is not None and owner.prefix:
                label = f"{owner.label} {name[len(owner.prefix):].removesuffix('.weight')}"
            else:
                label = name.removesuffix(".weight")
            n, dim = shapes[name] if axis == 0 else shapes[name][::-1]
            prefix = owner.prefix if owner is not None else ""
            layers.append(_subsample(label, prefix, dim, [PointSource(name, axis, np.arange(n))],
                                     max_points, seed))
    if not layers:
        what = f" matching --tensor {tensor!r}" if tensor is not None else ""
        raise CheckpointError(f"no tensors to draw as --points {points}{what}; "
                              "`layerfilm info` lists the tensors of each panel")
    return layers


def is_token_embedding(layer: Layer) -> bool:
    """Whether ``layer`` is the token embedding panel (its points are tokens, in id order)."""
    return (layer.prefix == "" and len(layer.sources) == 1 and layer.sources[0].axis == 0
            and bool(EMBED_RE.search(layer.sources[0].tensor)))
