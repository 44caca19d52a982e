"""What a normalizer does as its logits are multiplied by a growing factor."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from logitlab import registry
from logitlab._validation import check_floating, fail

__all__ = ["ScaleResponse", "scale_response"]


@dataclass(frozen=True)
class ScaleResponse:
    """The output of a normalizer on ``scale · logits`` for each scale (fields are stable).

    Attributes:
        normalizer: the registry name; params: its keyword parameters.
        logits: (n,) the base logits (float64).
        scales: (S,) the factors.
        probs: (S, n) normalizer(scale · logits).
        entropy: (S,) Shannon entropy −Σ p log p of each output (nats; 0 log 0 = 0).
        max_prob: (S,) the largest probability.
        support: (S,) the number of non-zero probabilities.
    """

    normalizer: str
    logits: Tensor
    scales: Tensor
    probs: Tensor
    entropy: Tensor
    max_prob: Tensor
    support: Tensor
    params: dict[str, Any] = field(default_factory=dict)


def scale_response(normalizer: str, logits: Tensor, scales: Tensor | list[float], **params: Any) -> ScaleResponse:
    """normalizer(s · z) for each factor s: temperature as a dial between uniform and argmax.

    * softmax is not scale invariant: softmax(s z) → one-hot on argmax z as s → ∞ (entropy → 0;
      softmax([1, 2]) = [0.27, 0.73] but softmax([10, 20]) = [4.5e-5, 0.99995]) and → uniform
      as s → 0: 1/s is the temperature.
    * x/Σx ("standard") is scale invariant: (s x)/Σ(s x) = x/Σx for every s > 0, so its
      output never changes and it cannot express confidence through the size of its scores.
    * sparsemax reaches the one-hot exactly at a finite scale (s · gap ≥ 1 between the two
      largest logits), entmax likewise; spherical (z² + ε)/Σ(z² + ε) and Taylor softmax tend to
      z²/Σz², not to a one-hot.

    Args:
        normalizer: a registry name.
        logits: (n,) base logits.
        scales: (S,) factors (any real numbers; x/Σx needs scale · logits >= 0).
        **params: the normalizer's keyword parameters.

    Returns:
        A :class:`ScaleResponse`.

    Raises:
        ValueError: unknown normalizer, logits not 1-D, empty or non-finite scales.

    Example:
        >>> z = torch.tensor([1.0, 2.0])
        >>> scale_response("softmax", z, [1.0, 10.0]).probs
        tensor([[2.6894e-01, 7.3106e-01],
                [4.5398e-05, 9.9995e-01]], dtype=torch.float64)
        >>> scale_response("standard", z, [1.0, 10.0]).probs
        tensor([[0.3333, 0.6667],
                [0.3333, 0.6667]], dtype=torch.float64)
    """
    fn = "scale_response"
    logits = check_floating(fn, "logits", logits)
    if logits.ndim != 1 or logits.numel() == 0:
        fail(fn, "logits", "a non-empty 1-D tensor (n,)", f"<shape {tuple(logits.shape)}>")
    scales_t = torch.as_tensor(scales, dtype=torch.float64).detach()
    if scales_t.ndim != 1 or scales_t.numel() == 0 or not bool(torch.isfinite(scales_t).all()):
        fail(fn, "scales", "a non-empty 1-D sequence of finite numbers", f"<{scales_t.numel()} values>")
    if normalizer not in registry.NORMALIZERS:
        fail(fn, "normalizer", "one of " + ", ".join(map(repr, registry.NORMALIZERS)), normalizer,
             detail=f"unknown normalizer {normalizer!r}")
    normalize = registry.get_normalizer(normalizer)
    base = logits.detach().to(torch.float64)
    with torch.no_grad():
        probs = torch.stack([normalize(s * base, **params) for s in scales_t.tolist()])
    plogp = torch.where(probs > 0, probs * probs.clamp_min(1e-300).log(), probs.new_zeros(()))
    return ScaleResponse(normalizer, base, scales_t, probs, -plogp.sum(1), probs.max(1).values,
                         (probs > 0).sum(1), dict(params))
