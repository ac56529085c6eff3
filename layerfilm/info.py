"""``layerfilm info``: what a render would draw, in words -- the checkpoints and their steps,
the film's length, the bytes a render reads, each panel's points and tensors, and how much of
each panel's variance the two drawn axes hold."""

from __future__ import annotations

from pathlib import PurePath

from . import checkpoints
from .config import InfoConfig
from .layouts import axis_shares, projections
from .activations import make_plan
from .plan import read_estimate
from .project import Fourier


def report(config: InfoConfig) -> list[str]:
    """The lines ``layerfilm info`` prints for ``config`` (validated)."""
    config = config.validated()
    plan = make_plan(config, config.metrics)
    fps, fpk = config.fps, config.keyframe_frames
    how = projections(plan, config.projection, config.seed, config.fourier_ref)  # fitted once
    shares = axis_shares(plan, how, config.seed)
    steps = plan.steps
    gaps = sorted({int(b - a) for a, b in zip(steps[:-1], steps[1:])})
    every = f"every {gaps[0]}" if len(gaps) == 1 else f"gaps {gaps[0]}..{gaps[-1]}"
    frames = (len(steps) - 1) * fpk + 1
    kinds = sorted({r.kind for r in plan.refs})
    first, last = (_rel(r.path, plan.folder) for r in (plan.refs[0], plan.refs[-1]))
    loss = plan.loss
    stored, reads = read_estimate(plan)
    human = checkpoints.human_bytes
    out = [f"{'source' if plan.url else 'folder':<11} {plan.where}",
           f"format      {'; '.join(kinds)}",
           f"keyframes   {len(steps)} checkpoints, steps {steps[0]:,} .. {steps[-1]:,} ({every})",
           f"first/last  {first} .. {last}"]
    tokens = [r.tokens for r in plan.refs if r.tokens is not None]
    if tokens:
        out.append(f"tokens      {_count(tokens[0])} .. {_count(tokens[-1])} tokens seen")
    out += [f"loss        {f'{len(loss.steps)} values from {loss.source}' if loss else 'none found'}",
            f"film        {frames} frames, {frames / fps:.1f} s at {fps} fps, {fpk} frames per checkpoint"]
    if len(gaps) > 1:
        out.append("            (uneven gaps: --timeline step spaces keyframes by training step)")
    out.append(f"bytes       {human(stored)} stored; a render reads {human(reads)} of them "
               f"({100 * reads / max(stored, 1):.1f} %)")
    traffic = getattr(plan.storage, "traffic", None)
    if traffic is not None:
        out.append(f"            this look fetched {human(traffic.fetched)} in "
                   f"{traffic.data_requests} data and {traffic.requests} other requests")
    out.append(f"panels      {len(plan.layers)}")
    if config.projection == "fourier":
        for layer, fitted in zip(plan.layers, how):
            if isinstance(fitted, Fourier):
                out.append(f"fourier     {layer.label}: k = {fitted.k} of period {fitted.period}, the plane of "
                           f"step {fitted.reference_step:,} ({fitted.share:.0%} of its variance at that step)"
                           if fitted.plane is not None else f"fourier     {layer.label}: no plane; drawn by PCA")
    axes = "fourier/pca" if config.projection == "fourier" else "pca"
    out += ["", f"  {'panel':<10} {'drawn':>7} {'of':>7} {'width':>6}  {'2 axes hold':>13}  tensors "
            "(rows R / columns C)"]
    for layer, (a, b) in zip(plan.layers, shares):
        tensors = ", ".join(
            f"{s.tensor[len(layer.prefix):] if layer.prefix and s.tensor.startswith(layer.prefix) else s.tensor}"
            f" {'R' if s.axis == 0 else 'C'}" for s in layer.sources)
        out.append(f"  {layer.label:<10} {layer.n_points:>7,} {layer.total:>7,} {layer.dim:>6}  "
                   f"{f'{a:.0%} -> {b:.0%}':>13}  {tensors}")
    out.append(f"(2 axes hold: the share of the panel's variance on its two drawn {axes} axes, first -> "
               "last keyframe)")
    out += [f"skipped     {path}: {why}" for path, why in plan.ignored + plan.skipped]
    return out


def _count(n: int) -> str:
    """``4_000_000_000`` -> ``"4B"``."""
    for unit, v in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= v:
            return f"{n / v:g}{unit}"
    return str(n)


def _rel(path: PurePath, root: PurePath) -> str:
    """``path`` relative to ``root`` (a checkpoint folder's own name when it is one)."""
    try:
        return str(path.relative_to(root)) if path != root else path.name
    except ValueError:
        return str(path)
