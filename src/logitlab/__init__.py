"""logitlab: the output layer of a model, as a library and a lab.

Scores (logits) become a distribution through a normalizer (softmax and its alternatives); a
loss D(target ‖ model) trains it. logitlab implements the choices side by side under one set
of conventions, with the theory that explains why softmax + cross-entropy (maximum
log-likelihood) is the default, and a study that measures them.

Layout of the public API:

* the functional ops, here and in :mod:`logitlab.functional`;
* their ``nn.Module`` wrappers in :mod:`logitlab.nn`;
* :mod:`logitlab.registry` (name → spec tables), :mod:`logitlab.metrics`,
  :mod:`logitlab.information`, :mod:`logitlab.maxent`, :mod:`logitlab.analysis`,
  :mod:`logitlab.structured`, :mod:`logitlab.fused`, :mod:`logitlab.distributed`.
"""

from logitlab import (
    analysis,
    distributed,
    functional,
    fused,
    information,
    maxent,
    metrics,
    nn,
    registry,
    structured,
)
from logitlab.analysis import gradient_sweep, likelihood_underflow, scale_response
from logitlab.functional import (
    # normalizers
    softmax,
    log_softmax,
    sigmoid,
    log_sigmoid,
    standard_normalize,
    spherical_softmax,
    taylor_softmax,
    sparsemax,
    entmax15,
    entmax,
    entmax_with_info,
    shannon_negentropy,
    gini_regularizer,
    tsallis15_regularizer,
    tsallis_regularizer,
    binary_negentropy,
    # cross-entropy family
    cross_entropy,
    nll_loss,
    binary_cross_entropy_with_logits,
    log_likelihood,
    focal_loss,
    poly1_cross_entropy,
    # margin losses on scores
    multiclass_hinge_loss,
    perceptron_loss,
    # divergences D(target ‖ model)
    divergence_loss,
    kl_divergence,
    reverse_kl_divergence,
    js_divergence,
    alpha_divergence,
    renyi_divergence,
    total_variation,
    hellinger_distance,
    brier_loss,
    # Fenchel–Young losses
    fenchel_young_loss,
    sparsemax_loss,
    entmax_loss,
    entmax15_loss,
    make_fenchel_young_loss,
    # information theory
    entropy,
    cross_entropy_between,
    kl_between,
    decompose,
    Decomposition,
    # scale
    linear_cross_entropy,
    linear_cross_entropy_with_lse,
    LinearCrossEntropyResult,
    linear_divergence_loss,
    # structures
    linear_chain_crf_nll,
    crf_log_partition,
    crf_marginals,
    viterbi_decode,
    chain_forward,
    crf_entropy,
    crf_kbest_scores,
    hmm_log_likelihood,
    hmm_posteriors,
    hmm_viterbi,
    hmm_entropy,
)
from logitlab.maxent import MaxEntProblem, MaxEntResult, solve_conditional_maxent, solve_maxent
from logitlab.normalizers.entmax import ConvergenceError, EntmaxInfo
from logitlab.registry import get_loss, get_normalizer, make_objective, valid_pairs

__version__ = "0.1.0"

__all__ = [
    "__version__",
    # submodules
    "analysis", "distributed", "functional", "fused", "information", "maxent", "metrics", "nn",
    "registry", "structured",
    # registry
    "get_loss", "get_normalizer", "make_objective", "valid_pairs",
    # normalizers
    "softmax", "log_softmax", "sigmoid", "log_sigmoid", "standard_normalize", "spherical_softmax",
    "taylor_softmax", "sparsemax", "entmax15", "entmax", "entmax_with_info", "shannon_negentropy",
    "gini_regularizer", "tsallis15_regularizer", "tsallis_regularizer", "binary_negentropy",
    # cross-entropy family
    "cross_entropy", "nll_loss", "binary_cross_entropy_with_logits", "log_likelihood",
    "focal_loss", "poly1_cross_entropy",
    # margin losses on scores
    "multiclass_hinge_loss", "perceptron_loss",
    # divergences D(target ‖ model)
    "divergence_loss", "kl_divergence", "reverse_kl_divergence", "js_divergence",
    "alpha_divergence", "renyi_divergence", "total_variation", "hellinger_distance", "brier_loss",
    # Fenchel–Young losses
    "fenchel_young_loss", "sparsemax_loss", "entmax_loss", "entmax15_loss", "make_fenchel_young_loss",
    # information theory
    "entropy", "cross_entropy_between", "kl_between", "decompose", "Decomposition",
    # scale
    "linear_cross_entropy", "linear_cross_entropy_with_lse", "LinearCrossEntropyResult", "linear_divergence_loss",
    # structures
    "linear_chain_crf_nll", "crf_log_partition", "crf_marginals", "viterbi_decode",
    "chain_forward", "crf_entropy", "crf_kbest_scores",
    "hmm_log_likelihood", "hmm_posteriors", "hmm_viterbi", "hmm_entropy",
    "ConvergenceError", "EntmaxInfo",
    # theory
    "MaxEntProblem", "MaxEntResult", "solve_maxent", "solve_conditional_maxent",
    "gradient_sweep", "scale_response", "likelihood_underflow",
]
