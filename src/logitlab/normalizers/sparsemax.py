"""sparsemax: the Euclidean projection of the logits onto the probability simplex, and its Ω."""

from __future__ import annotations

from torch import Tensor

from logitlab import backend
from logitlab._reduction import rowwise
from logitlab._validation import check_dim, check_floating, check_nonnegative, compute_dtype, default_validate
from logitlab.normalizers._threshold import threshold_map

__all__ = ["sparsemax", "gini_regularizer"]


def sparsemax(logits: Tensor, *, dim: int = -1, validate: bool | None = None, impl: str = "auto") -> Tensor:
    """Sparsemax: the point of the simplex closest to the logits.

    sparsemax(z) = argmin_{p ∈ Δ} ‖p − z‖² = [z − τ]_+, with τ the unique threshold such that
    Σ_i [z_i − τ]_+ = 1; on the support S = {i : z_i > τ}, τ = (Σ_{i∈S} z_i − 1) / |S|. It is
    the map of the Fenchel–Young regularizer Ω(p) = ½‖p‖² − ½ (:func:`gini_regularizer`), and
    α-entmax at α = 2.

    Exact, without sorting whole rows. On the CPU in float32/bfloat16/float16 a native kernel
    keeps only the entries that can be in the support (τ ≥ max z − 1, tightened by a bound from a
    few row maxima), computes τ on them in double by the closed form, and accepts it only when
    every other entry is certified to lie at or below it (else the sort-based algorithm on those
    entries); elsewhere (float64, other devices, no C compiler) τ is solved from each row's
    ``torch.topk`` and verified against the rest, retried wider, finally sorted. Either way the
    result equals the sort-based one to rounding, with the same support. The backward
    is the closed form on the support, ∂L/∂z_i = 1[i∈S] (g_i − mean_{j∈S} g_j). Half-precision
    inputs are computed in float32 and returned in their dtype. The op is a ``torch.library``
    custom op: ``torch.compile(fullgraph=True)`` of a caller has no graph break.

    ``-inf`` logits are excluded classes (probability exactly 0); a row whose entries are all
    ``-inf`` gives an all-zero row with zero gradient. NaN or ``+inf`` logits raise (by
    default on CPU tensors; without validation their rows come out NaN); the check reuses the
    row maxima of the solve, so it costs no extra pass, and it runs inside the op, also under
    ``torch.compile``.

    Args:
        logits: (*batch, n) scores, along ``dim``.
        dim: the class axis.
        validate: reject NaN and ``+inf`` logits; None (the default) means True for CPU
            tensors and False for CUDA ones, where the check would read a flag on the host.
        impl: 'auto' | 'native' | 'torch' | 'triton' (:mod:`logitlab.backend`): the native kernel,
            the ``torch.topk`` path above, or the Triton kernels for CUDA tensors (the same
            certified closed form, reached by Newton and bisection passes over each row in
            blocks; without validation they read nothing back to the host); 'auto' takes the
            native kernel on the CPU and the Triton one on CUDA wherever they run.

    Returns:
        (*batch, n) probabilities, the shape and dtype of ``logits``, with exact zeros.

    Raises:
        TypeError: ``logits`` is not a floating-point tensor.
        IndexError: ``dim`` is out of range.
        ValueError: NaN or ``+inf`` logits (validate).

    Example:
        >>> import torch
        >>> sparsemax(torch.tensor([1.0, 0.5, -1.0]))
        tensor([0.7500, 0.2500, 0.0000])

    References:
        Martins & Astudillo, "From Softmax to Sparsemax", ICML 2016.
    """
    check_floating("sparsemax", "logits", logits)
    axis = check_dim("sparsemax", dim, logits.ndim)
    impl = backend.check_impl("sparsemax", impl)
    if logits.numel() == 0:
        return logits.clone()
    validate = default_validate(logits, validate)
    return rowwise(lambda rows: threshold_map(rows, "sparsemax", validate=validate, fn="sparsemax", impl=impl)[0],
                   logits, axis)


def gini_regularizer(probs: Tensor, *, dim: int = -1, validate: bool = True) -> Tensor:
    """Ω(p) = ½‖p‖² − ½: the regularizer whose Fenchel–Young map is sparsemax.

    It is the negative Gini entropy (½ Σ p_i (1 − p_i) = −Ω(p)) and the Tsallis regularizer at
    α = 2; the constant makes Ω(one-hot) = 0.

    Args:
        probs: (*batch, n) distributions along ``dim``.
        dim: the class axis.
        validate: reject NaN, inf and negative entries.

    Returns:
        (*batch) Ω of each row, in the dtype of ``probs``.

    Raises:
        TypeError: ``probs`` is not a floating-point tensor.
        IndexError: ``dim`` is out of range.
        ValueError: non-finite or negative entries (validate).

    Example:
        >>> import torch
        >>> gini_regularizer(torch.tensor([[1.0, 0.0], [0.5, 0.5]]))
        tensor([ 0.0000, -0.2500])

    References:
        Blondel, Martins & Niculae, "Learning with Fenchel-Young Losses", JMLR 2020.
    """
    check_floating("gini_regularizer", "probs", probs)
    axis = check_dim("gini_regularizer", dim, probs.ndim)
    if validate:
        check_nonnegative("gini_regularizer", "probs", probs)
    p = probs.to(compute_dtype(probs))
    if p.ndim == 0:
        p = p.reshape(1)
        axis = 0
    return (0.5 * (p * p).sum(axis) - 0.5).to(probs.dtype)
