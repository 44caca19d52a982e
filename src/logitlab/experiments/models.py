"""The study's models: softmax regression (one linear layer) and a one-hidden-layer MLP.

Both end in an ``nn.Linear`` that produces the scores (logits); :func:`output_layer` returns it,
so the runner can record its gradient norm.
"""

from __future__ import annotations

from torch import nn

__all__ = ["build_model", "output_layer"]


def build_model(kind: str, in_features: int, num_classes: int, *, hidden: int = 64) -> nn.Module:
    """A fresh model, initialized from torch's current random state (seed it first).

    Example:
        >>> build_model("mlp", 4, 3, hidden=8)
        Sequential(
          (0): Linear(in_features=4, out_features=8, bias=True)
          (1): ReLU()
          (2): Linear(in_features=8, out_features=3, bias=True)
        )
    """
    if kind == "linear":
        return nn.Sequential(nn.Linear(in_features, num_classes))
    if kind == "mlp":
        return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
    raise ValueError(f"build_model(): argument 'kind' expected one of 'linear', 'mlp', got {kind!r}")


def output_layer(model: nn.Module) -> nn.Linear:
    """The last ``nn.Linear`` of ``model``: the layer that produces the logits."""
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return layers[-1]
