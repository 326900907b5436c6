"""Per-trajectory and per-problem scores from per-token sums (docs/method.md §3). All float64.

Per trajectory k (means over its scored tokens), with directions:
    L_k      = mean nll                       lower: the student already predicts it
    brier_k  = mean ||p - e_y||^2
    rho_k    = brier_k / L_k (0 if L_k <= 1e-30)   higher: loss decays faster (learnability)
    entropy  = mean H(p)
    rsr_k    = sum_t min(rank_t, 100) / sum_t nll_t   lower is better (arXiv 2601.14249)
Per problem, over its valid candidates, the LARK score ("energy", higher is better):
    g_hat_k  = (L_k / sum L) (2 rho_k - sum brier / sum L) = (2 brier_k sum L - sum brier L_k) / (sum L)^2
which is d rho(q) / d q_k at q = 1/K for rho(q) = sum q_k^2 brier_k / sum q_k L_k.
With compat="published", rho and g_hat take the top-K Brier instead of the exact one, as the published
scorer did (docs/method.md §3.7); the exact mean Brier is still the ``brier`` column.

Gradient-aware (docs/method.md §4), from the Gram matrix G_jk ~ <grad L_j, grad L_k> of a problem's candidates
(gradient sketches of each trajectory's mean nll; G = diag(brier) gives g_hat back):
    g_hat_grad_k = (2 (G 1)_k sum L - (1' G 1) L_k) / (sum L)^2   = d rho_G(q) / d q_k at q = 1/K,
    rho_G(q) = q' G q / q' L                                      higher is better
    rho_grad_k = ||grad L_k||^2 / L_k (the loss's decay rate under gradient flow), kappa_k = ||grad L_k||^2 / brier_k.
"""
from __future__ import annotations

import numpy as np

from .groups import group_offsets

L_FLOOR = 1e-30
COMPAT = ("exact", "published")  # the Brier that rho and g_hat are built on: exact, or the published top-K one


def check_compat(compat: str, topk: int) -> None:
    """ValueError unless ``compat`` is one of COMPAT and, for "published", there is a top-K Brier."""
    if compat not in COMPAT:
        raise ValueError(f"compat: expected one of {COMPAT}, got {compat!r}")
    if compat == "published" and not topk:
        raise ValueError("compat='published' builds rho and g_hat on the top-K Brier: it needs topk > 0 (the "
                         "published scorer's K is 50)")


def trajectory_scores(n_tokens, nll_sum, brier_sum, entropy_sum, rank_clipped_sum, brier_topk_sum=None,
                      compat: str = "exact") -> dict:
    """Means and ratios per trajectory from per-trajectory sums; NaN where n_tokens == 0. ``rho_brier`` is
    the mean Brier that rho (and g_hat, ``lark_energy``) are built on: ``brier``, or with
    ``compat="published"`` ``brier_topk``."""
    check_compat(compat, brier_topk_sum is not None)
    n = np.asarray(n_tokens, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = lambda s: np.where(n > 0, np.asarray(s, dtype=np.float64) / n, np.nan)  # noqa: E731
        L = mean(nll_sum)
        brier = mean(brier_sum)
        brier_topk = mean(brier_topk_sum) if brier_topk_sum is not None else None
        rho_brier = brier_topk if compat == "published" else brier
        rho = np.where(L > L_FLOOR, rho_brier / L, np.where(np.isnan(L), np.nan, 0.0))
        nll_sum = np.asarray(nll_sum, dtype=np.float64)
        rsr = np.where(n > 0, np.asarray(rank_clipped_sum, dtype=np.float64) / nll_sum, np.nan)
        out = {"L": L, "brier": brier, "rho": rho, "rho_brier": rho_brier, "entropy": mean(entropy_sum), "rsr": rsr}
        if brier_topk is not None:
            out["brier_topk"] = brier_topk
    return out


def mixture_learnability(q, L, brier) -> float:
    """rho(q) = sum_k q_k^2 brier_k / sum_k q_k L_k (orthogonal per-trajectory gradients)."""
    q, L, brier = (np.asarray(x, dtype=np.float64) for x in (q, L, brier))
    return float((q * q * brier).sum() / (q * L).sum())


def lark_energy(problem_ids, L, brier, valid) -> np.ndarray:
    """g_hat per trajectory, per problem over its valid candidates; NaN for invalid ones.

    A problem whose valid candidates all have L = 0 (sum L <= 1e-30) has no learnability signal:
    its g_hat is 0.
    """
    L = np.asarray(L, dtype=np.float64)
    brier = np.asarray(brier, dtype=np.float64)
    valid = np.asarray(valid, dtype=bool) & np.isfinite(L) & np.isfinite(brier)
    g = np.full(len(L), np.nan)
    order, offsets = group_offsets(problem_ids)
    for a, b in zip(offsets[:-1], offsets[1:]):
        idx = order[a:b][valid[order[a:b]]]
        if idx.size == 0:
            continue
        sum_L, sum_b = L[idx].sum(), brier[idx].sum()
        g[idx] = 0.0 if sum_L <= L_FLOOR else (2 * brier[idx] * sum_L - sum_b * L[idx]) / (sum_L * sum_L)
    return g


def mixture_learnability_grad(q, L, gram) -> float:
    """rho_G(q) = q' G q / q' L (per-trajectory gradients with Gram matrix G)."""
    q, L, gram = (np.asarray(x, dtype=np.float64) for x in (q, L, gram))
    return float(q @ gram @ q / (q @ L))


def gradient_energy(L, gram) -> np.ndarray:
    """g_hat_grad of one problem's candidates from their L and Gram matrix; 0 when sum L <= 1e-30."""
    L = np.asarray(L, dtype=np.float64)
    gram = np.asarray(gram, dtype=np.float64)
    sum_L = L.sum()
    if sum_L <= L_FLOOR:
        return np.zeros(len(L))
    return (2 * gram.sum(1) * sum_L - gram.sum() * L) / (sum_L * sum_L)


def lark_energy_grad(problem_ids, L, valid, gram_of) -> np.ndarray:
    """g_hat_grad per trajectory, per problem over its valid candidates; NaN for invalid ones.
    ``gram_of(indices)`` returns the Gram matrix of those trajectories' gradients."""
    L = np.asarray(L, dtype=np.float64)
    valid = np.asarray(valid, dtype=bool) & np.isfinite(L)
    g = np.full(len(L), np.nan)
    order, offsets = group_offsets(problem_ids)
    for a, b in zip(offsets[:-1], offsets[1:]):
        idx = order[a:b][valid[order[a:b]]]
        if idx.size:
            g[idx] = gradient_energy(L[idx], gram_of(idx))
    return g
