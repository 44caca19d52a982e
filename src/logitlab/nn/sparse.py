"""Modules for the sparse maps: :class:`Sparsemax`, :class:`Entmax15`, :class:`Entmax`."""

from __future__ import annotations

from torch import Tensor, nn

from logitlab.normalizers.entmax import DEFAULT_MAX_ITER, DEFAULT_TOL, entmax, entmax15
from logitlab.normalizers.sparsemax import sparsemax

__all__ = ["Sparsemax", "Entmax15", "Entmax"]


def _validate_repr(validate: bool, impl: str = "auto") -> str:
    return ("" if validate else ", validate=False") + ("" if impl == "auto" else f", impl={impl!r}")


class Sparsemax(nn.Module):
    """Module form of :func:`logitlab.sparsemax`.

    Example:
        >>> import torch
        >>> Sparsemax(dim=0)(torch.tensor([1.0, 0.5, -1.0]))
        tensor([0.7500, 0.2500, 0.0000])
    """

    def __init__(self, *, dim: int = -1, validate: bool = True, impl: str = "auto") -> None:
        super().__init__()
        self.dim = dim
        self.validate = validate
        self.impl = impl

    def forward(self, logits: Tensor) -> Tensor:
        return sparsemax(logits, dim=self.dim, validate=self.validate, impl=self.impl)

    def extra_repr(self) -> str:
        return f"dim={self.dim}" + _validate_repr(self.validate, self.impl)


class Entmax15(nn.Module):
    """Module form of :func:`logitlab.entmax15`.

    Example:
        >>> import torch
        >>> Entmax15()(torch.tensor([2.0, 1.0, -3.0]))
        tensor([0.8307, 0.1693, 0.0000])
    """

    def __init__(self, *, dim: int = -1, validate: bool = True, impl: str = "auto") -> None:
        super().__init__()
        self.dim = dim
        self.validate = validate
        self.impl = impl

    def forward(self, logits: Tensor) -> Tensor:
        return entmax15(logits, dim=self.dim, validate=self.validate, impl=self.impl)

    def extra_repr(self) -> str:
        return f"dim={self.dim}" + _validate_repr(self.validate, self.impl)


class Entmax(nn.Module):
    """Module form of :func:`logitlab.entmax`; a tensor ``alpha`` is registered as a buffer.

    To learn α, pass an ``nn.Parameter`` (it is then registered as a parameter).

    Example:
        >>> import torch
        >>> Entmax(alpha=2.0)(torch.tensor([1.0, 0.5, -1.0]))
        tensor([0.7500, 0.2500, 0.0000])
        >>> Entmax(alpha=1.5)
        Entmax(alpha=1.5, dim=-1, tol=1e-10, max_iter=100)
    """

    def __init__(self, alpha: float | Tensor = 1.5, *, dim: int = -1, tol: float = DEFAULT_TOL,
                 max_iter: int = DEFAULT_MAX_ITER, validate: bool = True, impl: str = "auto") -> None:
        super().__init__()
        if isinstance(alpha, nn.Parameter):
            self.alpha = alpha
        elif isinstance(alpha, Tensor):
            self.register_buffer("alpha", alpha)
        else:
            self.alpha = alpha
        self.dim = dim
        self.tol = tol
        self.max_iter = max_iter
        self.validate = validate
        self.impl = impl

    def forward(self, logits: Tensor) -> Tensor:
        return entmax(logits, self.alpha, dim=self.dim, tol=self.tol, max_iter=self.max_iter,
                      validate=self.validate, impl=self.impl)

    def extra_repr(self) -> str:
        alpha = f"Tensor(shape={tuple(self.alpha.shape)})" if isinstance(self.alpha, Tensor) else self.alpha
        return (f"alpha={alpha}, dim={self.dim}, tol={self.tol:g}, max_iter={self.max_iter}"
                + _validate_repr(self.validate, self.impl))
