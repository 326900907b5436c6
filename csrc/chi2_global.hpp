// χ² selection with one budget over all items (docs/method.md §5, "at scale"): the pool of chi2.hpp is
// every item, p is normalised over all valid items and Σ q = 1, with item caps q ≤ c and optional group
// caps Σ_{k∈g} q_k ≤ C_g. The KKT conditions give a held group its own threshold ν_g > ν, so
//     T_g(ν) = Σ_{k∈g} clip(s p_k (e_k − ν), 0, c),   group total = min(T_g(ν), C_g),
// and the single global ν solves F(ν) = Σ_g min(T_g(ν), C_g) = 1, the outer one-dimensional root. F is
// continuous, non-increasing and piecewise linear (its slope comes from the free items of groups not held),
// so chi2.hpp's safeguarded Newton applies unchanged; a held group solves h_g(ν_g) = C_g inside its own
// items, starting from ν.
//
// Every pass is O(N) with no sort: fixed chunks run in parallel and their partial sums are combined in
// chunk order, so results do not depend on the thread count; the passes run on the vector kernels of
// chi2_simd.inc (the same bits on every instruction set). Passes over the data, penalised form:
//   1. statistics (largest energy, valid count, bad items), read only;
//   2. a start: the same problem on a sample of evenly spaced chunks (mass scaled by their share of the
//      items), solved in cache, gives ν0 within the sampling error of the root;
//   3. safeguarded Newton from ν0, read-only evaluations; the step expected to be the last one is
//      evaluated while writing the weights (solve_threshold's speculative write), so the result
//      costs no separate write pass (one more if the guess was wrong).
// Memory: the inputs, the output and O(N / kChunkItems) scratch.
// Translation units: the passes of each instruction set in chi2_global_<isa>.cpp (chi2_global_isa.inc,
// as function pointers: Passes); the solver, compiled once, and the scalar passes in chi2_global.cpp.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "chi2.hpp"
#include "lark_rule.hpp"  // kColumns
#include "simd.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace lark {

inline constexpr int64_t kChunkItems = int64_t{1} << 15;

// Group caps: one value per group, or one for all; nullptr when there are none.
struct GroupCaps {
  const double* values = nullptr;
  bool per_group = false;
  double operator[](int64_t g) const { return values[per_group ? g : 0]; }
  explicit operator bool() const { return values != nullptr; }
};

// The scalar kernels (compilers without vector extensions): chi2.hpp's loops.
struct ScalarKernels {
  template <bool kSums, bool kWrite, bool kModel, class P>
  static ClassSums range(const P& pool, int64_t begin, int64_t end, double nu, double s, double* out) {
    if constexpr (kWrite) write_weights(pool, begin, end, nu, s, out);
    if constexpr (kSums) return class_sums(pool, begin, end, nu, s);
    return {};
  }
  template <class P>
  static RangeStats stats(const P& pool, int64_t begin, int64_t end, int64_t* bad) {
    return range_stats(pool, begin, end, bad);
  }
  template <bool kWrite, bool kModel, class P, class Held>
  static ClassSums groups(const P& pool, const int64_t* o, int64_t g0, int64_t g1, GroupCaps caps, double nu,
                          double s, bool with_divergence, const Held& held, double* out) {
    ClassSums acc;
    for (int64_t g = g0; g < g1; ++g) {
      const ClassSums own = class_sums(pool, o[g], o[g + 1], nu, s);
      double root = nu;
      if (!(own.mass(s, pool.cap) > caps[g])) {
        acc.add(own);
      } else {
        acc.held_mass += caps[g];
        ++acc.n_held;
        if (with_divergence || kWrite) {
          const Root r = held(g, own);
          root = r.nu;
          if (with_divergence) {
            acc.held_a += r.at.model_a();
            acc.held_b += r.at.model_b(s, pool.cap);
            acc.held_free += r.at.n_free;
            acc.held_capped += r.at.n_capped;
          }
        }
      }
      if constexpr (kWrite) write_weights(pool, o[g], o[g + 1], root, s, out);
    }
    return acc;
  }
};

// A held group's own threshold as the passes call it: GlobalPool::held_root at the pass's ν and s, a
// plain function with its context.
struct HeldRoot {
  const void* context;
  Root (*root)(const void* context, int64_t g, const ClassSums& at_nu);
  Root operator()(int64_t g, const ClassSums& at_nu) const { return root(context, g, at_nu); }
};

// The passes of one instruction set over a pool of type P, by address: stats, and range and groups for
// each (kModel, kWrite) the solver uses (sums: neither, model: kModel, write: kWrite). So the solver
// (solve_global_with) is compiled once, and each instruction set's translation unit compiles its passes
// only. The flat pool (Pool<T, R, true>, the s → 0 limit) is only solved with its D(s) terms and
// written: its other entries stay null.
template <class P>
struct Passes {
  using Range = ClassSums (*)(const P&, int64_t begin, int64_t end, double nu, double s, double* out);
  using Groups = ClassSums (*)(const P&, const int64_t* o, int64_t g0, int64_t g1, GroupCaps caps, double nu,
                               double s, bool with_divergence, const HeldRoot& held, double* out);
  RangeStats (*stats)(const P&, int64_t begin, int64_t end, int64_t* bad) = nullptr;
  Range range_sums = nullptr, range_model = nullptr, range_write = nullptr;
  Groups groups_sums = nullptr, groups_model = nullptr, groups_write = nullptr;
};

template <class P>
inline constexpr bool kFlatPool = false;
template <typename T, typename R>
inline constexpr bool kFlatPool<Pool<T, R, true>> = true;

// The passes of the kernels K (chi2_simd.inc's Kernels, or ScalarKernels).
template <class K, class P>
Passes<P> passes_of() {
  Passes<P> p;
  p.range_model = &K::template range<true, false, true, P>;
  p.range_write = &K::template range<true, true, false, P>;
  p.groups_model = &K::template groups<false, true, P, HeldRoot>;
  p.groups_write = &K::template groups<true, false, P, HeldRoot>;
  if constexpr (!kFlatPool<P>) {
    p.stats = &K::template stats<P>;
    p.range_sums = &K::template range<true, false, false, P>;
    p.groups_sums = &K::template groups<false, false, P, HeldRoot>;
  }
  return p;
}

// The passes of each instruction set's kernels (chi2_simd.inc), compiled in chi2_global_<isa>.cpp for every
// pool type (LARK_FOR_EACH_INPUT, flat or not).
namespace chi2_generic {
template <class P>
Passes<P> passes();
}
namespace chi2_avx2 {
template <class P>
Passes<P> passes();
}
namespace chi2_avx512 {
template <class P>
Passes<P> passes();
}

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

// Runs f(chunk) for the chunks listed in which (all when empty) in parallel and combines the results in
// the order listed. Every pass of one solve runs on the threads for the whole input (threads_for), the
// short passes over a sample included, so no thread spins idle through a long serial stretch.
template <class Sums, class F>
Sums over_chunks(const Chunks& chunks, const std::vector<int64_t>& which, const F& f) {
  const int64_t m = which.empty() ? chunks.size() : static_cast<int64_t>(which.size());
  std::vector<Sums> part(static_cast<size_t>(m));
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads_for(chunks.items.back()))
  for (int64_t i = 0; i < m; ++i) part[i] = f(which.empty() ? i : which[i]);
  Sums total;
  for (const Sums& s : part) total.add(s);
  return total;
}

// The pool of all items with its chunks, evaluated by the passes of one instruction set.
template <class P>
struct GlobalPool {
  P pool;
  Passes<P> passes;
  const int64_t* offsets;
  GroupCaps group_cap;
  const Chunks& chunks;
  double e_max;                // largest valid energy as the pool reads it: h = 0 there
  std::vector<int64_t> which;  // the chunks evaluated (empty: all)

  // A held group's own threshold ν_g: T_g(ν_g) = C_g with ν < ν_g ≤ e_max, from its sums at ν.
  Root held_root(int64_t g, double nu, double s, const ClassSums& at_nu) const {
    if (group_cap[g] <= 0) return {e_max, {}};
    const int64_t b = offsets[g], e = offsets[g + 1];
    auto eval = [&](double x) { return class_sums(pool, b, e, x, s); };
    return solve_threshold(eval, s, pool.cap, group_cap[g], nu, e_max, nu, NoWrite{}, 300, &at_nu);
  }

  // F(ν) with its class sums over the chunks; kModel (the constrained form) also solves held groups for
  // their D(s) terms; kWrite also writes the weights at ν to out. The solver uses (kModel, kWrite) =
  // (false, false), (false, true) and (true, false), and only those are compiled.
  template <bool kModel, bool kWrite>
  ClassSums pass(double nu, double s, double* out) const {
    static_assert(!(kModel && kWrite), "not used by the solver");
    const auto range = kModel ? passes.range_model : kWrite ? passes.range_write : passes.range_sums;
    const auto groups = kModel ? passes.groups_model : kWrite ? passes.groups_write : passes.groups_sums;
    const HeldAt at{this, nu, s};
    const HeldRoot held{&at, &HeldAt::root};
    return over_chunks<ClassSums>(chunks, which, [&](int64_t c) {
      const int64_t b = chunks.items[c], e = chunks.items[c + 1];
      if (!chunks.by_group()) return range(pool, b, e, nu, s, out);
      const int64_t g0 = chunks.groups[c], g1 = chunks.groups[c + 1];
      return groups(pool, offsets, g0, g1, group_cap, nu, s, kModel, held, out);
    });
  }

  // held_root at the ν and s of a pass (HeldRoot::context).
  struct HeldAt {
    const GlobalPool* self;
    double nu, s;
    static Root root(const void* context, int64_t g, const ClassSums& at_nu) {
      const HeldAt& at = *static_cast<const HeldAt*>(context);
      return at.self->held_root(g, at.nu, at.s, at_nu);
    }
  };

  void write(double nu, double s, double* out) const { pass<false, true>(nu, s, out); }

  // An evaluation that also writes the weights (solve_threshold's speculative write).
  struct Write {
    static constexpr bool enabled = true;
    const GlobalPool* self;
    double s;
    double* out;
    ClassSums operator()(double x) const { return self->template pass<false, true>(x, s, out); }
  };

  // Root of F = mass from nu in [lo, e_max]; kModel: with the D(s) terms of held groups (the constrained
  // form). With out (penalised form only: not written with kModel), the last pass writes the weights
  // when it can.
  template <bool kModel>
  Root solve(double s, double lo, double nu, double* out = nullptr, double mass = 1.0, int max_steps = 300) const {
    auto eval = [&](double x) { return pass<kModel, false>(x, s, nullptr); };
    const double start = std::min(nu, e_max);
    if constexpr (!kModel) {
      if (out) return solve_threshold(eval, s, pool.cap, mass, lo, e_max, start, Write{this, s, out}, max_steps);
    }
    return solve_threshold(eval, s, pool.cap, mass, lo, e_max, start, NoWrite{}, max_steps);
  }

  // Evenly spaced chunks holding about kSampleShare of the items (at most kSampleChunks), and their
  // share of all items; none when there are fewer than kSampleMin chunks.
  static constexpr int64_t kSampleMin = 64, kSampleChunks = 32, kSampleShare = 32;
  std::vector<int64_t> sample(double* share) const {
    std::vector<int64_t> pick;
    const int64_t m = chunks.size();
    *share = 0;
    if (m < kSampleMin) return pick;
    const int64_t want = std::min(kSampleChunks, m / kSampleShare);
    int64_t items = 0;
    for (int64_t i = 0; i < want; ++i) {
      const int64_t c = (2 * i + 1) * m / (2 * want);
      pick.push_back(c);
      items += chunks.items[c + 1] - chunks.items[c];
    }
    *share = static_cast<double>(items) / static_cast<double>(chunks.items.back());
    return pick;
  }

  // A start for the root of F = 1 at scale s: the root of the sampled chunks' F = their share of the
  // items, or nu when there is no sample.
  double sampled_start(double s, double lo, double nu) const {
    double share;
    GlobalPool part = *this;
    part.which = sample(&share);
    if (part.which.empty() || !(share > 0)) return nu;
    const Root r = part.template solve<false>(s, lo, nu, nullptr, share, 60);
    return std::isfinite(r.nu) ? r.nu : nu;
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
GlobalStats global_stats(const Passes<P>& passes, const P& pool, const int64_t* offsets, GroupCaps group_cap,
                         const Chunks& chunks) {
  return over_chunks<GlobalStats>(chunks, {}, [&](int64_t c) {
    GlobalStats st;
    const int64_t b = chunks.items[c], e = chunks.items[c + 1];
    st.items = passes.stats(pool, b, e, &st.bad);
    if (!chunks.by_group() || st.bad >= 0) return st;
    const bool all_valid = st.items.n_valid == e - b;  // else count each group's valid items
    for (int64_t g = chunks.groups[c]; g < chunks.groups[c + 1]; ++g) {
      int64_t valid = offsets[g + 1] - offsets[g];
      if (!all_valid) {
        valid = 0;
        for (int64_t k = offsets[g]; k < offsets[g + 1]; ++k) valid += valid_energy(static_cast<double>(pool.e[k]));
      }
      if (valid > 0) st.allowed += std::min(group_cap[g], pool.cap * static_cast<double>(valid));
      st.group_cap_max = std::max(st.group_cap_max, group_cap[g]);
    }
    return st;
  });
}

// The solve on the passes of one instruction set: passes for the pool, flat_passes for its s → 0 limit.
// offsets may be nullptr (no groups) unless group_cap is set.
template <typename T, typename R>
Outcome solve_global_with(const Passes<Pool<T, R>>& passes, const Passes<Pool<T, R, true>>& flat_passes,
                          Pool<T, R> pool, int64_t n, const int64_t* offsets, int64_t n_groups, GroupCaps group_cap,
                          double tau, double radius, double* out) {
  const Chunks chunks(n, offsets, n_groups, static_cast<bool>(group_cap));
  const GlobalStats st = global_stats(passes, pool, offsets, group_cap, chunks);
  if (st.bad >= 0) return {Status::bad_item, st.bad, 0};
  if (st.items.n_valid == 0) return {Status::no_valid, -1, 0};
  const double room = pool.cap * static_cast<double>(st.items.n_valid);
  if (room < 1) return {Status::cap_infeasible, -1, room};
  if (group_cap && st.allowed < 1) return {Status::group_cap_infeasible, -1, st.allowed};

  pool.ref_scale = 1.0 / st.items.ref_sum;
  pool.shift = st.items.e_max;
  const double p_min = st.items.ref_min * pool.ref_scale, cap = pool.cap;
  const double e_min = st.items.e_min - pool.shift, mean = st.items.mean - pool.shift;  // the largest is 0
  const GlobalPool<Pool<T, R>> global{pool, passes, offsets, group_cap, chunks, 0.0, {}};
  auto lower = [&](double e_min, double s) { return lower_threshold(e_min, p_min, s, cap, st.group_cap_max); };

  if (tau > 0) {
    const double s = 0.5 / tau, lo = std::min(mean - 2 * tau, lower(e_min, s));
    const double nu0 = global.sampled_start(s, lo, mean - 2 * tau);
    const Root root = global.template solve<false>(s, lo, nu0, out);
    if (!root.written) global.write(root.nu, s, out);
    return {};
  }

  // s → 0 limit (q_k = min(c, λ p_k), group caps applied): the smallest divergence the caps allow.
  const GlobalPool<Pool<T, R, true>> flat{pool.zero_energy(), flat_passes, offsets, group_cap, chunks, 0.0, {}};
  const bool capped = cap < kInf || group_cap;
  const Root least = capped ? flat.template solve<true>(1.0, std::min(-1.0, lower(0.0, 1.0)), -1.0) : Root{-1.0, {}};
  const double d_min = capped ? least.at.divergence(1.0, cap) : 0.0;
  if (radius <= d_min * (1 + 1e-12) + 1e-15) {
    if (radius < d_min * (1 - 1e-12) - 1e-15) return {Status::radius_infeasible, -1, d_min};
    flat.write(least.nu, 1.0, out);
    return {};
  }
  const double var = st.items.m2 / st.items.ref_sum;
  const double s0 = var > 0 ? std::sqrt((radius - d_min) / var) : 1.0;
  auto at_scale = [&](double s, double nu_start) {
    return global.template solve<true>(s, std::min(nu_start, lower(e_min, s)), nu_start);
  };
  const Scaled sol = solve_radius(at_scale, radius, cap, s0, mean - 1.0 / s0);
  global.write(sol.root.nu, sol.s, out);
  return {};
}

// The solve on the best instruction set the CPU has (the scalar passes when there is none).
template <typename T, typename R>
Outcome solve_global(Pool<T, R> pool, int64_t n, const int64_t* offsets, int64_t n_groups, GroupCaps group_cap,
                     double tau, double radius, double* out) {
  using Items = Pool<T, R>;
  using Flat = Pool<T, R, true>;
  Passes<Items> passes = passes_of<ScalarKernels, Items>();
  Passes<Flat> flat_passes = passes_of<ScalarKernels, Flat>();
  switch (simd_level()) {
#if LARK_HAVE_X86
    case Simd::avx512:
      passes = chi2_avx512::passes<Items>();
      flat_passes = chi2_avx512::passes<Flat>();
      break;
    case Simd::avx2:
      passes = chi2_avx2::passes<Items>();
      flat_passes = chi2_avx2::passes<Flat>();
      break;
#endif
#if LARK_HAVE_VECTOR
    case Simd::generic:
      passes = chi2_generic::passes<Items>();
      flat_passes = chi2_generic::passes<Flat>();
      break;
#endif
    default: break;
  }
  return solve_global_with(passes, flat_passes, pool, n, offsets, n_groups, group_cap, tau, radius, out);
}

}  // namespace lark
