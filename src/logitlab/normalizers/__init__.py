"""Normalizers: maps from scores (logits) to distributions, each with its Fenchel–Young Ω.

Every map has the signature ``fn(logits, *, dim=-1, **params)``; ``-inf`` marks an excluded
class (probability exactly 0), and a row of all ``-inf`` maps to an all-zero row.
"""

__all__: list[str] = []

# --- dense normalizers: softmax, sigmoid, standard, spherical, taylor ---
from logitlab.normalizers.sigmoid import log_sigmoid, sigmoid
from logitlab.normalizers.softmax import log_softmax, shannon_negentropy, softmax
from logitlab.normalizers.spherical import spherical_softmax, taylor_softmax
from logitlab.normalizers.standard import standard_normalize

__all__ += ["softmax", "log_softmax", "shannon_negentropy", "sigmoid", "log_sigmoid",
            "standard_normalize", "spherical_softmax", "taylor_softmax"]
# --- end dense normalizers ---

# --- sparse maps: sparsemax, 1.5-entmax, α-entmax and their Tsallis regularizers ---
from logitlab.normalizers.entmax import (
    ConvergenceError,
    EntmaxInfo,
    entmax,
    entmax15,
    entmax_with_info,
    tsallis15_regularizer,
    tsallis_regularizer,
)
from logitlab.normalizers.sparsemax import gini_regularizer, sparsemax

__all__ += ["sparsemax", "gini_regularizer", "entmax15", "entmax", "entmax_with_info", "EntmaxInfo",
            "ConvergenceError", "tsallis15_regularizer", "tsallis_regularizer"]
# --- end sparse maps ---
