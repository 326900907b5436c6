// χ²-regularised selection over one pool of items (a group, or all items for chi2_global); the
// math is in docs/method.md §5.
//
// Reference p (Σ p = 1 over the valid items), item cap c (+inf: none), mass m (1 for a distribution).
// Penalised:   max ⟨q, e⟩ − τ D(q‖p)   over 0 ≤ q ≤ c, Σ q = m,   D(q‖p) = Σ q_k²/p_k − 1.
// With s = 1/(2τ) the KKT conditions give
//     q_k(ν) = clip(s p_k (e_k − ν), 0, c),   ν such that h(ν) = Σ_k q_k(ν) = m.
// h is continuous, non-increasing and piecewise linear in ν; item k is free (0 < q_k < c) for
// ν in (e_k − c/(s p_k), e_k), capped below, zero above. With F the free and C the capped items,
//     h(ν) = s Σ_F p_k (e_k − ν) + |C| c,
// so a Newton step lands on the root exactly when the item classes where it lands are those it was
// computed from (classes move monotonically with ν, so equal class counts mean equal classes).
//
// Constrained: max ⟨q, e⟩ s.t. D(q‖p) ≤ r is the penalised optimum at the τ where D = r. D is
// non-decreasing in s; for fixed classes, with m_F = m − |C| c the mass on F and P_F = Σ_F p_k,
//     D(s) + 1 = s² V_F + m_F²/P_F + c² Σ_C 1/p_k,   V_F = Σ_F p_k (e_k − ē_F)²,
// a quadratic in s that gives the outer steps. Limits: s → 0 (τ → ∞) gives q_k = min(c, λ p_k), the
// smallest D the caps allow; s → ∞ (τ → 0) gives the maximiser of ⟨q, e⟩ closest to p, reached at a
// finite s where V_F = 0 (radius inactive beyond its D).
//
// NaN and −inf energies are invalid: weight 0 and no reference mass (p is normalised over valid items).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

namespace lark {

inline constexpr double kInf = std::numeric_limits<double>::infinity();

// Reference tag: p_k = 1 / (number of valid items of the pool).
struct Uniform {};

// Calls X(T, R) for every input type of the solvers: energies T in {float, double}, reference masses
// R in {Uniform, float, double} (the explicit instantiations of the solver translation units).
#define LARK_FOR_EACH_INPUT(X) \
  X(float, Uniform) X(float, float) X(float, double) X(double, Uniform) X(double, float) X(double, double)

// The items of a pool: energies read as e_k − shift, and reference masses p_k = ref[k] · ref_scale
// (ref_scale alone for Uniform). Solvers set shift to the largest valid energy, so thresholds are held
// as ν − shift ≤ 0 and the gaps e_k − ν of the top items keep full relative precision even when τ is
// tiny. With kZeroEnergy every valid energy reads as 0: the solver then gives the s → 0 limit.
template <typename T, typename R, bool kZeroEnergy = false>
struct Pool {
  const T* e;
  const R* ref;
  double ref_scale;
  double cap;  // item cap c, +inf when none
  double shift = 0;

  double energy(int64_t k) const {
    if constexpr (kZeroEnergy) return e[k] > -kInf ? 0.0 : std::numeric_limits<double>::quiet_NaN();
    else return static_cast<double>(e[k]) - shift;
  }
  double p(int64_t k) const {
    if constexpr (std::is_same_v<R, Uniform>) return ref_scale;
    else return static_cast<double>(ref[k]) * ref_scale;
  }
  double raw_ref(int64_t k) const {
    if constexpr (std::is_same_v<R, Uniform>) return 1.0;
    else return static_cast<double>(ref[k]);
  }
  Pool<T, R, true> zero_energy() const { return {e, ref, ref_scale, cap, 0.0}; }
};

inline bool valid_energy(double v) { return v > -kInf; }  // false for NaN and -inf

// Statistics of the valid items of a range, with raw reference masses (before normalisation):
// count, Σ ref, min ref, energy range, and the ref-weighted mean and centred second moment of e.
struct RangeStats {
  int64_t n_valid = 0;
  double ref_sum = 0, ref_min = kInf;
  double e_min = kInf, e_max = -kInf;
  double mean = 0, m2 = 0;  // Σ ref e / Σ ref, Σ ref (e − mean)²

  // Fixed-order combination (Chan et al.), so chunked sums are deterministic.
  void add(const RangeStats& o) {
    if (o.n_valid == 0) return;
    if (n_valid == 0) {
      *this = o;
      return;
    }
    const double total = ref_sum + o.ref_sum, delta = o.mean - mean;
    mean += delta * o.ref_sum / total;
    m2 += o.m2 + delta * delta * ref_sum * o.ref_sum / total;
    n_valid += o.n_valid;
    ref_sum = total;
    ref_min = std::min(ref_min, o.ref_min);
    e_min = std::min(e_min, o.e_min);
    e_max = std::max(e_max, o.e_max);
  }
};

// Stats of [begin, end). The first item with a +inf energy or a reference mass that is not a positive
// finite number goes to *bad (left unchanged when there is none). Branch-free over the items.
template <class P>
RangeStats range_stats(const P& pool, int64_t begin, int64_t end, int64_t* bad) {
  RangeStats st;
  int64_t first = begin;  // shift the moments by the first valid energy: no cancellation
  while (first < end && !valid_energy(static_cast<double>(pool.e[first]))) ++first;
  const double shift = first < end ? static_cast<double>(pool.e[first]) : 0.0;
  double count = 0, ref_sum = 0, ref_min = kInf, e_min = kInf, e_max = -kInf, s1 = 0, s2 = 0, n_bad = 0;
#pragma omp simd reduction(+ : count, ref_sum, s1, s2, n_bad) reduction(min : ref_min, e_min) reduction(max : e_max)
  for (int64_t k = begin; k < end; ++k) {
    const double v = static_cast<double>(pool.e[k]), w = pool.raw_ref(k);
    const double ok = v > -kInf ? 1.0 : 0.0, d = ok > 0 ? v - shift : 0.0;  // d = 0 for NaN, −inf
    n_bad += (v == kInf || !(w > 0 && w < kInf)) ? 1.0 : 0.0;
    count += ok;
    ref_sum += ok * w;
    ref_min = std::min(ref_min, ok > 0 ? w : kInf);
    e_min = std::min(e_min, ok > 0 ? v : kInf);
    e_max = std::max(e_max, ok > 0 ? v : -kInf);
    s1 += ok * w * d;
    s2 += ok * w * d * d;
  }
  if (n_bad > 0) {
    for (int64_t k = begin; k < end; ++k) {
      const double v = static_cast<double>(pool.e[k]), w = pool.raw_ref(k);
      if (v == kInf || !(w > 0 && w < kInf)) {
        *bad = k;
        break;
      }
    }
    return st;
  }
  st.n_valid = static_cast<int64_t>(count);
  if (st.n_valid > 0) {
    st.ref_sum = ref_sum;
    st.ref_min = ref_min;
    st.e_min = e_min;
    st.e_max = e_max;
    st.mean = shift + s1 / ref_sum;
    st.m2 = std::max(0.0, s2 - s1 * s1 / ref_sum);
  }
  return st;
}

// Sums over a pool's items at threshold ν and scale s, split by class (free, capped; zero adds nothing).
struct ClassSums {
  double free_p = 0;        // P_F
  double free_pe = 0;       // Σ_F p e (e as the pool reads it, ≤ 0 after the shift: no cancellation)
  double free_pe2 = 0;      // Σ_F p e² (e as the pool reads it: V_F keeps its precision when ν is far)
  double free_gap = 0;      // Σ_F p (e − ν)
  double capped_inv_p = 0;  // Σ_C 1/p
  int64_t n_free = 0, n_capped = 0;
  // chi2_global: groups held at their group cap, with their mass and their terms of D(s) + 1 = A s² + B.
  // held_free and held_capped count their items by class (filled when D is asked for).
  double held_mass = 0, held_a = 0, held_b = 0;
  int64_t n_held = 0, held_free = 0, held_capped = 0;

  void add(const ClassSums& o) {
    free_p += o.free_p;
    free_pe += o.free_pe;
    free_pe2 += o.free_pe2;
    free_gap += o.free_gap;
    capped_inv_p += o.capped_inv_p;
    n_free += o.n_free;
    n_capped += o.n_capped;
    held_mass += o.held_mass;
    held_a += o.held_a;
    held_b += o.held_b;
    n_held += o.n_held;
    held_free += o.held_free;
    held_capped += o.held_capped;
  }
  double fixed_mass(double cap) const {  // mass of capped items and held groups
    return (n_capped > 0 ? static_cast<double>(n_capped) * cap : 0.0) + held_mass;
  }
  double mass(double s, double cap) const { return s * free_gap + fixed_mass(cap); }  // h(ν)
  // The ν where h = mass on this piece: s (Σ_F p e − ν P_F) + fixed = mass (NaN without free items).
  double piece_root(double s, double cap, double mass) const {
    return (free_pe - (mass - fixed_mass(cap)) / s) / free_p;
  }
  bool same_classes(const ClassSums& o) const {
    return n_free == o.n_free && n_capped == o.n_capped && n_held == o.n_held && held_free == o.held_free &&
           held_capped == o.held_capped;
  }
  // D(s') + 1 = a s'² + b for the classes of this root (held groups included), valid at Σ q = m.
  double model_a() const {
    const double v = free_p > 0 ? free_pe2 - free_pe * free_pe / free_p : 0.0;
    return std::max(0.0, v) + held_a;
  }
  double model_b(double s, double cap) const {
    const double free_mass = s * free_gap;
    return (free_p > 0 ? free_mass * free_mass / free_p : 0.0) +
           (n_capped > 0 ? cap * cap * capped_inv_p : 0.0) + held_b;
  }
  double divergence(double s, double cap) const { return model_a() * s * s + model_b(s, cap) - 1.0; }
};

// Blocks of kBlock items are summed with vector lanes and then added up, which keeps the rounding of
// the sums near the block length instead of the range length.
inline constexpr int64_t kBlock = 1024;

template <class P>
ClassSums class_sums(const P& items, int64_t begin, int64_t end, double nu, double s) {
  ClassSums out;
  const P pool = items;  // a local copy: no aliasing with the lane accumulators, so the loop vectorises
  const double cap = pool.cap;
  for (int64_t b = begin; b < end; b += kBlock) {
    const int64_t stop = std::min(end, b + kBlock);
    double free_p = 0, free_pe = 0, free_pe2 = 0, free_gap = 0, capped_inv_p = 0, n_free = 0, n_capped = 0;
#pragma omp simd reduction(+ : free_p, free_pe, free_pe2, free_gap, capped_inv_p, n_free, n_capped)
    for (int64_t k = b; k < stop; ++k) {
      const double read = pool.energy(k), v = read > -kInf ? read : nu;  // an invalid item sits at ν: q = 0
      const double x = v - nu, p = pool.p(k), q = s * p * x;
      const double is_capped = q >= cap ? 1.0 : 0.0, is_free = (q > 0 ? 1.0 : 0.0) - is_capped;  // masks
      free_p += is_free * p;
      free_pe += is_free * p * v;
      free_pe2 += is_free * p * v * v;
      free_gap += is_free * p * x;
      n_free += is_free;
      capped_inv_p += is_capped / p;
      n_capped += is_capped;
    }
    out.free_p += free_p;
    out.free_pe += free_pe;
    out.free_pe2 += free_pe2;
    out.free_gap += free_gap;
    out.capped_inv_p += capped_inv_p;
    out.n_free += static_cast<int64_t>(n_free);
    out.n_capped += static_cast<int64_t>(n_capped);
  }
  return out;
}

template <class P>
void write_weights(const P& pool, int64_t begin, int64_t end, double nu, double s, double* out) {
  const double cap = pool.cap;
#pragma omp simd
  for (int64_t k = begin; k < end; ++k) {
    const double q = s * pool.p(k) * (pool.energy(k) - nu);
    out[k] = q > 0 ? std::min(q, cap) : 0.0;
  }
}

struct Root {
  double nu;
  ClassSums at;          // class sums at nu
  bool written = false;  // the weights at nu were written while evaluating it (speculative write)
};

// No speculative write: solve_threshold only evaluates.
struct NoWrite {
  static constexpr bool enabled = false;
  ClassSums operator()(double) const { return {}; }
};

// Solves h(ν) = mass given h(lo) ≥ mass ≥ h(hi), from ν in [lo, hi]: Newton on the current linear
// piece, safeguarded by the bracket: bisection when the step leaves it, or when two Newton steps in a
// row failed to halve the step before (creeping across many small pieces). Stops at the exact root of a
// piece, or when h is within the rounding of its sums. eval(ν) returns ClassSums.
//
// With a write(ν) (eval that also writes the weights at ν), a Newton step that is expected to land on
// the final piece is evaluated by write instead, so the last pass over the data also writes the
// result (Root::written): expected when the items that changed class over the last step, scaled by
// the ratio of this step to the last, are fewer than kSpeculate (Newton converges quadratically).
// at_start: the class sums at the starting ν when the caller has them.
template <class Eval, class Write = NoWrite>
Root solve_threshold(const Eval& eval, double s, double cap, double mass, double lo, double hi, double nu,
                     const Write& write = {}, int max_steps = 300, const ClassSums* at_start = nullptr) {
  constexpr double kMassTol = 1e-14;  // relative: about the rounding of the blocked sums
  constexpr double kSpeculate = 0.25;
  ClassSums at = at_start ? *at_start : eval(nu);
  double last_step = kInf, step_before_last = kInf, last_changes = kInf;
  bool last_newton = false, written = false;
  for (int i = 0; i < max_steps; ++i) {
    const double h = at.mass(s, cap);
    if (std::abs(h - mass) <= kMassTol * mass) break;
    (h > mass ? lo : hi) = nu;
    double next = at.piece_root(s, cap, mass);
    const bool creeping = last_newton && std::abs(next - nu) > 0.5 * std::abs(step_before_last);
    const bool newton = lo < next && next < hi && !creeping;
    if (!newton) next = lo + 0.5 * (hi - lo);
    if (!(lo < next && next < hi)) break;  // bracket down to adjacent doubles
    const bool speculate = Write::enabled && newton && last_newton &&
                           last_changes * std::abs(next - nu) < kSpeculate * std::abs(last_step);
    const ClassSums there = speculate ? write(next) : eval(next);
    step_before_last = last_step;
    last_step = next - nu;
    last_newton = newton;
    last_changes = static_cast<double>(std::abs(there.n_free - at.n_free) + std::abs(there.n_capped - at.n_capped) +
                                       std::abs(there.n_held - at.n_held)) + 1.0;
    const bool exact = newton && there.same_classes(at);
    nu = next;
    at = there;
    written = speculate;
    if (exact) break;
  }
  return {nu, at, written};
}

// Constrained form: finds s with D(s) = r by steps of the local quadratic model, safeguarded by the
// bracket [s_lo, s_hi] (expanding by 4 while one side is open, geometric bisection otherwise).
// solve_at(s, ν_start) returns the threshold Root at scale s. Requires r above the s → 0 divergence.
// Stops at the s → ∞ solution when the model is flat (V_F = 0) below r: the radius is inactive.
struct Scaled {
  double s;
  Root root;
};

template <class SolveAt>
Scaled solve_radius(const SolveAt& solve_at, double r, double cap, double s, double nu) {
  constexpr int kMaxSteps = 200;
  constexpr double kTol = 1e-12;
  double s_lo = 0, s_hi = kInf;
  Root root = solve_at(s, nu);
  for (int i = 0; i < kMaxSteps; ++i) {
    const double a = root.at.model_a(), b = root.at.model_b(s, cap), d = a * s * s + b - 1.0;
    if (std::abs(d - r) <= kTol * (1.0 + r)) break;
    if (d < r) {
      if (a == 0) break;
      s_lo = s;
    } else {
      s_hi = s;
    }
    double next = (a > 0 && r + 1.0 > b) ? std::sqrt((r + 1.0 - b) / a) : kInf;
    const bool model = s_lo < next && next < s_hi;
    if (!model) next = s_hi == kInf ? 4 * s : (s_lo == 0 ? s / 4 : std::sqrt(s_lo * s_hi));
    if (next == s || !(next < kInf)) break;
    const Root there = solve_at(next, root.nu);
    // Same classes after a model step: the model was exact (or flat up to rounding, V_F ≈ 0 on ties).
    const bool exact = model && there.at.same_classes(root.at);
    s = next;
    root = there;
    if (exact) break;
  }
  return {s, root};
}

// Bracket of ν for a pool with valid energies in [e_min, e_max], smallest reference mass p_min, and
// (for chi2_global) largest group cap held_max: below lo every item is capped or holds ≥ held_max.
inline double lower_threshold(double e_min, double p_min, double s, double cap, double held_max) {
  const double need = std::max(cap < kInf ? cap : 0.0, held_max);
  return e_min - need / (s * p_min);
}

// Outcome of a solve: ok, or why there is no solution. bad_item: `bad` is the first item with a +inf
// energy or a reference mass that is not positive and finite. cap_infeasible / group_cap_infeasible:
// `value` is the largest mass the caps allow (< 1). radius_infeasible: `value` is the smallest divergence
// the caps allow (> r).
enum class Status { ok, bad_item, no_valid, cap_infeasible, group_cap_infeasible, radius_infeasible };

struct Outcome {
  Status status = Status::ok;
  int64_t bad = -1;
  double value = 0;
};

// Penalised (tau > 0) or constrained (radius ≥ 0) problem with mass 1 on one group [begin, end):
// normalises p over the group's valid items and writes its weights (all 0 when none is valid).
template <typename T, typename R>
Outcome solve_group(Pool<T, R> pool, int64_t begin, int64_t end, double tau, double radius, double* out) {
  std::fill(out + begin, out + end, 0.0);
  int64_t bad = -1;
  const RangeStats st = range_stats(pool, begin, end, &bad);
  if (bad >= 0) return {Status::bad_item, bad, 0};
  if (st.n_valid == 0) return {};
  const double room = pool.cap * static_cast<double>(st.n_valid);
  if (room < 1.0) return {Status::cap_infeasible, -1, room};
  pool.ref_scale = 1.0 / st.ref_sum;
  pool.shift = st.e_max;
  const double p_min = st.ref_min * pool.ref_scale, cap = pool.cap;
  const double e_min = st.e_min - st.e_max, mean = st.mean - st.e_max;  // shifted: the largest is 0

  auto solve_at = [&](const auto& items, double s, double nu_start, double e_min, double e_max) {
    const double lo = std::min(nu_start, lower_threshold(e_min, p_min, s, cap, 0.0));
    auto eval = [&](double nu) { return class_sums(items, begin, end, nu, s); };
    return solve_threshold(eval, s, cap, 1.0, lo, e_max, std::min(nu_start, e_max));
  };
  if (tau > 0) {
    const double s = 0.5 / tau;
    // ν0 = ē − 2τ: the root when every item is free, and at or below the root of the uncapped h.
    const Root root = solve_at(pool, s, mean - 2 * tau, e_min, 0.0);
    write_weights(pool, begin, end, root.nu, s, out);
    return {};
  }

  // s → 0 limit: q_k = min(c, λ p_k) = clip(1 · p_k (0 − ν), 0, c) with ν = −λ; q = p without cap.
  const auto flat = pool.zero_energy();
  const Root least = solve_at(flat, 1.0, -1.0, 0.0, 0.0);
  const double d_min = least.at.divergence(1.0, cap);
  if (radius <= d_min * (1 + 1e-12) + 1e-15) {
    if (radius < d_min * (1 - 1e-12) - 1e-15) return {Status::radius_infeasible, -1, d_min};
    write_weights(flat, begin, end, least.nu, 1.0, out);
    return {};
  }
  // Start from the all-free model D = s² Var_p(e) + d_min.
  const double var = st.m2 / st.ref_sum;
  const double s0 = var > 0 ? std::sqrt((radius - d_min) / var) : 1.0;
  auto at_scale = [&](double s, double nu_start) { return solve_at(pool, s, nu_start, e_min, 0.0); };
  const Scaled sol = solve_radius(at_scale, radius, cap, s0, mean - 1.0 / s0);
  write_weights(pool, begin, end, sol.root.nu, sol.s, out);
  return {};
}

}  // namespace lark
