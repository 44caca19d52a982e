"""normalizers"""

# --- sparse maps (sparsemax, 1.5-entmax, α-entmax) and their Tsallis regularizers ---
from logitlab.normalizers.entmax import (  # noqa: E402
    ConvergenceError,
    EntmaxInfo,
    entmax,
    entmax15,
    entmax_with_info,
    tsallis15_regularizer,
    tsallis_regularizer,
)
from logitlab.normalizers.sparsemax import gini_regularizer, sparsemax  # noqa: E402

__all__ = [*globals().get("__all__", []),
           "sparsemax", "gini_regularizer", "entmax15", "entmax", "entmax_with_info", "EntmaxInfo",
           "ConvergenceError", "tsallis15_regularizer", "tsallis_regularizer"]
