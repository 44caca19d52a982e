"""The flat functional namespace, like ``torch.nn.functional``: every op of logitlab by name."""

__all__: list[str] = []

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
