"""``layerfilm info``: what a render would draw, in words -- the checkpoints and their steps,
the film's length, each panel's points and tensors, and how much of each panel's variance the
two drawn axes hold."""

from __future__ import annotations

from pathlib import Path

from .config import InfoConfig
from .layouts import axis_shares, projections
from .plan import make_plan
from .project import Fourier


def describe(config: InfoConfig) -> list[str]:
    """The lines ``layerfilm info`` prints for ``config`` (validated)."""
    config = config.validated()
    plan = make_plan(config, config.metrics)
    shares = axis_shares(plan, config.projection, config.seed, config.fourier_ref)
    steps_ = plan.steps
    gaps = sorted({int(b - a) for a, b in zip(steps_[:-1], steps_[1:])})
    every = f"every {gaps[0]}" if len(gaps) == 1 else f"gaps {gaps[0]}..{gaps[-1]}"
    fps = config.fps
    fpk = config.keyframe_frames
    frames = (len(steps_) - 1) * fpk + 1
    kinds = sorted({r.kind for r in plan.refs})
    lines: list[str] = []
    out = lines.append
    out(f"folder      {config.checkpoints}")
    out(f"format      {'; '.join(kinds)}")
    out(f"keyframes   {len(steps_)} checkpoints, steps {steps_[0]:,} .. {steps_[-1]:,} ({every})")
    out(f"first/last  {_rel(plan.refs[0].path, config.checkpoints)} .. {_rel(plan.refs[-1].path, config.checkpoints)}")
    loss = plan.loss
    out(f"loss        {f'{len(loss.steps)} values from {loss.source}' if loss else 'none found'}")
    out(f"film        {frames} frames, {frames / fps:.1f} s at {fps} fps, {fpk} frames per checkpoint")
    if len(gaps) > 1:
        out("            (uneven gaps: --timeline step spaces keyframes by training step)")
    out(f"panels      {len(plan.layers)}")
    if config.projection == "fourier":
        for layer, how in zip(plan.layers, projections(plan, "fourier", config.seed, config.fourier_ref)):
            if isinstance(how, Fourier):
                out(f"fourier     {layer.label}: k = {how.k} of period {how.period}, the plane of step "
                    f"{how.reference_step:,} ({how.share:.0%} of its variance at that step)"
                    if how.plane is not None else f"fourier     {layer.label}: no plane; drawn by PCA")
    out("")
    axes = "fourier/pca" if config.projection == "fourier" else "pca"
    out(f"  {'panel':<10} {'drawn':>7} {'of':>7} {'width':>6}  {'2 axes hold':>13}  tensors "
        f"(rows R / columns C)")
    for layer, (first, last) in zip(plan.layers, shares):
        tensors = ", ".join(
            f"{s.tensor[len(layer.prefix):] if layer.prefix and s.tensor.startswith(layer.prefix) else s.tensor}"
            f" {'R' if s.axis == 0 else 'C'}" for s in layer.sources)
        out(f"  {layer.label:<10} {layer.n_points:>7,} {layer.total:>7,} {layer.dim:>6}  "
            f"{f'{first:.0%} -> {last:.0%}':>13}  {tensors}")
    out(f"(2 axes hold: the share of the panel's variance on its two drawn {axes} axes, first -> "
        "last keyframe)")
    for path, why in plan.skipped:
        out(f"skipped     {path}: {why}")
    return lines

def _rel(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` (a checkpoint folder's own name when it is one)."""
    try:
        return str(path.relative_to(root)) if path != root else path.name
    except ValueError:
        return str(path)
