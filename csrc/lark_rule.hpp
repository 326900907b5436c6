// The published LARK selection rule, one group (problem) at a time. SPEC §5.
//
// A = the B largest energies, t = e_(B+1) (the first excluded value),
// q_k = (e_k - t) / sum_{i in A} (e_i - t) on A and 0 elsewhere.
// Compatibility edge cases of the published code:
//   * NaN (and -inf) energies count as -inf: never selected while a valid item remains;
//   * B >= #valid: A = all valid items and t = min(valid) - 1e-8;
//   * mean_{A}(e) - t <= 1e-12 (no spread): q = 1/B on A;
//   * an item of A tied with t gets weight 0.
// Ties inside the order are broken by position (lower index first), so the result is deterministic.
// Cost: one O(K) selection (nth_element) per group, never a full sort.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace lark {

template <typename T>
inline bool lark_valid(T v) {
  return !std::isnan(v) && v != -INFINITY;
}

// e: the group's n energies; out: its n weights; idx: scratch of at least n entries.
template <typename T>
void lark_rule_group(const T* e, int64_t n, int64_t B, double* out, int64_t* idx) {
  int64_t nv = 0;
  for (int64_t i = 0; i < n; ++i) {
    out[i] = 0.0;
    if (lark_valid(e[i])) idx[nv++] = i;
  }
  if (nv == 0) return;

  int64_t na;  // |A|
  double t;
  if (B >= nv) {
    double mn = static_cast<double>(e[idx[0]]);
    for (int64_t j = 1; j < nv; ++j) mn = std::min(mn, static_cast<double>(e[idx[j]]));
    na = nv;
    t = mn - 1e-8;
  } else {
    // Strict total order: larger energy first, then lower index.
    auto before = [e](int64_t a, int64_t b) { return e[a] > e[b] || (e[a] == e[b] && a < b); };
    std::nth_element(idx, idx + B, idx + nv, before);
    na = B;
    t = static_cast<double>(e[idx[B]]);
  }

  double spread = 0.0;  // sum_{A} (e - t)
  for (int64_t j = 0; j < na; ++j) spread += static_cast<double>(e[idx[j]]) - t;
  if (spread / static_cast<double>(na) <= 1e-12) {
    for (int64_t j = 0; j < na; ++j) out[idx[j]] = 1.0 / static_cast<double>(B);
    return;
  }
  for (int64_t j = 0; j < na; ++j) out[idx[j]] = (static_cast<double>(e[idx[j]]) - t) / spread;
}

}  // namespace lark
