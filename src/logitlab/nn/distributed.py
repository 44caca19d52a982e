"""Modules of the vocabulary-parallel losses: the process group and options held here."""

from __future__ import annotations

from torch import Tensor, nn

from logitlab.distributed.vocab_parallel import vocab_parallel_cross_entropy, vocab_parallel_kl_divergence

__all__ = ["VocabParallelCrossEntropy", "VocabParallelKLDivergence"]


class VocabParallelCrossEntropy(nn.Module):
    """:func:`logitlab.distributed.vocab_parallel_cross_entropy` as a Module.

    ``module(local_logits, target)``: this rank's slice of the logits and the global targets.
    Without an initialized process group it is one rank holding the whole vocabulary, i.e.
    :func:`logitlab.cross_entropy`.

    Example:
        >>> import torch
        >>> VocabParallelCrossEntropy(label_smoothing=0.1)(torch.zeros(2, 4), torch.tensor([0, 3]))
        tensor(1.3863)
    """

    def __init__(self, *, group=None, vocab_start: int | None = None, ignore_index: int = -100,
                 reduction: str = "mean", label_smoothing: float = 0.0, z_loss: float = 0.0,
                 validate: bool = True, timeout: float | None = None, impl: str = "auto") -> None:
        super().__init__()
        self.group, self.vocab_start, self.ignore_index = group, vocab_start, ignore_index
        self.reduction, self.label_smoothing, self.z_loss = reduction, label_smoothing, z_loss
        self.validate, self.timeout, self.impl = validate, timeout, impl

    def forward(self, local_logits: Tensor, target: Tensor) -> Tensor:
        return vocab_parallel_cross_entropy(
            local_logits, target, group=self.group, vocab_start=self.vocab_start,
            ignore_index=self.ignore_index, reduction=self.reduction, label_smoothing=self.label_smoothing,
            z_loss=self.z_loss, validate=self.validate, timeout=self.timeout, impl=self.impl)

    def extra_repr(self) -> str:
        return (f"vocab_start={self.vocab_start}, ignore_index={self.ignore_index}, "
                f"reduction={self.reduction!r}, label_smoothing={self.label_smoothing}, z_loss={self.z_loss}")


class VocabParallelKLDivergence(nn.Module):
    """:func:`logitlab.distributed.vocab_parallel_kl_divergence` as a Module: D(teacher ‖ student).

    ``module(local_logits, local_teacher_logits)``, both this rank's slice.

    Example:
        >>> import torch
        >>> VocabParallelKLDivergence(temperature=2.0)(torch.zeros(2, 4), torch.zeros(2, 4))
        tensor(0.)
    """

    def __init__(self, *, group=None, temperature: float = 1.0, reduction: str = "mean", validate: bool = True,
                 timeout: float | None = None, impl: str = "auto") -> None:
        super().__init__()
        self.group, self.temperature, self.reduction = group, temperature, reduction
        self.validate, self.timeout, self.impl = validate, timeout, impl

    def forward(self, local_logits: Tensor, local_teacher_logits: Tensor) -> Tensor:
        return vocab_parallel_kl_divergence(local_logits, local_teacher_logits, group=self.group,
                                            temperature=self.temperature, reduction=self.reduction,
                                            validate=self.validate, timeout=self.timeout, impl=self.impl)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, reduction={self.reduction!r}"
