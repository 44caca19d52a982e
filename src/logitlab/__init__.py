"""logitlab: the output layer of a model, as a library and a lab.

Scores (logits) become a distribution through a normalizer (softmax and its alternatives);
a loss D(target ‖ model) trains it. logitlab implements the choices side by side, with the
theory that explains why softmax + cross-entropy (maximum log-likelihood) is the default.
"""

from logitlab import registry
from logitlab.registry import get_loss, get_normalizer, make_objective, valid_pairs

# fused and distributed (scale)
from logitlab import fused, distributed  # noqa: E402
from logitlab.fused import linear_cross_entropy, linear_divergence_loss  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "registry",
    "get_loss",
    "get_normalizer",
    "make_objective",
    "valid_pairs",
    # fused and distributed (scale)
    "fused",
    "distributed",
    "linear_cross_entropy",
    "linear_divergence_loss",
]
