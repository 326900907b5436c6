"""Diagnostics (docs/method.md §10.4-10.5): does a selection score predict what a trajectory does for
the student?

    problems = sample_problems(scores, 8, seed=0)
    result = measure_utility(model, tokenizer, pool, scores, heldout, problems=problems)
    proxy_correlations(result["candidates"], scores)        # Spearman per proxy, bootstrap intervals
    loss_curves(model, tokenizer, train, scores, heldout, arms=("lark", "uniform", "random"))
"""
from .heldout import HeldOutLoss
from .curves import ARMS, arm_weights, loss_curves
from .snapshot import WeightSnapshot
from .utility import candidate_loss, measure_utility, proxy_correlations, sample_problems

__all__ = ["measure_utility", "proxy_correlations", "sample_problems", "candidate_loss", "loss_curves", "arm_weights",
           "ARMS", "HeldOutLoss", "WeightSnapshot"]
