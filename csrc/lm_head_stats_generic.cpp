// The LM-head statistics kernel for the architecture's baseline: with GCC vector extensions 4 floats a
// vector (SSE2 on x86-64, NEON on ARM), microtiles of 4 vocabulary rows by 8 tokens; and the scalar copy
// (plain floats, microtiles of 3 rows by 4 tokens) that every compiler builds.
#include <algorithm>
#include <vector>

#include "lm_head_stats.hpp"

#define LARK_TARGET
#define LARK_FMA 0

#if LARK_HAVE_VECTOR
namespace lark::lm_head::generic {
#define LARK_LANES 4
#define LARK_NV 2
#define LARK_MR 4
#define LARK_SIMD Simd::generic
#include "lm_head_stats_simd.inc"
#undef LARK_LANES
#undef LARK_NV
#undef LARK_MR
#undef LARK_SIMD
}  // namespace lark::lm_head::generic
#endif

namespace lark::lm_head::scalar {
#define LARK_LANES 1
#define LARK_NV 4
#define LARK_MR 3
#define LARK_SIMD Simd::scalar
#include "lm_head_stats_simd.inc"
}  // namespace lark::lm_head::scalar
