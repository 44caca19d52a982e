"""Modules for the cross-entropy family that hold a tensor: configuration here, computation in the functions.

They are written by hand because each owns state the stateless pattern (:mod:`logitlab.nn._stateless`)
does not give: a class-weight (or per-class ``alpha``) buffer checked at construction (a list raises
a TypeError naming the Module and the argument), copied (a later in-place change of the caller's
tensor does not change the loss), and shown as ``weighted=True`` rather than its values. The
losses without such a tensor (``log_likelihood``, the margin losses) get the generated Module.
"""

from __future__ import annotations

from torch import Tensor, nn

from logitlab._validation import check_tensor
from logitlab.losses.cross_entropy import (
    binary_cross_entropy_with_logits,
    cross_entropy,
    nll_loss,
)
from logitlab.losses.focal import focal_loss, poly1_cross_entropy

__all__ = ["CrossEntropyLoss", "NLLLoss", "BCEWithLogitsLoss", "FocalLoss", "Poly1CrossEntropyLoss"]


def _buffer(module: nn.Module, name: str, value: Tensor | None) -> None:
    """Register ``value`` (None or a tensor, checked: a list failed with an AttributeError) as a buffer."""
    if value is not None:
        check_tensor(type(module).__name__, name, value)
    module.register_buffer(name, value.detach().clone() if value is not None else None)


class CrossEntropyLoss(nn.Module):
    """:func:`logitlab.cross_entropy` as a Module; ``weight`` is a buffer.

    Example:
        >>> import torch
        >>> CrossEntropyLoss(label_smoothing=0.1)(torch.zeros(2, 4), torch.tensor([0, 3]))
        tensor(1.3863)
    """

    weight: Tensor | None

    def __init__(self, *, dim: int = -1, weight: Tensor | None = None, ignore_index: int = -100,
                 reduction: str = "mean", label_smoothing: float = 0.0, z_loss: float = 0.0,
                 temperature: float = 1.0, validate: bool | None = None, inplace_backward: bool = False,
                 impl: str = "auto", shift: int = 0) -> None:
        super().__init__()
        self.shift = shift
        self.dim, self.ignore_index, self.reduction = dim, ignore_index, reduction
        self.label_smoothing, self.z_loss, self.temperature = label_smoothing, z_loss, temperature
        self.validate, self.inplace_backward, self.impl = validate, inplace_backward, impl
        _buffer(self, "weight", weight)

    def forward(self, logits: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        return cross_entropy(logits, target, dim=self.dim, weight=self.weight, ignore_index=self.ignore_index,
                             mask=mask, reduction=self.reduction, label_smoothing=self.label_smoothing,
                             z_loss=self.z_loss, temperature=self.temperature, validate=self.validate,
                             inplace_backward=self.inplace_backward, impl=self.impl, shift=self.shift)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, ignore_index={self.ignore_index}, reduction={self.reduction!r}, "
                f"label_smoothing={self.label_smoothing}, z_loss={self.z_loss}, "
                f"temperature={self.temperature}, weighted={self.weight is not None}, "
                f"validate={self.validate}, inplace_backward={self.inplace_backward}, impl={self.impl!r}"
                + (f", shift={self.shift}" if self.shift else ""))


class NLLLoss(nn.Module):
    """:func:`logitlab.nll_loss` as a Module; ``weight`` is a buffer.

    Example:
        >>> import torch
        >>> NLLLoss(weight=torch.tensor([1.0, 3.0]))(torch.log(torch.tensor([[0.5, 0.5], [0.9, 0.1]])),
        ...                                         torch.tensor([0, 1]))  # (0.6931 + 3 · 2.3026) / 4
        tensor(1.9002)
    """

    weight: Tensor | None

    def __init__(self, *, dim: int = -1, weight: Tensor | None = None, ignore_index: int = -100,
                 reduction: str = "mean", validate: bool = True) -> None:
        super().__init__()
        self.dim, self.ignore_index, self.reduction, self.validate = dim, ignore_index, reduction, validate
        _buffer(self, "weight", weight)

    def forward(self, log_probs: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        return nll_loss(log_probs, target, dim=self.dim, weight=self.weight, ignore_index=self.ignore_index,
                        mask=mask, reduction=self.reduction, validate=self.validate)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, ignore_index={self.ignore_index}, reduction={self.reduction!r}, "
                f"weighted={self.weight is not None}")


class BCEWithLogitsLoss(nn.Module):
    """:func:`logitlab.binary_cross_entropy_with_logits` as a Module; weights are buffers.

    Example:
        >>> import torch
        >>> BCEWithLogitsLoss(pos_weight=torch.tensor([2.0]))(torch.zeros(3), torch.ones(3))  # 2 log 2
        tensor(1.3863)
    """

    weight: Tensor | None
    pos_weight: Tensor | None

    def __init__(self, *, weight: Tensor | None = None, pos_weight: Tensor | None = None,
                 reduction: str = "mean", validate: bool = True) -> None:
        super().__init__()
        self.reduction, self.validate = reduction, validate
        _buffer(self, "weight", weight)
        _buffer(self, "pos_weight", pos_weight)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return binary_cross_entropy_with_logits(logits, target, weight=self.weight, pos_weight=self.pos_weight,
                                                reduction=self.reduction, validate=self.validate)

    def extra_repr(self) -> str:
        return (f"reduction={self.reduction!r}, weighted={self.weight is not None}, "
                f"pos_weighted={self.pos_weight is not None}")


class FocalLoss(nn.Module):
    """:func:`logitlab.focal_loss` as a Module; a tensor ``alpha`` is a buffer.

    Example:
        >>> import torch
        >>> FocalLoss(gamma=1.0)(torch.zeros(1, 2), torch.tensor([0]))  # (1 − ½) log 2
        tensor(0.3466)
    """

    def __init__(self, *, gamma: float = 2.0, alpha: float | Tensor | None = None, dim: int = -1,
                 ignore_index: int = -100, reduction: str = "mean", validate: bool = True) -> None:
        super().__init__()
        self.gamma, self.dim, self.ignore_index = gamma, dim, ignore_index
        self.reduction, self.validate = reduction, validate
        if isinstance(alpha, Tensor):
            _buffer(self, "alpha", alpha)
        else:
            self.alpha = alpha

    def forward(self, logits: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        return focal_loss(logits, target, gamma=self.gamma, alpha=self.alpha, dim=self.dim,
                          ignore_index=self.ignore_index, mask=mask, reduction=self.reduction,
                          validate=self.validate)

    def extra_repr(self) -> str:
        alpha = "per-class" if isinstance(self.alpha, Tensor) else self.alpha
        return (f"gamma={self.gamma}, alpha={alpha}, dim={self.dim}, ignore_index={self.ignore_index}, "
                f"reduction={self.reduction!r}")


class Poly1CrossEntropyLoss(nn.Module):
    """:func:`logitlab.poly1_cross_entropy` as a Module; ``weight`` is a buffer.

    Example:
        >>> import torch
        >>> Poly1CrossEntropyLoss(epsilon=2.0)(torch.zeros(1, 2), torch.tensor([0]))  # log 2 + 2 · ½
        tensor(1.6931)
    """

    weight: Tensor | None

    def __init__(self, *, epsilon: float = 1.0, dim: int = -1, weight: Tensor | None = None,
                 ignore_index: int = -100, reduction: str = "mean", label_smoothing: float = 0.0,
                 validate: bool = True, impl: str = "auto") -> None:
        super().__init__()
        self.epsilon, self.dim, self.ignore_index = epsilon, dim, ignore_index
        self.reduction, self.label_smoothing, self.validate = reduction, label_smoothing, validate
        self.impl = impl
        _buffer(self, "weight", weight)

    def forward(self, logits: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        return poly1_cross_entropy(logits, target, epsilon=self.epsilon, dim=self.dim, weight=self.weight,
                                   ignore_index=self.ignore_index, mask=mask, reduction=self.reduction,
                                   label_smoothing=self.label_smoothing, validate=self.validate,
                                   impl=self.impl)

    def extra_repr(self) -> str:
        return (f"epsilon={self.epsilon}, dim={self.dim}, ignore_index={self.ignore_index}, "
                f"reduction={self.reduction!r}, label_smoothing={self.label_smoothing}, "
                f"weighted={self.weight is not None}")
