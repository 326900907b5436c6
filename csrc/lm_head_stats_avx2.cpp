// The LM-head statistics kernel for AVX2 with FMA: 8 floats a vector, microtiles of 6 vocabulary rows by
// 16 tokens (12 accumulators).
#include <algorithm>
#include <vector>

#include "lm_head_stats.hpp"

#if LARK_HAVE_X86
namespace lark::lm_head::avx2 {
#define LARK_TARGET __attribute__((target("avx2,fma")))
#define LARK_LANES 8
#define LARK_NV 2
#define LARK_MR 6
#define LARK_FMA 1
#define LARK_SIMD Simd::avx2
#include "lm_head_stats_simd.inc"
}  // namespace lark::lm_head::avx2
#endif
