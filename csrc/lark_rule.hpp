// The published LARK selection rule, one group (problem) at a time (docs/method.md §5).
//
// A = the B largest energies, t = e_(B+1) (the first excluded value),
// q_k = (e_k - t) / sum_{i in A} (e_i - t) on A and 0 elsewhere.
// Compatibility edge cases of the published code:
//   * NaN (and -inf) energies count as -inf: never selected while a valid item remains;
//   * B >= #valid: A = all valid items and t = min(valid) - 1e-8;
//   * mean_{A}(e) - t <= 1e-12 (no spread): q = 1/B on A;
//   * an item of A tied with t gets weight 0.
// Ties inside the order are broken by position (lower index first), so the result is deterministic.
//
// Two implementations:
//   * lark_rule_group, the scalar reference, one group at a time: the B + 1 best items with their
//     positions in a branch-free compare-exchange cascade while B + 1 <= kCascadeMax, otherwise one
//     O(K) selection (nth_element); never a full sort.
//   * lark_range (lark_simd.inc), the vector kernels for B + 1 <= kCascadeMax: lanes are groups, only
//     the B + 1 best values are kept, and groups whose result depends on the order by index (no spread,
//     a +inf, nothing valid) are handed to lark_rule_group. Elsewhere the two agree bit for bit.
// lark_kernel gives the range kernel for a budget on the best instruction set the CPU has (simd.hpp).
// Translation units: the vector kernels of each instruction set in lark_rule_<isa>.cpp (lark_rule_isa.inc),
// lark_rule_group, scalar_range and lark_kernel in lark_rule.cpp.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "simd.hpp"

namespace lark {

// An item by rank: its energy and its position in the group.
template <typename T>
struct Ranked {
  T e;
  int64_t i;
};

inline constexpr int64_t kCascadeMax = 8;

// Outcome of one group: ok, or the position of a +inf energy (rejected: no finite weights exist).
inline constexpr int64_t kGroupOk = -1;

// The scan: zeroes out, counts valid items and their minimum, and ranks the items. With Keep > 0 the
// Keep best items are carried in registers down a branch-free compare-exchange cascade ordered by
// (energy desc, index asc), so an item displaced down the cascade still passes equal energies of
// later items; NaN and -inf beat nothing); with
// Keep == 0 every valid item goes to ranked for a later selection. Returns the first +inf position or -1.
template <int Keep, typename T>
int64_t scan_group(const T* e, int64_t n, double* out, Ranked<T>* ranked, int64_t* nv, T* lowest) {
  T te[Keep > 0 ? Keep : 1];
  int64_t ti[Keep > 0 ? Keep : 1];
  for (int j = 0; j < Keep; ++j) te[j] = -INFINITY, ti[j] = -1;
  int64_t count = 0;
  bool any_inf = false;
  T low = INFINITY;
  for (int64_t i = 0; i < n; ++i) {
    out[i] = 0.0;
    const T v = e[i];
    any_inf |= v == INFINITY;
    const bool valid = v > -INFINITY;
    if constexpr (Keep == 0) {
      if (valid) ranked[count] = {v, i};
    }
    count += valid;
    low = valid ? std::min(low, v) : low;
    T cv = v;
    int64_t ci = i;
#pragma GCC unroll 8
    for (int j = 0; j < Keep; ++j) {
      const bool up = cv > te[j] || (cv == te[j] && ci < ti[j]);  // (energy desc, index asc)
      const T a = te[j];
      const int64_t b = ti[j];
      te[j] = up ? cv : a;
      ti[j] = up ? ci : b;
      cv = up ? a : cv;
      ci = up ? b : ci;
    }
  }
  if (any_inf) return std::find(e, e + n, T(INFINITY)) - e;
  for (int j = 0; j < Keep; ++j) ranked[j] = {te[j], ti[j]};
  *nv = count;
  *lowest = low;
  return kGroupOk;
}

template <typename T>
int64_t scan_group(const T* e, int64_t n, int64_t keep, double* out, Ranked<T>* ranked, int64_t* nv, T* lowest) {
  switch (keep) {
    case 2: return scan_group<2>(e, n, out, ranked, nv, lowest);
    case 3: return scan_group<3>(e, n, out, ranked, nv, lowest);
    case 4: return scan_group<4>(e, n, out, ranked, nv, lowest);
    case 5: return scan_group<5>(e, n, out, ranked, nv, lowest);
    case 6: return scan_group<6>(e, n, out, ranked, nv, lowest);
    case 7: return scan_group<7>(e, n, out, ranked, nv, lowest);
    case 8: return scan_group<8>(e, n, out, ranked, nv, lowest);
    default: return scan_group<0>(e, n, out, ranked, nv, lowest);
  }
}

// e: the group's n energies; out: its n weights; ranked: scratch of at least max(n, kCascadeMax) entries.
// Returns kGroupOk, or the position of the first +inf energy.
template <typename T>
int64_t lark_rule_group(const T* e, int64_t n, int64_t B, double* out, Ranked<T>* ranked) {
  const int64_t keep = B + 1;  // A and the first excluded item
  int64_t nv;                  // valid items
  T lowest;
  const int64_t bad = scan_group(e, n, keep, out, ranked, &nv, &lowest);
  if (bad != kGroupOk || nv == 0) return bad;

  int64_t na;  // |A|
  double t;
  if (B >= nv) {
    na = nv;
    t = static_cast<double>(lowest) - 1e-8;
  } else {
    if (keep > kCascadeMax) {
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
  const double scale = 1.0 / spread;  // one division per group (the vector kernels do the same)
  for (int64_t j = 0; j < na; ++j) out[ranked[j].i] = (static_cast<double>(ranked[j].e) - t) * scale;
  return kGroupOk;
}

// Groups longer than this run one at a time in the vector kernels (lanes = interleaved subsets).
inline constexpr int64_t kColumns = 64;

template <typename T>
int64_t scalar_range(const T* e, const int64_t* o, int64_t g0, int64_t g1, int64_t B, double* out,
                     Ranked<T>* ranked, bool) {
  for (int64_t g = g0; g < g1; ++g)
    if (lark_rule_group(e + o[g], o[g + 1] - o[g], B, out + o[g], ranked) != kGroupOk) return g;
  return -1;
}

template <typename T>
using RangeFn = int64_t (*)(const T*, const int64_t*, int64_t, int64_t, int64_t, double*, Ranked<T>*, bool);

// Outputs above this many bytes are written with non-temporal stores (they would not stay in cache).
inline constexpr int64_t kStreamBytes = int64_t{16} << 20;

// The vector kernel of one instruction set for Keep = B + 1 in [2, kCascadeMax] (lark_range<Keep, T>), or
// nullptr for other budgets; defined in lark_rule_<isa>.cpp for T = float, double.
namespace generic {
template <typename T>
RangeFn<T> range_kernel(int64_t keep);
}
namespace avx2 {
template <typename T>
RangeFn<T> range_kernel(int64_t keep);
}
namespace avx512 {
template <typename T>
RangeFn<T> range_kernel(int64_t keep);
}

// The kernel for budget B on this CPU (fixed for a call, so results do not depend on the threads).
template <typename T>
RangeFn<T> lark_kernel(int64_t B, Simd simd = simd_level()) {
  RangeFn<T> kernel = nullptr;
  switch (simd) {
#if LARK_HAVE_X86
    case Simd::avx512: kernel = avx512::range_kernel<T>(B + 1); break;
    case Simd::avx2: kernel = avx2::range_kernel<T>(B + 1); break;
#endif
#if LARK_HAVE_VECTOR
    case Simd::generic: kernel = generic::range_kernel<T>(B + 1); break;
#endif
    default: break;
  }
  return kernel ? kernel : &scalar_range<T>;
}

}  // namespace lark
