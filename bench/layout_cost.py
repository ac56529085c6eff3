"""The CPU the layout phase takes per panel-keyframe: reading the drawn rows, the drift sums,
tracked PCA with its checks, alignment and the read digests -- ``layouts.layouts_and_drift``
as a render calls it (layout cache off), measured in this process (user + system CPU of all its
threads), after one unmeasured run that loads the numba cache and the files into memory.

    python bench/layout_cost.py SERIES [--repeats 3]

``bench.py`` calls :func:`layout_cost` on its series (issue 28's goal: <= 0.4 ms).
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GOAL_MS = 0.4


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def layout_cost(ckpts: Path, size=(1920, 1080), fpk: int = 5, max_points: int = 2000,
                repeats: int = 3) -> list[float]:
    """Milliseconds of CPU per panel-keyframe of each of ``repeats`` layout passes over the
    series ``ckpts`` (planned as ``layerfilm render`` plans it); prints the median."""
    sys.path.insert(0, str(ROOT))
    from layerfilm import film, layouts
    from layerfilm.activations import make_plan
    from layerfilm.config import RenderConfig

    with tempfile.TemporaryDirectory() as out:
        cfg = RenderConfig(checkpoints=Path(ckpts), output=Path(out) / "film.webm", fps=25,
                           frames_per_keyframe=fpk, size=tuple(size), max_points=max_points).validated()
        plan = make_plan(cfg, cfg.metrics, film.panels_fit(film.FilmSpec.of(cfg), 0))
    work = len(plan.layers) * len(plan.refs)
    costs = []
    for i in range(repeats + 1):
        before = _cpu()
        layouts.layouts_and_drift(plan, "pca", 0, use_cache=False, drift=True)
        if i:  # the first run warms the numba and page caches
            costs.append((_cpu() - before) * 1e3 / work)
    print(f"layouts: {np.median(costs):.3f} ms CPU per panel-keyframe (goal <= {GOAL_MS}) -- "
          f"{len(plan.layers)} panels x {len(plan.refs)} keyframes, median of {repeats} "
          f"({min(costs):.3f}..{max(costs):.3f})")
    return costs


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("series", type=Path)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    layout_cost(a.series, repeats=a.repeats)
