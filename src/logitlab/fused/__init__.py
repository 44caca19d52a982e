"""Linear head + loss without materializing the (N, V) logits: impl="auto" | "native" | "torch" | "composite"."""

from logitlab.fused.cross_entropy import LinearCrossEntropyResult, linear_cross_entropy, linear_cross_entropy_with_lse
from logitlab.fused.divergence import linear_divergence_loss

__all__ = ["linear_cross_entropy", "linear_cross_entropy_with_lse", "LinearCrossEntropyResult",
           "linear_divergence_loss"]
