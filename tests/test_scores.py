"""Per-trajectory reductions and the LARK energy g_hat (docs/method.md §3)."""
import numpy as np
import pytest

from lark_fast.scores import lark_energy, mixture_learnability, trajectory_scores


def rho_of_q(q, L, brier):
    """Mixture learnability, written from docs/method.md §3: sum q^2 Brier / sum q L."""
    return sum(qk * qk * bk for qk, bk in zip(q, brier)) / sum(qk * lk for qk, lk in zip(q, L))


@pytest.mark.parametrize("K,seed", [(1, 0), (2, 1), (5, 2), (33, 3)])
def test_g_hat_is_the_gradient_of_rho_at_uniform(K, seed):
    rng = np.random.default_rng(seed)
    L = rng.uniform(0.05, 3.0, K)
    brier = rng.uniform(0.0, 1.0, K) * np.minimum(1.9, 2 * L)
    g = lark_energy(["p"] * K, L, brier, np.ones(K, bool))
    q0 = np.full(K, 1.0 / K)
    h = 1e-6
    for k in range(K):
        qp, qm = q0.copy(), q0.copy()
        qp[k] += h
        qm[k] -= h
        fd = (rho_of_q(qp, L, brier) - rho_of_q(qm, L, brier)) / (2 * h)
        assert g[k] == pytest.approx(fd, rel=1e-6, abs=1e-9)
    assert g.sum() == pytest.approx(brier.sum() / L.sum(), rel=1e-12)
    # the form of docs/method.md §3.5 with rho_k
    rho = brier / L
    assert np.allclose(g, L / L.sum() * (2 * rho - brier.sum() / L.sum()), rtol=1e-12)
    assert mixture_learnability(q0, L, brier) == pytest.approx(rho_of_q(q0, L, brier))


def test_g_hat_groups_by_problem_and_ignores_invalid():
    pids = ["a", "b", "a", "c", "a", "b"]
    L = np.array([1.0, 2.0, 0.5, 1.0, np.nan, 1.0])
    brier = np.array([0.5, 0.4, 0.3, 0.2, np.nan, 0.9])
    valid = np.array([True, True, True, True, False, False])
    g = lark_energy(pids, L, brier, valid)
    a = lark_energy(["a", "a"], L[[0, 2]], brier[[0, 2]], [True, True])
    assert np.allclose(g[[0, 2]], a)
    assert g[1] == pytest.approx(0.4 / 2.0)  # single valid candidate: sum g = brier / L
    assert g[3] == pytest.approx(0.2)
    assert np.isnan(g[4]) and np.isnan(g[5])  # invalid rows have no energy


def test_g_hat_when_the_student_is_perfect():
    g = lark_energy(["p", "p"], [0.0, 0.0], [0.0, 0.0], [True, True])
    assert np.array_equal(g, [0.0, 0.0])


def test_trajectory_scores_formulas():
    n = np.array([4, 0, 2])
    nll = np.array([2.0, 0.0, 0.0])
    brier = np.array([1.0, 0.0, 0.0])
    ent = np.array([8.0, 0.0, 1.0])
    rank_clip = np.array([40.0, 0.0, 2.0])
    out = trajectory_scores(n, nll, brier, ent, rank_clip, brier_topk_sum=np.array([2.0, 0.0, 0.5]))
    assert out["L"][0] == 0.5 and out["brier"][0] == 0.25 and out["rho"][0] == 0.5
    assert out["entropy"][0] == 2.0 and out["rsr"][0] == 20.0 and out["brier_topk"][0] == 0.5
    assert np.isnan(out["L"][1]) and np.isnan(out["rho"][1]) and np.isnan(out["rsr"][1])
    assert out["rho"][2] == 0.0  # L <= 1e-30: rho is 0
    assert out["rsr"][2] == np.inf  # every token predicted with certainty: no surprisal
