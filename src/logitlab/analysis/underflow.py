"""Why likelihoods are multiplied in log space: the product of probabilities underflows."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from logitlab._validation import check_tensor, fail

__all__ = ["UnderflowReport", "likelihood_underflow"]


@dataclass(frozen=True)
class UnderflowReport:
    """The likelihood of a growing batch, as a product and as a sum of logs (fields are stable).

    Dicts are keyed by dtype name ("float32", "float64").

    Attributes:
        probs: (N,) the per-example probabilities of the correct class (float64).
        batch_size: (N,) 1..N.
        log_likelihood: (N,) Σ log p over the first n examples, in float64 (the truth).
        product: dtype → (N,) Π p over the first n examples, computed in that dtype.
        log_likelihood_in: dtype → (N,) the running Σ log p computed in that dtype.
        subnormal_at: dtype → the first n whose product is below the smallest normal number
            (precision starts to be lost), or None.
        underflow_at: dtype → the first n whose product is exactly 0, or None.
        log_likelihood_at_underflow: dtype → the log-likelihood (in that dtype) at
            ``underflow_at``: finite, while the product there is 0.
    """

    probs: Tensor
    batch_size: Tensor
    log_likelihood: Tensor
    product: dict[str, Tensor]
    log_likelihood_in: dict[str, Tensor]
    subnormal_at: dict[str, int | None]
    underflow_at: dict[str, int | None]
    log_likelihood_at_underflow: dict[str, float | None]


def likelihood_underflow(probs: Tensor | float, *, batch_size: int = 2000,
                         dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.float64)) -> UnderflowReport:
    """At what batch size Π p underflows to 0 in each dtype, while Σ log p stays finite.

    The likelihood of n independent examples is Π_i p_i; with every p_i ≤ p < 1 it falls below
    the smallest positive float after about log(tiny)/log p examples (p = 1/2: n = 150 in
    float32, whose smallest subnormal is 2^-149, and 1075 in float64, 2^-1074), after which
    maximum likelihood cannot compare models at all. The log-likelihood Σ log p_i is a sum of
    moderate numbers and stays finite (−103.97 at n = 150 for p = 1/2): this is why training
    minimizes −Σ log p, the cross-entropy, rather than maximizing the product.

    Args:
        probs: (N,) probabilities in (0, 1], or one probability repeated ``batch_size`` times.
        batch_size: N when ``probs`` is a number.
        dtypes: the floating dtypes to compute the running product in.

    Returns:
        An :class:`UnderflowReport`.

    Raises:
        ValueError: probabilities outside (0, 1], an empty batch, a non-floating dtype.

    Example:
        >>> report = likelihood_underflow(0.5, batch_size=1200)
        >>> report.underflow_at
        {'float32': 150, 'float64': 1075}
        >>> report.log_likelihood_at_underflow["float32"]
        -103.97...
    """
    fn = "likelihood_underflow"
    if isinstance(probs, Tensor):
        p = check_tensor(fn, "probs", probs).detach().to(torch.float64).flatten()
    else:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            fail(fn, "batch_size", "an int >= 1", batch_size)
        p = torch.full((batch_size,), float(probs), dtype=torch.float64)
    if p.numel() == 0:
        fail(fn, "probs", "a non-empty batch", "<0 probabilities>")
    if not bool(((p > 0) & (p <= 1)).all()):
        fail(fn, "probs", "probabilities in (0, 1]", f"<min {float(p.min()):.3g}, max {float(p.max()):.3g}>")
    n = torch.arange(1, p.numel() + 1)
    truth = torch.cumsum(p.log(), 0)
    product, logs, subnormal, underflow, at_underflow = {}, {}, {}, {}, {}
    for dtype in dtypes:
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            fail(fn, "dtypes", "floating torch dtypes", dtype)
        name = str(dtype).replace("torch.", "")
        running = torch.cumprod(p.to(dtype), 0)
        log_running = torch.cumsum(p.to(dtype).log(), 0)
        product[name], logs[name] = running, log_running
        small = (running < torch.finfo(dtype).tiny).nonzero()
        zero = (running == 0).nonzero()
        subnormal[name] = int(small[0]) + 1 if small.numel() else None
        underflow[name] = int(zero[0]) + 1 if zero.numel() else None
        at_underflow[name] = float(log_running[underflow[name] - 1]) if zero.numel() else None
    return UnderflowReport(p, n, truth, product, logs, subnormal, underflow, at_underflow)
