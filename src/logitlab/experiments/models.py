"""The study's models: softmax regression (one linear layer), a one-hidden-layer MLP and a next-token model.

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
    if kind == "lm":
        return NextTokenModel(num_classes, in_features, hidden=hidden)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
    raise ValueError(f"build_model(): argument 'kind' expected one of 'linear', 'mlp', 'lm', got {kind!r}")


class NextTokenModel(nn.Module):
    """Next-token model: embed the ``context`` previous tokens, concatenate, one GELU layer, an LM head.

    ``(rows, context)`` int64 token ids → ``(rows, vocab)`` scores; the head ``nn.Linear(hidden,
    vocab)`` is the output layer. (The model of ``examples/lm_workload.py``, with a bias-carrying head.)
    """

    def __init__(self, vocab: int, context: int, *, hidden: int = 128, embed: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.body = nn.Sequential(nn.Linear(context * embed, hidden), nn.GELU())
        self.head = nn.Linear(hidden, vocab)

    def features(self, context_ids):
        """The ``(rows, hidden)`` input of the head: what a fused linear + loss takes instead of scores."""
        return self.body(self.embed(context_ids).flatten(1))

    def forward(self, context_ids):
        return self.head(self.features(context_ids))


def output_layer(model: nn.Module) -> nn.Linear:
    """The last ``nn.Linear`` of ``model``: the layer that produces the logits."""
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return layers[-1]
