// Support path of the penalised χ² problem without caps (chi2.hpp), one group at a time
// (docs/method.md §5).
//
// Sort a group's K valid energies e_(1) ≥ ... ≥ e_(K), with reference p normalised over them. The optimum
// has support exactly the top j for τ in (τ_{j−1}, τ_j], where item j + 1 enters at ν = e_(j+1):
//     τ_j = ½ Σ_{i≤j} p_(i) (e_(i) − e_(j+1)),   τ_0 = 0,   τ_j = +∞ for j ≥ K.
// With uniform p this is τ_B = B (ē_A − t) / (2K): at τ_B the optimum is the LARK rule with budget B.
// Computed as τ_j = τ_{j−1} + ½ P_j (e_(j) − e_(j+1)) with P_j = Σ_{i≤j} p_(i) (non-negative terms only).
// Cost: one sort of the group's valid items.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "chi2.hpp"

namespace lark {

// An item by energy with its reference mass.
struct Weighted {
  double e, p;
};

// tau[j − 1] = τ_j for j = 1..n; scratch holds at least n entries. Returns the first item with a +inf
// energy or a bad reference mass, or -1.
template <typename T, typename R>
int64_t chi2_path_group(const Pool<T, R>& pool, int64_t begin, int64_t end, double* tau, Weighted* scratch) {
  int64_t bad = -1;
  const RangeStats st = range_stats(pool, begin, end, &bad);
  if (bad >= 0) return bad;
  int64_t m = 0;
  for (int64_t k = begin; k < end; ++k)
    if (valid_energy(pool.energy(k))) scratch[m++] = {pool.energy(k), pool.raw_ref(k) / st.ref_sum};
  std::sort(scratch, scratch + m, [](const Weighted& a, const Weighted& b) { return a.e > b.e; });
  double t = 0, prefix = 0;
  for (int64_t j = 0; j + 1 < m; ++j) {
    prefix += scratch[j].p;
    t += 0.5 * prefix * (scratch[j].e - scratch[j + 1].e);
    tau[j] = t;
  }
  std::fill(tau + std::max<int64_t>(m - 1, 0), tau + (end - begin), kInf);
  return -1;
}

}  // namespace lark
