// chi2_global: the solver, on the passes of chi2_global_<isa>.cpp or the scalar ones
// (chi2_global.hpp; see solvers.hpp).
#include "solvers.hpp"

namespace lark {

#define LARK_INSTANTIATE(T, R) LARK_CHI2_GLOBAL_INSTANCES(, T, R)
LARK_FOR_EACH_INPUT(LARK_INSTANTIATE)
#undef LARK_INSTANTIATE

}  // namespace lark
