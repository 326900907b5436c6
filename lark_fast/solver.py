"""Python face of the C++ selection solvers (`lark_fast._C`). docs/method.md §5 states the math.

Every function takes flat arrays, grouped by offsets where groups matter: group g holds items
``offsets[g]:offsets[g+1]``. float32 and float64 energies and reference masses are read in place;
other dtypes are converted to float64. The weights come back as a new float64 array aligned with
the energies. Bad input raises ``ValueError`` naming the argument (and the first offending group).

Shared conventions of the χ² solvers:

- NaN and -inf energies mark an item as excluded: weight 0, and no reference mass (the reference is
  renormalised over the valid items). +inf is rejected.
- ``ref``: positive reference masses, one per item (uniform when None); only their ratios matter,
  within a group for `chi2_weights` and over all items for `chi2_global`.
- Exactly one of ``tau`` (penalised form, > 0) and ``radius`` (constrained form, D(q‖p) ≤ r, r ≥ 0).
  When r is at least the divergence of the best weights with the smallest divergence (the τ → 0
  limit), the constraint is inactive and those weights are returned; when r is below the smallest
  divergence the caps allow, that is a ValueError; r equal to it returns the reference itself
  (clipped to the caps). Energies closer than the double rounding of the gaps e_k − ν (about 1e-16
  of the energy range) count as tied at the τ → 0 end.
- ``cap``: item cap q_k ≤ c, in the same units as the weights.
"""
from __future__ import annotations

import numpy as np

from . import _C
from .groups import group_offsets  # noqa: F401  (part of this API: offsets for the solvers)

__all__ = ["lark_weights", "chi2_weights", "chi2_global", "chi2_path", "group_offsets", "simd"]


def simd() -> str:
    """The vector instruction set the solvers use on this CPU: "avx512", "avx2", "generic" (the
    baseline of the architecture) or "scalar". The environment variable LARK_FAST_SIMD (read once, at
    the first call into the solvers) caps it. Every level gives the same bits, except "scalar"
    (compilers without GCC vector extensions), which runs the plain loops."""
    return _C.simd()


def _as_floats(values) -> np.ndarray:
    a = np.asarray(values)
    if a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float64)
    return np.ascontiguousarray(a)


def _as_offsets(offsets) -> np.ndarray:
    o = np.asarray(offsets)
    if o.dtype.kind not in "iu":
        raise ValueError(f"offsets: expected integers, got dtype {o.dtype}")
    return np.ascontiguousarray(o, dtype=np.int64)


def _as_ref(ref):
    return None if ref is None else _as_floats(ref)


def _as_number(name: str, value):
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not np.isscalar(value) or not np.isreal(value):
        raise ValueError(f"{name}: expected a real number, got {value!r}")
    return float(value)


def lark_weights(energies, offsets, B: int, *, out=None) -> np.ndarray:
    """The published LARK rule per group: top-B by energy, weights proportional to e_k - e_(B+1).

    NaN and -inf energies are never selected while a valid item remains; see docs/method.md §5 for the
    compatibility edge cases. Returns float64 weights [N] summing to 1 over each group that has a
    valid item (0 elsewhere; B/#valid-free corner cases follow the published code).
    ``out``: an existing float64 contiguous array of length N to write the weights into (every
    element is overwritten; its contents are unspecified after a ValueError); it is returned.
    """
    if isinstance(B, (bool, np.bool_)) or not isinstance(B, (int, np.integer)):
        raise ValueError(f"B: expected an integer >= 1, got {B!r}")
    return _C.lark_weights(_as_floats(energies), _as_offsets(offsets), int(B), out=out)


def chi2_weights(energies, offsets, *, tau=None, radius=None, ref=None, cap=None) -> np.ndarray:
    """χ²-regularised weights per group, each group's weights a distribution (docs/method.md §5).

    Penalised (``tau``): max ⟨q, e⟩ − τ D(q‖p), so q_k = min(c, p_k (e_k − ν)₊ / (2τ)) with ν
    setting Σq = 1. Constrained (``radius``): max ⟨q, e⟩ s.t. D(q‖p) ≤ r. A group with no valid
    energy gets weight 0 everywhere; a group whose cap allows less than 1 in total is a ValueError.
    """
    return _C.chi2_weights(
        _as_floats(energies), _as_offsets(offsets), tau=_as_number("tau", tau),
        radius=_as_number("radius", radius), ref=_as_ref(ref), cap=_as_number("cap", cap))


def chi2_global(energies, *, tau=None, radius=None, ref=None, cap=None, offsets=None, group_cap=None) -> np.ndarray:
    """χ²-regularised weights with one budget over all N items: one distribution (Σq = 1).

    One global threshold ν (O(N) per pass, no sort): q_k = min(c, p_k (e_k − ν)₊ / (2τ)).
    ``group_cap`` (a scalar or one value per group of ``offsets``) caps each group's total:
    group total = min(its total at the global ν, C_g), the rest of the mass going to other groups.
    Multiply by the number of groups for weights on the per-problem scale of `chi2_weights`.
    """
    if group_cap is not None:
        group_cap = np.atleast_1d(np.asarray(group_cap, dtype=np.float64))
    return _C.chi2_global(
        _as_floats(energies), tau=_as_number("tau", tau), radius=_as_number("radius", radius),
        ref=_as_ref(ref), cap=_as_number("cap", cap),
        offsets=None if offsets is None else _as_offsets(offsets), group_cap=group_cap)


def chi2_path(energies, offsets, *, ref=None) -> np.ndarray:
    """Breakpoints of the penalised support path per group (no caps), for sweeps over B or τ.

    Returns tau [N] laid out like the energies: ``tau[offsets[g] + j - 1]`` = τ_j, the largest τ at
    which group g's penalised optimum keeps at most j items (its top j by energy); +inf for j ≥ the
    number of valid items. With uniform ``ref``, ``chi2_weights(e, o, tau=τ_B)`` is the LARK rule
    with budget B wherever the B-th and (B+1)-th energies differ.
    """
    return _C.chi2_path(_as_floats(energies), _as_offsets(offsets), ref=_as_ref(ref))
