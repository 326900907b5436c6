// chi2_global's vector passes for AVX2, 4 doubles a lane (chi2_global_isa.inc).
#include "simd.hpp"
#if LARK_HAVE_X86
#define LARK_ISA chi2_avx2
#define LARK_TARGET LARK_TARGET_AVX2
#define LARK_W 4
#include "chi2_global_isa.inc"
#endif
