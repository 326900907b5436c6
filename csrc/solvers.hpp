// The solvers' entry points, as bindings.cpp calls them (no pybind11 here). Each is compiled once, in the
// translation unit named below, for the input types the bindings pass (explicit instantiations); the
// `extern template` declarations here keep the bindings' translation unit from compiling them again:
//   lark_rule.cpp     lark_kernel (the dispatch to the vector kernels, lark_rule_<isa>.cpp), lark_rule_group
//   chi2.cpp          solve_group (chi2_weights), chi2_path_group (chi2_path)
//   chi2_global.cpp   solve_global (on the passes of chi2_global_<isa>.cpp, or the scalar ones)
#pragma once

#include <cstdint>

#include "chi2.hpp"
#include "chi2_global.hpp"
#include "chi2_path.hpp"
#include "lark_rule.hpp"
#include "simd.hpp"

// The instantiations for one input type, each declaration preceded by PREFIX: `extern` here, nothing in
// the translation unit that defines them.
#define LARK_RULE_INSTANCES(PREFIX, T)                                                        \
  PREFIX template int64_t lark_rule_group<T>(const T*, int64_t, int64_t, double*, Ranked<T>*); \
  PREFIX template RangeFn<T> lark_kernel<T>(int64_t, Simd);
#define LARK_CHI2_INSTANCES(PREFIX, T, R)                                                           \
  PREFIX template Outcome solve_group<T, R>(Pool<T, R>, int64_t, int64_t, double, double, double*); \
  PREFIX template int64_t chi2_path_group<T, R>(const Pool<T, R>&, int64_t, int64_t, double*, Weighted*);
#define LARK_CHI2_GLOBAL_INSTANCES(PREFIX, T, R)                                                         \
  PREFIX template Outcome solve_global<T, R>(Pool<T, R>, int64_t, const int64_t*, int64_t, GroupCaps, double, \
                                             double, double*);

namespace lark {

LARK_RULE_INSTANCES(extern, float)
LARK_RULE_INSTANCES(extern, double)
#define LARK_EXTERN(T, R) LARK_CHI2_INSTANCES(extern, T, R) LARK_CHI2_GLOBAL_INSTANCES(extern, T, R)
LARK_FOR_EACH_INPUT(LARK_EXTERN)
#undef LARK_EXTERN

}  // namespace lark
