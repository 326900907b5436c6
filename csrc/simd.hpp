// Instruction sets for the vector kernels, chosen once at run time.
//
// The kernels are written once with GCC vector extensions and compiled several times, each copy with a
// function attribute for one instruction set (an X-include: lark_simd.inc, chi2_simd.inc), each copy in
// its own translation unit (lark_rule_<isa>.cpp, chi2_global_<isa>.cpp; setup.py compiles them in
// parallel). On x86-64 the copies are AVX-512 (8 doubles a lane), AVX2 (4) and the baseline SSE2 (2);
// elsewhere (ARM NEON, ...) only the baseline copy exists. The best one the CPU and OS support is used;
// the environment variable LARK_FAST_SIMD = avx512 | avx2 | generic | scalar caps it (tests run every
// path this way). Compilers without GCC vector extensions get the scalar code only. LARK_HAVE_VECTOR
// and LARK_HAVE_X86 may be set to 0 on the command line (-D) to build without those copies.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#ifdef _OPENMP
#include <omp.h>
#endif

#ifndef LARK_HAVE_VECTOR
#if defined(__GNUC__) && !defined(__clang__)
#define LARK_HAVE_VECTOR 1
#else
#define LARK_HAVE_VECTOR 0
#endif
#endif
#ifndef LARK_HAVE_X86
#if LARK_HAVE_VECTOR && defined(__x86_64__)
#define LARK_HAVE_X86 1
#else
#define LARK_HAVE_X86 0
#endif
#endif

namespace lark {

enum class Simd { scalar = 0, generic = 1, avx2 = 2, avx512 = 3 };

inline const char* simd_name(Simd s) {
  switch (s) {
    case Simd::avx512: return "avx512";
    case Simd::avx2: return "avx2";
    case Simd::generic: return "generic";
    case Simd::scalar: break;
  }
  return "scalar";
}

inline Simd detect_simd() {
  Simd best = LARK_HAVE_VECTOR ? Simd::generic : Simd::scalar;
#if LARK_HAVE_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2")) best = Simd::avx2;
  if (__builtin_cpu_supports("avx512f")) best = Simd::avx512;
#endif
  if (const char* cap = std::getenv("LARK_FAST_SIMD")) {
    for (Simd s : {Simd::scalar, Simd::generic, Simd::avx2, Simd::avx512})
      if (std::strcmp(cap, simd_name(s)) == 0 && s < best) best = s;
  }
  return best;
}

// Threads for a pass over n items: at most OpenMP's limit (OMP_NUM_THREADS), and at least
// kItemsPerThread items each: a thread costs a wake-up, and on a busy machine the pass waits for the
// slowest thread to be scheduled, which is only worth it for milliseconds of work per thread.
inline constexpr int64_t kItemsPerThread = int64_t{1} << 22;

inline int threads_for(int64_t n) {
#ifdef _OPENMP
  return static_cast<int>(std::clamp<int64_t>(n / kItemsPerThread, 1, omp_get_max_threads()));
#else
  (void)n;
  return 1;
#endif
}

// The instruction set in use (fixed at the first call).
inline Simd simd_level() {
  static const Simd level = detect_simd();
  return level;
}

}  // namespace lark

// (<immintrin.h> is included by the kernel translation units only: lark_rule_isa.inc, chi2_global_isa.inc.)
#if LARK_HAVE_X86
#define LARK_TARGET_AVX512 __attribute__((target("avx512f")))
#define LARK_TARGET_AVX2 __attribute__((target("avx2")))
#endif
