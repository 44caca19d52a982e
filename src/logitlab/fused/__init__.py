"""Linear head + loss without materializing the (N, V) logits: impl="auto" | "chunked" | "naive"."""

from logitlab.fused.cross_entropy import linear_cross_entropy
from logitlab.fused.divergence import linear_divergence_loss

__all__ = ["linear_cross_entropy", "linear_divergence_loss"]
