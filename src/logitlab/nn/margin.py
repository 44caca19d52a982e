"""Modules for the margin losses: configuration held here, computation in logitlab.losses.margin."""

from __future__ import annotations

from torch import Tensor, nn

from logitlab.losses.margin import multiclass_hinge_loss, perceptron_loss

__all__ = ["MulticlassHingeLoss", "PerceptronLoss"]


class MulticlassHingeLoss(nn.Module):
    """:func:`logitlab.multiclass_hinge_loss` as a Module.

    Example:
        >>> import torch
        >>> MulticlassHingeLoss(margin=1.0)(torch.tensor([[2.0, 1.5, -1.0]]), torch.tensor([0]))
        tensor(0.5000)
    """

    def __init__(self, *, margin: float = 1.0, kind: str = "crammer_singer", dim: int = -1,
                 ignore_index: int = -100, reduction: str = "mean", validate: bool = True) -> None:
        super().__init__()
        self.margin, self.kind, self.dim, self.ignore_index = margin, kind, dim, ignore_index
        self.reduction, self.validate = reduction, validate

    def forward(self, logits: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        return multiclass_hinge_loss(logits, target, margin=self.margin, kind=self.kind, dim=self.dim,
                                     ignore_index=self.ignore_index, mask=mask, reduction=self.reduction,
                                     validate=self.validate)

    def extra_repr(self) -> str:
        return (f"margin={self.margin}, kind={self.kind!r}, dim={self.dim}, ignore_index={self.ignore_index}, "
                f"reduction={self.reduction!r}")


class PerceptronLoss(nn.Module):
    """:func:`logitlab.perceptron_loss` as a Module.

    Example:
        >>> import torch
        >>> PerceptronLoss()(torch.tensor([[0.0, 3.0, 0.0]]), torch.tensor([0]))
        tensor(3.)
    """

    def __init__(self, *, dim: int = -1, ignore_index: int = -100, reduction: str = "mean",
                 validate: bool = True) -> None:
        super().__init__()
        self.dim, self.ignore_index, self.reduction, self.validate = dim, ignore_index, reduction, validate

    def forward(self, logits: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        return perceptron_loss(logits, target, dim=self.dim, ignore_index=self.ignore_index, mask=mask,
                               reduction=self.reduction, validate=self.validate)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, ignore_index={self.ignore_index}, reduction={self.reduction!r}"
