"""The flat functional namespace, like ``torch.nn.functional``: every op of logitlab by name."""

__all__: list[str] = []

# fused and distributed (scale)
from logitlab.fused import linear_cross_entropy, linear_divergence_loss  # noqa: E402

__all__ += ["linear_cross_entropy", "linear_divergence_loss"]
