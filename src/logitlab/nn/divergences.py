"""Modules for the divergence family and the Fenchel–Young losses.

Each holds the options of its functional form (same names, order and defaults) and calls it:
``KLDivergenceLoss(normalizer="entmax", alpha=1.3)(logits, target, mask=None)`` is
``kl_divergence(logits, target, normalizer="entmax", alpha=1.3, mask=None)``.
"""

from __future__ import annotations

from typing import Any, Callable

from torch import Tensor, nn

from logitlab import registry
from logitlab.losses import divergences as D
from logitlab.losses import fenchel_young as FY

__all__ = ["DivergenceLoss", "FenchelYoungLoss", "SparsemaxLoss", "EntmaxLoss", "Entmax15Loss"]


class _OptionsLoss(nn.Module):
    """Stores keyword options; ``forward(logits, target, mask=None)`` calls ``_fn``."""

    _fn: Callable[..., Tensor]

    def __init__(self, **options: Any) -> None:
        super().__init__()
        self.options = options

    def forward(self, logits: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        return type(self)._fn(logits, target, mask=mask, **self.options)

    def extra_repr(self) -> str:
        return ", ".join(f"{key}={value!r}" for key, value in self.options.items())


def _divergence_module(name: str, fn: Callable[..., Tensor], own: str | None,
                       default: float | None, doc: str) -> type:
    def __init__(self: _OptionsLoss, *, normalizer: str = "softmax", dim: int = -1,
                 reduction: str = "mean", temperature: float = 1.0, validate: bool = True,
                 **normalizer_params: Any) -> None:
        options: dict[str, Any] = {}
        if own is not None:
            options[own] = normalizer_params.pop(own, default)
        options.update(normalizer=normalizer, dim=dim, reduction=reduction,
                       temperature=temperature, validate=validate, **normalizer_params)
        _OptionsLoss.__init__(self, **options)

    own_arg = f"{own}={default!r}, " if own is not None else ""
    doc += f"""

    Args (keyword-only, as in :func:`~logitlab.losses.divergences.{fn.__name__}`):
        {own_arg}normalizer='softmax', dim=-1, reduction='mean', temperature=1.0, validate=True,
        **normalizer_params. ``forward(logits (*batch, n), target (*batch, n), mask=None)``.

    Raises:
        As :func:`~logitlab.losses.divergences.{fn.__name__}`, when called.

    Example:
        >>> import torch
        >>> logits, target = torch.tensor([[0.0, 1.0, -1.0]]), torch.tensor([[0.2, 0.5, 0.3]])
        >>> module = {name}(reduction="none")
        >>> bool(module(logits, target) == D.{fn.__name__}(logits, target, reduction="none"))
        True
        >>> module
        {name}({own_arg}normalizer='softmax', dim=-1, reduction='none', temperature=1.0, validate=True)
    """
    return type(name, (_OptionsLoss,), {"_fn": staticmethod(fn), "__init__": __init__,
                                        "__doc__": doc, "__module__": __name__})


# One Module per divergence row of the registry (a loss of losses/divergences.py's DIVERGENCES
# table): a new divergence has its Module with nothing to edit here.
_GENERATED = []
for _spec in registry.LOSSES.values():
    if _spec.fn.__module__ == D.__name__ and _spec.name in D.DIVERGENCES:
        _own, _default = D.DIVERGENCES[_spec.name].param, D.DIVERGENCES[_spec.name].default
        globals()[_spec.module] = _divergence_module(_spec.module, _spec.fn, _own, _default,
                                                     f"Module of :func:`{_spec.fn.__name__}`: {_spec.doc}.")
        _GENERATED.append(_spec.module)


__all__ += _GENERATED


class DivergenceLoss(_OptionsLoss):
    """Module of :func:`divergence_loss`; ``forward(logits, target=None, mask=None, target_logits=None)``.

    Example:
        >>> import torch
        >>> DivergenceLoss(divergence="tv")(torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]))
        tensor(0.5000)
    """

    _fn = staticmethod(D.divergence_loss)

    def __init__(self, *, divergence: str = "kl", normalizer: str = "softmax", dim: int = -1,
                 reduction: str = "mean", temperature: float = 1.0, validate: bool = True,
                 **params: Any) -> None:
        super().__init__(divergence=divergence, normalizer=normalizer, dim=dim, reduction=reduction,
                         temperature=temperature, validate=validate, **params)

    def forward(self, logits: Tensor, target: Tensor | None = None,  # type: ignore[override]
                mask: Tensor | None = None, target_logits: Tensor | None = None) -> Tensor:
        return D.divergence_loss(logits, target, mask=mask, target_logits=target_logits, **self.options)


class FenchelYoungLoss(_OptionsLoss):
    """Module of :func:`fenchel_young_loss`.

    Example:
        >>> import torch
        >>> FenchelYoungLoss()(torch.zeros(1, 2), torch.tensor([0]))
        tensor(0.6931)
    """

    _fn = staticmethod(FY.fenchel_young_loss)

    def __init__(self, *, normalizer: str = "softmax", dim: int = -1, reduction: str = "mean",
                 ignore_index: int = -100, temperature: float = 1.0, validate: bool = True,
                 **normalizer_params: Any) -> None:
        super().__init__(normalizer=normalizer, dim=dim, reduction=reduction, ignore_index=ignore_index,
                         temperature=temperature, validate=validate, **normalizer_params)


class SparsemaxLoss(_OptionsLoss):
    """Module of :func:`sparsemax_loss`."""

    _fn = staticmethod(FY.sparsemax_loss)

    def __init__(self, *, dim: int = -1, reduction: str = "mean", ignore_index: int = -100,
                 temperature: float = 1.0, validate: bool = True) -> None:
        super().__init__(dim=dim, reduction=reduction, ignore_index=ignore_index,
                         temperature=temperature, validate=validate)


class EntmaxLoss(_OptionsLoss):
    """Module of :func:`entmax_loss`."""

    _fn = staticmethod(FY.entmax_loss)

    def __init__(self, *, alpha: float = 1.5, normalizer: str | None = None, dim: int = -1,
                 reduction: str = "mean", ignore_index: int = -100, temperature: float = 1.0,
                 validate: bool = True, **normalizer_params: Any) -> None:
        super().__init__(alpha=alpha, normalizer=normalizer, dim=dim, reduction=reduction,
                         ignore_index=ignore_index, temperature=temperature, validate=validate,
                         **normalizer_params)


class Entmax15Loss(_OptionsLoss):
    """Module of :func:`entmax15_loss`."""

    _fn = staticmethod(FY.entmax15_loss)

    def __init__(self, *, dim: int = -1, reduction: str = "mean", ignore_index: int = -100,
                 temperature: float = 1.0, validate: bool = True) -> None:
        super().__init__(dim=dim, reduction=reduction, ignore_index=ignore_index,
                         temperature=temperature, validate=validate)
