// chi2_global's vector passes for AVX-512, 8 doubles a lane (chi2_global_isa.inc).
#include "simd.hpp"
#if LARK_HAVE_X86
#define LARK_ISA chi2_avx512
#define LARK_TARGET LARK_TARGET_AVX512
#define LARK_W 8
#include "chi2_global_isa.inc"
#endif
