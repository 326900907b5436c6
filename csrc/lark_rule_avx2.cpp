// The LARK rule's vector kernels for AVX2, 4 doubles a lane (lark_rule_isa.inc).
#include "simd.hpp"
#if LARK_HAVE_X86
#define LARK_ISA avx2
#define LARK_TARGET LARK_TARGET_AVX2
#define LARK_W 4
#define LARK_SHUFFLE 1
#include "lark_rule_isa.inc"
#endif
