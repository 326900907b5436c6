// The LARK rule's vector kernels for the baseline instruction set (SSE2 on x86-64, NEON on ARM, ...),
// 2 doubles a lane (lark_rule_isa.inc).
#include "simd.hpp"
#if LARK_HAVE_VECTOR
#define LARK_ISA generic
#define LARK_TARGET
#define LARK_W 2
#define LARK_SHUFFLE 0
#include "lark_rule_isa.inc"
#endif
