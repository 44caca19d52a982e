"""logitlab: the output layer of a model, as a library and a lab.

Scores (logits) become a distribution through a normalizer (softmax and its alternatives);
a loss D(target ‖ model) trains it. logitlab implements the choices side by side, with the
theory that explains why softmax + cross-entropy (maximum log-likelihood) is the default.
"""

from logitlab import registry
from logitlab.registry import get_loss, get_normalizer, make_objective, valid_pairs

# --- dense normalizers ---
from logitlab.normalizers.sigmoid import log_sigmoid, sigmoid
from logitlab.normalizers.softmax import log_softmax, shannon_negentropy, softmax
from logitlab.normalizers.spherical import spherical_softmax, taylor_softmax
from logitlab.normalizers.standard import standard_normalize
# --- end dense normalizers ---
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
    # dense normalizers
    "softmax",
    "log_softmax",
    "shannon_negentropy",
    "sigmoid",
    "log_sigmoid",
    "standard_normalize",
    "spherical_softmax",
    "taylor_softmax",
    # fused and distributed (scale)
    "fused",
    "distributed",
    "linear_cross_entropy",
    "linear_divergence_loss",
]

# cross-entropy family
from logitlab.losses.cross_entropy import (  # noqa: E402
    binary_cross_entropy_with_logits,
    cross_entropy,
    log_likelihood,
    nll_loss,
)
from logitlab.losses.focal import focal_loss, poly1_cross_entropy  # noqa: E402
from logitlab.nn.cross_entropy import (  # noqa: E402
    BCEWithLogitsLoss,
    CrossEntropyLoss,
    FocalLoss,
    NLLLoss,
    Poly1CrossEntropyLoss,
)

__all__ += [
    "cross_entropy", "nll_loss", "binary_cross_entropy_with_logits", "log_likelihood",
    "focal_loss", "poly1_cross_entropy",
    "CrossEntropyLoss", "NLLLoss", "BCEWithLogitsLoss", "FocalLoss", "Poly1CrossEntropyLoss",
]

# --- divergences, Fenchel–Young losses, information (div) ---
from logitlab.functional import (  # noqa: E402
    divergence_loss,
    kl_divergence,
    reverse_kl_divergence,
    js_divergence,
    alpha_divergence,
    renyi_divergence,
    total_variation,
    hellinger_distance,
    brier_loss,
    fenchel_young_loss,
    sparsemax_loss,
    entmax_loss,
    entmax15_loss,
    entropy,
    cross_entropy_between,
    kl_between,
    decompose,
    Decomposition,
)
from logitlab.nn import (  # noqa: E402
    DivergenceLoss,
    KLDivergenceLoss,
    ReverseKLDivergenceLoss,
    JSDivergenceLoss,
    AlphaDivergenceLoss,
    RenyiDivergenceLoss,
    TotalVariationLoss,
    HellingerLoss,
    BrierLoss,
    FenchelYoungLoss,
    SparsemaxLoss,
    EntmaxLoss,
    Entmax15Loss,
)
from logitlab import information  # noqa: E402
__all__ += [
    "divergence_loss",
    "kl_divergence",
    "reverse_kl_divergence",
    "js_divergence",
    "alpha_divergence",
    "renyi_divergence",
    "total_variation",
    "hellinger_distance",
    "brier_loss",
    "fenchel_young_loss",
    "sparsemax_loss",
    "entmax_loss",
    "entmax15_loss",
    "entropy",
    "cross_entropy_between",
    "kl_between",
    "decompose",
    "Decomposition",
    "DivergenceLoss",
    "KLDivergenceLoss",
    "ReverseKLDivergenceLoss",
    "JSDivergenceLoss",
    "AlphaDivergenceLoss",
    "RenyiDivergenceLoss",
    "TotalVariationLoss",
    "HellingerLoss",
    "BrierLoss",
    "FenchelYoungLoss",
    "SparsemaxLoss",
    "EntmaxLoss",
    "Entmax15Loss",
    "information",
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

# --- theory: maximum entropy, analysis, structures (theory) ---
from logitlab import analysis, maxent, structured  # noqa: E402
from logitlab.analysis import gradient_sweep, likelihood_underflow, scale_response  # noqa: E402
from logitlab.maxent import MaxEntProblem, MaxEntResult, solve_conditional_maxent, solve_maxent  # noqa: E402
from logitlab.nn.structured import LinearChainCRF  # noqa: E402
from logitlab.structured import (  # noqa: E402
    crf_log_partition,
    crf_marginals,
    linear_chain_crf_nll,
    viterbi_decode,
)

__all__ += [
    "analysis", "maxent", "structured",
    "gradient_sweep", "scale_response", "likelihood_underflow",
    "MaxEntProblem", "MaxEntResult", "solve_maxent", "solve_conditional_maxent",
    "linear_chain_crf_nll", "crf_log_partition", "crf_marginals", "viterbi_decode", "LinearChainCRF",
]
# --- end theory ---

# The study's metrics (public: accuracy, NLL, Brier, calibration); the study itself lives in
# logitlab.experiments and is imported only by the CLI.
from logitlab import metrics  # noqa: E402

__all__ += ["metrics"]
