"""``layerfilm stats``: per-layer numbers for a run -- how far and how fast each layer moved,
when it settled and which layer moved against its neighbours -- as a CSV, a heatmap and a
printed summary.

:class:`LayerStats` adds to :class:`~layerfilm.drift.Drift` (the numbers the film shares,
:mod:`layerfilm.drift`) what ``layerfilm stats`` reports.  :func:`weight_stats` makes one
streaming pass over the checkpoints.  It holds the previous keyframe's point clouds and their
last update (about two checkpoints' drawn tensors) plus the keyframe being read; the first
keyframe's drawn rows are read again when needed.  :func:`layout_stats` adds the 2-D
clouds' motion when keyframe layouts exist, :func:`write_csv` / :func:`write_heatmap`
write the results atomically and :func:`summary` is what the command prints.

Every statistic is over a panel's drawn points (all of them unless the panel has more than
``--max-points``), i.e. the rows/columns of the panel's tensors that the film draws.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
from pathlib import Path

import numpy as np

from . import atomic, checkpoints, clouds, extract, layouts
from .drift import DriftMeter, Drift, Settling, drift_of
from .progress import QUIET, Progress
from .text import missing_glyphs_as_boxes

# CSV columns and what they mean (docs/stats.md explains each in its own words: keep the two in step).
COLUMNS: dict[str, str] = {
    "step": "training step of the keyframe",
    "layer": "panel label (embed, L0, L1, ...)",
    "points": "drawn points (rows/columns) in the panel",
    "weight_norm": "Frobenius norm ||W_k|| of the panel's drawn weights",
    "rel_change_prev": "||W_k - W_(k-1)|| / ||W_(k-1)||; empty at the first keyframe",
    "rel_change_per_100": "the layer's rate: relative change per 100 training steps over the film's "
                          "shortest checkpoint gap; an interval of another length is first converted "
                          "to that gap by gap_growth",
    "gap_growth": "how much more a change over this interval's gap is than over the shortest gap, "
                  "measured from the run (the gap ratio itself where the run cannot show it)",
    "rel_change_first": "||W_k - W_0|| / ||W_0||",
    "mean_abs_change_first": "mean over all weights of |W_k - W_0|",
    "update_cosine": "cosine between successive updates, dW_k . dW_(k-1) / (||dW_k|| ||dW_(k-1)||) "
                     "with dW_k = W_k - W_(k-1); empty at the first two keyframes",
    "layout_displacement": "mean distance each point of the aligned 2-D layout moved since the "
                           "previous keyframe; empty without cached layouts",
    "procrustes_residual": "||P_k R - P_(k-1)|| / ||P_(k-1)||, the residual of the orthogonal "
                           "Procrustes fit of the 2-D layout onto the previous one; empty without "
                           "cached layouts",
    "path_done": "share of the layer's whole path (the sum of rel_change_prev over all keyframes) "
                 "covered by this keyframe, 0 .. 1",
    "rebel_z": "z-score of log10(rel_change_per_100) against the layers up to two places before "
               "and after (their mean and standard deviation, at least 0.1 decade); empty with "
               "fewer than two neighbours",
    "settle_step": "the step from which the layer's rate stays below --settle-fraction of its "
                   "early pace (or below --settle-threshold) for at least three intervals to the "
                   "end; empty if it is still moving",
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class LayerStats(Drift):
    """:class:`Drift` and more, per layer (rows) and keyframe (columns); NaN where undefined.

    Every array below is (L, K) float64.  ``displacement``/``residual`` are all NaN when no
    layouts were given.
    """

    rel_first: np.ndarray
    mean_abs_first: np.ndarray
    update_cosine: np.ndarray
    displacement: np.ndarray
    residual: np.ndarray

    @property
    def has_layouts(self) -> bool:
        return bool(np.isfinite(self.displacement).any())

    def with_layouts(self, P: np.ndarray, starts: np.ndarray) -> "LayerStats":
        """A copy with :func:`layout_stats` of the aligned keyframe layouts ``P`` filled in."""
        disp, resid = layout_stats(P, starts)
        return dataclasses.replace(self, displacement=disp, residual=resid)


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 and np.isfinite(den) else np.nan


def _nanmedian(values: np.ndarray) -> float:
    """The median of the finite-or-inf values, NaN when there are none (a layer whose weights are
    all NaN) -- without numpy's All-NaN warning on stderr."""
    kept = values[~np.isnan(values)]
    return float(np.median(kept)) if kept.size else np.nan


def weight_stats(refs: list[checkpoints.CheckpointRef], layers: list[extract.Layer],
                 progress: Progress = QUIET, run=None, plan=None) -> LayerStats:
    """Read every keyframe once and measure each layer's weights, in chunks of keyframes run
    by ``run`` (this process by default, else a Dask cluster: the same numbers either way);
    ``plan`` (whose ``refs`` and ``layers`` these are): its clouds, hidden states too
    (``--points activations``, :func:`layerfilm.clouds.of`).

    A tensor that is missing or changed shape raises :class:`~layerfilm.errors.CheckpointError`.
    """
    from .cluster import InProcess

    K, L = len(refs), len(layers)
    runs = layouts.chunks(K)
    parts = (run or InProcess()).map(weights_chunk, runs, refs, layers, plan, stage="Measuring layers",
                                     progress=progress, weights=[len(c) for c in runs])
    rel_first, mean_abs, cosine = (np.concatenate([p[i] for p in parts], axis=1) for i in (1, 2, 3))
    base = drift_of(np.concatenate([p[0] for p in parts], axis=1), np.array([r.step for r in refs]), layers)
    nan = np.full((L, K), np.nan)
    return LayerStats(base.steps, base.labels, base.points, base.norm, base.rel_prev, base.growth,
                      rel_first=rel_first, mean_abs_first=mean_abs, update_cosine=cosine,
                      displacement=nan, residual=nan.copy())


def weights_chunk(refs: list[checkpoints.CheckpointRef], layers: list[extract.Layer], plan, chunk: range,
                  advance=None) -> tuple[np.ndarray, ...]:
    """A task: :func:`weight_stats`' numbers for the keyframes in ``chunk`` -- the drift sums
    (L, n, DRIFT_WIDTH) and the change from the first keyframe, its mean size and the update cosine,
    each (L, n).  The first keyframe, and the two before the chunk, are read as needed."""
    n, L = len(chunk), len(layers)
    rel_first, mean_abs, cosine = (np.full((L, n), np.nan) for _ in range(3))
    lo = max(0, chunk.start - 2)  # the two keyframes before the chunk give its first updates
    source = clouds.WeightClouds(refs, layers) if plan is None else clouds.of(plan)
    frames = clouds.CloudStream(source, range(lo, chunk.stop))
    # The first keyframe stays open all along (each keyframe's change from it): the stream's own
    # first one where the stream starts there (its clouds read again, the file not opened again).
    first = next(frames) if lo == 0 else source.open(0)
    norm0 = [np.sqrt(np.vdot(w, w)) for w in (c.astype(np.float64) for c in first.clouds())]
    if lo == 0:
        frames = itertools.chain([first], frames)
    before = [next(frames).clouds() for _ in range(lo, chunk.start)]
    prev32 = before[-1] if before else [None] * L
    meter = DriftMeter(chunk, prev32)
    with np.errstate(invalid="ignore"):  # as below: Inf weights give NaN changes
        prev_delta = ([b.astype(np.float64) - a.astype(np.float64) for a, b in zip(*before)]
                      if len(before) == 2 else [None] * L)
    for i, frame in enumerate(frames):
        k, now = frame.index, frame.clouds()
        for l in range(L):
            W32 = now[l]
            meter.measure(l, k, W32)
            W = W32.astype(np.float64)
            if k == 0:
                rel_first[l, i] = mean_abs[l, i] = 0.0
                continue
            with np.errstate(invalid="ignore"):  # Inf weights: inf - inf is NaN, counted as such
                d0 = W - first.cloud(l)
                rel_first[l, i] = _ratio(np.sqrt(np.vdot(d0, d0)), norm0[l])
                mean_abs[l, i] = np.abs(d0).mean()
                del d0
                delta = W - prev32[l].astype(np.float64)
            if prev_delta[l] is not None:
                pd = prev_delta[l]
                cosine[l, i] = _ratio(np.vdot(delta, pd),
                                      np.sqrt(np.vdot(delta, delta)) * np.sqrt(np.vdot(pd, pd)))
            prev_delta[l] = delta
        prev32 = now
        del frame
        if advance is not None:
            advance(1)
    return meter.sums, rel_first, mean_abs, cosine


def layout_stats(P: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Motion of the aligned 2-D layouts ``P`` (K, N, 2), per panel (``starts``: (L+1,)).

    Returns ``(displacement, residual)``, each (L, K) float64, NaN at the first keyframe:
    the mean distance a point moved since the previous keyframe, and the Procrustes
    residual ``||P_k - P_(k-1)|| / ||P_(k-1)||`` (``P_k`` is already rotated onto
    ``P_(k-1)``).  Points that are not finite in either keyframe are left out.
    """
    K, L = P.shape[0], len(starts) - 1
    disp, resid = np.full((L, K), np.nan), np.full((L, K), np.nan)
    for l in range(L):
        Q = P[:, starts[l]:starts[l + 1]].astype(np.float64)
        for k in range(1, K):
            ok = np.isfinite(Q[k]).all(axis=1) & np.isfinite(Q[k - 1]).all(axis=1)
            if not ok.any():
                continue
            d = Q[k, ok] - Q[k - 1, ok]
            disp[l, k] = np.sqrt((d ** 2).sum(axis=1)).mean()
            resid[l, k] = _ratio(np.sqrt((d ** 2).sum()), np.sqrt((Q[k - 1, ok] ** 2).sum()))
    return disp, resid


def _fmt(v: float) -> str:
    return "" if not np.isfinite(v) else f"{v:.9g}"


def csv_text(stats: LayerStats, settling: Settling) -> str:
    """The CSV (header + one row per layer per keyframe, keyframes in step order)."""
    settle = stats.settle_steps(settling)
    rate, growth, done = stats.rate, stats.gap_growth, stats.path_done
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for k, step in enumerate(stats.steps):
        for l, label in enumerate(stats.labels):
            w.writerow([int(step), label, int(stats.points[l]), _fmt(stats.norm[l, k]),
                        _fmt(stats.rel_prev[l, k]), _fmt(rate[l, k]), _fmt(growth[l, k]),
                        _fmt(stats.rel_first[l, k]),
                        _fmt(stats.mean_abs_first[l, k]), _fmt(stats.update_cosine[l, k]),
                        _fmt(stats.displacement[l, k]), _fmt(stats.residual[l, k]),
                        _fmt(done[l, k]), _fmt(stats.rebel[l, k]),
                        "" if np.isnan(settle[l]) else int(settle[l])])
    return buf.getvalue()


def write_csv(stats: LayerStats, settling: Settling, path: Path) -> None:
    """Write :func:`csv_text` to ``path`` atomically."""
    atomic.write_bytes(path, csv_text(stats, settling).encode())


def write_completions(rows: list[tuple[int, str, str]], path: Path) -> None:
    """``--prompt``: ``step,prompt,completion``, one row per keyframe and prompt, to ``path``
    atomically."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["step", "prompt", "completion"])
    w.writerows(rows)
    atomic.write_bytes(path, buf.getvalue().encode())


def write_heatmap(stats: Drift, settling: Settling, path: Path, title: str = "",
                  rebel_z: float = 3.0) -> None:
    """A PNG heatmap of :attr:`Drift.rate`: layers (rows) x steps (columns), log colour scale,
    labelled axes and a colour bar; each layer's settling step is marked with a blue tick and
    every interval where it is a rebel (``|rebel| >= rebel_z``) with a green dot."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    rate = stats.rate[:, 1:]
    steps = stats.steps
    L, K1 = rate.shape
    positive = rate[np.isfinite(rate) & (rate > 0)]
    lo, hi = (positive.min(), positive.max()) if positive.size else (1e-3, 1.0)
    lo = max(lo, hi * 1e-4)
    fig = Figure(figsize=(min(14.0, 3.0 + 0.16 * K1), 1.6 + 0.42 * L), dpi=100)
    ax = fig.add_subplot()
    # Cell k spans the interval (steps[k], steps[k+1]]: its edges are the keyframe steps.
    im = ax.pcolormesh(steps, np.arange(L + 1), np.where(rate > 0, rate, np.nan),
                       norm=LogNorm(vmin=lo, vmax=hi), cmap="inferno", shading="flat")
    settle = stats.settle_steps(settling)
    for l in range(L):
        if np.isfinite(settle[l]):
            ax.plot([settle[l]] * 2, [l + 0.08, l + 0.92], color="#3fd0ff", lw=2)
    rl, rk = np.nonzero(np.abs(np.nan_to_num(stats.rebel[:, 1:])) >= rebel_z)
    if rl.size:
        ax.scatter((steps[rk] + steps[rk + 1]) / 2, rl + 0.5, s=14, color="#5cff7a",
                   edgecolors="black", linewidths=0.5, zorder=3)
    ax.set_yticks(np.arange(L) + 0.5, stats.labels)
    ax.set_ylim(L, 0)
    ax.set_xlabel("training step")
    ax.set_ylabel("layer")
    ax.set_title(title or "relative change of each layer's weights per 100 steps", fontsize=10)
    bar = fig.colorbar(im, ax=ax, pad=0.015)
    bar.set_label("||ΔW|| / ||W|| per 100 steps (log)")
    note = f"blue tick: settled ({settling.describe()})"
    if rl.size:
        note += f"\ngreen dot: rebel (|z| ≥ {rebel_z:g} against its neighbours)"
    fig.text(0.995, 0.005, note, ha="right", va="bottom", fontsize=7, color="#1a7fa0")
    buf = io.BytesIO()
    with missing_glyphs_as_boxes():  # layer labels are laid out and drawn only here
        fig.tight_layout(rect=(0, 0.1 / (1.6 + 0.42 * L) * (3 if rl.size else 2), 1, 1))
        fig.savefig(buf, format="png")
    atomic.write_bytes(path, buf.getvalue())


def summary(stats: LayerStats, config) -> tuple[str, list[tuple[str, str]], list[list[str]], list[str]]:
    """What ``layerfilm stats`` prints: ``(title, columns (name, justify), rows, lines)``.

    Per layer: norm first -> last, change from the first keyframe, the *late rate* (median
    rate over the last quarter of the keyframes), the settling step and its strongest rebel
    score; then which layers settle first and which are rebels (``config``: its
    ``settle_fraction``/``settle_threshold`` and ``rebel_z``)."""
    settling = Settling.of(config)
    settle = stats.settle_steps(settling)
    late = stats.rate[:, max(1, len(stats.steps) * 3 // 4):]
    columns = [("layer", "left"), ("points", "right"), ("|W| first -> last", "right"),
               ("change vs first", "right"), ("late rate", "right"), ("settles at step", "right"),
               ("rebel |z| max", "right")]
    rows, rebels = [], []
    for l, label in enumerate(stats.labels):
        z = np.abs(np.nan_to_num(stats.rebel[l], nan=0.0))
        k = int(np.argmax(z))
        rows.append([label, f"{stats.points[l]:,}", f"{stats.norm[l, 0]:.3g} -> {stats.norm[l, -1]:.3g}",
                     f"{stats.rel_first[l, -1]:.3g}", f"{_nanmedian(late[l]):.3g}",
                     "still moving" if np.isnan(settle[l]) else f"{int(settle[l]):,}",
                     f"{z[k]:.2g} @ {int(stats.steps[k]):,}" if z[k] > 0 else ""])
        hits = np.flatnonzero(z >= config.rebel_z)
        if hits.size:
            rebels.append(f"{label} (at {hits.size} keyframe{'s' if hits.size > 1 else ''}, "
                          f"z {stats.rebel[l, k]:+.1f} at step {int(stats.steps[k]):,})")
    lines = []
    order = [l for l in np.argsort(settle, kind="stable") if np.isfinite(settle[l])]
    if order:
        first = settle[order[0]]
        names = ", ".join(stats.labels[l] for l in order if settle[l] == first)
        lines.append(f"settles first: {names} (step {int(first):,})")
    else:
        lines.append("no layer settles: every layer is still moving ("
                     + (f"its rate never stays below {settling.threshold:g} per 100 steps"
                        if settling.threshold is not None else
                        f"its rate never stays below {settling.fraction:.0%} of its early pace") + ")")
    lines.append(f"rebels (|z| >= {config.rebel_z:g}): {'; '.join(rebels)}" if rebels
                 else f"no rebel (no layer's |z| reaches {config.rebel_z:g})")
    return f"settling: {settling.describe()}", columns, rows, lines


def story(drift: Drift, settling: Settling, rebel_z: float, top: int = 3) -> dict:
    """What happened in the run, for the manifest and the published card: each panel's
    settling step (``settled``, in step order) or ``still_moving``; every rebel run of
    keyframes (``|z| >= rebel_z``, consecutive keyframes joined; its first and last step and its
    strongest z); and the ``top`` intervals in which the whole model moved most
    (``moved_most``: the change of all drawn weights together, ``sqrt(sum_l ||W_l,k -
    W_l,k-1||^2) / sqrt(sum_l ||W_l,k-1||^2)``, per 100 steps of that interval, largest first).
    The same numbers as ``layerfilm stats`` (its CSV's ``settle_step``, ``rebel_z``,
    ``weight_norm`` and ``rel_change_prev``)."""
    settle = drift.settle_steps(settling)
    settled = sorted((float(settle[l]), l) for l in range(len(drift.labels)) if np.isfinite(settle[l]))
    rebels = []
    for l, label in enumerate(drift.labels):
        z = np.nan_to_num(drift.rebel[l], nan=0.0)
        hit = np.abs(z) >= rebel_z
        k = 0
        while k < len(hit):
            if not hit[k]:
                k += 1
                continue
            end = k
            while end + 1 < len(hit) and hit[end + 1]:
                end += 1
            peak = k + int(np.argmax(np.abs(z[k:end + 1])))
            rebels.append({"layer": label, "steps": [int(drift.steps[k]), int(drift.steps[end])],
                           "z": round(float(z[peak]), 2), "at": int(drift.steps[peak])})
            k = end + 1
    rebels.sort(key=lambda r: (r["steps"][0], r["layer"]))
    with np.errstate(invalid="ignore", divide="ignore"):
        moved = np.sqrt(np.nansum((drift.rel_prev[:, 1:] * drift.norm[:, :-1]) ** 2, axis=0))
        size = np.sqrt(np.nansum(drift.norm[:, :-1] ** 2, axis=0))
        gap = np.diff(drift.steps.astype(np.float64))
        whole = np.where((size > 0) & (gap > 0), moved / size * 100.0 / gap, np.nan)
    order = [int(k) for k in np.argsort(-np.nan_to_num(whole, nan=-1.0), kind="stable")
             if np.isfinite(whole[k])][:top]
    return {"settling": settling.describe(), "rebel_z": rebel_z,
            "settled": [{"layer": drift.labels[l], "step": int(s)} for s, l in settled],
            "still_moving": [label for l, label in enumerate(drift.labels) if not np.isfinite(settle[l])],
            "rebels": rebels,
            "moved_most": [{"from": int(drift.steps[k]), "to": int(drift.steps[k + 1]),
                            "rate_per_100": round(float(whole[k]), 6)} for k in order]}
