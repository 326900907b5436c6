// Python bindings of the host-side solvers: lark_fast._C.
// Inputs are flat numpy arrays with group offsets (int64, G + 1). float32 and float64 energies and
// reference masses are read in place (no copy); the output is a new float64 array. Every input is
// validated here, with the GIL held; the work then runs with the GIL released, OpenMP over groups
// (lark_weights, chi2_weights, chi2_path) or over fixed chunks (chi2_global). Errors are ValueErrors
// naming the argument and the first offending group (or index, where there are no groups).
// The solvers are compiled in their own translation units (solvers.hpp): this one compiles pybind11 and
// the validation only.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "solvers.hpp"

namespace py = pybind11;
using namespace lark;

namespace {

using Offsets = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;
using Doubles = py::array_t<double, py::array::c_style | py::array::forcecast>;

std::string num(double v) {
  std::ostringstream s;
  s.precision(17);
  s << v;
  return s.str();
}

[[noreturn]] void fail(const std::string& message) { throw std::invalid_argument(message); }

// Checks offsets describe G >= 0 contiguous groups covering [0, n); returns G.
int64_t check_offsets(const Offsets& offsets, int64_t n) {
  if (offsets.ndim() != 1 || offsets.shape(0) < 1)
    fail("offsets: expected a 1-D int64 array of length G + 1 >= 1");
  const int64_t* o = offsets.data();
  const int64_t g = offsets.shape(0) - 1;
  if (o[0] != 0) fail("offsets: offsets[0] must be 0, got " + std::to_string(o[0]));
  for (int64_t i = 0; i < g; ++i)
    if (o[i + 1] < o[i])
      fail("offsets: not non-decreasing at group " + std::to_string(i) + " (" + std::to_string(o[i]) + " > " +
           std::to_string(o[i + 1]) + ")");
  if (o[g] != n)
    fail("offsets: offsets[-1] = " + std::to_string(o[g]) + " does not match len(energies) = " + std::to_string(n));
  return g;
}

// A 1-D C-contiguous float32 or float64 array of length n (n < 0: any length), by its data pointer.
struct Floats {
  const void* data;
  bool is_double;
};

Floats check_floats(const py::array& a, const char* name, int64_t n) {
  const bool f64 = a.dtype().is(py::dtype::of<double>()), f32 = a.dtype().is(py::dtype::of<float>());
  if (!f64 && !f32) fail(std::string(name) + ": expected float32 or float64, got " + std::string(py::str(a.dtype())));
  if (a.ndim() != 1 || !(a.flags() & py::array::c_style))
    fail(std::string(name) + ": expected a 1-D contiguous array");
  if (n >= 0 && a.shape(0) != n)
    fail(std::string(name) + ": length " + std::to_string(a.shape(0)) + " does not match len(energies) = " +
         std::to_string(n));
  return {a.data(), f64};
}

// Calls f(const T* energies, const R* ref) with T in {float, double} and R in {Uniform, float, double}.
template <class F>
void with_inputs(const Floats& energies, const std::optional<Floats>& ref, F&& f) {
  auto with_ref = [&](auto* e) {
    if (!ref) f(e, static_cast<const Uniform*>(nullptr));
    else if (ref->is_double) f(e, static_cast<const double*>(ref->data));
    else f(e, static_cast<const float*>(ref->data));
  };
  if (energies.is_double) with_ref(static_cast<const double*>(energies.data));
  else with_ref(static_cast<const float*>(energies.data));
}

int64_t group_of(const int64_t* offsets, int64_t n_groups, int64_t index) {
  return std::upper_bound(offsets, offsets + n_groups + 1, index) - offsets - 1;
}

// "(group g)" for a grouped input, "" without groups.
std::string in_group(int64_t g) { return g >= 0 ? " (group " + std::to_string(g) + ")" : ""; }

// The message for item `bad`: a +inf energy, else a reference mass that is not positive and finite.
template <typename T, typename R>
[[noreturn]] void fail_item(const T* e, const R* ref, int64_t bad, int64_t g) {
  if (e[bad] == INFINITY)
    fail("energies: +inf at index " + std::to_string(bad) + in_group(g) +
         "; use a finite score, or NaN / -inf to exclude an item");
  if constexpr (!std::is_same_v<R, Uniform>)
    fail("ref: reference masses must be positive and finite, got ref[" + std::to_string(bad) +
         "] = " + num(static_cast<double>(ref[bad])) + in_group(g));
  fail("internal: no bad item at index " + std::to_string(bad));
}

template <typename T, typename R>
[[noreturn]] void fail_outcome(const Outcome& o, const T* e, const R* ref, int64_t g, double cap, double radius) {
  switch (o.status) {
    case Status::bad_item: fail_item(e, ref, o.bad, g);
    case Status::no_valid: fail("energies: no valid (finite) energy, so no distribution over the items exists");
    case Status::cap_infeasible:
      fail("cap: c = " + num(cap) + " times the number of valid items allows a total of only " + num(o.value) +
           " < 1" + in_group(g));
    case Status::group_cap_infeasible:
      fail("group_cap: the group caps (with cap) allow a total of only " + num(o.value) + " < 1");
    case Status::radius_infeasible:
      fail("radius: r = " + num(radius) + " is below the smallest divergence the caps allow, D = " + num(o.value) +
           in_group(g));
    case Status::ok: break;
  }
  fail("internal: no error to report");
}

// Exactly one of tau (> 0) and radius (≥ 0); cap > 0 (+inf when absent). Returns tau, or 0 with radius.
struct Settings {
  double tau, radius, cap;
};

Settings check_settings(std::optional<double> tau, std::optional<double> radius, std::optional<double> cap) {
  if (tau.has_value() == radius.has_value())
    fail("tau, radius: give exactly one (tau for the penalised form, radius for the constrained form)");
  if (tau && !(*tau > 0 && *tau < kInf)) fail("tau: must be positive and finite, got " + num(*tau));
  if (radius && !(*radius >= 0 && *radius < kInf)) fail("radius: must be >= 0 and finite, got " + num(*radius));
  if (cap && !(*cap > 0)) fail("cap: must be positive, got " + num(*cap));
  return {tau.value_or(0.0), radius.value_or(0.0), cap.value_or(kInf)};
}

std::optional<Floats> check_ref(const std::optional<py::array>& ref, int64_t n) {
  if (!ref) return std::nullopt;
  return check_floats(*ref, "ref", n);
}

// The output: `out` when given (validated: float64, 1-D, contiguous, writeable, length n), else a new array.
py::array_t<double> output_array(const std::optional<py::array>& out, int64_t n) {
  if (!out) return py::array_t<double>(n);
  if (!out->dtype().is(py::dtype::of<double>()))
    fail("out: expected float64, got " + std::string(py::str(out->dtype())));
  if (out->ndim() != 1 || !(out->flags() & py::array::c_style) || !out->writeable())
    fail("out: expected a writeable 1-D contiguous array");
  if (out->shape(0) != n)
    fail("out: length " + std::to_string(out->shape(0)) + " does not match len(energies) = " + std::to_string(n));
  return py::reinterpret_borrow<py::array_t<double>>(*out);
}

// Groups per OpenMP work item of lark_weights (a multiple of every kernel's lane count).
constexpr int64_t kLarkChunk = 2048;

py::array_t<double> lark_weights(const py::array& energies, const Offsets& offsets, int64_t B,
                                 const std::optional<py::array>& out) {
  if (B <= 0) fail("B: must be >= 1, got " + std::to_string(B));
  const Floats ef = check_floats(energies, "energies", -1);
  const int64_t n = energies.shape(0), n_groups = check_offsets(offsets, n);
  const int64_t* o = offsets.data();
  py::array_t<double> weights = output_array(out, n);
  double* w = weights.mutable_data();
  int64_t scratch = kCascadeMax;  // lark_rule_group keeps every valid item only above kCascadeMax
  if (B + 1 > kCascadeMax)
    for (int64_t g = 0; g < n_groups; ++g) scratch = std::max(scratch, o[g + 1] - o[g]);
  const int64_t n_chunks = (n_groups + kLarkChunk - 1) / kLarkChunk;
  const bool stream = n * static_cast<int64_t>(sizeof(double)) > kStreamBytes;
  with_inputs(ef, std::nullopt, [&](auto* e, auto*) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(e)>>;
    const RangeFn<T> kernel = lark_kernel<T>(B);
    int64_t first = n_groups, bad = -1;
    {
      py::gil_scoped_release release;
#pragma omp parallel reduction(min : first) num_threads(threads_for(n))
      {
        std::vector<Ranked<T>> ranked(static_cast<size_t>(scratch));
#pragma omp for schedule(dynamic, 1)
        for (int64_t c = 0; c < n_chunks; ++c) {
          const int64_t g =
              kernel(e, o, c * kLarkChunk, std::min(n_groups, (c + 1) * kLarkChunk), B, w, ranked.data(), stream);
          if (g >= 0) first = std::min(first, g);
        }
      }
      if (first < n_groups) {
        std::vector<Ranked<T>> ranked(static_cast<size_t>(std::max(scratch, o[first + 1] - o[first])));
        bad = o[first] + lark_rule_group(e + o[first], o[first + 1] - o[first], B, w + o[first], ranked.data());
      }
    }
    if (bad >= 0) fail_item(e, static_cast<const Uniform*>(nullptr), bad, first);
  });
  return weights;
}

py::array_t<double> chi2_weights(const py::array& energies, const Offsets& offsets, std::optional<double> tau,
                                 std::optional<double> radius, const std::optional<py::array>& ref,
                                 std::optional<double> cap) {
  const Settings set = check_settings(tau, radius, cap);
  const Floats ef = check_floats(energies, "energies", -1);
  const int64_t n = energies.shape(0), n_groups = check_offsets(offsets, n);
  const std::optional<Floats> rf = check_ref(ref, n);
  const int64_t* o = offsets.data();
  py::array_t<double> weights(n);
  double* w = weights.mutable_data();
  with_inputs(ef, rf, [&](auto* e, auto* r) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(e)>>;
    using R = std::remove_const_t<std::remove_pointer_t<decltype(r)>>;
    const Pool<T, R> pool{e, r, 1.0, set.cap};
    int64_t first = n_groups;
    Outcome outcome;
    {
      py::gil_scoped_release release;
#pragma omp parallel for schedule(dynamic, 256) reduction(min : first)
      for (int64_t g = 0; g < n_groups; ++g)
        if (solve_group(pool, o[g], o[g + 1], set.tau, set.radius, w).status != Status::ok) first = std::min(first, g);
      if (first < n_groups) outcome = solve_group(pool, o[first], o[first + 1], set.tau, set.radius, w);
    }
    if (first < n_groups) fail_outcome(outcome, e, r, first, set.cap, set.radius);
  });
  return weights;
}

py::array_t<double> chi2_global(const py::array& energies, std::optional<double> tau, std::optional<double> radius,
                                const std::optional<py::array>& ref, std::optional<double> cap,
                                const std::optional<Offsets>& offsets, const std::optional<Doubles>& group_cap) {
  const Settings set = check_settings(tau, radius, cap);
  const Floats ef = check_floats(energies, "energies", -1);
  const int64_t n = energies.shape(0);
  const std::optional<Floats> rf = check_ref(ref, n);
  const int64_t n_groups = offsets ? check_offsets(*offsets, n) : -1;
  const int64_t* o = offsets ? offsets->data() : nullptr;
  GroupCaps caps;
  if (group_cap) {
    if (!offsets) fail("group_cap: needs offsets (the groups it caps)");
    const int64_t m = group_cap->ndim() == 1 ? group_cap->shape(0) : -1;
    if (m != 1 && m != n_groups)
      fail("group_cap: expected a scalar or one value per group (" + std::to_string(n_groups) + "), got shape " +
           std::string(py::str(group_cap->attr("shape"))));
    const double* c = group_cap->data();
    for (int64_t g = 0; g < m; ++g)
      if (!(c[g] >= 0 && c[g] < kInf))
        fail("group_cap: must be >= 0 and finite, got " + num(c[g]) + (m > 1 ? in_group(g) : ""));
    caps = {c, m > 1};
  }
  py::array_t<double> weights(n);
  double* w = weights.mutable_data();
  with_inputs(ef, rf, [&](auto* e, auto* r) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(e)>>;
    using R = std::remove_const_t<std::remove_pointer_t<decltype(r)>>;
    Outcome outcome;
    {
      py::gil_scoped_release release;
      outcome = solve_global(Pool<T, R>{e, r, 1.0, set.cap}, n, o, n_groups, caps, set.tau, set.radius, w);
    }
    if (outcome.status != Status::ok) {
      const int64_t g = (outcome.bad >= 0 && o) ? group_of(o, n_groups, outcome.bad) : -1;
      fail_outcome(outcome, e, r, g, set.cap, set.radius);
    }
  });
  return weights;
}

py::array_t<double> chi2_path(const py::array& energies, const Offsets& offsets,
                              const std::optional<py::array>& ref) {
  const Floats ef = check_floats(energies, "energies", -1);
  const int64_t n = energies.shape(0), n_groups = check_offsets(offsets, n);
  const std::optional<Floats> rf = check_ref(ref, n);
  const int64_t* o = offsets.data();
  int64_t scratch = 0;
  for (int64_t g = 0; g < n_groups; ++g) scratch = std::max(scratch, o[g + 1] - o[g]);
  py::array_t<double> tau(n);
  double* t = tau.mutable_data();
  with_inputs(ef, rf, [&](auto* e, auto* r) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(e)>>;
    using R = std::remove_const_t<std::remove_pointer_t<decltype(r)>>;
    const Pool<T, R> pool{e, r, 1.0, kInf};
    int64_t first = n_groups, bad = -1;
    {
      py::gil_scoped_release release;
#pragma omp parallel reduction(min : first)
      {
        std::vector<Weighted> sorted(static_cast<size_t>(scratch));
#pragma omp for schedule(dynamic, 1024)
        for (int64_t g = 0; g < n_groups; ++g)
          if (chi2_path_group(pool, o[g], o[g + 1], t + o[g], sorted.data()) >= 0) first = std::min(first, g);
      }
      if (first < n_groups) {
        std::vector<Weighted> sorted(static_cast<size_t>(scratch));
        bad = chi2_path_group(pool, o[first], o[first + 1], t + o[first], sorted.data());
      }
    }
    if (bad >= 0) fail_item(e, r, bad, first);
  });
  return tau;
}

}  // namespace

void register_lm_head_stats(py::module_& m);  // lm_head_stats_bind.cpp

PYBIND11_MODULE(_C, m) {
  m.doc() = "lark_fast host-side solvers (C++17, no torch headers); see lark_fast.solver";
  m.def("lark_weights", &lark_weights, py::arg("energies"), py::arg("offsets"), py::arg("B"), py::kw_only(),
        py::arg("out") = py::none());
  m.def("simd", [] { return std::string(simd_name(simd_level())); },
        "The vector instruction set the kernels use on this CPU (LARK_FAST_SIMD caps it).");
  m.def("chi2_weights", &chi2_weights, py::arg("energies"), py::arg("offsets"), py::kw_only(), py::arg("tau"),
        py::arg("radius"), py::arg("ref"), py::arg("cap"));
  m.def("chi2_global", &chi2_global, py::arg("energies"), py::kw_only(), py::arg("tau"), py::arg("radius"),
        py::arg("ref"), py::arg("cap"), py::arg("offsets"), py::arg("group_cap"));
  m.def("chi2_path", &chi2_path, py::arg("energies"), py::arg("offsets"), py::kw_only(), py::arg("ref"));
  register_lm_head_stats(m);
}
