"""The sample run's embedding panel shows what the grokking papers report: after grokking the
residues lie on a ring ordered by k*a mod 97 (Nanda et al. 2023); at initialisation they do not."""

import numpy as np

from layerfilm import layouts, project

from conftest import SAMPLE, plan_of

P_MOD = 97


def ring_alignment(xy: np.ndarray) -> tuple[int, float, float]:
    """Best k in 1..48 for how well residue a sits at angle +-2 pi k a / 97 around the centre:
    (k, |mean exp(i (angle_a -+ 2 pi k a / 97))| (1 = a perfect ordered ring), radius spread)."""
    xy = xy[:P_MOD] - xy[:P_MOD].mean(axis=0)
    angle = np.arctan2(xy[:, 1], xy[:, 0])
    a = np.arange(P_MOD)
    score = {k: max(abs(np.mean(np.exp(1j * (angle - s * 2 * np.pi * k * a / P_MOD)))) for s in (1, -1))
             for k in range(1, P_MOD // 2 + 1)}
    k = max(score, key=score.get)
    r = np.hypot(xy[:, 0], xy[:, 1])
    return k, score[k], r.std() / r.mean()


def test_film_layout_of_the_embedding_is_a_ring_after_grokking():
    plan = plan_of(SAMPLE, points="embeddings")
    P = layouts.keyframe_layouts(plan, "pca").P  # the film's own layout (plain PCA)
    k, after, _ = ring_alignment(P[-1])
    assert after > 0.85 and k in (34, 47, 19, 7), (k, after)
    _, before, _ = ring_alignment(P[0])
    assert before < 0.4, before  # the random initial embedding is no ring


def test_fourier_projection_finds_the_key_frequency_and_a_crisp_ring():
    plan = plan_of(SAMPLE, points="embeddings")
    fourier, = layouts.projections(plan, "fourier", 0)
    period, k = fourier.period, fourier.k
    assert period == P_MOD and k in (34, 47, 19, 7)  # the '=' token (id 97) is left out
    P = layouts.keyframe_layouts(plan, "fourier").P
    best, alignment, spread = ring_alignment(P[-1])
    assert best == k and alignment > 0.99 and spread < 0.15, (best, alignment, spread)


def test_fourier_frequency_on_a_synthetic_ring():
    rng = np.random.default_rng(0)
    p, k, d = 23, 5, 12
    a = np.arange(p + 2)  # two special tokens after the residues
    plane = np.linalg.qr(rng.normal(size=(d, 2)))[0]
    X = np.stack([np.cos(2 * np.pi * k * a / p), np.sin(2 * np.pi * k * a / p)], 1) @ plane.T
    X[p:] = rng.normal(size=(2, d))
    X += 0.01 * rng.normal(size=X.shape)
    got_p, got_k, share = project.fourier_frequency(X, a, p + 2)
    assert (got_p, got_k) == (p, k) and share > 0.95
    xy = project.fourier_2d(X, a, p, k)[:p]
    angle = np.arctan2(xy[:, 1], xy[:, 0])
    assert abs(np.mean(np.exp(1j * (angle - 2 * np.pi * k * a[:p] / p)))) > 0.99
