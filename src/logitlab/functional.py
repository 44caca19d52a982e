"""The flat functional namespace, like ``torch.nn.functional``: every op of logitlab by name."""

__all__: list[str] = []

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
