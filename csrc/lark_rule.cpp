// The scalar LARK rule and the dispatch to the vector kernels of lark_rule_<isa>.cpp (see solvers.hpp).
#include "solvers.hpp"

namespace lark {

LARK_RULE_INSTANCES(, float)
LARK_RULE_INSTANCES(, double)

}  // namespace lark
