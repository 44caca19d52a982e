"""The flat functional namespace, like ``torch.nn.functional``: every op of logitlab by name."""

from logitlab.normalizers.softmax import (
    softmax,
    log_softmax,
    shannon_negentropy,
)
from logitlab.normalizers.sigmoid import (
    sigmoid,
    log_sigmoid,
    binary_negentropy,
)
from logitlab.normalizers.standard import (
    standard_normalize,
)
from logitlab.normalizers.spherical import (
    spherical_softmax,
    taylor_softmax,
)
from logitlab.losses.cross_entropy import (
    cross_entropy,
    nll_loss,
    binary_cross_entropy_with_logits,
    log_likelihood,
)
from logitlab.losses.focal import (
    focal_loss,
    poly1_cross_entropy,
)
from logitlab.losses.margin import multiclass_hinge_loss, perceptron_loss
from logitlab.losses.divergences import (
    divergence_loss,
    kl_divergence,
    reverse_kl_divergence,
    js_divergence,
    alpha_divergence,
    renyi_divergence,
    total_variation,
    hellinger_distance,
    brier_loss,
)
from logitlab.losses.fenchel_young import (
    fenchel_young_loss,
    sparsemax_loss,
    entmax_loss,
    entmax15_loss,
    make_fenchel_young_loss,
)
from logitlab.information import (
    entropy,
    cross_entropy_between,
    kl_between,
    decompose,
    Decomposition,
)
from logitlab.normalizers.sparsemax import (
    sparsemax,
    gini_regularizer,
)
from logitlab.normalizers.entmax import (
    entmax15,
    entmax,
    entmax_with_info,
    tsallis15_regularizer,
    tsallis_regularizer,
)
from logitlab.structured import (
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
from logitlab.fused.cross_entropy import (
    LinearCrossEntropyResult,
    linear_cross_entropy,
    linear_cross_entropy_with_lse,
)
from logitlab.fused.divergence import (
    linear_divergence_loss,
)

__all__ = [
    "softmax",
    "log_softmax",
    "shannon_negentropy",
    "sigmoid",
    "log_sigmoid",
    "binary_negentropy",
    "standard_normalize",
    "spherical_softmax",
    "taylor_softmax",
    "cross_entropy",
    "nll_loss",
    "binary_cross_entropy_with_logits",
    "log_likelihood",
    "focal_loss",
    "poly1_cross_entropy",
    "multiclass_hinge_loss",
    "perceptron_loss",
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
    "make_fenchel_young_loss",
    "entropy",
    "cross_entropy_between",
    "kl_between",
    "decompose",
    "Decomposition",
    "sparsemax",
    "gini_regularizer",
    "entmax15",
    "entmax",
    "entmax_with_info",
    "tsallis15_regularizer",
    "tsallis_regularizer",
    "linear_chain_crf_nll",
    "crf_log_partition",
    "crf_marginals",
    "viterbi_decode",
    "chain_forward",
    "crf_entropy",
    "crf_kbest_scores",
    "hmm_log_likelihood",
    "hmm_posteriors",
    "hmm_viterbi",
    "hmm_entropy",
    "linear_cross_entropy",
    "linear_cross_entropy_with_lse",
    "LinearCrossEntropyResult",
    "linear_divergence_loss",
]
