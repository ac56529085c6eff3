"""What the film's header and footer say, as plain data: each header field's text at any step
(step, tokens seen, learning rate, loss), the tokens seen, and the ``--captions`` file's
lines.  The film (:mod:`layerfilm.film`) lays them out; the overlays draw them."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from . import overlays
from .checkpoints import LossCurve
from .errors import CheckpointError
from .plan import Plan
from .untrusted import load_json


@dataclasses.dataclass(frozen=True)
class TokensSeen:
    """The training tokens seen at a step (``None`` when unknown): ``per_step`` tokens a step,
    else interpolated between ``(at, values)`` counts from ``at[0]`` on.  (Plain data, so a
    film can travel to cluster workers.)"""

    per_step: int | None = None
    at: np.ndarray | None = None
    values: np.ndarray | None = None

    def __call__(self, step: float) -> float | None:
        if self.per_step:
            return step * self.per_step
        return float(np.interp(step, self.at, self.values)) if step >= self.at[0] else None


def tokens_seen(plan: Plan, tokens_per_step: int | None) -> TokensSeen | None:
    """The tokens seen at each step: the step times ``--tokens-per-step``, else interpolated
    between the checkpoints' own counts when every one is known, else between the log's;
    ``None`` when none of these exists."""
    if tokens_per_step:
        return TokensSeen(per_step=tokens_per_step)
    if plan.tokens is not None and np.isfinite(plan.tokens).all():
        return TokensSeen(at=plan.steps.astype(np.float64), values=np.asarray(plan.tokens, float))
    if plan.loss is not None and plan.loss.tokens is not None:
        at, values = plan.loss.tokens
        return TokensSeen(at=np.asarray(at, float), values=np.asarray(values, float))
    return None


@dataclasses.dataclass(frozen=True)
class Field:
    """One header field's text at a step (``None``: left empty): ``"step"``, ``"tokens"``,
    ``"lr"`` or ``"loss"``.  Plain data, so a film can travel to cluster workers."""

    kind: str
    loss: LossCurve | None = None
    tokens: TokensSeen | None = None

    def __call__(self, s: float) -> str | None:
        if self.kind == "step":
            return f"step {int(round(s)):,}"
        if self.kind == "tokens":
            t = self.tokens(s)
            return None if t is None else f"{overlays.format_tokens(t)} tokens"
        v = self.loss.lr_at(s) if self.kind == "lr" else self.loss.at(s)
        if v is None:
            return None
        return f"lr {overlays.format_lr(v)}" if self.kind == "lr" else f"loss {v:.4g}"


def header_fields(plan: Plan, tokens_per_step: int | None) -> tuple[dict, tuple]:
    """The header's fields: name -> text at a step, and the widest text of each."""
    loss, tokens = plan.loss, tokens_seen(plan, tokens_per_step)
    fields = {"step": Field("step")}
    widest = [("step", f"step {int(plan.steps.max()):,}")]
    if tokens is not None:
        fields["tokens"] = Field("tokens", tokens=tokens)
        widest.append(("tokens", "88.8M tokens"))
    if loss is not None and loss.lr is not None:
        fields["lr"] = Field("lr", loss)
        widest.append(("lr", "lr 8.8e-08"))
    if loss is not None:
        fields["loss"] = Field("loss", loss)
        widest.append(("loss", "loss 8.888e-08"))
    return fields, tuple(widest)


def load_captions(path: str | os.PathLike) -> list[tuple[int, str]]:
    """``--captions FILE.jsonl``: one ``{"step": N, "text": "..."}`` per line (blank lines
    skipped), as (step, text) sorted by step.  A line that is not that raises
    :class:`CheckpointError` naming the file and the line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"cannot read the captions: {getattr(e, 'strerror', None) or e}", path) from None
    out = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = load_json(line)
        except ValueError as e:
            raise CheckpointError(f"line {n}: not JSON ({getattr(e, 'msg', e)})", path) from None
        step = row.get("step") if isinstance(row, dict) else None
        caption = row.get("text") if isinstance(row, dict) else None
        if not isinstance(step, int) or isinstance(step, bool) or step < 0 or not isinstance(caption, str):
            raise CheckpointError(f'line {n}: expected {{"step": N, "text": "..."}} with a whole '
                                  "step >= 0 and a text", path)
        out[step] = " ".join(caption.split())
    if not out:
        raise CheckpointError('no captions in it (one {"step": N, "text": "..."} per line)', path)
    return sorted(out.items())
