// Python bindings of the host-side hot loops: lark_fast._C.
// Inputs are flat numpy arrays with group offsets (int64, G + 1); float32 and float64 energies are
// read in place (no copy). Work runs with the GIL released, OpenMP over groups.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "lark_rule.hpp"

namespace py = pybind11;

namespace {

using Offsets = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

// Checks offsets describe G >= 0 contiguous groups covering [0, n); returns G.
int64_t check_offsets(const Offsets& offsets, int64_t n) {
  if (offsets.ndim() != 1 || offsets.shape(0) < 1)
    throw std::invalid_argument("offsets: expected a 1-D int64 array of length G + 1 >= 1");
  const int64_t* o = offsets.data();
  const int64_t g = offsets.shape(0) - 1;
  if (o[0] != 0) throw std::invalid_argument("offsets: offsets[0] must be 0, got " + std::to_string(o[0]));
  for (int64_t i = 0; i < g; ++i)
    if (o[i + 1] < o[i])
      throw std::invalid_argument("offsets: not non-decreasing at group " + std::to_string(i) + " (" +
                                  std::to_string(o[i]) + " > " + std::to_string(o[i + 1]) + ")");
  if (o[g] != n)
    throw std::invalid_argument("offsets: offsets[-1] = " + std::to_string(o[g]) +
                                " does not match len(energies) = " + std::to_string(n));
  return g;
}

template <typename T>
py::array_t<double> lark_weights_impl(py::array_t<T, py::array::c_style> energies, const Offsets& offsets,
                                      int64_t B) {
  if (energies.ndim() != 1) throw std::invalid_argument("energies: expected a 1-D array");
  if (B <= 0) throw std::invalid_argument("B: must be >= 1, got " + std::to_string(B));
  const int64_t n = energies.shape(0);
  const int64_t g = check_offsets(offsets, n);
  const T* e = energies.data();
  const int64_t* o = offsets.data();
  for (int64_t i = 0; i < g; ++i)
    for (int64_t k = o[i]; k < o[i + 1]; ++k)
      if (e[k] == INFINITY)
        throw std::invalid_argument("energies: +inf at index " + std::to_string(k) + " (group " +
                                    std::to_string(i) + ")");

  py::array_t<double> weights(n);
  double* w = weights.mutable_data();
  int64_t kmax = 0;
  for (int64_t i = 0; i < g; ++i) kmax = std::max(kmax, o[i + 1] - o[i]);
  {
    py::gil_scoped_release release;
#pragma omp parallel
    {
      std::vector<int64_t> scratch(static_cast<size_t>(kmax));
#pragma omp for schedule(dynamic, 1024)
      for (int64_t i = 0; i < g; ++i)
        lark::lark_rule_group(e + o[i], o[i + 1] - o[i], B, w + o[i], scratch.data());
    }
  }
  return weights;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "lark_fast host-side kernels (C++17, no torch headers)";
  m.def("lark_weights", &lark_weights_impl<double>, py::arg("energies").noconvert(), py::arg("offsets"),
        py::arg("B"));
  m.def("lark_weights", &lark_weights_impl<float>, py::arg("energies").noconvert(), py::arg("offsets"),
        py::arg("B"),
        "LARK rule per group (SPEC §5). energies: float32/float64 [N]; offsets: int64 [G + 1]; "
        "returns float64 weights [N].");
}
