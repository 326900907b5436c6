// The fused CPU kernel of the LM-head statistics (docs/method.md §2, the head sketch §4).
//
// Per token t with hidden state h_t and target y_t, the logits z_v = softcap(logit_scale (<W_v, h_t> + b_v))
// are produced a vocabulary tile at a time by a register-blocked GEMM and folded into the statistics while
// the tile is in L1: against a running max m (initialised at z_y), with sums over v != y,
//     r  = sum e^{z_v - m}        r1 = sum e^{z_v - m} (z_v - m)        r2 = sum e^{2 (z_v - m)}
//     gt = #{v : z_v > z_y + RANK_TIE max(1, |z_y|)}       top = the K largest z_v (K <= 64, z_y included)
//     u  = sum e^{z_v - m} f'_v P[:, v]   (with a sketch; f'_v = 1 - (z_v / c)^2 with soft-cap c, else 1)
// and a new max m' rescales by a = e^{m - m'}: r -> a r, r2 -> a^2 r2, r1 -> a (r1 + (m - m') r), u -> a u.
// The statistics follow from these in finish_token (lm_head_stats_bind.cpp), as in torch_chunked.py.
//
// Layout: tokens are vector lanes. A group of kGroup tokens (one microtile's width) is swept through the
// whole vocabulary by one thread, every token's logits summed over the hidden size in the same order and
// folded in vocabulary order, so a token's results depend neither on the thread count nor on the other
// tokens of the batch. z_y is summed by the same arithmetic as the GEMM (the same chunks, the same
// multiply-adds, the same transform), so the GEMM's value in the target's column is z_y bit for bit and a
// weight row equal to W[y] ties with it exactly. Each instruction set (simd.hpp) has its own copy of the
// kernel, in its own translation unit (lm_head_stats_<isa>.cpp including lm_head_stats_simd.inc).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "simd.hpp"
#if defined(__x86_64__)
#include <immintrin.h>  // the kernels' lane masks (lm_head_stats_simd.inc)
#endif

namespace lark::lm_head {

inline constexpr float kRankTie = 0x1p-20f;  // RANK_TIE of kernels/lm_head_stats/common.py
inline constexpr int kMaxTopk = 64;
inline constexpr int kMaxSketch = 256;
inline constexpr int64_t kMaxGroup = 32;  // the widest token group of any instruction set

struct Problem {
  const float* hidden;  // [n, d] fp32, rows ld_hidden floats apart
  int64_t ld_hidden;
  const void* weight;  // [v, d] fp32, or bf16 bit patterns (uint16) when weight_bf16; rows ld_weight apart
  bool weight_bf16;
  int64_t ld_weight;
  const float* bias;  // [v] or nullptr
  const int64_t* columns;  // [n] the target's column in [0, v) (an ignored token's: 0, its results are dropped)
  int64_t n, d, v;
  float logit_scale;
  float softcap;  // 0: none
  int topk;
  int sketch_dim;
  uint32_t sketch_key;
};

// Running state of every token, n rounded up to a multiple of kMaxGroup (the padding lanes are computed and
// ignored).
struct State {
  float* zy;
  float* m;
  double* r;
  double* r1;
  double* r2;
  int32_t* gt;
  float* top;  // [n, topk] the topk largest logits, a min-heap per token
  float* u;    // [n, sketch_dim]
};

// Sweeps tokens [t0, t1) (t0 a multiple of the kernel's group) through the vocabulary into state.
using SweepFn = void (*)(const Problem&, const State&, int64_t t0, int64_t t1);
using MapFn = void (*)(const float* x, float* y, int64_t n);

struct Kernel {
  Simd simd;
  int64_t group;  // tokens per group
  SweepFn sweep;
  MapFn exp;   // the vectorised e^x of the sweep (test hook)
  MapFn tanh;  // the vectorised tanh of the soft-cap (test hook)
};

// lowbias32, the hash of kernels/sketch/projection.py.
inline uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  return x ^ (x >> 16);
}

// sqrt(k) P[row, col] of the projection with `key`: +1 or -1.
inline float rademacher(uint32_t key, uint32_t row, uint32_t col) {
  return (mix32(mix32(key ^ row) ^ col) >> 31) ? -1.0f : 1.0f;
}

// Replaces the smallest of the K values of the min-heap h by x (> h[0]).
inline void heap_replace_min(float* h, int k, float x) {
  int i = 0;
  for (;;) {
    int c = 2 * i + 1;
    if (c >= k) break;
    if (c + 1 < k && h[c + 1] < h[c]) ++c;
    if (!(h[c] < x)) break;
    h[i] = h[c];
    i = c;
  }
  h[i] = x;
}

inline float bf16_to_float(uint16_t bits) {
  const uint32_t w = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &w, sizeof f);
  return f;
}

namespace avx512 {
Kernel kernel();
}
namespace avx2 {
Kernel kernel();
}
namespace generic {
Kernel kernel();
}
namespace scalar {
Kernel kernel();
}

}  // namespace lark::lm_head
