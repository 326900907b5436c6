// χ² selection with one budget over all items (SPEC §5, "at scale"): the pool of chi2.hpp is every item,
// p is normalised over all valid items and Σ q = 1, with item caps q ≤ c and optional group caps
// Σ_{k∈g} q_k ≤ C_g. The KKT conditions give a held group its own threshold ν_g > ν, so
//     T_g(ν) = Σ_{k∈g} clip(s p_k (e_k − ν), 0, c),   group total = min(T_g(ν), C_g),
// and the single global ν solves F(ν) = Σ_g min(T_g(ν), C_g) = 1, the outer one-dimensional root. F is
// continuous, non-increasing and piecewise linear (its slope comes from the free items of groups not held),
// so chi2.hpp's safeguarded Newton applies unchanged; a held group solves h_g(ν_g) = C_g inside its own
// items, starting from ν.
//
// Every pass is O(N) with no sort: fixed chunks run in parallel and their partial sums are combined in
// chunk order, so results do not depend on the thread count. Memory: the inputs, the output and
// O(N / kChunkItems) scratch.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "chi2.hpp"

namespace lark {

inline constexpr int64_t kChunkItems = int64_t{1} << 15;

// Group caps: one value per group, or one for all; nullptr when there are none.
struct GroupCaps {
  const double* values = nullptr;
  bool per_group = false;
  double operator[](int64_t g) const { return values[per_group ? g : 0]; }
  explicit operator bool() const { return values != nullptr; }
};

// Chunks of about kChunkItems items; with group caps they end on group boundaries (groups [g0, g1)).
struct Chunks {
  std::vector<int64_t> items, groups;  // bounds, size = number of chunks + 1

  Chunks(int64_t n, const int64_t* offsets, int64_t n_groups, bool by_group) {
    items.push_back(0);
    groups.push_back(0);
    if (by_group) {
      for (int64_t g = 0; g < n_groups; ++g)
        if (offsets[g + 1] - items.back() >= kChunkItems || g + 1 == n_groups) {
          items.push_back(offsets[g + 1]);
          groups.push_back(g + 1);
        }
    } else {
      for (int64_t b = kChunkItems; b < n + kChunkItems; b += kChunkItems) items.push_back(std::min(b, n));
    }
  }
  int64_t size() const { return static_cast<int64_t>(items.size()) - 1; }
  bool by_group() const { return groups.size() > 1; }
};

// Runs f(chunk) for every chunk in parallel and combines the results in chunk order.
template <class Sums, class F>
Sums over_chunks(const Chunks& chunks, const F& f) {
  std::vector<Sums> part(static_cast<size_t>(chunks.size()));
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t c = 0; c < chunks.size(); ++c) part[c] = f(c);
  Sums total;
  for (const Sums& s : part) total.add(s);
  return total;
}

template <class P>
struct GlobalPool {
  P pool;
  const int64_t* offsets;
  GroupCaps group_cap;
  const Chunks& chunks;
  double e_max;  // largest valid energy as the pool reads it: h = 0 there

  // A held group's own threshold ν_g: T_g(ν_g) = C_g with ν < ν_g ≤ e_max.
  Root held_root(int64_t g, double nu, double s) const {
    if (group_cap[g] <= 0) return {e_max, {}};
    const int64_t b = offsets[g], e = offsets[g + 1];
    auto eval = [&](double x) { return class_sums(pool, b, e, x, s); };
    return solve_threshold(eval, s, pool.cap, group_cap[g], nu, e_max, nu);
  }

  // F(ν) with its class sums; with_divergence also solves held groups for their D(s) terms.
  ClassSums evaluate(double nu, double s, bool with_divergence) const {
    return over_chunks<ClassSums>(chunks, [&](int64_t c) {
      if (!chunks.by_group()) return class_sums(pool, chunks.items[c], chunks.items[c + 1], nu, s);
      ClassSums acc;
      for (int64_t g = chunks.groups[c]; g < chunks.groups[c + 1]; ++g) {
        const ClassSums own = class_sums(pool, offsets[g], offsets[g + 1], nu, s);
        if (!(own.mass(s, pool.cap) > group_cap[g])) {
          acc.add(own);
          continue;
        }
        acc.held_mass += group_cap[g];
        ++acc.n_held;
        if (!with_divergence) continue;
        const ClassSums held = held_root(g, nu, s).at;
        acc.held_a += held.model_a();
        acc.held_b += held.model_b(s, pool.cap);
        acc.held_free += held.n_free;
        acc.held_capped += held.n_capped;
      }
      return acc;
    });
  }

  void write(double nu, double s, double* out) const {
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t c = 0; c < chunks.size(); ++c) {
      if (!chunks.by_group()) {
        write_weights(pool, chunks.items[c], chunks.items[c + 1], nu, s, out);
        continue;
      }
      for (int64_t g = chunks.groups[c]; g < chunks.groups[c + 1]; ++g) {
        const int64_t b = offsets[g], e = offsets[g + 1];
        const bool held = class_sums(pool, b, e, nu, s).mass(s, pool.cap) > group_cap[g];
        write_weights(pool, b, e, held ? held_root(g, nu, s).nu : nu, s, out);
      }
    }
  }

  Root solve(double s, double lo, double nu, bool with_divergence) const {
    auto eval = [&](double x) { return evaluate(x, s, with_divergence); };
    return solve_threshold(eval, s, pool.cap, 1.0, lo, e_max, std::min(nu, e_max));
  }
};

// Statistics of all items, and with group caps the largest mass they allow, Σ_g min(C_g, c · #valid_g).
struct GlobalStats {
  RangeStats items;
  double allowed = 0, group_cap_max = 0;
  int64_t bad = -1;  // first +inf energy or bad reference mass

  void add(const GlobalStats& o) {
    items.add(o.items);
    allowed += o.allowed;
    group_cap_max = std::max(group_cap_max, o.group_cap_max);
    if (bad < 0) bad = o.bad;
  }
};

template <class P>
GlobalStats global_stats(const P& pool, const int64_t* offsets, GroupCaps group_cap, const Chunks& chunks) {
  return over_chunks<GlobalStats>(chunks, [&](int64_t c) {
    GlobalStats st;
    if (!chunks.by_group()) {
      st.items = range_stats(pool, chunks.items[c], chunks.items[c + 1], &st.bad);
      return st;
    }
    for (int64_t g = chunks.groups[c]; g < chunks.groups[c + 1] && st.bad < 0; ++g) {
      const RangeStats own = range_stats(pool, offsets[g], offsets[g + 1], &st.bad);
      st.items.add(own);
      if (own.n_valid > 0) st.allowed += std::min(group_cap[g], pool.cap * static_cast<double>(own.n_valid));
      st.group_cap_max = std::max(st.group_cap_max, group_cap[g]);
    }
    return st;
  });
}

// offsets may be nullptr (no groups) unless group_cap is set.
template <typename T, typename R>
Outcome solve_global(Pool<T, R> pool, int64_t n, const int64_t* offsets, int64_t n_groups,
                          GroupCaps group_cap, double tau, double radius, double* out) {
  const Chunks chunks(n, offsets, n_groups, static_cast<bool>(group_cap));
  const GlobalStats st = global_stats(pool, offsets, group_cap, chunks);
  if (st.bad >= 0) return {Status::bad_item, st.bad, 0};
  if (st.items.n_valid == 0) return {Status::no_valid, -1, 0};
  const double room = pool.cap * static_cast<double>(st.items.n_valid);
  if (room < 1) return {Status::cap_infeasible, -1, room};
  if (group_cap && st.allowed < 1) return {Status::group_cap_infeasible, -1, st.allowed};

  pool.ref_scale = 1.0 / st.items.ref_sum;
  pool.shift = st.items.e_max;
  const double p_min = st.items.ref_min * pool.ref_scale, cap = pool.cap;
  const double e_min = st.items.e_min - pool.shift, mean = st.items.mean - pool.shift;  // the largest is 0
  const GlobalPool<Pool<T, R>> global{pool, offsets, group_cap, chunks, 0.0};
  auto lower = [&](double e_min, double s) { return lower_threshold(e_min, p_min, s, cap, st.group_cap_max); };

  if (tau > 0) {
    const double s = 0.5 / tau, nu0 = mean - 2 * tau;
    const Root root = global.solve(s, std::min(nu0, lower(e_min, s)), nu0, false);
    global.write(root.nu, s, out);
    return {};
  }

  // s → 0 limit (q_k = min(c, λ p_k), group caps applied): the smallest divergence the caps allow.
  const GlobalPool<Pool<T, R, true>> flat{pool.zero_energy(), offsets, group_cap, chunks, 0.0};
  const bool capped = cap < kInf || group_cap;
  const Root least = capped ? flat.solve(1.0, std::min(-1.0, lower(0.0, 1.0)), -1.0, true) : Root{-1.0, {}};
  const double d_min = capped ? least.at.divergence(1.0, cap) : 0.0;
  if (radius <= d_min * (1 + 1e-12) + 1e-15) {
    if (radius < d_min * (1 - 1e-12) - 1e-15) return {Status::radius_infeasible, -1, d_min};
    flat.write(least.nu, 1.0, out);
    return {};
  }
  const double var = st.items.m2 / st.items.ref_sum;
  const double s0 = var > 0 ? std::sqrt((radius - d_min) / var) : 1.0;
  auto at_scale = [&](double s, double nu_start) {
    return global.solve(s, std::min(nu_start, lower(e_min, s)), nu_start, true);
  };
  const Scaled sol = solve_radius(at_scale, radius, cap, s0, mean - 1.0 / s0);
  global.write(sol.root.nu, sol.s, out);
  return {};
}

}  // namespace lark
