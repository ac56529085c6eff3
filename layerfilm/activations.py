"""``--points activations --probe FILE``: the point clouds of a model's hidden states on a probe
text -- one panel per layer's output (the embedding output, then each block's, as transformers'
``output_hidden_states`` gives them), one dot per probe token, the same token at every keyframe.

The probe is one sequence a line (blank lines skipped), each line run as its own sequence, as
the tokenizer encodes it (special tokens included).  Its dots are the tokens at
``--probe-positions`` of each line (all by default), line after line, until ``--max-points``;
a point's identity is ``(line, position)``.  A line longer than the model's positions is an
error naming it.

One model is built once per render (:func:`~layerfilm.completions.open_runner`, as ``--prompt``
builds it) and kept with the plan's :class:`Probe`; each keyframe copies its checkpoint's
weights into it and runs the probe on the CPU in float32 with torch's deterministic algorithms,
lines of one length together.  Peak memory: the model and the drawn hidden states.

:class:`ActivationClouds` is the :class:`~layerfilm.clouds.CloudSource` of these clouds
(``clouds.of`` hands it out for such a plan), so projection, alignment, drift, ``stats`` and
``info`` read them as they read weights.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
from pathlib import Path
from typing import Callable

import numpy as np

from . import completions, extract
from .config import Selection
from .config.values import parse_positions
from .errors import ConfigError, LayerfilmError, first_line
from .plan import Plan
from .plan import make_plan as plan_checkpoints

WHAT = "--points activations"
# Labels: at most this many dots marked per --label-tokens text (the first in probe order).
LABELS_PER_TEXT = 4


class _Model:
    """The model a plan's probe runs on, built on first use in each process (a plan sent to a
    cluster worker carries no model: the worker builds its own)."""

    def __init__(self, runner=None):
        self.runner, self.lock = runner, threading.Lock()

    def __getstate__(self):
        return {}

    def __setstate__(self, state):
        self.__init__()


@dataclasses.dataclass(frozen=True, eq=False)
class Probe:
    """A probe text tokenized for one model.

    ``lines``: the lines run (only those that give points), ``numbers``: their line numbers in
    the file (1-based); ``ids``: each one's token ids; ``points``: (n, 2) int64 ``(line,
    position)`` of each dot, in panel order; ``texts``: each dot's token as text; ``layers``:
    panels (hidden states: ``n_layer + 1``); ``dim``: the hidden size; ``tensors``: the
    checkpoint tensors a keyframe reads (all of them); ``key``: what identifies these clouds
    beside the checkpoints (probe, positions, model config, tokenizer) for the cache."""

    path: Path
    lines: tuple[str, ...]
    numbers: tuple[int, ...]
    ids: tuple[tuple[int, ...], ...]
    points: np.ndarray
    texts: tuple[str, ...]
    layers: int
    dim: int
    tensors: tuple[str, ...]
    key: str
    model_config: Path | None = None
    tokenizer: Path | None = None
    model: _Model = dataclasses.field(default_factory=_Model, repr=False)

    def runner(self, plan: Plan):
        """The model, built now unless this process has it."""
        with self.model.lock:
            if self.model.runner is None:
                self.model.runner = open_model(plan, self.model_config, self.tokenizer)
            return self.model.runner

    @property
    def drawn(self) -> list[int]:
        """The hidden states drawn, one panel each: all of them, but the embedding output when
        every dot is the same token at the same position (one point at every checkpoint,
        e.g. ``--probe-positions -1`` on lines that all end in ``=``)."""
        same = {(self.ids[line][pos], pos) for line, pos in self.points.tolist()}
        return list(range(1 if len(same) == 1 else 0, self.layers))

    def labelled(self, texts: tuple[str, ...]) -> list[int]:
        """The dots marked by ``--label-tokens`` ``texts``: for each text, the first
        :data:`LABELS_PER_TEXT` dots whose token reads it (spaces around it ignored)."""
        out = []
        for text in texts:
            hits = [i for i, t in enumerate(self.texts) if t == text.strip()]
            out += [i for i in hits[:LABELS_PER_TEXT] if i not in out]
        return out


def open_model(plan: Plan, model_config: Path | None, tokenizer: Path | None):
    """:func:`completions.open_runner`, its messages saying ``--points activations``."""
    try:
        return completions.open_runner(plan, model_config, tokenizer)
    except LayerfilmError as e:
        e.renamed("--prompt", WHAT)
        raise


def make_plan(selection: Selection, metrics: Path | None = None,
              check_panels: Callable[[list[extract.Layer]], None] | None = None) -> Plan:
    """:func:`layerfilm.plan.make_plan`, and for ``--points activations`` the panels of the
    probe's hidden states (the model built once, kept with the plan's :class:`Probe`)."""
    if selection.points != "activations":
        return plan_checkpoints(selection, metrics, check_panels)
    plan = plan_checkpoints(selection, metrics)
    probe = load_probe(plan, selection)
    layers = panels(probe)
    if check_panels is not None:
        check_panels(layers)
    return dataclasses.replace(plan, layers=layers, probe=probe)


def panels(probe: Probe) -> list[extract.Layer]:
    """One panel per hidden state, labelled as the weight panels are: ``embed`` (the
    embedding output), then ``L0``, ``L1``, ... (the output of each block; the last one as
    transformers gives it, after the final norm); no ``embed`` panel where it would be one
    point (:attr:`Probe.drawn`)."""
    n = len(probe.points)
    index = np.arange(n, dtype=np.int64)
    return [extract.Layer("embed" if i == 0 else f"L{i - 1}", "", probe.dim,
                          (extract.PointSource(f"hidden_states[{i}]", 0, index),), n)
            for i in probe.drawn]


def _tokenizer_identity(tok) -> str:
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        return backend.to_str()
    return json.dumps(tok.get_vocab(), sort_keys=True)  # a slow tokenizer: its vocabulary


def load_probe(plan: Plan, selection: Selection) -> Probe:
    """The probe file of ``selection`` tokenized by the model's tokenizer (:class:`Probe`);
    :class:`ConfigError` naming the file (and line) for one that cannot be used."""
    path = Path(selection.probe)
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--probe: cannot read it ({getattr(e, 'strerror', None) or first_line(e)})",
                          path, field="probe") from None
    runner = open_model(plan, selection.model_config, selection.tokenizer)
    tok, config = runner.tokenizer, runner.model.config
    positions = parse_positions(selection.probe_positions)
    limit = selection.max_points
    lines, numbers, ids, points, texts = [], [], [], [], []
    for number, line in enumerate(text.splitlines(), 1):
        if len(points) >= limit:
            break
        if not line.strip():
            continue
        try:
            tokens = list(tok(line)["input_ids"])
        except Exception as e:
            raise ConfigError(f"line {number}: the tokenizer cannot encode it ({first_line(e)})",
                              path, field="probe") from None
        if not tokens:
            raise ConfigError(f"line {number}: no tokens", path, field="probe")
        if runner.positions is not None and len(tokens) > runner.positions:
            raise ConfigError(f"line {number}: {len(tokens)} tokens, the model takes at most "
                              f"{runner.positions} (split the line)", path, field="probe")
        at = range(len(tokens)) if positions is None else \
            sorted({p % len(tokens) for p in positions if -len(tokens) <= p < len(tokens)})
        at = list(at)[:limit - len(points)]
        if not at:
            continue
        for p in at:
            points.append((len(lines), p))
            texts.append(tok.decode([tokens[p]]).strip())
        lines.append(line)
        numbers.append(number)
        ids.append(tuple(int(t) for t in tokens))
    if len(points) < 3:
        raise ConfigError(f"--probe: {len(points)} token(s) at --probe-positions "
                          f"{selection.probe_positions}; a panel needs at least 3", path, field="probe")
    tensors = tuple(sorted(plan.refs[0].open().shapes()))
    h = hashlib.sha256()
    for part in (raw, selection.probe_positions.encode(), str(limit).encode(),
                 config.to_json_string(use_diff=False).encode(), _tokenizer_identity(tok).encode(),
                 json.dumps(ids).encode()):
        h.update(hashlib.sha256(part).digest())
    n_layer = int(config.num_hidden_layers)
    probe = Probe(path, tuple(lines), tuple(numbers), tuple(ids), np.array(points, dtype=np.int64),
                  tuple(texts), n_layer + 1, int(config.hidden_size), tensors,
                  f"activations|{h.hexdigest()}", selection.model_config, selection.tokenizer,
                  _Model(runner))
    return probe


def hidden_states(runner, probe: Probe) -> list[np.ndarray]:
    """Every panel's cloud with the weights now in ``runner``'s model: one array per drawn
    hidden state (:attr:`Probe.drawn`), each
    ``(n, dim)`` float32, row ``i`` the hidden state at ``probe.points[i]``.  Lines of one
    length run together (no padding), in float32 on the CPU with torch's deterministic
    algorithms."""
    import torch

    model = runner.model
    base = getattr(model, model.base_model_prefix, model)  # no logits: only the hidden states
    panel_of = {state: l for l, state in enumerate(probe.drawn)}
    out = [np.empty((len(probe.points), probe.dim), dtype=np.float32) for _ in panel_of]
    by_length: dict[int, list[int]] = {}
    for i, ids in enumerate(probe.ids):
        by_length.setdefault(len(ids), []).append(i)
    row_of = {(int(a), int(b)): r for r, (a, b) in enumerate(probe.points)}
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with torch.no_grad():
            for length, group in by_length.items():
                batch = torch.tensor([probe.ids[i] for i in group], dtype=torch.long)
                states = base(input_ids=batch, output_hidden_states=True, use_cache=False).hidden_states
                if len(states) != probe.layers:
                    raise ConfigError(f"{WHAT}: the model gives {len(states)} hidden states, not "
                                      f"{probe.layers}", field="model_config")
                take = [(r, j, p) for j, i in enumerate(group) for p in range(length)
                        if (r := row_of.get((i, p))) is not None]
                rows = np.array([t[0] for t in take], dtype=np.int64)
                sel = (torch.tensor([t[1] for t in take]), torch.tensor([t[2] for t in take]))
                for state, l in panel_of.items():
                    out[l][rows] = states[state][sel].float().numpy()
    finally:
        torch.use_deterministic_algorithms(was)
    return out


class ActivationKeyframe:
    """Checkpoint ``index`` run on the probe: its clouds, computed when it was opened."""

    def __init__(self, index: int, step: int, states: list[np.ndarray], panels: list[int]):
        self.index, self.step = index, step
        self._states, self._panels = states, panels

    def cloud(self, l: int) -> np.ndarray:
        return self._states[l]

    def clouds(self) -> list[np.ndarray]:
        return [self._states[l] for l in self._panels]


class ActivationClouds:
    """The clouds of ``plan``'s probe (``plan.probe``): per checkpoint, the hidden states of
    the probe's tokens after each layer.  ``panels``: the panels handed out by ``clouds()``
    (all by default).  ``digest`` (see :class:`~layerfilm.clouds.WeightClouds`): the files'
    drawn bytes -- every tensor -- are hashed as the model's weights are read from them,
    ``read[k]`` checkpoint ``k``'s digests, so the manifest reads nothing again."""

    def __init__(self, plan: Plan, panels=None, digest: str | None = None):
        self.plan, self.probe = plan, plan.probe
        self.panels = list(range(len(plan.layers)) if panels is None else panels)
        self.digest = digest
        self.read: dict[int, dict[str, dict]] = {}

    def open(self, k: int) -> ActivationKeyframe:
        """Checkpoint ``k``'s weights copied into the model and the probe run (now: the
        model is shared, so its clouds are made before the next keyframe is loaded)."""
        runner = self.probe.runner(self.plan)
        ref = self.plan.refs[k]
        with self.probe.model.lock:
            digests = runner.load(ref, self.probe.tensors, self.digest)
            states = hidden_states(runner, self.probe)
        if digests is not None:
            self.read[k] = {str(p): d for p, d in digests.items()}
        return ActivationKeyframe(k, ref.step, states, self.panels)
