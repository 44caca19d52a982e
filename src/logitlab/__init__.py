"""logitlab: the output layer of a model, as a library and a lab.

Scores (logits) become a distribution through a normalizer (softmax and its alternatives);
a loss D(target ‖ model) trains it. logitlab implements the choices side by side, with the
theory that explains why softmax + cross-entropy (maximum log-likelihood) is the default.
"""

from logitlab import registry
from logitlab.registry import get_loss, get_normalizer, make_objective, valid_pairs

# --- sparse maps ---
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
from logitlab.nn.sparse import Entmax, Entmax15, Sparsemax

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "registry",
    "get_loss",
    "get_normalizer",
    "make_objective",
    "valid_pairs",
    # sparse maps
    "sparsemax",
    "gini_regularizer",
    "entmax15",
    "entmax",
    "entmax_with_info",
    "EntmaxInfo",
    "ConvergenceError",
    "tsallis15_regularizer",
    "tsallis_regularizer",
    "Sparsemax",
    "Entmax15",
    "Entmax",
]
