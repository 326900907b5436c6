// The LM-head statistics kernel for AVX-512F: 16 floats a vector, microtiles of 12 vocabulary rows by
// 32 tokens (24 accumulators).
#include <algorithm>
#include <vector>

#include "lm_head_stats.hpp"

#if LARK_HAVE_X86
namespace lark::lm_head::avx512 {
#define LARK_TARGET __attribute__((target("avx512f,avx2,fma")))
#define LARK_LANES 16
#define LARK_NV 2
#define LARK_MR 12
#define LARK_FMA 1
#define LARK_SIMD Simd::avx512
#include "lm_head_stats_simd.inc"
}  // namespace lark::lm_head::avx512
#endif
