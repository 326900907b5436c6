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
// Cost: one pass keeping the B + 1 best items by insertion while B + 1 <= kInsertionMax, otherwise one
// O(K) selection (nth_element); never a full sort.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace lark {

// An item of a group by rank: its energy and its position in the group.
template <typename T>
struct Ranked {
  T e;
  int64_t i;
};

// Budgets up to kInsertionMax - 1 keep the B + 1 best items in a sorted array (O(K (B + 1)) worst case).
inline constexpr int64_t kInsertionMax = 32;

// Outcome of one group: ok, or the position of a +inf energy (rejected: no finite weights exist).
inline constexpr int64_t kGroupOk = -1;

// e: the group's n energies; out: its n weights; ranked: scratch of at least max(n, kInsertionMax) entries.
// Returns kGroupOk, or the position of the first +inf energy.
template <typename T>
int64_t lark_rule_group(const T* e, int64_t n, int64_t B, double* out, Ranked<T>* ranked) {
  const int64_t keep = B + 1;  // A and the first excluded item
  int64_t nv = 0;              // valid items seen
  int64_t m = 0;               // entries of ranked: larger energy first, then lower index
  T lowest = INFINITY;
  for (int64_t i = 0; i < n; ++i) {
    out[i] = 0.0;
    const T v = e[i];
    if (!(v > -INFINITY)) continue;  // NaN or -inf
    if (v == INFINITY) return i;
    ++nv;
    lowest = std::min(lowest, v);
    if (keep > kInsertionMax) {
      ranked[m++] = {v, i};
      continue;
    }
    // Insertion: an equal energy never displaces an earlier item, so ties stay in index order.
    if (m == keep && !(v > ranked[m - 1].e)) continue;
    int64_t j = (m == keep) ? m - 1 : m++;
    for (; j > 0 && ranked[j - 1].e < v; --j) ranked[j] = ranked[j - 1];
    ranked[j] = {v, i};
  }
  if (nv == 0) return kGroupOk;

  int64_t na;  // |A|
  double t;
  if (B >= nv) {
    na = nv;
    t = static_cast<double>(lowest) - 1e-8;
  } else {
    if (keep > kInsertionMax) {
      auto before = [](const Ranked<T>& a, const Ranked<T>& b) { return a.e > b.e || (a.e == b.e && a.i < b.i); };
      std::nth_element(ranked, ranked + B, ranked + nv, before);
    }
    na = B;
    t = static_cast<double>(ranked[B].e);
  }

  double spread = 0.0;  // sum_{A} (e - t)
  for (int64_t j = 0; j < na; ++j) spread += static_cast<double>(ranked[j].e) - t;
  if (spread / static_cast<double>(na) <= 1e-12) {
    for (int64_t j = 0; j < na; ++j) out[ranked[j].i] = 1.0 / static_cast<double>(B);
    return kGroupOk;
  }
  for (int64_t j = 0; j < na; ++j) out[ranked[j].i] = (static_cast<double>(ranked[j].e) - t) / spread;
  return kGroupOk;
}

}  // namespace lark
