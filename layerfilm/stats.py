"""Per-layer numbers for a run: how far and how fast each layer moved, and when it settled.

:func:`weight_stats` makes one streaming pass over the checkpoints.  It holds the previous
keyframe's point clouds and their last update (about two checkpoints' drawn tensors) plus
the keyframe being read; the first keyframe is re-read through its memory map when needed.
:func:`layout_stats` adds the 2-D clouds' motion when keyframe layouts exist, and
:func:`write_csv` / :func:`write_heatmap` write the results atomically.

Every statistic is over a panel's drawn points (all of them unless the panel has more than
``--max-points``), i.e. the rows/columns of the panel's tensors that the film draws.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from pathlib import Path

import numpy as np

from . import atomic, checkpoints, extract
from .progress import QUIET, Progress

# CSV columns and what they mean (the README's table is made from the same words).
COLUMNS: dict[str, str] = {
    "step": "training step of the keyframe",
    "layer": "panel label (embed, L0, L1, ...)",
    "points": "drawn points (rows/columns) in the panel",
    "weight_norm": "Frobenius norm ||W_k|| of the panel's drawn weights",
    "rel_change_prev": "||W_k - W_(k-1)|| / ||W_(k-1)||; empty at the first keyframe",
    "rel_change_per_100": "rel_change_prev scaled to 100 training steps",
    "rel_change_first": "||W_k - W_0|| / ||W_0||",
    "mean_abs_change_first": "mean over all weights of |W_k - W_0|",
    "update_cosine": "cosine between successive updates, dW_k . dW_(k-1) / (||dW_k|| ||dW_(k-1)||) "
                     "with dW_k = W_k - W_(k-1); empty at the first two keyframes",
    "layout_displacement": "mean distance each point of the aligned 2-D layout moved since the "
                           "previous keyframe; empty without cached layouts",
    "procrustes_residual": "||P_k R - P_(k-1)|| / ||P_(k-1)||, the residual of the orthogonal "
                           "Procrustes fit of the 2-D layout onto the previous one; empty without "
                           "cached layouts",
    "settle_step": "the layer's settling step: after it, rel_change_per_100 stays below "
                   "--settle-threshold; empty if it never settles",
}


@dataclasses.dataclass(frozen=True)
class LayerStats:
    """Statistics per layer (rows) and keyframe (columns); NaN where undefined.

    steps: (K,) int64; labels: L panel labels; points: (L,) int64; every array below is
    (L, K) float64.  ``displacement``/``residual`` are all NaN when no layouts were given.
    """

    steps: np.ndarray
    labels: list[str]
    points: np.ndarray
    norm: np.ndarray
    rel_prev: np.ndarray
    rel_first: np.ndarray
    mean_abs_first: np.ndarray
    update_cosine: np.ndarray
    displacement: np.ndarray
    residual: np.ndarray

    @property
    def rate(self) -> np.ndarray:
        """(L, K) relative change per 100 training steps (NaN at the first keyframe)."""
        gap = np.diff(self.steps.astype(np.float64), prepend=np.nan)
        return self.rel_prev * 100.0 / gap

    @property
    def has_layouts(self) -> bool:
        return bool(np.isfinite(self.displacement).any())

    def settle_steps(self, threshold: float) -> np.ndarray:
        """(L,) float64: each layer's settling step -- the first step after which its
        :attr:`rate` stays below ``threshold`` -- or NaN when its last change is still above."""
        out = np.empty(len(self.labels))
        for l, r in enumerate(self.rate):
            above = np.flatnonzero(r[1:] >= threshold) + 1  # NaN compares False: never "above"
            if not above.size:
                out[l] = self.steps[0]
            elif above[-1] == len(self.steps) - 1:
                out[l] = np.nan
            else:
                out[l] = self.steps[above[-1]]
        return out

    def reordered(self, order: list[int]) -> "LayerStats":
        """The same statistics with the layers (rows) in ``order``."""
        return LayerStats(self.steps, [self.labels[l] for l in order], self.points[order],
                          self.norm[order], self.rel_prev[order], self.rel_first[order],
                          self.mean_abs_first[order], self.update_cosine[order],
                          self.displacement[order], self.residual[order])

    def with_layouts(self, P: np.ndarray, starts: np.ndarray) -> "LayerStats":
        """A copy with :func:`layout_stats` of the aligned keyframe layouts ``P`` filled in."""
        disp, resid = layout_stats(P, starts)
        return dataclasses.replace(self, displacement=disp, residual=resid)


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 and np.isfinite(den) else np.nan


def weight_stats(refs: list[checkpoints.CheckpointRef], layers: list[extract.Layer],
                 progress: Progress = QUIET) -> LayerStats:
    """Read every keyframe once (in ``refs`` order) and measure each layer's weights.

    A tensor that is missing or changed shape raises :class:`~layerfilm.errors.CheckpointError`.
    """
    K, L = len(refs), len(layers)
    norm, rel_prev, rel_first, mean_abs, cosine = (np.full((L, K), np.nan) for _ in range(5))
    first = refs[0].open()
    first_shapes = first.shapes()
    prev: list[np.ndarray | None] = [None] * L
    prev_delta: list[np.ndarray | None] = [None] * L
    with progress.stage("Measuring layers", K) as advance:
        for k, ref in enumerate(refs):
            ckpt = first if k == 0 else ref.open()
            shapes = first_shapes if k == 0 else ckpt.shapes()
            for l, layer in enumerate(layers):
                W = extract.read_layer(ckpt, layer, shapes).astype(np.float64)
                norm[l, k] = np.sqrt(np.vdot(W, W))
                if k == 0:
                    rel_first[l, k] = mean_abs[l, k] = 0.0
                else:
                    d0 = W - extract.read_layer(first, layer, first_shapes)
                    rel_first[l, k] = _ratio(np.sqrt(np.vdot(d0, d0)), norm[l, 0])
                    mean_abs[l, k] = np.abs(d0).mean()
                    del d0
                    delta = W - prev[l]
                    dn = np.sqrt(np.vdot(delta, delta))
                    rel_prev[l, k] = _ratio(dn, norm[l, k - 1])
                    if prev_delta[l] is not None:
                        pd = prev_delta[l]
                        cosine[l, k] = _ratio(np.vdot(delta, pd), dn * np.sqrt(np.vdot(pd, pd)))
                    prev_delta[l] = delta
                prev[l] = W
            del ckpt
            advance(1)
    nan = np.full((L, K), np.nan)
    return LayerStats(np.array([r.step for r in refs], dtype=np.int64), [l.label for l in layers],
                      np.array([l.n_points for l in layers], dtype=np.int64), norm, rel_prev,
                      rel_first, mean_abs, cosine, nan, nan.copy())


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


def csv_text(stats: LayerStats, threshold: float) -> str:
    """The CSV (header + one row per layer per keyframe, keyframes in step order)."""
    settle = stats.settle_steps(threshold)
    rate = stats.rate
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for k, step in enumerate(stats.steps):
        for l, label in enumerate(stats.labels):
            w.writerow([int(step), label, int(stats.points[l]), _fmt(stats.norm[l, k]),
                        _fmt(stats.rel_prev[l, k]), _fmt(rate[l, k]), _fmt(stats.rel_first[l, k]),
                        _fmt(stats.mean_abs_first[l, k]), _fmt(stats.update_cosine[l, k]),
                        _fmt(stats.displacement[l, k]), _fmt(stats.residual[l, k]),
                        "" if np.isnan(settle[l]) else int(settle[l])])
    return buf.getvalue()


def write_csv(stats: LayerStats, threshold: float, path: Path) -> None:
    """Write :func:`csv_text` to ``path`` atomically."""
    atomic.write_bytes(path, csv_text(stats, threshold).encode())


def write_heatmap(stats: LayerStats, threshold: float, path: Path, title: str = "") -> None:
    """A PNG heatmap of :attr:`LayerStats.rate`: layers (rows) x steps (columns), log colour
    scale, labelled axes and a colour bar; each layer's settling step is marked."""
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
    settle = stats.settle_steps(threshold)
    for l in range(L):
        if np.isfinite(settle[l]):
            ax.plot([settle[l]] * 2, [l + 0.08, l + 0.92], color="#3fd0ff", lw=2)
    ax.set_yticks(np.arange(L) + 0.5, stats.labels)
    ax.set_ylim(L, 0)
    ax.set_xlabel("training step")
    ax.set_ylabel("layer")
    ax.set_title(title or "relative change of each layer's weights per 100 steps", fontsize=10)
    bar = fig.colorbar(im, ax=ax, pad=0.015)
    bar.set_label("||ΔW|| / ||W|| per 100 steps (log)")
    ax.text(1.0, -0.02 - 0.5 / (1.6 + 0.42 * L), f"blue tick: settling step (rate < {threshold:g})",
            transform=ax.transAxes, ha="right", va="top", fontsize=8, color="#1a7fa0")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic.write_bytes(path, buf.getvalue())
