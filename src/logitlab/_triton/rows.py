"""Device functions the row kernels share: the scores of a block of logits, and one step of the
online log-sum-exp. Plain functions in Triton's language; a kernel names them in its
``jit(..., helpers=...)`` and gets them decorated for its own mode (``logitlab._triton.jit``)."""

from __future__ import annotations

import triton.language as tl

__all__ = ["load_scores", "lse_step", "HELPERS"]


def load_scores(row_ptr, b_ptr, cols, inside, cap, scale, HAS_BIAS: tl.constexpr, SOFTCAP: tl.constexpr,
                CD: tl.constexpr):
    """s = softcap·tanh((x + b) / softcap) · scale at columns ``cols`` of a row (0 where not
    ``inside``), in the compute dtype, and t = tanh((x + b) / softcap) for the chain rule (s itself
    without ``SOFTCAP``). ``cols`` may be a block of columns or one (a target's).

    tanh from tl.exp (no libdevice, so the interpreter runs it): (1 − e^{−2|u|}) / (1 + e^{−2|u|});
    near 0, where 1 − e^{−2|u|} cancels, its series to u⁹ (next term 0.009·u¹¹, 1e-12 at the cut).
    """
    s = tl.load(row_ptr + cols, mask=inside, other=0.0).to(CD)
    if HAS_BIAS:
        s += tl.load(b_ptr + cols, mask=inside, other=0.0).to(CD)
    th = s
    if SOFTCAP:
        u = s / cap
        au = tl.abs(u)
        e = tl.exp(-2.0 * au)
        th = (1.0 - e) / (1.0 + e)
        u2 = u * u
        series = u * (1.0 + u2 * (-1.0 / 3.0 + u2 * (2.0 / 15.0 + u2 * (-17.0 / 315.0 + u2 * (62.0 / 2835.0)))))
        th = tl.where(au < 0.125, series, tl.where(u < 0, -th, th))
        s = cap * th
    return s * scale, th


def lse_step(m, se, s):
    """One block of the online log-sum-exp: from the running maximum ``m`` and Σ e^{· − m} ``se``
    and a block ``s`` (−inf where masked), (the new maximum, the new sum, e^{s − m'} of the block,
    the factor e^{m − m'} that rescaled the old sum), m' the new maximum (0 while it is −inf, so
    an all −inf row sums to 0 without NaN). A kernel that keeps other sums weighted by e^{s − m}
    rescales them by the same factor."""
    m_new = tl.maximum(m, tl.max(s, 0))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    e = tl.exp(s - m_safe)
    rescale = tl.exp(m - m_safe)
    return m_new, se * rescale + tl.sum(e, 0), e, rescale


HELPERS = (load_scores, lse_step)
