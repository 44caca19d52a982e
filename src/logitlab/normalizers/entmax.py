"""α-entmax: the maps of the Tsallis regularizers, for every α > 0 (softmax at 1, sparsemax at 2)."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from logitlab import backend
from logitlab._reduction import from_rows, rowwise, to_rows
from logitlab._validation import (
    check_dim,
    check_floating,
    check_nonnegative,
    compute_dtype,
    default_validate,
    fail,
    has_data,
)
from logitlab.normalizers._qexp import DENSE_BELOW, qexp_map
from logitlab.normalizers._threshold import ConvergenceError, check_converged, threshold_map
from logitlab.normalizers._threshold_topk import reject_logits

__all__ = [
    "entmax15",
    "entmax",
    "entmax_with_info",
    "EntmaxInfo",
    "ConvergenceError",
    "tsallis15_regularizer",
    "tsallis_regularizer",
]

DEFAULT_TOL = 1e-10
DEFAULT_MAX_ITER = 100


class EntmaxInfo(NamedTuple):
    """The result of :func:`entmax_with_info`: the map and how its threshold solve went.

    Attributes:
        probs: (*batch, n) the probabilities (rows renormalized to sum to 1).
        tau: (*batch) the threshold, p = [(α−1) z − τ]_+^{1/(α−1)} (+inf for an all-``-inf``
            row); for rows solved in the q-exponential form (α < 1.0625), τ = (α−1) μ − 1 with
            p = exp_α(z − μ), so −1 at α = 1 (where μ = log Σ exp z); detached.
        n_iter: (*batch) int64, Newton/bisection steps the row needed.
        converged: (*batch) bool, ``violation <= tol``.
        violation: (*batch) |Σ_i p_i − 1| at the returned τ (or μ), before the final
            renormalization.
    """

    probs: Tensor
    tau: Tensor
    n_iter: Tensor
    converged: Tensor
    violation: Tensor

    @property
    def max_violation(self) -> float:
        """The largest row violation (0.0 for an empty batch)."""
        return float(self.violation.max()) if self.violation.numel() else 0.0


def entmax15(logits: Tensor, *, dim: int = -1, validate: bool | None = None, impl: str = "auto") -> Tensor:
    """1.5-entmax, exact: p = [z/2 − τ]_+², with τ the unique threshold with Σ p = 1.

    The map of the Tsallis regularizer at α = 1.5 (:func:`tsallis15_regularizer`): sparse like
    sparsemax, smoother (its Jacobian on the support is diag(√p) − √p √pᵀ / Σ√p). On the support
    S, with x = z/2, τ solves |S| τ² − 2τ Σ_S x + Σ_S x² − 1 = 0, so it is exact in closed form
    from the support's sums of x and x². The support is found without sorting whole rows, as in
    :func:`~logitlab.sparsemax` (a native kernel on the CPU for float32 and half precision: the
    candidates x > τ's lower bound, τ certified against every other entry; elsewhere each row's
    ``torch.topk``, verified, retried wider, finally sorted). Half-precision
    inputs are computed in float32. ``-inf`` logits get probability exactly 0; a row of all
    ``-inf`` gives an all-zero row with zero gradient. NaN or ``+inf`` logits raise (with
    ``validate=False`` their rows come out NaN), checked from the row maxima the solve computes.

    Args:
        logits: (*batch, n) scores, along ``dim``.
        dim: the class axis.
        validate: reject NaN and ``+inf`` logits; None (the default): True for CPU tensors,
            False for CUDA ones, as in :func:`sparsemax`.
        impl: 'auto' | 'native' | 'torch' | 'triton' (:mod:`logitlab.backend`), as in
            :func:`sparsemax`.

    Returns:
        (*batch, n) probabilities, the shape and dtype of ``logits``.

    Raises:
        TypeError: ``logits`` is not a floating-point tensor.
        IndexError: ``dim`` is out of range.
        ValueError: NaN or ``+inf`` logits (validate).

    Example:
        >>> import torch
        >>> entmax15(torch.tensor([2.0, 1.0, -3.0]))
        tensor([0.8307, 0.1693, 0.0000])

    References:
        Peters, Niculae & Martins, "Sparse Sequence-to-Sequence Models", ACL 2019.
    """
    check_floating("entmax15", "logits", logits)
    axis = check_dim("entmax15", dim, logits.ndim)
    if logits.numel() == 0:
        return logits.clone()
    impl = backend.check_impl("entmax15", impl)
    validate = default_validate(logits, validate)
    return rowwise(lambda rows: threshold_map(rows, "entmax15", validate=validate, fn="entmax15", impl=impl)[0],
                   logits, axis)


def _check_alpha(fn: str, alpha: object, logits: Tensor, axis: int, *, values: bool = True
                 ) -> Tensor | float:
    """A float > 0, or a tensor > 0 broadcastable to ``logits`` with size 1 along ``dim``.

    ``values=False`` leaves a tensor's values unchecked (the solve checks them).
    """
    if isinstance(alpha, Tensor):
        if not alpha.is_floating_point():
            fail(fn, "alpha", "a float or a floating-point tensor", f"<dtype {alpha.dtype}>",
                 kind=TypeError)
        row_shape = list(logits.shape) if logits.ndim else [1]
        row_shape[axis] = 1
        shape = list(alpha.shape)
        ok = len(shape) <= len(row_shape)
        if ok:
            try:
                ok = list(torch.broadcast_shapes(tuple(shape), tuple(row_shape))) == row_shape
            except RuntimeError:
                ok = False
        if not ok:
            fail(fn, "alpha", f"a tensor broadcastable to {tuple(row_shape)} (size 1 along dim)",
                 f"<shape {tuple(shape)}>")
        if values:
            _check_alpha_tensor_values(fn, alpha)
        return alpha
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        fail(fn, "alpha", "a float > 0 or a tensor", f"<{type(alpha).__name__}>", kind=TypeError)
    if not (alpha > 0 and math.isfinite(alpha)):  # type: ignore[operator]
        fail(fn, "alpha", "a finite number > 0", float(alpha))  # type: ignore[arg-type]
    return float(alpha)  # type: ignore[arg-type]


def _check_alpha_tensor_values(fn: str, alpha: Tensor) -> None:
    good = (alpha > 0) & torch.isfinite(alpha)
    if alpha.numel() and not bool(good.all()):
        fail(fn, "alpha", "values > 0 (finite)", float(alpha.detach()[~good].flatten()[0]))


def _check_solver(fn: str, tol: object, max_iter: object) -> tuple[float, int]:
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not (
            math.isfinite(tol) and tol > 0):
        fail(fn, "tol", "a finite number > 0", tol)
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        fail(fn, "max_iter", "an int >= 1", max_iter)
    return float(tol), int(max_iter)  # type: ignore[arg-type]


def _entmax_rows(fn: str, logits: Tensor, alpha: object, dim: int, tol: object, max_iter: object,
                 raise_on_failure: bool, validate: bool, impl: str = "auto"):
    check_floating(fn, "logits", logits)
    impl = backend.check_impl(fn, impl, op="entmax")
    axis = check_dim(fn, dim, logits.ndim)
    # Compiled, a tensor α's values are checked inside the engine's op (no graph break there);
    # eager, here (> 0: the rows below DENSE_BELOW take the q-exponential solver).
    alpha = _check_alpha(fn, alpha, logits, axis, values=False)
    if isinstance(alpha, Tensor) and validate and not torch.compiler.is_compiling():
        _check_alpha_tensor_values(fn, alpha)
    tol_f, max_iter_i = _check_solver(fn, tol, max_iter)
    if logits.numel() == 0:
        batch = tuple(s for i, s in enumerate(logits.shape) if i != axis)
        empty = logits.new_zeros(batch, dtype=compute_dtype(logits))
        return logits.clone(), empty, empty.long(), empty, tol_f
    x = logits.reshape(1) if logits.ndim == 0 else logits
    rows, shape = to_rows(x, axis)
    cdtype = compute_dtype(logits)
    if isinstance(alpha, Tensor):
        row_shape = list(x.shape)
        row_shape[axis] = 1
        alpha_rows = to_rows(alpha.to(cdtype).expand(row_shape), axis)[0]
    else:
        # A Python float α is used as the double it is (not rounded to the logits' dtype: at
        # α near 1 the map is sensitive to it), except on devices without float64.
        exact = torch.float64 if rows.device.type == "cpu" else cdtype
        alpha_rows = rows.new_full((1, 1), alpha, dtype=exact)
    probs, tau, n_iter, violation = _solve_rows(
        fn, rows, alpha_rows, tol_f, max_iter_i, raise_on_failure, validate, impl)
    out = from_rows(probs, shape, axis, x.ndim).reshape(logits.shape)
    batch = tuple(s for i, s in enumerate(logits.shape) if i != axis)
    return out, tau.reshape(batch), n_iter.reshape(batch), violation.reshape(batch), tol_f


def _softmax_rows(fn: str, rows: Tensor, validate: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """α = 1: torch's softmax, with the report of the q-exponential form (τ = −1, 0 steps)."""
    cdtype = compute_dtype(rows)
    top = rows.amax(-1)
    broken = torch.isnan(top) | (top == math.inf)
    if validate and bool(broken.any()):
        reject_logits(fn, rows, broken)
    excluded = top == -math.inf
    x = rows.to(cdtype)
    probs = torch.softmax(torch.where(excluded[:, None], 0.0, x), -1)
    probs = torch.where(excluded[:, None], 0.0, probs).to(rows.dtype)
    tau = torch.where(excluded, math.inf, torch.where(broken, math.nan, -1.0)).to(cdtype)
    n_iter = torch.zeros(rows.shape[0], dtype=torch.int64, device=rows.device)
    violation = torch.where(broken, math.nan, 0.0).to(cdtype)
    return probs, tau, n_iter, violation


def _solve_rows(fn: str, rows: Tensor, alpha: Tensor, tol: float, max_iter: int,
                raise_on_failure: bool, validate: bool, impl: str = "auto") -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """α-entmax of (rows, n): α ≥ DENSE_BELOW by the threshold engine, the rest (near and below
    1) by the q-exponential solver, each with its native kernel where ``impl`` resolves to one;
    a tensor α with both splits the rows."""
    # Compiled, or on meta tensors (no α to read): the engine alone, whose op has a fake.
    eager = not torch.compiler.is_compiling() and has_data(rows)
    if alpha.shape[0] > 1 and eager:
        dense = (alpha < DENSE_BELOW).reshape(-1)
        if bool(dense.any()) and not bool(dense.all()):
            parts = [_solve_rows(fn, rows.index_select(0, idx), alpha.index_select(0, idx), tol,
                                 max_iter, raise_on_failure, validate, impl)
                     for idx in (torch.nonzero(dense).squeeze(1), torch.nonzero(~dense).squeeze(1))]
            order = torch.cat([torch.nonzero(dense).squeeze(1), torch.nonzero(~dense).squeeze(1)])
            inverse = torch.empty_like(order)
            inverse[order] = torch.arange(order.numel(), device=order.device)
            return tuple(torch.cat([a, b]).index_select(0, inverse) for a, b in zip(*parts))  # type: ignore
        use_dense = bool(dense.all())
    else:
        use_dense = eager and alpha.numel() > 0 and float(alpha.detach().reshape(-1)[0]) < DENSE_BELOW
    if not use_dense:
        probs, tau, n_iter, violation, _ = threshold_map(
            rows, "bisect", alpha, tol=tol, max_iter=max_iter, raise_on_failure=raise_on_failure,
            validate=validate, fn=fn, impl=impl)
        return probs, tau, n_iter, violation
    if alpha.shape[0] == 1 and not alpha.requires_grad and float(alpha.reshape(-1)[0]) == 1.0:
        return _softmax_rows(fn, rows, validate)  # α = 1 exactly, no α-gradient: the softmax
    probs, tau, n_iter, violation = qexp_map(rows, alpha, tol=tol, max_iter=max_iter,
                                             validate=validate, fn=fn, impl=impl)
    if raise_on_failure:
        check_converged(fn, violation, tol, max_iter)
    return probs, tau, n_iter, violation


def entmax(logits: Tensor, alpha: float | Tensor = 1.5, *, dim: int = -1, tol: float = DEFAULT_TOL,
           max_iter: int = DEFAULT_MAX_ITER, validate: bool = True, impl: str = "auto") -> Tensor:
    """α-entmax for any α > 0: p = [(α−1) z − τ]_+^{1/(α−1)}, with τ such that Σ p = 1.

    The map of the Tsallis regularizer Ω_α(p) = (Σ p^α − 1)/(α(α−1)) (:func:`tsallis_regularizer`),
    p = argmax_{p ∈ Δ} ⟨z, p⟩ − Ω_α(p): softmax at α = 1, 1.5-entmax at α = 1.5, sparsemax at
    α = 2; sparse for α > 1, dense with power-law tails for α < 1. Equivalently
    p_i = exp_α(z_i − μ) with exp_α(t) = [1 + (α−1) t]_+^{1/(α−1)} (exp at α = 1) and
    τ = (α−1) μ − 1.

    Two solvers, chosen per row by α. For α ≥ 1.0625, τ has no closed form; it is found by
    safeguarded Newton (bisection whenever a Newton step leaves the
    bracket [max − 1, max − k^{1−α}] in the x = (α−1) z scale), in float64, on the entries that
    can be in the support (native kernel on the CPU for float32 and half precision: those above
    a lower bound on τ; elsewhere each row's ``torch.topk``, verified against the rest as in
    :func:`sparsemax`, retried wider, then a full sort). For α < 1.0625 (near and below 1) μ is
    solved instead, in the logits' scale, by safeguarded Newton on log Σ exp_α(z − μ) over the
    whole row in float64 (``normalizers._qexp``; native kernel on the CPU for float32 and half
    precision, elsewhere torch ops), with exp_α as exp(log1p((α−1)t)/(α−1)): no
    1/(α−1) factor anywhere, so the map and both gradients are continuous across α = 1, where
    it is the softmax. Either way the solve stops when every row satisfies
    |Σ p − 1| ≤ ``tol``; if ``max_iter`` steps do not get there it raises
    :class:`ConvergenceError` rather than return a silently wrong answer
    (:func:`entmax_with_info` reports per row instead). Rows are then renormalized to sum to 1.
    Under ``torch.compile`` only the engine's custom op is traced: a tensor α must then be > 1
    (an error otherwise), a float α ≥ 1.0625 traces without a graph break.

    Gradients flow to ``logits`` and, when ``alpha`` is a tensor that requires grad, to
    ``alpha`` (a per-row α may cross 1 during training): with s = p^{2−α} on the support,
    ∂L/∂z = s ⊙ (g − c), c = Σ s g / Σ s; ∂L/∂α = Σ_i (g_i − c) ∂exp_α(t)/∂α at t = z_i − μ
    (= q Σ_i (g_i − c) p_i (q − log p_i) with q = 1/(α−1) for α ≠ 1; −½ Σ_i (g_i − c) p_i log² p_i
    at α = 1). Double backward (``create_graph=True``) is supported.

    Args:
        logits: (*batch, n) scores, along ``dim``.
        alpha: a float > 0, or a tensor > 0 broadcastable to ``logits`` with size 1 along
            ``dim`` (e.g. (*batch, 1), one α per row).
        dim: the class axis.
        tol: tolerance on |Σ p − 1| before renormalization (> 0).
        max_iter: maximum Newton/bisection steps (>= 1).
        validate: reject NaN and ``+inf`` logits, and NaN, infinite or <= 0 values of a tensor
            ``alpha`` (without it such rows come out NaN). The logits are checked from the row
            maxima the solve computes anyway (no extra pass), inside the op, so also under
            ``torch.compile``.
        impl: 'auto' | 'native' | 'torch' (:mod:`logitlab.backend`): the native kernels (the
            threshold engine's for α ≥ 1.0625, the q-exponential solver's below), or the torch
            paths (the ``torch.topk`` engine, the q-exponential solver in torch ops).

    Returns:
        (*batch, n) probabilities, the shape and dtype of ``logits``.

    Raises:
        TypeError: ``logits`` (or a tensor ``alpha``) is not floating point.
        IndexError: ``dim`` is out of range.
        ValueError: ``alpha <= 0``, a bad ``alpha`` shape, ``tol <= 0`` or ``max_iter < 1``;
            NaN or ``+inf`` logits, a tensor ``alpha`` with NaN or values <= 0 (validate).
        ConvergenceError: the solve did not reach ``tol`` within ``max_iter`` steps.

    Example:
        >>> import torch
        >>> entmax(torch.tensor([2.0, 1.0, -3.0]), alpha=1.5)
        tensor([0.8307, 0.1693, 0.0000])
        >>> entmax(torch.tensor([1.0, 0.5, -1.0]), alpha=2.0)  # sparsemax
        tensor([0.7500, 0.2500, 0.0000])
        >>> entmax(torch.tensor([1.0, 0.5, -1.0]), alpha=1.0)  # softmax
        tensor([0.5741, 0.3482, 0.0777])
        >>> entmax(torch.tensor([1.0, 0.5, -1.0]), alpha=0.5)  # dense, heavier tail
        tensor([0.4821, 0.3500, 0.1679])

    References:
        Peters, Niculae & Martins, "Sparse Sequence-to-Sequence Models", ACL 2019;
        Blondel, Martins & Niculae, "Learning with Fenchel-Young Losses", JMLR 2020;
        Correia, Niculae & Martins, "Adaptively Sparse Transformers", EMNLP 2019 (learned α).
    """
    return _entmax_rows("entmax", logits, alpha, dim, tol, max_iter, True, validate, impl)[0]


def entmax_with_info(logits: Tensor, alpha: float | Tensor = 1.5, *, dim: int = -1,
                     tol: float = DEFAULT_TOL, max_iter: int = DEFAULT_MAX_ITER,
                     validate: bool = True, impl: str = "auto") -> EntmaxInfo:
    """:func:`entmax`, returning the solve's report instead of raising when it does not converge.

    Args and Raises: as :func:`entmax` (except :class:`ConvergenceError`).

    Returns:
        :class:`EntmaxInfo` (probs, tau, n_iter, converged, violation); ``probs`` carries the
        gradients, the other fields are detached.

    Example:
        >>> import torch
        >>> info = entmax_with_info(torch.tensor([[2.0, 1.0, -3.0]]), alpha=1.5)
        >>> bool(info.converged.all()), info.probs
        (True, tensor([[0.8307, 0.1693, 0.0000]]))
        >>> info = entmax_with_info(torch.tensor([[2.0, 1.0, 0.5]]), alpha=1.3, max_iter=1)
        >>> bool(info.converged.all())
        False
    """
    probs, tau, n_iter, violation, tol_f = _entmax_rows(
        "entmax_with_info", logits, alpha, dim, tol, max_iter, False, validate, impl)
    violation = violation.detach()
    return EntmaxInfo(probs, tau.detach(), n_iter, violation <= tol_f, violation)


def tsallis_regularizer(probs: Tensor, *, alpha: float | Tensor = 1.5, dim: int = -1,
                        validate: bool = True) -> Tensor:
    """Ω_α(p) = (Σ_i p_i^α − 1) / (α(α − 1)): the Tsallis regularizer, the Ω of α-entmax.

    The negative Tsallis α-entropy, convex on the simplex for every α > 0; Ω(one-hot) = 0. At
    α = 2 it is ½‖p‖² − ½ (sparsemax's Ω); at α = 1 it is the Shannon negentropy Σ p log p (the
    limit, continuous in α: computed as Σ p·expm1((α−1) log p)/(α(α−1)), exact for rows on the
    simplex, without the cancellation of Σ p^α − 1 near α = 1).

    Args:
        probs: (*batch, n) distributions along ``dim``.
        alpha: a float > 0, or a tensor > 0 broadcastable to ``probs`` with size 1 along ``dim``.
        dim: the class axis.
        validate: reject NaN, inf and negative entries of ``probs``.

    Returns:
        (*batch) Ω of each row, in the dtype of ``probs``.

    Raises:
        TypeError: ``probs`` is not floating point.
        IndexError: ``dim`` is out of range.
        ValueError: ``alpha <= 0``; non-finite or negative entries (validate).

    Example:
        >>> import torch
        >>> tsallis_regularizer(torch.tensor([[1.0, 0.0], [0.5, 0.5]]), alpha=2.0)
        tensor([ 0.0000, -0.2500])
        >>> tsallis_regularizer(torch.tensor([0.5, 0.5]), alpha=1.0)  # -log 2
        tensor(-0.6931)

    References:
        Tsallis, "Possible generalization of Boltzmann-Gibbs statistics", J. Stat. Phys. 1988;
        Blondel, Martins & Niculae, "Learning with Fenchel-Young Losses", JMLR 2020.
    """
    check_floating("tsallis_regularizer", "probs", probs)
    axis = check_dim("tsallis_regularizer", dim, probs.ndim)
    alpha = _check_alpha("tsallis_regularizer", alpha, probs, axis)
    if validate:
        check_nonnegative("tsallis_regularizer", "probs", probs)
    p = probs.to(compute_dtype(probs))
    if p.ndim == 0:
        p = p.reshape(1)
    a = alpha.to(p.dtype) if isinstance(alpha, Tensor) else torch.tensor(alpha, dtype=p.dtype)
    # Σ p^α − 1 = Σ_{p>0} p (p^{α−1} − 1) on the simplex: each term p·expm1((α−1) log p)/(α−1)
    # (p log p at α = 1) has no cancellation near α = 1.
    eps = a - 1
    positive = p > 0
    log_p = torch.where(positive, p.clamp_min(torch.finfo(p.dtype).tiny).log(), 0)
    safe = torch.where(eps == 0, 1, eps)
    term = torch.where(eps == 0, log_p, torch.expm1(eps * log_p) / safe)
    value = torch.where(positive, p * term, 0).sum(axis, keepdim=True) / a
    return value.squeeze(axis).reshape([s for i, s in enumerate(probs.shape) if i != axis]).to(probs.dtype)


def tsallis15_regularizer(probs: Tensor, *, dim: int = -1, validate: bool = True) -> Tensor:
    """Ω(p) = (Σ_i p_i^{3/2} − 1) / 0.75: the Tsallis regularizer at α = 1.5, Ω of entmax15.

    Args:
        probs: (*batch, n) distributions along ``dim``.
        dim: the class axis.
        validate: reject NaN, inf and negative entries.

    Returns:
        (*batch) Ω of each row, in the dtype of ``probs``.

    Raises:
        TypeError: ``probs`` is not floating point.
        IndexError: ``dim`` is out of range.
        ValueError: non-finite or negative entries (validate).

    Example:
        >>> import torch
        >>> tsallis15_regularizer(torch.tensor([[1.0, 0.0], [0.5, 0.5]]))
        tensor([ 0.0000, -0.3905])
    """
    check_floating("tsallis15_regularizer", "probs", probs)
    check_dim("tsallis15_regularizer", dim, probs.ndim)
    if validate:
        check_nonnegative("tsallis15_regularizer", "probs", probs)
    return tsallis_regularizer(probs, alpha=1.5, dim=dim, validate=False)
