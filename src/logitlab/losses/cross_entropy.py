"""Cross-entropy H(target, softmax(logits)) with every option combinable, and its relatives.

``cross_entropy`` is the maximum-likelihood loss of a softmax model; ``nll_loss`` takes log
probabilities; ``binary_cross_entropy_with_logits`` is the one-vs-all (sigmoid) version;
``log_likelihood`` is the summed log-likelihood of a batch, in log space. The kernels live in
:mod:`logitlab.losses._xent_kernel`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from logitlab import backend
from logitlab._native import xent as native_xent
from logitlab._reduction import reduce_loss, shift_target
from logitlab._validation import (
    all_finite,
    check_finite,
    check_floating,
    check_index_target,
    check_range,
    check_reduction,
    check_same_device,
    compute_dtype,
    default_validate,
    fail,
    has_data,
    meta_output,
)
from logitlab.losses._inputs import data_checks_off, loss_rows, no_grad_options
from logitlab.losses._xent_kernel import XentOptions, composite_cross_entropy, fused_cross_entropy

__all__ = ["cross_entropy", "nll_loss", "binary_cross_entropy_with_logits", "log_likelihood"]


def cross_entropy(logits: Tensor, target: Tensor, *, dim: int = -1, weight: Tensor | None = None,
                  ignore_index: int = -100, mask: Tensor | None = None, reduction: str = "mean",
                  label_smoothing: float = 0.0, z_loss: float = 0.0, temperature: float = 1.0,
                  validate: bool | None = None, inplace_backward: bool = False, impl: str = "auto",
                  shift: int = 0) -> Tensor:
    r"""Cross-entropy H(q, softmax(logits / T)) + z-loss, the maximum-likelihood loss.

    With s = logits / T, log p = log_softmax(s) along ``dim``, class weights w (default 1) and a
    target distribution q per row: the one-hot vector of the class index, or the given
    probabilities, smoothed to q ← (1 − ε) q + ε / C (C classes, ε = ``label_smoothing``)::

        loss_row = −Σ_c q_c w_c log p_c  +  z · r · logsumexp(s)²

    where r is the weight of the row: w_y for an index target y, 1 for probability targets
    (the z-loss of PaLM, Chowdhery et al. 2022, weighted like its row). Without weights, z-loss
    and temperature this is H(q, p) = H(q) + KL(q ‖ p). Reductions: 'none' gives a loss per row
    (excluded rows hold 0), 'sum' sums the kept rows, 'mean' divides that sum by the total row
    weight of the kept rows: Σ w_y for index targets, the number of kept rows for probability
    targets (both as ``torch.nn.functional.cross_entropy``, whose values and gradients this
    function reproduces wherever torch supports the combination; use ``dim=1`` for torch's
    (N, C, d1, ...) layout).

    Where torch is silent or refuses, logitlab defines:

    * Rows are excluded by ``ignore_index`` (index targets) and by ``mask`` (either kind; True
      keeps the row). Probability targets have no indices, so ``ignore_index`` does not apply
      to them (torch raises instead). Excluded rows give 0 loss and zero gradient.
    * A batch with every row excluded has loss 0 and zero gradient for every reduction
      (torch's 'mean' gives NaN).
    * A ``-inf`` logit excludes its class (probability exactly 0). Target mass on an excluded
      class (the target index itself, or any class when ``label_smoothing > 0``, as in torch)
      gives loss +inf; the gradient stays finite. A class with zero target probability and a
      ``-inf`` logit contributes 0 (0 · log 0 = 0). A kept row with only ``-inf`` logits is an
      error; an excluded row may be all ``-inf`` (padding often is) and gives 0 and zero
      gradient (torch gives a NaN gradient row).

    Implementation (``impl``, the same values as every op: :mod:`logitlab.backend`): 'native'
    and 'torch' compute the loss and its gradient in one pass over the logits and save only the
    gradient (the backward scales it in place, so it runs once and has no double backward: use
    'composite' for that). 'native' is a C kernel for CPU float32/bfloat16/float16 logits, built
    once per machine on first use (a compiler run, then cached; see ``logitlab env``); 'torch' is the
    same algorithm in eager torch ops, for every device and dtype, with the same results.
    'composite' is written with differentiable torch ops. 'triton' is the one-pass computation as
    one Triton kernel launch (``logitlab/_triton/xent.py``) for CUDA tensors (CPU tensors only
    under Triton's interpreter, ``TRITON_INTERPRET=1``): it reads no value on the host unless
    ``validate`` is on, and under ``torch.compile`` it is a custom op (no graph break). 'auto'
    picks 'triton' for CUDA tensors when triton imports (under ``torch.compile`` too), 'native'
    where the kernel takes the logits, else 'torch', except under ``torch.compile`` (other than
    triton's), inside a ``torch.func`` transform, or when the target probabilities or the class
    weights require a gradient, where it picks 'composite'.

    Args:
        logits: (*batch, C) scores (C along ``dim``); float16/bfloat16 are computed in float32
            and the loss is returned in the input dtype.
        target: (*batch) integer class indices, or (*batch, C) probabilities of logits' dtype.
        dim: the class axis.
        weight: (C,) class weights.
        ignore_index: index targets equal to it are excluded.
        mask: (*batch) bool, True = keep the row.
        reduction: 'none' | 'mean' | 'sum'.
        label_smoothing: ε in [0, 1].
        z_loss: z ≥ 0, the coefficient of logsumexp².
        temperature: T > 0; the loss is that of softmax(logits / T).
        validate: check the data (index range, probability rows, NaN/+inf logits, finite
            class weights). With ``False`` these checks are skipped; argument checks always
            run. ``None`` (the default) means True except for CUDA tensors: the checks read
            values on the host, a synchronization a GPU step should not pay. The class indices
            are checked whatever it says (an index addresses memory), except by impl='triton'
            with the checks off, whose kernel reads nothing for an index outside [0, C) and
            gives that row a NaN loss. Under ``torch.compile`` the data checks are skipped.
        inplace_backward: write the gradient into the logits' memory during the forward
            (saves an (N, C) allocation). This DESTROYS the logits: only use it when nothing
            else reads them after this call. Fused implementation only; not for expanded
            (broadcast) logits, whose elements share memory.
        impl: 'auto' | 'native' | 'torch' | 'composite' | 'triton' (see above; the old name 'fused'
            means 'auto').
        shift: k >= 0 (True = 1), index targets only: row t of the sequence (the last
            dimension of ``target``) is scored against ``target[..., t + k]``, the next-token
            targets of a causal LM; the last k positions do not count (loss 0 for 'none', left
            out of 'mean'). Only the integer targets move, the logits are not sliced or copied;
            ``mask`` still selects rows of ``logits``. k must be smaller than target.shape[-1].

    Returns:
        A scalar, or (*batch) per-row losses for ``reduction='none'``, in logits' dtype.

    Raises:
        TypeError / ValueError / IndexError: naming the argument, e.g. a target shape or dtype
        mismatch, a class index out of range, probabilities that are negative or do not sum
        to 1, NaN or +inf logits, NaN or infinite class weights, no class (C = 0), an invalid
        option, ``impl='native'`` where the kernel cannot run (another device or dtype, a tensor
        subclass, ``LOGITLAB_NATIVE=0``), or ``impl='native'``/``'torch'`` when the class weights
        or target probabilities require a gradient (those differentiate the logits only).

    Example:
        >>> logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
        >>> cross_entropy(logits, torch.tensor([0, 2]))
        tensor(0.6342)
        >>> cross_entropy(logits, torch.tensor([0, -100]), reduction="none")
        tensor([0.1698, 0.0000])
        >>> cross_entropy(logits, torch.tensor([-100, -100]))  # all ignored: 0, not NaN
        tensor(0.)
    """
    fn = "cross_entropy"
    no_grad_options(fn, label_smoothing=label_smoothing, z_loss=z_loss, temperature=temperature)
    eps = check_range(fn, "label_smoothing", label_smoothing, 0.0, 1.0)
    z = check_range(fn, "z_loss", z_loss, 0.0, math.inf, high_open=True)
    impl = backend.check_impl(fn, impl)
    validate = default_validate(logits, validate)
    target = shift_target(fn, target, shift, ignore_index)
    r = loss_rows(fn, logits, target, dim=dim, weight=weight, ignore_index=ignore_index, mask=mask,
                  reduction=reduction, temperature=temperature, validate=validate, check_indices=False)
    if not has_data(logits, target, weight, mask):  # meta: the output's shape, no data to read
        return meta_output(logits, r.batch_shape, reduction)
    compiling = data_checks_off()
    other_grads = (not r.index_target and target.requires_grad) or (weight is not None and weight.requires_grad)
    # Under torch.compile the Triton kernel is a custom op (no graph break), so compiling alone
    # does not send CUDA logits to 'composite' where triton imports.
    compiled_triton = compiling and r.rows.device.type == "cuda" and backend.triton_available()
    impl = backend.resolve(fn, impl, r.rows, native=lambda: native_xent.supports(r.rows),
                           composite=(compiling and not compiled_triton) or other_grads)
    if r.index_target and not compiling and (validate or impl != "triton"):
        # Whatever `validate` says (an index addresses memory), but for the Triton kernel.
        check_index_target(fn, "target", r.target, r.rows.shape[1], ignore_index=ignore_index, keep=r.keep)
    if impl != "composite" and other_grads:
        # The one-pass Function returns no gradient for them: raise rather than drop it silently.
        which = "weight" if weight is not None and weight.requires_grad else "target"
        fail(fn, "impl", "'composite' or 'auto' when " + which + " requires a gradient",
             impl, detail=f"the {impl!r} implementation differentiates the logits only")
    if inplace_backward and impl == "composite":
        fail(fn, "inplace_backward", "False with the composite implementation", inplace_backward,
             detail="impl resolved to 'composite'")
    if inplace_backward and any(stride == 0 and size > 1 for stride, size in zip(r.rows.stride(), r.rows.shape)):
        # An expanded (broadcast) tensor has one memory cell for several elements: the gradient
        # cannot be written into it (torch raised 'unsupported operation' from inside the kernel).
        fail(fn, "inplace_backward", "False for expanded logits (elements sharing memory)",
             inplace_backward, detail=f"logits strides {tuple(logits.stride())}; clone() them first")
    opts = XentOptions(fn, r.index_target, eps, z, r.temperature, reduction == "none",
                       bool(validate) and not compiling, bool(inplace_backward), impl == "native")
    scale = r.scale()
    if impl == "triton":
        from logitlab._triton.ops import triton_cross_entropy as kernel
    else:
        kernel = composite_cross_entropy if impl == "composite" else fused_cross_entropy
    out = kernel(r.rows, r.target, r.weight, r.keep, scale, opts)
    return out.reshape(r.batch_shape) if reduction == "none" else out


def nll_loss(log_probs: Tensor, target: Tensor, *, dim: int = -1, weight: Tensor | None = None,
             ignore_index: int = -100, mask: Tensor | None = None, reduction: str = "mean",
             validate: bool = True) -> Tensor:
    r"""Negative log-likelihood −w_y log p_y of class indices, given log probabilities.

    ``nll_loss(log_softmax(z), y) == cross_entropy(z, y)``. The reductions and row exclusion
    are those of :func:`cross_entropy` ('mean' divides by Σ w_y over kept rows, and is 0 when
    every row is excluded); values and gradients equal ``torch.nn.functional.nll_loss``.

    Args:
        log_probs: (*batch, C) log probabilities (C along ``dim``).
        target: (*batch) integer class indices.
        dim: the class axis.
        weight: (C,) class weights.
        ignore_index: targets equal to it are excluded.
        mask: (*batch) bool, True = keep the row.
        reduction: 'none' | 'mean' | 'sum'.
        validate: check the index range and that log_probs has no NaN or +inf.

    Returns:
        A scalar, or (*batch) for ``reduction='none'``.

    Raises:
        TypeError / ValueError / IndexError naming the argument.

    Example:
        >>> nll_loss(torch.log(torch.tensor([[0.5, 0.5], [0.9, 0.1]])), torch.tensor([0, 0]))
        tensor(0.3993)
    """
    fn = "nll_loss"
    r = loss_rows(fn, log_probs, target, dim=dim, weight=weight, ignore_index=ignore_index, mask=mask,
                  reduction=reduction, validate=validate, kinds=("index",), name="log_probs")
    if not has_data(log_probs, target, weight, mask):
        return meta_output(log_probs, r.batch_shape, reduction)
    if validate and not data_checks_off():
        check_finite(fn, "log_probs", log_probs)
    cd = compute_dtype(log_probs)
    picked = r.rows.to(cd).gather(1, r.target.unsqueeze(1)).squeeze(1)
    values = -picked if r.weight is None else -picked * r.row_weight
    out = reduce_loss(values, reduction, keep=r.keep, row_weight=r.row_weight)
    out = out.reshape(r.batch_shape) if reduction == "none" else out
    return out.to(log_probs.dtype)


def binary_cross_entropy_with_logits(logits: Tensor, target: Tensor, *, weight: Tensor | None = None,
                                     pos_weight: Tensor | None = None, reduction: str = "mean",
                                     validate: bool = True) -> Tensor:
    r"""Binary cross-entropy of independent Bernoulli probabilities sigmoid(logits).

    Per element, with σ the sigmoid and target probability t ∈ [0, 1]::

        loss = −w · [ pos_weight · t · log σ(z) + (1 − t) · log(1 − σ(z)) ]
             = w · [ (1 − t) · z + (1 + (pos_weight − 1) · t) · softplus(−z) ]

    (the second form is the stable one used here). 'mean' averages over all elements (and is
    0 for an empty tensor, where torch gives NaN). Values and gradients equal
    ``torch.nn.functional.binary_cross_entropy_with_logits`` for finite logits.

    Args:
        logits: (*shape) scores.
        target: (*shape) probabilities in [0, 1], logits' dtype.
        weight: a tensor broadcastable to (*shape), multiplying each element's loss.
        pos_weight: a tensor broadcastable to (*shape) (typically (C,)), the weight of the
            positive term.
        reduction: 'none' | 'mean' | 'sum'.
        validate: check that target lies in [0, 1], and that logits, weight and pos_weight
            are finite.

    Returns:
        A scalar, or (*shape) for ``reduction='none'``.

    Raises:
        TypeError / ValueError naming the argument: a non-floating tensor, a target shape
        other than logits', a weight that does not broadcast to logits' shape, NaN or
        infinite logits or weights, targets outside [0, 1].

    Example:
        >>> binary_cross_entropy_with_logits(torch.tensor([0.0, 2.0]), torch.tensor([1.0, 0.0]))
        tensor(1.4100)
    """
    fn = "binary_cross_entropy_with_logits"
    check_reduction(fn, reduction)
    check_floating(fn, "logits", logits)
    check_floating(fn, "target", target)
    if target.shape != logits.shape:
        fail(fn, "target", f"shape {tuple(logits.shape)} (the shape of logits)", f"<shape {tuple(target.shape)}>")
    check_same_device(fn, "logits", logits, target=target, weight=weight, pos_weight=pos_weight)
    if not has_data(logits, target, weight, pos_weight):
        return meta_output(logits, tuple(logits.shape), reduction)
    for name, value in (("weight", weight), ("pos_weight", pos_weight)):
        if value is not None:
            check_floating(fn, name, value)
            try:
                broadcast = torch.broadcast_shapes(value.shape, logits.shape)
            except RuntimeError:
                broadcast = None
            # It must broadcast TO logits' shape: a larger weight would enlarge the output.
            if broadcast != logits.shape:
                fail(fn, name, f"a shape broadcastable to {tuple(logits.shape)}", value)
            if validate and not data_checks_off() and not bool(torch.isfinite(value).all()):
                fail(fn, name, "finite values", "<NaN or inf entries>")
    if validate and not data_checks_off():
        if not all_finite(logits):
            # ±inf is rejected too: (1 − t) · z is 0 · inf = NaN at z = +inf, t = 1.
            fail(fn, "logits", "finite values", "<NaN or inf entries>")
        if target.numel() and bool(((target < 0) | (target > 1) | torch.isnan(target)).any()):
            fail(fn, "target", "probabilities in [0, 1]",
                 f"<range [{float(target.min()):.3g}, {float(target.max()):.3g}]>")
    cd = compute_dtype(logits)
    z, t = logits.to(cd), target.to(cd)
    softplus_neg = torch.nn.functional.softplus(-z)
    if pos_weight is None:
        values = (1 - t) * z + softplus_neg
    else:
        values = (1 - t) * z + (1 + (pos_weight.to(cd) - 1) * t) * softplus_neg
    if weight is not None:
        values = values * weight.to(cd)
    if reduction == "mean" and values.numel() == 0:
        out = values.sum()  # the mean of no element is 0 (as reduce_loss), not torch's NaN
    else:
        out = values if reduction == "none" else (values.sum() if reduction == "sum" else values.mean())
    return out.to(logits.dtype)


def log_likelihood(logits: Tensor, target: Tensor, *, dim: int = -1, validate: bool = True) -> Tensor:
    r"""The summed log-likelihood Σ_i log softmax(logits_i)[y_i] of a batch, in log space.

    The likelihood of a batch is the product Π_i p(y_i | x_i); for any realistic batch it
    underflows to 0 even in float64, while its log, the sum of the per-example log
    probabilities, stays finite and exact. Maximizing it is minimizing
    ``cross_entropy(..., reduction="sum")``, which is what this returns negated. Probability
    targets give the expected log-likelihood Σ_i Σ_c q_ic log p_ic.

    Args:
        logits: (*batch, C) scores (C along ``dim``).
        target: (*batch) class indices or (*batch, C) probabilities.
        dim: the class axis.
        validate: as in :func:`cross_entropy`.

    Returns:
        A scalar ≤ 0 (−inf when a target class has a ``-inf`` logit).

    Raises:
        TypeError / ValueError / IndexError naming the argument, as :func:`cross_entropy`
        (the messages name ``cross_entropy()``, which computes it).

    Example:
        >>> log_likelihood(torch.zeros(1000, 10), torch.zeros(1000, dtype=torch.long))  # 1000 log 0.1
        tensor(-2302.5852)
    """
    return -cross_entropy(logits, target, dim=dim, reduction="sum", validate=validate)
