"""lark_fast: exact, fast LARK selection of teacher reasoning trajectories for student distillation."""
__version__ = "0.1.0"

from . import ops, solver  # noqa: E402

__all__ = ["ops", "solver", "__version__"]
