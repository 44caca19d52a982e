"""Module wrappers of the dense normalizers: each holds its options and calls its function."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from logitlab._validation import check_choice, check_positive, fail
from logitlab.normalizers.sigmoid import log_sigmoid, sigmoid
from logitlab.normalizers.softmax import log_softmax, softmax
from logitlab.normalizers.spherical import SPHERICAL_EPS, spherical_softmax, taylor_softmax
from logitlab.normalizers.standard import POSITIVITY, standard_normalize

__all__ = ["Softmax", "LogSoftmax", "Sigmoid", "LogSigmoid", "StandardNormalize",
           "SphericalSoftmax", "TaylorSoftmax"]


class _Temperature(nn.Module):
    """Holds ``dim``, ``temperature`` (a float, a buffer, or a learnable Parameter) and ``validate``."""

    def __init__(self, dim: int = -1, temperature: float | Tensor = 1.0, validate: bool = True) -> None:
        super().__init__()
        name = type(self).__name__
        self.dim = dim
        self.validate = validate
        if isinstance(temperature, nn.Parameter):
            self.temperature = temperature
        elif isinstance(temperature, Tensor):
            self.register_buffer("temperature", temperature)
        else:
            self.temperature = check_positive(name, "temperature", temperature)

    def extra_repr(self) -> str:
        t = self.temperature
        shown = f"{float(t.detach()):g}" if isinstance(t, Tensor) and t.numel() == 1 else repr(t)
        return f"dim={self.dim}, temperature={shown}"


class Softmax(_Temperature):
    """:func:`logitlab.softmax` as a Module: ``Softmax(dim=-1, temperature=1.0, validate=True)``.

    Example:
        >>> Softmax(temperature=2.0)(torch.tensor([0.0, 0.0]))
        tensor([0.5000, 0.5000])
    """

    def forward(self, logits: Tensor) -> Tensor:
        return softmax(logits, dim=self.dim, temperature=self.temperature, validate=self.validate)


class LogSoftmax(_Temperature):
    """:func:`logitlab.log_softmax` as a Module."""

    def forward(self, logits: Tensor) -> Tensor:
        return log_softmax(logits, dim=self.dim, temperature=self.temperature, validate=self.validate)


class Sigmoid(nn.Module):
    """:func:`logitlab.sigmoid` as a Module: ``Sigmoid(dim=-1, validate=True)``."""

    def __init__(self, dim: int = -1, validate: bool = True) -> None:
        super().__init__()
        self.dim = dim
        self.validate = validate

    def forward(self, logits: Tensor) -> Tensor:
        return sigmoid(logits, dim=self.dim, validate=self.validate)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class LogSigmoid(Sigmoid):
    """:func:`logitlab.log_sigmoid` as a Module."""

    def forward(self, logits: Tensor) -> Tensor:
        return log_sigmoid(logits, dim=self.dim, validate=self.validate)


class StandardNormalize(nn.Module):
    """:func:`logitlab.standard_normalize` as a Module: ``StandardNormalize(dim=-1, positivity=None)``.

    Example:
        >>> StandardNormalize(positivity="relu")(torch.tensor([-1.0, 1.0, 3.0]))
        tensor([0.0000, 0.2500, 0.7500])
    """

    def __init__(self, dim: int = -1, positivity: str | None = None, validate: bool = True) -> None:
        super().__init__()
        self.dim = dim
        self.positivity = check_choice("StandardNormalize", "positivity", positivity, POSITIVITY)
        self.validate = validate

    def forward(self, logits: Tensor) -> Tensor:
        return standard_normalize(logits, dim=self.dim, positivity=self.positivity, validate=self.validate)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, positivity={self.positivity!r}"


class SphericalSoftmax(nn.Module):
    """:func:`logitlab.spherical_softmax` as a Module: ``SphericalSoftmax(dim=-1, eps=1e-6)``."""

    def __init__(self, dim: int = -1, eps: float = SPHERICAL_EPS, validate: bool = True) -> None:
        super().__init__()
        self.dim = dim
        self.eps = check_positive("SphericalSoftmax", "eps", eps)
        self.validate = validate

    def forward(self, logits: Tensor) -> Tensor:
        return spherical_softmax(logits, dim=self.dim, eps=self.eps, validate=self.validate)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, eps={self.eps:g}"


class TaylorSoftmax(nn.Module):
    """:func:`logitlab.taylor_softmax` as a Module: ``TaylorSoftmax(dim=-1, order=2)``."""

    def __init__(self, dim: int = -1, order: int = 2, validate: bool = True) -> None:
        super().__init__()
        if isinstance(order, bool) or not isinstance(order, int) or order < 2 or order % 2:
            fail("TaylorSoftmax", "order", "an even int >= 2", order)
        self.dim = dim
        self.order = order
        self.validate = validate

    def forward(self, logits: Tensor) -> Tensor:
        return taylor_softmax(logits, dim=self.dim, order=self.order, validate=self.validate)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, order={self.order}"
