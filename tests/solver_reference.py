"""Independent numpy oracles for the selection solvers (docs/method.md §5), written from the math, not the C++.

The C++ finds thresholds by safeguarded Newton on class sums; these find them by enumerating every
breakpoint of the piecewise-linear mass function (exact, O(K²)) or by plain bisection, and treat the
LARK rule by a full sort. They are slow and meant for small inputs.
"""
from __future__ import annotations

import numpy as np


def valid_mask(e: np.ndarray) -> np.ndarray:
    return ~np.isnan(e) & (e > -np.inf)


def group_sums(values, offsets) -> np.ndarray:
    """Σ over each group of offsets (0 for an empty group)."""
    o = np.asarray(offsets)
    sizes = np.diff(o)
    if len(sizes) == 0:
        return np.zeros(0)
    return np.where(sizes > 0, np.add.reduceat(np.append(np.asarray(values, dtype=float), 0.0), o[:-1]), 0.0)


def lark_rule(e: np.ndarray, offsets, B: int) -> np.ndarray:
    """The published rule, one group at a time, by a full sort (ties: lower index first)."""
    e = np.asarray(e, dtype=np.float64)
    w = np.zeros(len(e))
    for g in range(len(offsets) - 1):
        lo, hi = offsets[g], offsets[g + 1]
        idx = np.arange(lo, hi)[valid_mask(e[lo:hi])]
        if len(idx) == 0:
            continue
        order = idx[np.lexsort((idx, -e[idx]))]
        if B >= len(idx):
            chosen, t = order, e[idx].min() - 1e-8
        else:
            chosen, t = order[:B], e[order[B]]
        spread = np.sum(e[chosen] - t)
        w[chosen] = 1.0 / B if spread / len(chosen) <= 1e-12 else (e[chosen] - t) / spread
    return w


def clipped(e, p, s, cap, nu):
    """q_k = clip(s p_k (e_k − ν), 0, c); invalid energies get 0."""
    with np.errstate(invalid="ignore"):
        q = np.clip(s * p * (e - nu), 0.0, cap)
    return np.where(valid_mask(e), q, 0.0)


def threshold(e, p, s, cap, mass):
    """ν with Σ clip(s p (e − ν), 0, c) = mass, exactly: h is linear between consecutive breakpoints."""
    ok = valid_mask(e)
    e, p = e[ok], p[ok]
    points = np.concatenate([e, e - cap / (s * p)]) if np.isfinite(cap) else e.copy()
    points = np.unique(points)
    h = np.array([clipped(e, p, s, cap, x).sum() for x in points])  # non-increasing in points
    if h[0] < mass:  # left of every breakpoint all items are free (no cap): h = s Σ p (e − ν)
        return (np.sum(p * e) - mass / s) / np.sum(p)
    i = np.nonzero(h >= mass)[0][-1]
    if h[i] == mass or i + 1 == len(points):
        return points[i]
    x0, x1 = points[i], points[i + 1]
    return x0 + (h[i] - mass) / (h[i] - h[i + 1]) * (x1 - x0)


def normalised_ref(e, ref):
    ok = valid_mask(e)
    r = np.ones(len(e)) if ref is None else np.asarray(ref, dtype=np.float64)
    return np.where(ok, r / r[ok].sum(), 0.0)


def divergence(q, p):
    ok = p > 0
    return float(np.sum(q[ok] ** 2 / p[ok]) - 1.0)


def penalised(e, p, tau, cap=np.inf, mass=1.0):
    s = 0.5 / tau
    return clipped(e, p, s, cap, threshold(e, p, s, cap, mass))


def constrained(e, p, r, cap=np.inf):
    """Bisection on log τ of the penalised oracle: D(q_τ) is non-increasing in τ."""
    lo, hi = -25.0, 25.0  # τ from 1e-11 to 7e10: wide, and no loss of precision in e − ν
    if divergence(penalised(e, p, np.exp(lo), cap), p) <= r:
        return penalised(e, p, np.exp(lo), cap)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        (lo, hi) = (mid, hi) if divergence(penalised(e, p, np.exp(mid), cap), p) > r else (lo, mid)
    return penalised(e, p, np.exp(hi), cap)


def chi2_groups(e, offsets, *, tau=None, radius=None, ref=None, cap=np.inf):
    e = np.asarray(e, dtype=np.float64)
    w = np.zeros(len(e))
    for g in range(len(offsets) - 1):
        sl = slice(offsets[g], offsets[g + 1])
        if not valid_mask(e[sl]).any():
            continue
        p = normalised_ref(e[sl], None if ref is None else np.asarray(ref)[sl])
        w[sl] = penalised(e[sl], p, tau, cap) if tau is not None else constrained(e[sl], p, radius, cap)
    return w


def global_penalised(e, p, tau, cap=np.inf, offsets=None, group_cap=None):
    """One ν over all items; a held group (total above C_g at ν) gets its own threshold at mass C_g."""
    s = 0.5 / tau
    if group_cap is None:
        return penalised(e, p, tau, cap)
    groups = [slice(offsets[g], offsets[g + 1]) for g in range(len(offsets) - 1)]
    caps = np.broadcast_to(np.asarray(group_cap, dtype=np.float64), (len(groups),))

    def total(nu):
        return sum(min(clipped(e[sl], p[sl], s, cap, nu).sum(), c) for sl, c in zip(groups, caps))

    ok = valid_mask(e)
    lo = e[ok].min() - max(caps.max(), cap if np.isfinite(cap) else 0.0) / (s * p[ok].min())
    hi = e[ok].max()
    for _ in range(300):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        (lo, hi) = (mid, hi) if total(mid) > 1.0 else (lo, mid)
    nu = hi
    w = clipped(e, p, s, cap, nu)
    for sl, c in zip(groups, caps):
        if w[sl].sum() > c:
            w[sl] = penalised(e[sl], p[sl], tau, cap, mass=c)
    return w


def global_constrained(e, p, r, cap=np.inf, offsets=None, group_cap=None):
    lo, hi = -25.0, 25.0  # τ from 1e-11 to 7e10: wide, and no loss of precision in e − ν
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        d = divergence(global_penalised(e, p, np.exp(mid), cap, offsets, group_cap), p)
        (lo, hi) = (mid, hi) if d > r else (lo, mid)
    return global_penalised(e, p, np.exp(hi), cap, offsets, group_cap)


def qp(e, p, *, tau=None, radius=None, cap=np.inf, offsets=None, group_cap=None, backend="cvxpy"):
    """The same problem handed to a generic convex solver (cvxpy, or scipy's SLSQP)."""
    ok = valid_mask(e)
    n = len(e)
    groups = [] if offsets is None else [np.arange(offsets[g], offsets[g + 1]) for g in range(len(offsets) - 1)]
    caps = None if group_cap is None else np.broadcast_to(np.asarray(group_cap, dtype=np.float64), (len(groups),))
    ev, pv = np.where(ok, e, 0.0), np.where(ok, p, 1.0)
    upper = np.where(ok, min(cap, 1.0), 0.0)
    if backend == "cvxpy":
        import cvxpy as cp

        q = cp.Variable(n)
        chi = cp.sum(cp.multiply(1.0 / pv, cp.square(q)))
        cons = [q >= 0, q <= upper, cp.sum(q) == 1]
        cons += [cp.sum(q[idx]) <= c for idx, c in zip(groups, caps if caps is not None else [])]
        if tau is not None:
            prob = cp.Problem(cp.Maximize(ev @ q - tau * chi), cons)
        else:
            prob = cp.Problem(cp.Maximize(ev @ q), cons + [chi <= 1 + radius])
        prob.solve(solver=cp.CLARABEL)
        return np.asarray(q.value)
    from scipy.optimize import minimize

    def objective(q):
        chi = np.sum(q * q / pv)
        return -(ev @ q - tau * chi) if tau is not None else -(ev @ q)

    def gradient(q):
        return -(ev - 2 * tau * q / pv) if tau is not None else -ev

    cons = [{"type": "eq", "fun": lambda q: q.sum() - 1.0, "jac": lambda q: np.ones(n)}]
    for idx, c in zip(groups, caps if caps is not None else []):
        cons.append({"type": "ineq", "fun": lambda q, idx=idx, c=c: c - q[idx].sum(),
                     "jac": lambda q, idx=idx: -np.isin(np.arange(n), idx).astype(float)})
    if radius is not None:
        cons.append({"type": "ineq", "fun": lambda q: 1 + radius - np.sum(q * q / pv), "jac": lambda q: -2 * q / pv})
    start = np.where(ok, p, 0.0)
    res = minimize(objective, start, jac=gradient, bounds=list(zip(np.zeros(n), upper)), constraints=cons,
                   method="SLSQP", options={"ftol": 1e-14, "maxiter": 1000})
    return res.x


def assert_at_least_as_good(got, want, e, p, *, tau=None, radius=None, cap=np.inf, offsets=None, group_cap=None):
    """got is feasible and its objective is no worse than a generic solver's (approximate) answer."""
    ok = valid_mask(e)
    ev = np.where(ok, e, 0.0)
    assert abs(got.sum() - 1.0) <= 1e-12 and got.min() >= 0 and got.max() <= cap * (1 + 1e-12)
    assert np.all(got[~ok] == 0)
    if group_cap is not None:
        totals = group_sums(got, offsets)[np.diff(offsets) > 0]
        caps = np.broadcast_to(group_cap, (len(offsets) - 1,))[np.diff(offsets) > 0]
        assert np.all(totals <= caps * (1 + 1e-12))
    if tau is not None:
        assert ev @ got - tau * divergence(got, p) >= ev @ want - tau * divergence(want, p) - 1e-12
    else:
        assert divergence(got, p) <= radius * (1 + 1e-9) and ev @ got >= ev @ want - 1e-7


def kkt_violation(q, e, p, tau, cap=np.inf, offsets=None, group_cap=None):
    """Largest violation of the penalised KKT conditions, with one threshold ν for every group not held
    at its cap and a threshold ν_g ≥ ν for each held group (q_k = clip(s p_k (e_k − ν_g), 0, c))."""
    s = 0.5 / tau
    ok = valid_mask(e)
    n = len(e)
    offsets = np.array([0, n]) if offsets is None else np.asarray(offsets)
    sizes = np.diff(offsets)
    group = np.repeat(np.arange(len(sizes)), sizes)
    caps = np.broadcast_to(np.inf if group_cap is None else np.asarray(group_cap, float), (len(sizes),))
    held = (group_sums(q, offsets) >= caps * (1 - 1e-12)) & (sizes > 0)
    free = ok & (q > 0) & (q < cap * (1 - 1e-12))
    implied = np.where(free, e - q / (s * np.where(ok, p, 1.0)), np.nan)  # the threshold each free item sees
    # Slot 0: the threshold shared by groups not held; slot g + 1: held group g's own.
    slot = np.where(held[group], group + 1, 0)
    lo = np.full(len(sizes) + 1, np.inf)
    hi = np.full(len(sizes) + 1, -np.inf)
    np.minimum.at(lo, slot[free], implied[free])
    np.maximum.at(hi, slot[free], implied[free])
    has = np.isfinite(lo)
    worst = np.max(hi[has] - lo[has], initial=0.0)
    pv = np.where(ok, p, 1.0)
    capped = ok & (q >= cap * (1 - 1e-12))
    if not has[0]:  # no free item outside held groups: ν is only bounded, below by their highest zero item
        outside = ~held[group]  # and above by their lowest capped threshold: take the lower bound, or else
        zero_e = e[ok & (q == 0) & outside]  # ν at most that upper bound and every held group's threshold
        capped_at = (e - cap / (s * pv))[capped & outside]
        held_lo = lo[1:][has[1:]]
        upper = min(capped_at.min() if len(capped_at) else np.inf, held_lo.min() if len(held_lo) else np.inf)
        lo[0] = zero_e.max() if len(zero_e) else (upper if np.isfinite(upper) else 0.0)
    # A held group without free items: its threshold sits at its highest zero item (and at least at ν).
    zero_top = np.full(len(sizes) + 1, -np.inf)
    zeros = ok & (q == 0)
    np.maximum.at(zero_top, slot[zeros], e[zeros])
    t = np.where(has, lo, np.maximum(lo[0], zero_top))
    t[0] = lo[0]
    t = t[slot]
    with np.errstate(invalid="ignore"):
        worst = max(worst, np.max(np.where(ok & (q == 0), e - t, -np.inf), initial=0.0))
        worst = max(worst, np.max(np.where(capped, t - (e - cap / (s * pv)), -np.inf), initial=0.0))
    if np.isfinite(lo[0]) and has[1:].any():
        worst = max(worst, lo[0] - lo[1:][has[1:]].min())
    return worst
