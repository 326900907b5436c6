// Python bindings of the fused CPU LM-head statistics (lm_head_stats.hpp): lark_fast._C.lm_head_stats and
// its test hooks. Inputs are numpy arrays read in place (bf16 weights as their uint16 bit patterns); they are
// validated here with the GIL held, then the sweep runs with the GIL released, OpenMP over blocks of token
// groups. A token's results do not depend on its block, so neither on the thread count.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "lm_head_stats.hpp"

namespace py = pybind11;

namespace lark::lm_head {
namespace {

[[noreturn]] void fail(const std::string& message) { throw std::invalid_argument(message); }

// The best kernel this CPU runs, capped by LARK_FAST_SIMD (simd.hpp); AVX2 also needs FMA.
Kernel select_kernel() {
  const Simd level = simd_level();
#if LARK_HAVE_X86
  if (level == Simd::avx512) return avx512::kernel();
  if (level == Simd::avx2 && __builtin_cpu_supports("fma")) return avx2::kernel();
#endif
#if LARK_HAVE_VECTOR
  if (level >= Simd::generic) return generic::kernel();
#endif
  return scalar::kernel();
}

const Kernel& active_kernel() {
  static const Kernel kernel = select_kernel();
  return kernel;
}

// Blocks of token groups per thread: enough for dynamic scheduling to even out a shared machine, few enough
// that each block's pass over the weight serves many tokens (at most kBlockTokens, whose packed hidden
// states a block holds).
constexpr int64_t kBlocksPerThread = 4;
constexpr int64_t kBlockTokens = 256;

std::string dtype_of(const py::array& a) { return std::string(py::str(a.dtype())); }

// Row stride in elements of a 2-D array [rows, cols] whose rows are contiguous.
int64_t row_stride(const py::array& a, const char* name) {
  const int64_t item = static_cast<int64_t>(a.itemsize());
  if (a.shape(1) > 1 && a.strides(1) != item)
    fail(std::string(name) + ": rows must be contiguous (stride 1 along the hidden size)");
  if (a.strides(0) % item != 0 || a.strides(0) < 0) fail(std::string(name) + ": unaligned or negative row stride");
  return a.shape(0) > 1 ? a.strides(0) / item : a.shape(1);
}

struct Outputs {
  float *lse, *nll, *brier, *entropy;
  int32_t* rank;
  float *brier_topk, *entropy_topk, *sketch;
};

// The statistics of token t from its running sums (torch_chunked.py's final step, in double):
//   d_y = z_y - m, e_y = e^{d_y}, s = e_y + r,  lse = m + log s,  nll = log1p(r / e_y) (log s - d_y below -60),
//   brier = expm1(-nll)^2 + r2 / s^2,  entropy = log s - (r1 + e_y d_y) / s  (clamped to [0, log V]),
//   rank = 1 + gt;  with the top K values: p~ = softmax(top), brier_topk = 1 - 2 p~_y [rank <= K] + sum p~^2,
//   entropy_topk = -sum p~ log p~;  sketch = logit_scale (u / s + expm1(-nll) f'_y P[:, y]) / sqrt(k).
void finish_token(const Problem& p, const State& s, int64_t t, bool ignored, const Outputs& out) {
  const int k = p.topk;
  const int64_t ks = p.sketch_dim;
  if (ignored) {
    out.lse[t] = out.nll[t] = out.brier[t] = out.entropy[t] = 0.0f;
    out.rank[t] = 0;
    if (k) out.brier_topk[t] = out.entropy_topk[t] = 0.0f;
    if (ks) std::fill(out.sketch + t * ks, out.sketch + (t + 1) * ks, 0.0f);
    return;
  }
  const double zy = s.zy[t], m = s.m[t], r = s.r[t];
  const double d_y = zy - m, e_y = std::exp(d_y), sum = e_y + r, log_s = std::log(sum);
  const double nll = d_y > -60 ? std::log1p(r / e_y) : log_s - d_y;
  const double q = std::expm1(-nll);  // -(1 - p_y)
  const int32_t rank = 1 + s.gt[t];
  out.lse[t] = static_cast<float>(m + log_s);
  out.nll[t] = static_cast<float>(nll);
  out.brier[t] = static_cast<float>(q * q + s.r2[t] / (sum * sum));
  out.entropy[t] =
      static_cast<float>(std::clamp(log_s - (s.r1[t] + e_y * d_y) / sum, 0.0, std::log(static_cast<double>(p.v))));
  out.rank[t] = rank;
  if (k) {
    const float* top = s.top + t * k;
    const double top_max = *std::max_element(top, top + k);
    double sum_top = 0;
    for (int i = 0; i < k; ++i) sum_top += std::exp(top[i] - top_max);
    const double lse_k = top_max + std::log(sum_top);
    double sum_p2 = 0, sum_plogp = 0;
    for (int i = 0; i < k; ++i) {
      const double log_p = top[i] - lse_k, p_i = std::exp(log_p);
      sum_p2 += p_i * p_i;
      sum_plogp += p_i * log_p;
    }
    const double p_y = rank <= k ? std::exp(zy - lse_k) : 0.0;
    out.brier_topk[t] = static_cast<float>(1 - 2 * p_y + sum_p2);
    out.entropy_topk[t] = static_cast<float>(-sum_plogp);
  }
  if (ks) {
    const double cap = p.softcap, f_y = cap > 0 ? 1 - (zy / cap) * (zy / cap) : 1.0;
    const double scale = p.logit_scale / std::sqrt(static_cast<double>(ks));
    const uint32_t y = static_cast<uint32_t>(p.columns[t]);
    for (int64_t i = 0; i < ks; ++i)
      out.sketch[t * ks + i] = static_cast<float>(
          (s.u[t * ks + i] / sum + q * f_y * rademacher(p.sketch_key, static_cast<uint32_t>(i), y)) * scale);
  }
}

py::tuple lm_head_stats(const py::array& hidden, const py::array& weight, const py::array& targets,
                        const std::optional<py::array>& bias, bool weight_bf16, double logit_scale,
                        std::optional<double> softcap, int topk, int64_t ignore_index, int sketch_dim,
                        int64_t sketch_key, int threads) {
  if (!hidden.dtype().is(py::dtype::of<float>()) || hidden.ndim() != 2)
    fail("hidden: expected a float32 array [N, d], got " + dtype_of(hidden) + " with " +
         std::to_string(hidden.ndim()) + " dimensions");
  const char kind = weight.dtype().kind();
  const bool weight_ok = weight_bf16 ? weight.itemsize() == 2 && (kind == 'u' || kind == 'i')
                                     : weight.dtype().is(py::dtype::of<float>());
  if (!weight_ok || weight.ndim() != 2)
    fail(std::string("weight: expected a ") + (weight_bf16 ? "uint16 (bf16 bits)" : "float32") + " array [V, d], got " +
         dtype_of(weight) + " with " + std::to_string(weight.ndim()) + " dimensions");
  const int64_t n = hidden.shape(0), d = hidden.shape(1), v = weight.shape(0);
  if (weight.shape(1) != d)
    fail("weight: hidden size " + std::to_string(weight.shape(1)) + " does not match hidden's " + std::to_string(d));
  if (v == 0) fail("weight: empty vocabulary");
  if (!targets.dtype().is(py::dtype::of<int64_t>()) || targets.ndim() != 1 || targets.shape(0) != n ||
      !(targets.flags() & py::array::c_style))
    fail("targets: expected a contiguous int64 array [" + std::to_string(n) + "], got " + dtype_of(targets));
  if (bias && (!bias->dtype().is(py::dtype::of<float>()) || bias->ndim() != 1 || bias->shape(0) != v ||
               !(bias->flags() & py::array::c_style)))
    fail("bias: expected a contiguous float32 array [" + std::to_string(v) + "]");
  if (!(logit_scale > 0 && std::isfinite(logit_scale))) fail("logit_scale: expected a positive number");
  if (softcap && !(*softcap > 0 && std::isfinite(*softcap))) fail("softcap: expected None or a positive number");
  if (topk < 0 || topk > std::min<int64_t>(kMaxTopk, v))
    fail("topk: expected an int in [0, " + std::to_string(std::min<int64_t>(kMaxTopk, v)) + "], got " +
         std::to_string(topk));
  if (sketch_dim < 0 || sketch_dim > kMaxSketch)
    fail("sketch_dim: expected an int in [0, " + std::to_string(kMaxSketch) + "], got " + std::to_string(sketch_dim));
  if (sketch_key < 0 || sketch_key > 0xffffffffLL) fail("sketch_key: expected a 32-bit unsigned int");
  if (threads < 0) fail("threads: expected >= 0 (0: OpenMP's default)");

  const int64_t n_pad = (n + kMaxGroup - 1) / kMaxGroup * kMaxGroup;
  const int64_t* y = targets.data() ? static_cast<const int64_t*>(targets.data()) : nullptr;
  std::vector<int64_t> columns(static_cast<size_t>(n_pad), 0);
  std::vector<char> ignored(static_cast<size_t>(n), 0);
  for (int64_t t = 0; t < n; ++t) {
    if (y[t] == ignore_index) {
      ignored[t] = 1;
    } else if (y[t] < 0 || y[t] >= v) {
      fail("targets: targets[" + std::to_string(t) + "] = " + std::to_string(y[t]) + " is outside [0, " +
           std::to_string(v) + ") and is not ignore_index (" + std::to_string(ignore_index) + ")");
    } else {
      columns[t] = y[t];
    }
  }

  const Problem problem{static_cast<const float*>(hidden.data()), n ? row_stride(hidden, "hidden") : d,
                        weight.data(), weight_bf16, row_stride(weight, "weight"),
                        bias ? static_cast<const float*>(bias->data()) : nullptr, columns.data(), n, d, v,
                        static_cast<float>(logit_scale), softcap ? static_cast<float>(*softcap) : 0.0f, topk,
                        sketch_dim, static_cast<uint32_t>(sketch_key)};

  std::vector<float> zy(n_pad), m(n_pad), top(n_pad * topk), u(n_pad * sketch_dim);
  std::vector<double> r(n_pad), r1(n_pad), r2(n_pad);
  std::vector<int32_t> gt(n_pad);
  const State state{zy.data(), m.data(), r.data(), r1.data(), r2.data(), gt.data(), top.data(), u.data()};

  py::array_t<float> lse(n), nll(n), brier(n), entropy(n);
  py::array_t<int32_t> rank(n);
  std::optional<py::array_t<float>> brier_topk, entropy_topk, sketch;
  if (topk) brier_topk.emplace(n), entropy_topk.emplace(n);
  if (sketch_dim) sketch.emplace(std::vector<py::ssize_t>{n, sketch_dim});
  const Outputs out{lse.mutable_data(), nll.mutable_data(), brier.mutable_data(), entropy.mutable_data(),
                    rank.mutable_data(), topk ? brier_topk->mutable_data() : nullptr,
                    topk ? entropy_topk->mutable_data() : nullptr, sketch_dim ? sketch->mutable_data() : nullptr};

  const Kernel& kernel = active_kernel();
  const int64_t groups = (n + kernel.group - 1) / kernel.group;
#ifdef _OPENMP
  const int n_threads = threads > 0 ? threads : omp_get_max_threads();
#else
  const int n_threads = 1;
#endif
  const int64_t target_blocks = n_threads * kBlocksPerThread;
  const int64_t per_block =
      std::clamp<int64_t>((groups + target_blocks - 1) / target_blocks, 1, kBlockTokens / kernel.group);
  const int64_t blocks = (groups + per_block - 1) / per_block, block_tokens = per_block * kernel.group;
  std::atomic<bool> failed{false};
  {
    py::gil_scoped_release release;
#pragma omp parallel for schedule(dynamic, 1) num_threads(n_threads)
    for (int64_t b = 0; b < blocks; ++b) {
      try {
        kernel.sweep(problem, state, b * block_tokens, std::min(n, (b + 1) * block_tokens));
      } catch (...) {  // std::bad_alloc: no exception may leave an OpenMP region
        failed = true;
      }
    }
    if (!failed) {
#pragma omp parallel for schedule(static) num_threads(n_threads)
      for (int64_t t = 0; t < n; ++t) finish_token(problem, state, t, ignored[t], out);
    }
  }
  if (failed) throw std::bad_alloc();
  return py::make_tuple(lse, nll, brier, entropy, rank, brier_topk ? py::object(*brier_topk) : py::object(py::none()),
                        entropy_topk ? py::object(*entropy_topk) : py::object(py::none()),
                        sketch ? py::object(*sketch) : py::object(py::none()));
}

py::array_t<float> map_floats(const py::array_t<float, py::array::c_style | py::array::forcecast>& x, MapFn f) {
  py::array_t<float> y(x.size());
  f(x.data(), y.mutable_data(), x.size());
  return y;
}

}  // namespace
}  // namespace lark::lm_head

void register_lm_head_stats(py::module_& m) {
  using namespace lark::lm_head;
  m.def("lm_head_stats", &lm_head_stats, py::arg("hidden"), py::arg("weight"), py::arg("targets"), py::kw_only(),
        py::arg("bias") = py::none(), py::arg("weight_bf16") = false, py::arg("logit_scale") = 1.0,
        py::arg("softcap") = py::none(), py::arg("topk") = 0, py::arg("ignore_index") = -100,
        py::arg("sketch_dim") = 0, py::arg("sketch_key") = 0, py::arg("threads") = 0,
        "Fused LM-head statistics on the CPU: (lse, nll, brier, entropy, rank, brier_topk, entropy_topk, sketch); "
        "see lark_fast.kernels.lm_head_stats.cpu.");
  m.def("lm_head_simd", [] { return std::string(lark::simd_name(active_kernel().simd)); },
        "The instruction set of the LM-head statistics kernel on this CPU (LARK_FAST_SIMD caps it).");
  m.def("lm_head_exp", [](const py::array_t<float, py::array::c_style | py::array::forcecast>& x) {
    return map_floats(x, active_kernel().exp);
  }, "Test hook: the kernel's vectorised e^x, elementwise over a float32 array.");
  m.def("lm_head_tanh", [](const py::array_t<float, py::array::c_style | py::array::forcecast>& x) {
    return map_floats(x, active_kernel().tanh);
  }, "Test hook: the kernel's vectorised tanh (the soft-cap's), elementwise over a float32 array.");
}
