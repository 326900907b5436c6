// The χ² solvers of chi2_weights and chi2_path, one group at a time (chi2.hpp, chi2_path.hpp; see
// solvers.hpp).
#include "solvers.hpp"

namespace lark {

#define LARK_INSTANTIATE(T, R) LARK_CHI2_INSTANCES(, T, R)
LARK_FOR_EACH_INPUT(LARK_INSTANTIATE)
#undef LARK_INSTANTIATE

}  // namespace lark
