"""Module wrapper of the fused linear cross-entropy."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from logitlab.fused import linear_cross_entropy, linear_divergence_loss

__all__ = ["LinearCrossEntropy", "LinearCrossEntropyHead", "LinearDivergenceLoss"]


class LinearCrossEntropy(nn.Module):
    """Module form of :func:`logitlab.linear_cross_entropy`; called as ``module(hidden, weight, target)``.

    Holds the options (and ``class_weight`` as a buffer); the head's ``weight`` and ``bias`` are
    arguments of the call, so the module can share the weight of an existing ``nn.Linear`` or
    tied embedding.

    Example:
        >>> head = torch.nn.Linear(4, 10, bias=False)
        >>> loss_fn = LinearCrossEntropy(label_smoothing=0.1)
        >>> loss = loss_fn(torch.randn(3, 4), head.weight, torch.tensor([1, 2, 3]))
        >>> loss.shape
        torch.Size([])
    """

    def __init__(self, *, class_weight: Tensor | None = None, ignore_index: int = -100, reduction: str = "mean",
                 label_smoothing: float = 0.0, z_loss: float = 0.0, softcap: float | None = None,
                 chunk_size: int | None = None, impl: str = "auto", accum_dtype: torch.dtype = torch.float32,
                 process_group=None) -> None:
        super().__init__()
        self.register_buffer("class_weight", class_weight)
        self.ignore_index, self.reduction = ignore_index, reduction
        self.label_smoothing, self.z_loss, self.softcap = label_smoothing, z_loss, softcap
        self.chunk_size, self.impl, self.accum_dtype = chunk_size, impl, accum_dtype
        self.process_group = process_group

    def forward(self, hidden: Tensor, weight: Tensor, target: Tensor, *, bias: Tensor | None = None) -> Tensor:
        return linear_cross_entropy(
            hidden, weight, target, bias=bias, class_weight=self.class_weight, ignore_index=self.ignore_index,
            reduction=self.reduction, label_smoothing=self.label_smoothing, z_loss=self.z_loss,
            softcap=self.softcap, chunk_size=self.chunk_size, impl=self.impl, accum_dtype=self.accum_dtype,
            process_group=self.process_group)

    def extra_repr(self) -> str:
        return (f"ignore_index={self.ignore_index}, reduction={self.reduction!r}, "
                f"label_smoothing={self.label_smoothing}, z_loss={self.z_loss}, softcap={self.softcap}, "
                f"chunk_size={self.chunk_size}, impl={self.impl!r}")


class LinearCrossEntropyHead(nn.Module):
    r"""A linear head that owns its weight and returns its cross-entropy, never its logits.

    ``head(hidden, target)`` is ``linear_cross_entropy(hidden, head.weight, target,
    bias=head.bias, ...)``: the loss of logits z = hidden @ weight.T + bias, (N, V) never held.
    Use it where an ``nn.Linear`` LM head and ``F.cross_entropy`` were: the parameters live
    here (initialized as ``nn.Linear``'s), so that

    * FSDP2's ``fully_shard(head)`` (or on a model containing it) unshards them for this
      forward and reduce-scatters their gradients (a loss Module handed a weight that another
      module owns would read it while sharded, or outside that module's forward);
    * tensor parallelism shards the vocabulary by making ``weight`` (and ``bias``) a DTensor
      ``Shard(0)`` (``distribute_tensor(head.weight, mesh, [Shard(0)])``, or FSDP2 over a
      TP-sharded head): the loss then comes back as a replicated DTensor (see
      :func:`logitlab.linear_cross_entropy`).

    The options are the keyword arguments of :func:`logitlab.linear_cross_entropy`, with the
    same names and defaults (``class_weight`` is a buffer); ``device`` and ``dtype`` place the
    parameters as ``nn.Linear``'s do.

    Args:
        in_features: D, the size of ``hidden``'s last dimension.
        out_features: V, the vocabulary size.
        bias: whether the head has a (V,) bias (default False, as LM heads).

    Shape:
        ``hidden`` (*batch, D), ``target`` (*batch) class indices or ``ignore_index``; the
        result is a scalar, or (*batch) for ``reduction="none"``.

    Example:
        >>> torch.manual_seed(0)
        <torch._C.Generator object at ...>
        >>> head = LinearCrossEntropyHead(4, 10, label_smoothing=0.1)
        >>> hidden, target = torch.randn(3, 4), torch.tensor([1, 2, -100])
        >>> loss = head(hidden, target)
        >>> naive = torch.nn.functional.cross_entropy(hidden @ head.weight.T, target, label_smoothing=0.1)
        >>> bool(torch.allclose(loss, naive))
        True
    """

    def __init__(self, in_features: int, out_features: int, *, bias: bool = False,
                 class_weight: Tensor | None = None, ignore_index: int = -100, reduction: str = "mean",
                 label_smoothing: float = 0.0, z_loss: float = 0.0, softcap: float | None = None,
                 chunk_size: int | None = None, impl: str = "auto", accum_dtype: torch.dtype = torch.float32,
                 process_group=None, validate: bool | None = None, shift: int = 0, device=None, dtype=None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(out_features, device=device, dtype=dtype)) if bias else None
        self.register_buffer("class_weight", class_weight)
        self.ignore_index, self.reduction = ignore_index, reduction
        self.label_smoothing, self.z_loss, self.softcap = label_smoothing, z_loss, softcap
        self.chunk_size, self.impl, self.accum_dtype = chunk_size, impl, accum_dtype
        self.process_group, self.validate, self.shift = process_group, validate, shift
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``nn.Linear``'s initialization: U(−1/√D, 1/√D) for the weight and the bias."""
        bound = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0.0
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, hidden: Tensor, target: Tensor) -> Tensor:
        return linear_cross_entropy(
            hidden, self.weight, target, bias=self.bias, class_weight=self.class_weight,
            ignore_index=self.ignore_index, reduction=self.reduction, label_smoothing=self.label_smoothing,
            z_loss=self.z_loss, softcap=self.softcap, chunk_size=self.chunk_size, impl=self.impl,
            accum_dtype=self.accum_dtype, process_group=self.process_group, validate=self.validate,
            shift=self.shift)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"ignore_index={self.ignore_index}, reduction={self.reduction!r}, "
                f"label_smoothing={self.label_smoothing}, z_loss={self.z_loss}, softcap={self.softcap}, "
                f"impl={self.impl!r}, shift={self.shift}")


class LinearDivergenceLoss(nn.Module):
    """Module form of :func:`logitlab.linear_divergence_loss` (distillation between two heads).

    Called as ``module(hidden, weight, teacher_hidden=..., teacher_weight=..., target=None)``:
    the options live here, the heads' weights and biases are arguments of the call (so the
    module can share an existing ``nn.Linear``'s weight), as in :class:`LinearCrossEntropy`.

    Example:
        >>> student, teacher = torch.nn.Linear(4, 10, bias=False), torch.nn.Linear(4, 10, bias=False)
        >>> loss_fn = LinearDivergenceLoss(divergence="js", temperature=2.0)
        >>> h = torch.randn(3, 4)
        >>> loss_fn(h, student.weight, teacher_hidden=h, teacher_weight=student.weight).abs().item() < 1e-6
        True
        >>> loss_fn(h, student.weight, teacher_hidden=h, teacher_weight=teacher.weight).shape
        torch.Size([])
    """

    def __init__(self, *, divergence: str = "kl", beta: float = 0.5, temperature: float = 1.0,
                 hard_label_weight: float = 0.0, ignore_index: int = -100, reduction: str = "mean",
                 chunk_size: int | None = None, impl: str = "auto", accum_dtype: torch.dtype = torch.float32,
                 process_group=None, validate: bool | None = None) -> None:
        super().__init__()
        self.divergence, self.beta, self.temperature = divergence, beta, temperature
        self.hard_label_weight, self.ignore_index, self.reduction = hard_label_weight, ignore_index, reduction
        self.chunk_size, self.impl, self.accum_dtype = chunk_size, impl, accum_dtype
        self.process_group, self.validate = process_group, validate

    def forward(self, hidden: Tensor, weight: Tensor, *, teacher_hidden: Tensor, teacher_weight: Tensor,
                target: Tensor | None = None, bias: Tensor | None = None,
                teacher_bias: Tensor | None = None) -> Tensor:
        return linear_divergence_loss(
            hidden, weight, teacher_hidden=teacher_hidden, teacher_weight=teacher_weight,
            divergence=self.divergence, beta=self.beta, temperature=self.temperature, target=target,
            hard_label_weight=self.hard_label_weight, bias=bias, teacher_bias=teacher_bias,
            ignore_index=self.ignore_index, reduction=self.reduction, chunk_size=self.chunk_size,
            impl=self.impl, accum_dtype=self.accum_dtype, process_group=self.process_group,
            validate=self.validate)

    def extra_repr(self) -> str:
        return (f"divergence={self.divergence!r}, beta={self.beta}, temperature={self.temperature}, "
                f"hard_label_weight={self.hard_label_weight}, reduction={self.reduction!r}, impl={self.impl!r}")
