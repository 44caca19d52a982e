"""The flat functional namespace, like ``torch.nn.functional``: every op of logitlab by name."""

__all__: list[str] = []

# --- dense normalizers ---
from logitlab.normalizers.sigmoid import log_sigmoid, sigmoid
from logitlab.normalizers.softmax import log_softmax, shannon_negentropy, softmax
from logitlab.normalizers.spherical import spherical_softmax, taylor_softmax
from logitlab.normalizers.standard import standard_normalize

__all__ += ["softmax", "log_softmax", "shannon_negentropy", "sigmoid", "log_sigmoid",
            "standard_normalize", "spherical_softmax", "taylor_softmax"]
# --- end dense normalizers ---
# cross-entropy family
from logitlab.losses.cross_entropy import (  # noqa: E402
    binary_cross_entropy_with_logits,
    cross_entropy,
    log_likelihood,
    nll_loss,
)
from logitlab.losses.focal import focal_loss, poly1_cross_entropy  # noqa: E402

__all__ += ["cross_entropy", "nll_loss", "binary_cross_entropy_with_logits", "log_likelihood",
            "focal_loss", "poly1_cross_entropy"]
# --- divergences, Fenchel–Young losses, information (div) ---
from logitlab.losses.divergences import (  # noqa: E402
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
from logitlab.losses.fenchel_young import (  # noqa: E402
    fenchel_young_loss,
    sparsemax_loss,
    entmax_loss,
    entmax15_loss,
)
from logitlab.information import (  # noqa: E402
    entropy,
    cross_entropy_between,
    kl_between,
    decompose,
    Decomposition,
)
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
]
# --- sparse maps ---
from logitlab.normalizers.entmax import (  # noqa: E402
    entmax,
    entmax15,
    entmax_with_info,
    tsallis15_regularizer,
    tsallis_regularizer,
)
from logitlab.normalizers.sparsemax import gini_regularizer, sparsemax  # noqa: E402

__all__ += ["sparsemax", "gini_regularizer", "entmax15", "entmax", "entmax_with_info",
            "tsallis15_regularizer", "tsallis_regularizer"]
# --- structures: the linear-chain CRF (theory) ---
from logitlab.structured import (  # noqa: E402
    crf_log_partition,
    crf_marginals,
    linear_chain_crf_nll,
    viterbi_decode,
)

__all__ += ["linear_chain_crf_nll", "crf_log_partition", "crf_marginals", "viterbi_decode"]
# --- end structures ---
# fused and distributed (scale)
from logitlab.fused import linear_cross_entropy, linear_divergence_loss  # noqa: E402

__all__ += ["linear_cross_entropy", "linear_divergence_loss"]
