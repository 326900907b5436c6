// chi2_global's vector passes for the baseline instruction set (SSE2 on x86-64, NEON on ARM,
// ...), 2 doubles a lane (chi2_global_isa.inc).
#include "simd.hpp"
#if LARK_HAVE_VECTOR
#define LARK_ISA chi2_generic
#define LARK_TARGET
#define LARK_W 2
#include "chi2_global_isa.inc"
#endif
