"""matplotlib, an optional dependency (extras ``eval`` and ``bench``), imported only to draw a plot."""
from __future__ import annotations

import warnings


def pyplot(plots: str):
    """``matplotlib.pyplot`` on the non-interactive Agg backend, or None (with a warning naming
    ``plots``, the files left unwritten, and what to install) when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        warnings.warn(f"matplotlib is not installed (pip install 'lark_fast[eval]'): {plots} not written",
                      stacklevel=3)
        return None
    return plt
