"""The numbers a film and ``layerfilm stats`` share: each layer's drift numbers, measured cloud
by cloud while the checkpoints are read (:func:`measure_cloud`, :class:`DriftMeter`), how fast
each layer moved at each keyframe (:class:`Drift`), when it settled (:class:`Settling`) and
which layer moved against its neighbours (:func:`rebel_scores`).

A rate does not depend on how often the run saved: :func:`gap_growth` measures from the run how
a layer's change grows with the gap and converts every interval to the shortest one.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from . import extract
from ._kernels import sketch_kernel, sq_norms_kernel

SKETCH = 256  # buckets of a cloud's drift sketch (:func:`~layerfilm._kernels.sketch_kernel`)
DRIFT_WIDTH = 2 + SKETCH
# A sketch reads at most about this many of a cloud's numbers (every few rows of a larger
# cloud): the growth of change with the gap is a ratio of changes, which evenly spread rows
# show as well as all of them, and the sketch stays a small part of a keyframe's work.
SKETCH_MAX_VALUES = 1 << 17

_NO_PREVIOUS = np.zeros((0, 0), np.float32)  # the first keyframe's: no change to measure

@functools.lru_cache(maxsize=64)
def _sketch_hashes(n: int, d: int) -> tuple[np.ndarray, ...]:
    """The fixed bucket and sign hashes of an ``(n, d)`` cloud's sketch: the same at every
    keyframe, in every process, so any two keyframes' sketches can be subtracted."""
    rng = np.random.default_rng([0x5CE7C4, n, d])
    return (rng.integers(0, SKETCH, n), rng.choice([-1.0, 1.0], n),
            rng.integers(0, SKETCH, d), rng.choice([-1.0, 1.0], d))


def measure_cloud(cloud: np.ndarray, previous: np.ndarray | None, out: np.ndarray,
                  sketch: bool = True) -> None:
    """A layer's drift numbers at one keyframe into ``out`` (DRIFT_WIDTH,) float64: sum W**2,
    sum (W - W_prev)**2 (NaN without a ``previous`` cloud;
    :func:`~layerfilm._kernels.sq_norms_kernel`) and the sketch of its rows (every few rows of
    a cloud of more than :data:`SKETCH_MAX_VALUES` numbers; :func:`~layerfilm._kernels.sketch_kernel`),
    from which the change between any two keyframes is estimated (:func:`gap_growth`) -- or,
    without ``sketch``, NaN in its place (:func:`unsketched`)."""
    sq_norms_kernel(cloud, _NO_PREVIOUS if previous is None else previous, out[:2])
    if not sketch:
        out[2:] = np.nan
        return
    rows = cloud[::-(-cloud.size // SKETCH_MAX_VALUES) or 1]
    sketch_kernel(rows, *_sketch_hashes(*rows.shape), out[2:])


def needs_sketches(steps) -> bool:
    """Whether a film of keyframes at ``steps`` uses the sketches (:func:`gap_growth`): only
    when its gaps are uneven.  An evenly spaced film's rates are its changes as they are, so
    the layouts' pass leaves the sketches out (a tenth of its CPU on the bench film)."""
    gaps = np.diff(np.asarray(steps, dtype=np.float64))
    return len(gaps) > 0 and not (gaps == gaps.min()).all()


def unsketched(sums: np.ndarray) -> bool:
    """Whether any keyframe of ``sums`` ((L, K, DRIFT_WIDTH)) was measured without its sketch
    (all NaN; e.g. chunks an evenly spaced film cached, now part of an uneven one)."""
    return bool(np.isnan(sums[:, :, 2:]).all(axis=2).any())


class DriftMeter:
    """Each panel's drift numbers over the keyframes ``keyframes`` (a range), measured as the
    clouds are read, each against the same panel's cloud at the keyframe before (``previous``:
    every panel's cloud at ``keyframes.start - 1``, ``None`` where there is none).

    ``sums``: (L, len(keyframes), DRIFT_WIDTH) float64, NaN until measured (the sketches'
    slots stay NaN without ``sketch``: :func:`needs_sketches`).  Panels may be measured from
    different threads (each panel's own slots only)."""

    def __init__(self, keyframes: range, previous: list[np.ndarray | None], sketch: bool = True):
        self.start, self.sketch = keyframes.start, sketch
        self.previous = list(previous)
        self.sums = np.full((len(previous), len(keyframes), DRIFT_WIDTH), np.nan)

    def measure(self, l: int, k: int, cloud: np.ndarray) -> None:
        """Panel ``l``'s ``cloud`` at keyframe ``k`` (the next one after the last measured)."""
        measure_cloud(cloud, self.previous[l], self.sums[l, k - self.start], self.sketch)
        self.previous[l] = cloud


# The rebel: neighbours on either side, and the smallest spread of their log10 rates (decades),
# so that near-identical neighbours do not turn a small difference into a huge score.
REBEL_REACH = 2
REBEL_FLOOR = 0.1


@dataclasses.dataclass(frozen=True)
class Settling:
    """When a layer counts as settled: from the first keyframe after which its rate stays
    below ``fraction`` of its own early pace (:func:`_peak_rate`; or, with a ``threshold``,
    below that rate) in every later interval, and there are at least :data:`SETTLE_HOLD` such
    intervals to show it.  A layer still changing at an unchanged rate at the end is *still moving* (``None``):
    settling says the layer stopped, not that the film ran out of checkpoints.
    """

    fraction: float = 0.25
    threshold: float | None = None

    @classmethod
    def of(cls, config) -> "Settling":
        return cls(config.settle_fraction, config.settle_threshold)

    def describe(self) -> str:
        if self.threshold is not None:
            return (f"relative change per 100 steps stays below {self.threshold:g} "
                    f"(at least {SETTLE_HOLD} intervals to the end)")
        return (f"rate stays below {self.fraction:.0%} of the layer's early pace "
                f"(at least {SETTLE_HOLD} intervals to the end)")


# A layer is settled only when at least this many intervals after its settling step show it.
SETTLE_HOLD = 3


def _peak_rate(rate: np.ndarray) -> float:
    """A layer's early pace (``rate``: (K-1,) per interval): the highest mean of three
    neighbouring intervals in the first quarter of the film (at least its first three
    intervals).  A mean, so one interval's spike (the first step away from initialisation, a
    noisy save) does not set the scale; early, so a burst later in the run (a rebel moment)
    does not make the layer's ordinary pace afterwards look like a stop."""
    r = np.nan_to_num(np.asarray(rate, dtype=np.float64), nan=0.0)
    if len(r) < 3:
        return float(r.max(initial=0.0))
    early = r[:max(3, -(-len(r) // 4))]
    return float(np.convolve(early, np.ones(3) / 3, mode="valid").max())


def rebel_scores(rate: np.ndarray, reach: int = REBEL_REACH, floor: float = REBEL_FLOOR) -> np.ndarray:
    """(L, K) z-score of each layer's log10 ``rate`` against its neighbours ``l-reach .. l+reach``
    (itself left out) at the same keyframe: ``(x_l - mean) / max(std, floor)`` with the
    neighbours' sample standard deviation; NaN where the rate or fewer than two neighbours'
    rates are positive and finite."""
    rate = np.asarray(rate, dtype=np.float64)
    L = rate.shape[0]
    x = np.full(rate.shape, np.nan)
    ok = np.isfinite(rate) & (rate > 0)
    x[ok] = np.log10(rate[ok])
    z = np.full(rate.shape, np.nan)
    for l in range(L):
        nb = x[[j for j in range(l - reach, l + reach + 1) if 0 <= j < L and j != l]]
        n = np.isfinite(nb).sum(axis=0)
        use = (n >= 2) & np.isfinite(x[l])
        if not use.any():
            continue
        v = nb[:, use]
        mean = np.nanmean(v, axis=0)
        std = np.sqrt(np.nansum((v - mean) ** 2, axis=0) / (n[use] - 1))
        z[l, use] = (x[l, use] - mean) / np.maximum(std, floor)
    return z


@dataclasses.dataclass(frozen=True)
class Drift:
    """How much each layer (rows) moved at each keyframe (columns); NaN where undefined.

    steps: (K,) int64; labels: L panel labels; points: (L,) int64; norm, rel_prev: (L, K)
    float64 (``||W_k||`` and ``||W_k - W_(k-1)|| / ||W_(k-1)||``); rebel: (L, K)
    :func:`rebel_scores` of :attr:`rate`, computed in the film's own panel order when not given
    (and kept when the panels are reordered).
    """

    steps: np.ndarray
    labels: list[str]
    points: np.ndarray
    norm: np.ndarray
    rel_prev: np.ndarray
    # (L, K): how much larger each interval's change is than a change over the shortest gap
    # (:func:`gap_growth`); ``None``: the gap ratio itself (change taken to grow linearly).
    growth: np.ndarray | None = None
    rebel: np.ndarray | None = None

    def __post_init__(self):
        if self.rebel is None:
            object.__setattr__(self, "rebel", rebel_scores(self.rate))

    @property
    def gap_growth(self) -> np.ndarray:
        """(L, K) :attr:`growth`, or the gap ratio where it was not measured (NaN at 0)."""
        gap = np.diff(self.steps.astype(np.float64), prepend=np.nan)
        ratio = gap / np.nanmin(gap) if len(gap) > 1 else gap
        return self.growth if self.growth is not None else np.broadcast_to(ratio, self.rel_prev.shape)

    @property
    def rate(self) -> np.ndarray:
        """(L, K) the layer's rate: relative change per 100 training steps over the film's
        shortest checkpoint gap, each interval first converted to that gap by its
        :attr:`gap_growth` -- so dense and sparse stretches of a run read alike (NaN at the
        first keyframe)."""
        gap = np.diff(self.steps.astype(np.float64), prepend=np.nan)
        shortest = np.nanmin(gap) if len(gap) > 1 else np.nan
        return self.rel_prev * 100.0 / (shortest * self.gap_growth)

    @property
    def path_done(self) -> np.ndarray:
        """(L, K) share of each layer's path (summed ``rel_prev``, NaN counted as no change)
        covered by each keyframe; all 1 for a layer that never moved."""
        path = np.cumsum(np.nan_to_num(self.rel_prev, nan=0.0, posinf=0.0), axis=1)
        total = path[:, -1:]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total > 0, path / total, 1.0)

    def settle_steps(self, settling: Settling) -> np.ndarray:
        """(L,) float64: each layer's settling step by ``settling`` (NaN: still moving)."""
        out = np.full(len(self.labels), np.nan)
        for l, r in enumerate(self.rate):
            r = r[1:]
            if not np.isfinite(r).any():
                continue
            peak = _peak_rate(r)
            limit = settling.threshold if settling.threshold is not None else settling.fraction * peak
            above = np.flatnonzero(r >= limit) if peak > 0 else []  # NaN is never "above"
            first = above[-1] + 1 if len(above) else 0  # keyframe index the calm starts from
            if len(r) - first >= SETTLE_HOLD:
                out[l] = self.steps[first]
        return out

    def reordered(self, order: list[int]) -> "Drift":
        """The same numbers with the layers (rows) in ``order``."""
        rows = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name != "steps" and getattr(self, f.name) is not None}
        return dataclasses.replace(self, **{name: ([v[l] for l in order] if isinstance(v, list)
                                                   else v[order]) for name, v in rows.items()})


def drift_of(sums: np.ndarray, steps: np.ndarray, layers: list[extract.Layer]) -> Drift:
    """Each layer's :class:`Drift` from its drift numbers (``(L, K, DRIFT_WIDTH)``: sum W**2,
    sum (W - W_prev)**2 and the sketch of its drawn weights at each keyframe, by
    :func:`measure_cloud`, in the layouts' pass, by :func:`layouts.drift_sums` or in
    :func:`stats.weight_stats`)."""
    norm = np.sqrt(sums[:, :, 0])
    rel = np.full(norm.shape, np.nan)
    den = norm[:, :-1]
    good = np.isfinite(den) & (den > 0)
    num = np.sqrt(sums[:, 1:, 1])
    rel[:, 1:][good] = num[good] / den[good]
    steps = np.asarray(steps, dtype=np.int64)
    return Drift(steps, [l.label for l in layers], np.array([l.n_points for l in layers], dtype=np.int64),
                 norm, rel, gap_growth(sums[:, :, 2:], norm, steps))


GROWTH_MIN_PAIRS = 3  # pairs of keyframes needed to measure the growth at one gap


def gap_growth(sketches: np.ndarray, norm: np.ndarray, steps: np.ndarray) -> np.ndarray | None:
    """(L, K) how much larger each interval's change is than a change over the run's shortest
    checkpoint gap ``g``, as the run itself shows it; ``None`` when every gap is ``g``.

    A layer's change does not grow in proportion to the gap: noisy updates partly cancel
    (measured on the sample: a change over 500 steps is 1.8-2.5x one over 100, not 5x), so
    dividing by the gap alone makes sparse stretches of a run look slower than dense ones.
    Where the run has consecutive keyframes ``g`` apart, every pair ``m`` such intervals apart
    shows how the change grows: the median over those pairs of ``|W_(i+m) - W_i|`` against the
    mean change of the ``m`` intervals between them, each estimated from the keyframes'
    sketches (``(L, K, S)``, :func:`measure_cloud`).  Gaps between the measured ones
    are interpolated on log-log axes; beyond them the last measured slope is extended (held
    between 0 and 1); where nothing was measured the change is taken to grow with the gap.
    """
    if not needs_sketches(steps):
        return None
    gaps = np.diff(np.asarray(steps, dtype=np.float64))
    L, K = norm.shape
    ratio = gaps / gaps.min()
    wanted = int(min(np.ceil(ratio.max()), K - 1))
    fine = gaps == gaps.min()
    # Runs of consecutive shortest gaps: intervals a .. b-1 (keyframes a .. b).
    edges = np.flatnonzero(np.diff(np.r_[0, fine.astype(np.int8), 0]))
    runs = [(a, b) for a, b in zip(edges[::2], edges[1::2]) if b - a >= 2]
    growth = np.full((L, K), np.nan)
    sk = np.asarray(sketches, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        step1 = np.linalg.norm(sk[:, 1:] - sk[:, :-1], axis=2) / norm[:, :-1]  # (L, K-1)
        measured: list[dict[int, float]] = [{1: 1.0} for _ in range(L)]
        inner = np.cumsum(np.c_[np.zeros(L), step1], axis=1)  # summed changes up to each keyframe
        for m in range(2, wanted + 1):
            pairs = [(i, i + m) for a, b in runs for i in range(a, b - m + 1)]
            if len(pairs) < GROWTH_MIN_PAIRS:
                break
            i, j = np.array(pairs).T
            far = np.linalg.norm(sk[:, j] - sk[:, i], axis=2) / norm[:, i]  # (L, pairs)
            local = (inner[:, j] - inner[:, i]) / m
            r = far / local
            for l in range(L):
                ok = np.isfinite(r[l]) & (local[l] > 0)
                if ok.sum() >= GROWTH_MIN_PAIRS:
                    measured[l][m] = float(np.median(r[l, ok]))
    for l in range(L):
        growth[l, 1:] = _grow(measured[l], ratio)
    return growth


def _grow(measured: dict[int, float], ratio: np.ndarray) -> np.ndarray:
    """The growth at each gap ``ratio`` (in shortest gaps) from the measured ``{m: growth}``:
    log-log interpolation, and beyond the last measured gap its slope (0..1) extended."""
    m = np.array(sorted(measured), dtype=np.float64)
    g = np.log(np.maximum([measured[int(x)] for x in m], 1e-12))
    x = np.log(ratio)
    out = np.interp(x, np.log(m), g)
    slope = float(np.clip((g[-1] - g[-2]) / (np.log(m[-1]) - np.log(m[-2])), 0.0, 1.0)) if len(m) > 1 else 1.0
    beyond = x > np.log(m[-1])
    out[beyond] = g[-1] + slope * (x[beyond] - np.log(m[-1]))
    return np.exp(out)
