"""Row kernels: from a block of logits to per-row losses and the gradient with respect to them.

A kernel sees one chunk of rows at a time, as a float32 (or float64) matrix it may overwrite,
and returns ``(loss_rows, grad_logits)``. The chunk loop (``_engine``) owns the matmuls; the
kernels own the mathematics. The cross-entropy kernel also works on a vocabulary slice: given a
process group, its row statistics (max, Σ exp, the target logit, Σ w_c z_c) are all-reduced, so
every rank computes the loss of the full vocabulary while holding only its own columns.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from torch import Tensor

from logitlab._native import xent as native_xent

# The bound on each collective of the call in progress (None: the group's own timeout).
_TIMEOUT: contextvars.ContextVar[datetime.timedelta | None] = contextvars.ContextVar("timeout", default=None)


def collective_timeout(timeout: datetime.timedelta | None):
    """Every collective started inside (all_reduce, all_gather below) waits at most ``timeout``.

    None (the group's own timeout) and traced code (``torch.compile``, whose collectives are
    functional ones that take no timeout) enter no context at all: Dynamo traces through.
    """
    if timeout is None or torch.compiler.is_compiling():
        return contextlib.nullcontext()
    return _bounded(timeout)


@contextlib.contextmanager
def _bounded(timeout: datetime.timedelta):
    token = _TIMEOUT.set(timeout)
    try:
        yield
    finally:
        _TIMEOUT.reset(token)


def _run(what: str, start) -> None:
    """Run collective ``start(async_op)``, waiting at most the current timeout; clear errors."""
    timeout = _TIMEOUT.get()
    try:
        if timeout is None:
            start(False)
        elif start(True).wait(timeout) is False:  # a backend that reports instead of raising
            raise RuntimeError("the wait timed out")
    except RuntimeError as error:
        bound = f" within timeout={timeout.total_seconds():g} s" if timeout is not None else ""
        raise RuntimeError(
            f"vocab-parallel loss: {what} did not complete{bound} on rank {dist.get_rank()}: another rank "
            f"failed, left, did not call it, or the group timed out ({error})") from error


def all_reduce(x: Tensor, op: str, group) -> Tensor:
    """``x`` all-reduced (``op`` 'sum' or 'max') over ``group``; ``x`` itself without a group.

    Use the returned tensor: with the group's own timeout (no ``collective_timeout``, and always
    under ``torch.compile``) it is a new tensor from the functional collective
    (``torch.distributed._functional_collectives.all_reduce``, which ``torch.compile`` traces);
    with a timeout, ``x`` reduced in place by ``dist.all_reduce`` and waited on for at most that.
    """
    if group is None:
        return x
    if torch.compiler.is_compiling():
        return funcol.all_reduce(x, op, group)
    what = f"all_reduce({op}) of a {tuple(x.shape)} tensor"
    if _TIMEOUT.get() is None:
        out = []
        _run(what, lambda async_op: out.append(_waited(funcol.all_reduce(x, op, group))))
        return out[0]
    reduce_op = dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM
    _run(what, lambda async_op: dist.all_reduce(x, op=reduce_op, group=group, async_op=async_op))
    return x


def all_reduce_online(maxima: Tensor, sums: Tensor, against: tuple[int, ...], plain: Tensor,
                      group) -> tuple[Tensor, Tensor, Tensor]:
    """The full-vocabulary row statistics of per-slice online sums, in the two all-reduces they need.

    ``maxima`` (k, N) are this rank's row maxima of k score rows; row i of ``sums`` (j, N) is an
    online sum Σ e^{x − m} f(x) over this rank's columns, taken against ``maxima[against[i]]``;
    ``plain`` (l, N) are sums that need no rescaling. The maxima are all-reduced (MAX) into M
    (0 where every rank's is −inf), then the sums, rescaled by e^{m − M}, and ``plain`` in one
    SUM. Returns (M, the global sums, the global plain sums). Nothing is read on the host.
    """
    peak = all_reduce(maxima.clone(), "max", group)
    peak = torch.where(torch.isfinite(peak), peak, peak.new_zeros(()))
    index = list(against)
    reduced = all_reduce(torch.cat([sums * (maxima[index] - peak[index]).exp(), plain]), "sum", group)
    return peak, reduced[:sums.shape[0]], reduced[sums.shape[0]:]


def _waited(x: Tensor) -> Tensor:
    """The plain tensor of a functional collective's result, waited on (never the wrapper
    subclass: the native kernels read raw pointers)."""
    return x.wait() if isinstance(x, funcol.AsyncCollectiveTensor) else funcol.wait_tensor(x)


def all_gather(x: Tensor, group) -> list[Tensor]:
    """Every rank's ``x`` (same shape on every rank), in rank order."""
    out = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    _run(f"all_gather of a {tuple(x.shape)} tensor",
         lambda async_op: dist.all_gather(out, x, group=group, async_op=async_op))
    return out


def kept_index(keep: Tensor) -> Tensor | None:
    """Indices of the rows that count (``keep`` (N,) bool), or None when every row does.

    A row kernel's ignored rows have loss 0 and gradient 0, so the chunk loop skips them (for a
    kernel with ``keep`` and ``take``): no logits and no matmuls for padding.
    """
    if bool(keep.all()):
        return None
    return keep.nonzero().squeeze(1)


def triton_row_scale(keep: Tensor, row_scale: Tensor | float | None, start: int, stop: int,
                     dtype: torch.dtype) -> Tensor:
    """The (rows,) factors a Triton row kernel multiplies a chunk's gradient rows by: ``keep``
    (0 for rows that do not count) times ``row_scale`` (a number, a 0-d tensor or an (N,) tensor
    of which rows [start, stop) are the chunk's), in float64 for float64 blocks, else float32."""
    scale = keep.to(torch.float64 if dtype == torch.float64 else torch.float32)
    if isinstance(row_scale, Tensor):
        return scale * (row_scale[start:stop] if row_scale.ndim else row_scale).to(scale.dtype)
    return scale * float(row_scale) if row_scale is not None else scale


def apply_softcap(z: Tensor, softcap: float | None) -> Tensor | None:
    """z ← softcap·tanh(z / softcap) in place; returns tanh(z / softcap) for the chain rule."""
    if softcap is None:
        return None
    z.div_(softcap).tanh_()
    tanh = z.clone()
    z.mul_(softcap)
    return tanh


def softcap_backward(grad: Tensor, tanh: Tensor | None) -> Tensor:
    """grad ← grad·(1 − tanh²) in place: d/dz [c·tanh(z / c)] = 1 − tanh²(z / c)."""
    if tanh is not None:
        grad.mul_(1 - tanh.square_())
    return grad


@dataclass
class CrossEntropyKernel:
    """Cross-entropy rows, optionally over a vocabulary slice [vocab_start, vocab_start + V_local).

    Per kept row n with target t, lse = log Σ_c exp z_c over the FULL vocabulary of size V:

        loss_n = (1 − ε)·w_t·(lse − z_t) + (ε / V)·Σ_c w_c·(lse − z_c) + λ·w_t·lse²

    (w ≡ 1 without class weights; ε label smoothing; λ the z-loss coefficient). Its gradient is

        ∂loss_n/∂z_c = a_n·p_c − (1 − ε)·w_t·[c = t] − (ε / V)·w_c,
        a_n = (1 − ε)·w_t + (ε / V)·Σ_c w_c + 2λ·w_t·lse,   p = softmax(z).

    Ignored rows have loss 0 and gradient 0.
    """

    target: Tensor            # (N,) global class indices
    keep: Tensor              # (N,) bool, rows that count
    target_weight: Tensor     # (N,) w_t of each row (0 for ignored rows), float
    class_weight: Tensor | None  # (V_local,) the local slice of the class weights
    weight_total: float | Tensor  # Σ_c w_c over the full vocabulary (V without weights; a 0-d
                                  # tensor where it must not be read on the host: over a group, on the GPU)
    vocab_total: int | Tensor  # V, the full vocabulary size (0-d tensors where traced code found
    vocab_start: int | Tensor = 0  # the offsets: vocab_parallel.traced_offsets; not on the Triton path)
    label_smoothing: float = 0.0
    z_loss: float = 0.0
    group: object = None
    # Optional (2, N) sink for linear_cross_entropy_with_lse: row lse and whether the target's
    # logit is the largest (0 for ignored rows); rows[i] is the sink row of this kernel's row i.
    record: Tensor | None = None
    record_rows: Tensor | None = None

    def __call__(self, z: Tensor, start: int, stop: int, need_grad: bool) -> tuple[Tensor, Tensor | None]:
        rows, v_local = z.shape
        target = self.target[start:stop]
        keep = self.keep[start:stop]
        w_t = self.target_weight[start:stop].to(z.dtype)
        eps, vocab = self.label_smoothing, self.vocab_total

        local = target - self.vocab_start
        owned = keep & (local >= 0) & (local < v_local)
        index = torch.where(owned, local, torch.zeros_like(local)).unsqueeze(1)

        # Five passes over the block, all in place: max, z − max, exp, Σ, and the final scaling
        # of exp(z − max) into the gradient. Target logit and Σ_c w_c z_c are read first.
        stats = z.new_zeros(3, rows)  # Σ exp(z − max), z_t, Σ_c w_c z_c
        if v_local:
            stats[1] = torch.where(owned, z.gather(1, index).squeeze(1), z.new_zeros(()))
            if eps:
                stats[2] = self._weighted_sum(z)
        peak = z.amax(dim=1) if v_local else z.new_full((rows,), float("-inf"))
        peak = all_reduce(peak, "max", self.group)
        peak = torch.where(torch.isfinite(peak), peak, peak.new_zeros(()))
        if v_local:
            exps = z.sub_(peak.unsqueeze(1)).exp_()
            stats[0] = exps.sum(1)
        stats = all_reduce(stats, "sum", self.group)
        lse = peak + stats[0].log()
        z_t, z_w = stats[1], stats[2]
        if self.record is not None:
            self._write_record(start, stop, keep, lse, z_t >= peak)

        loss, coef = self._loss_and_coef(w_t, lse, z_t, z_w, keep, need_grad)
        if coef is None:
            return loss, None

        # p = exp(z − max) / Σ: the block of logits becomes the block of gradients.
        coef = coef / stats[0]
        if not v_local:
            return loss, z
        grad = exps.mul_(coef.unsqueeze(1))
        hit = torch.where(owned, (1 - eps) * w_t, w_t.new_zeros(()))
        grad.scatter_add_(1, index, -hit.unsqueeze(1))
        if eps:
            if self.class_weight is None:
                grad.sub_(eps / vocab)
            else:
                grad.sub_((eps / vocab) * self.class_weight.to(z.dtype))
            grad.masked_fill_(~keep.unsqueeze(1), 0.0)
        return loss, grad

    def take(self, index: Tensor) -> CrossEntropyKernel:
        """The same kernel over rows ``index`` of this one, in that order."""
        rows = None
        if self.record is not None:
            rows = (self.record_rows if self.record_rows is not None
                    else torch.arange(self.target.shape[0], device=index.device))[index]
        return replace(self, target=self.target[index], keep=self.keep[index],
                       target_weight=self.target_weight[index], record_rows=rows)

    def _write_record(self, start: int, stop: int, keep: Tensor, lse: Tensor, hit: Tensor) -> None:
        lse = torch.where(keep, lse, lse.new_zeros(())).to(self.record.dtype)
        hit = (keep & hit).to(self.record.dtype)
        if self.record_rows is None:
            self.record[0, start:stop], self.record[1, start:stop] = lse, hit
        else:
            rows = self.record_rows[start:stop]
            self.record[0, rows], self.record[1, rows] = lse, hit

    def native(self, z: Tensor, start: int, stop: int, need_grad: bool,
               row_scale: Tensor | float | None) -> tuple[Tensor, Tensor | None] | None:
        """The same rows through the native C kernel (``_native/xent.c``), or None without it.

        One pass over the block, which may be float32, bfloat16 or float16: the gradient,
        already multiplied by ``row_scale``, overwrites the block in place. Only for the full
        vocabulary (no process group: the kernel has no all-reduce between its passes).
        """
        if self.group is not None or self.record is not None or not native_xent.supports(z):
            return None
        keep = self.keep[start:stop]
        scale = keep.to(torch.float32)
        if isinstance(row_scale, Tensor):
            scale = scale * row_scale[start:stop].to(torch.float32) if row_scale.ndim else scale * row_scale.float()
        elif row_scale is not None:
            scale = scale * float(row_scale)
        losses, _, _, _ = native_xent.xent_rows(
            z, self.target[start:stop], self.class_weight, keep, scale, index_target=True,
            label_smoothing=self.label_smoothing, z_loss=self.z_loss, temperature=1.0, validate=False,
            want_grad=need_grad, in_place=True, scale_loss=False)
        return losses, (z if need_grad else None)

    def triton(self, z: Tensor, start: int, stop: int, need_grad: bool, row_scale: Tensor | float | None, *,
               bias: Tensor | None = None, softcap: float | None = None) -> tuple[Tensor, Tensor | None]:
        """The same rows through the Triton row kernel (``logitlab/_triton/xent.py``), in one launch.

        ``z`` is the block of raw logits (hidden @ weight.T, without the bias) in the input's
        dtype; the kernel adds ``bias`` and applies ``softcap`` in float32 and overwrites ``z``
        with the gradient with respect to those raw logits, times ``row_scale``. Full vocabulary
        only (no process group), no statistics record; reads nothing on the host.
        """
        from logitlab._triton.xent import xent_rows

        if self.group is not None or self.record is not None:
            raise RuntimeError("CrossEntropyKernel.triton: no process group or record on the Triton path")
        keep = self.keep[start:stop]
        scale = triton_row_scale(keep, row_scale, start, stop, z.dtype)
        weight_sum = None
        if self.class_weight is not None and self.label_smoothing:
            total = self.weight_total
            weight_sum = (total if isinstance(total, Tensor) else torch.tensor(total, device=z.device)).reshape(1)
        losses, _ = xent_rows(
            z, self.target[start:stop], self.class_weight, keep, scale, index_target=True,
            label_smoothing=self.label_smoothing, z_loss=self.z_loss, validate=False,
            grad=z if need_grad else None, bias=bias, softcap=softcap, weight_sum=weight_sum, scale_loss=False)
        return losses, (z if need_grad else None)

    def triton_sharded(self, z: Tensor, need_grad: bool) -> tuple[Tensor, Tensor | None]:
        """Every row of this kernel over its vocabulary slice, as ``__call__`` computes them, through
        the Triton kernels of ``logitlab/_triton/sharded.py``: one pass over the (N, V_local) block
        ``z`` (the raw logits, any floating dtype, ignored rows never read) for the row statistics,
        the same two all-reduces (the maxima; Σ exp, z_t and Σ w z), one pass for the gradient,
        written in z's dtype into a new tensor. Nothing is read on the host."""
        from logitlab._triton.sharded import shard_grad, shard_stats

        if self.record is not None:
            raise RuntimeError("CrossEntropyKernel.triton_sharded: no statistics record on the Triton path")
        eps, vocab = self.label_smoothing, self.vocab_total
        keep = self.keep
        stats = shard_stats(z, self.target, self.class_weight, keep, vocab_start=self.vocab_start, smooth=bool(eps))
        w_t = self.target_weight.to(stats.dtype)
        peak, sums, (z_t, z_w) = all_reduce_online(stats[:1], stats[1:2], (0,), stats[2:], self.group)
        lse = peak[0] + sums[0].log()
        loss, coef = self._loss_and_coef(w_t, lse, z_t, z_w, keep, need_grad)
        if coef is None:
            return loss, None
        hit = torch.where(keep, (1 - eps) * w_t, w_t.new_zeros(()))  # a target outside the slice meets no column
        grad = shard_grad(z, self.target, self.class_weight, keep, lse, coef, hit, vocab_start=self.vocab_start,
                          smoothing_over_vocab=eps / vocab)
        return loss, grad

    def _loss_and_coef(self, w_t: Tensor, lse: Tensor, z_t: Tensor, z_w: Tensor, keep: Tensor,
                       need_grad: bool) -> tuple[Tensor, Tensor | None]:
        """Row losses from the row statistics, ℓ = (1−ε) w_t (lse − z_t) + (ε/V)(W lse − Σ_c w_c z_c)
        + λ w_t lse², and with ``need_grad`` the factor A = (1−ε) w_t + ε W / V + 2 λ w_t lse of p in
        the gradient (None without); both 0 on the rows not kept."""
        eps, lam, vocab = self.label_smoothing, self.z_loss, self.vocab_total
        loss = (1 - eps) * w_t * (lse - z_t)
        if eps:
            loss = loss + (eps / vocab) * (self.weight_total * lse - z_w)
        if lam:
            loss = loss + lam * w_t * lse.square()
        loss = torch.where(keep, loss, loss.new_zeros(()))
        if not need_grad:
            return loss, None
        coef = (1 - eps) * w_t + (eps / vocab) * self.weight_total
        if lam:
            coef = coef + 2 * lam * w_t * lse
        return loss, torch.where(keep, coef, coef.new_zeros(()))

    def _weighted_sum(self, z: Tensor) -> Tensor:
        if self.class_weight is None:
            return z.sum(1)
        return z @ self.class_weight.to(z.dtype)
