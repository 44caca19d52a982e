"""vocab_parallel_cross_entropy and vocab_parallel_kl_divergence with impl='triton': the Triton
shard kernels (row statistics, then the gradient) against the float64 reference and the torch
path, in one process and on gloo ranks (each rank's kernels under the interpreter), and which
implementation 'auto' picks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton", reason="triton is not installed (it is in the test extra)")

from _triton_fixtures import device, small_blocks, triton_mode  # noqa: E402,F401

from conftest import ERROR_SLACK  # noqa: E402
from logitlab import backend, reference  # noqa: E402
from logitlab.distributed import (  # noqa: E402
    run_ranks,
    vocab_parallel_cross_entropy,
    vocab_parallel_kl_divergence,
)

D = torch.float64
C = 37
CASES = [dict(), dict(reduction="sum"), dict(reduction="none"), dict(label_smoothing=0.2),
         dict(z_loss=1e-2, label_smoothing=0.1, reduction="none")]


def _value_and_grad(fn, logits, seed=0):
    x = logits.detach().clone().requires_grad_()
    out = fn(x)
    g = torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype).reshape(out.shape).to(out.device)
    out.backward(g)
    return out.detach(), x.grad


def _target(n, vocab):
    y = torch.randint(0, vocab, (n,))
    y[1] = -100
    return y


@pytest.mark.parametrize("opts", CASES)
def test_one_process_matches_reference_in_float64(small_blocks, device, opts):
    logits = torch.randn(5, C, dtype=D) * 3
    logits[1] = math.nan  # an ignored row: padding, never read
    if not opts.get("label_smoothing"):  # (smoothing sums every logit: an excluded class makes it +inf)
        logits[3, ::4] = -math.inf
    target = _target(5, C)
    target[3] = 1  # a class that is not excluded
    ours, g = _value_and_grad(lambda x: vocab_parallel_cross_entropy(x, target.to(device), impl="triton", **opts),
                              logits.to(device))
    truth, g_truth = _value_and_grad(lambda x: reference.cross_entropy(
        torch.where(torch.isnan(x), 0.0, x), target, **opts), logits)
    torch.testing.assert_close(ours.cpu(), truth, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g.cpu(), g_truth, rtol=1e-10, atol=1e-12)
    assert torch.all(g[1] == 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_low_precision_no_worse_than_the_torch_path(small_blocks, device, dtype):
    logits64 = torch.randn(6, C, dtype=D) * 4
    target = _target(6, C)
    opts = dict(label_smoothing=0.1, z_loss=1e-3)
    truth, g_truth = _value_and_grad(lambda x: reference.cross_entropy(x, target, **opts), logits64)
    low = logits64.to(dtype)
    cpu, g_cpu = _value_and_grad(lambda x: vocab_parallel_cross_entropy(x, target, impl="torch", **opts), low)
    ours, g_ours = _value_and_grad(
        lambda x: vocab_parallel_cross_entropy(x, target.to(device), impl="triton", **opts), low.to(device))
    assert ours.dtype == dtype and g_ours.dtype == dtype
    slack = ERROR_SLACK[dtype]
    assert (ours.cpu().double() - truth).abs().max() <= (cpu.double() - truth).abs().max() + slack
    assert (g_ours.cpu().double() - g_truth).abs().max() <= (g_cpu.double() - g_truth).abs().max() + slack


def test_auto_picks_triton_for_cuda_tensors_only(device):
    """The selection (backend.resolve): 'auto' takes the Triton shard kernels for CUDA tensors
    where triton imports, the torch path for CPU tensors; 'triton' for CPU tensors without the
    interpreter is an error naming the function."""
    cpu = torch.empty(2, 3)
    fn = "vocab_parallel_cross_entropy"
    assert backend.resolve(fn, "auto", cpu, native=lambda: False) == "torch"
    if torch.cuda.is_available():
        assert backend.resolve(fn, "auto", torch.empty(2, 3, device="cuda"), native=lambda: False) == "triton"
    assert backend.OPS[fn] == ("torch", "triton")
    with pytest.raises(ValueError, match=r"^vocab_parallel_cross_entropy\(\): argument 'impl' expected one of"):
        vocab_parallel_cross_entropy(cpu, torch.zeros(2, dtype=torch.long), impl="native")


def _ranks_case(rank, world, sizes):
    """This rank's slice through the Triton kernels (interpreted) vs the full single-process loss."""
    from logitlab._triton import xent

    xent.MAX_BLOCK = 8  # several blocks per slice
    gen = torch.Generator().manual_seed(0)
    vocab = sum(sizes)
    logits = torch.randn(5, vocab, dtype=D, generator=gen) * 3
    target = torch.randint(0, vocab, (5,), generator=gen)
    target[1] = -100
    lo = sum(sizes[:rank])
    hi = lo + sizes[rank]
    errors = {}
    for i, opts in enumerate(CASES):
        full = logits.clone().requires_grad_()
        expected = reference.cross_entropy(full, target, **opts)
        local = logits[:, lo:hi].clone().requires_grad_()
        got = vocab_parallel_cross_entropy(local, target, impl="triton", **opts)
        seed = torch.linspace(0.5, 1.5, expected.numel(), dtype=D).reshape(expected.shape)
        (expected * seed).sum().backward()
        (got * seed).sum().backward()
        errors[f"{i}_value"] = float((got.detach() - expected.detach()).abs().max())
        errors[f"{i}_grad"] = float((local.grad - full.grad[:, lo:hi]).abs().max()) if hi > lo else 0.0
    plain = F.cross_entropy(logits, target)
    errors["plain"] = float((vocab_parallel_cross_entropy(logits[:, lo:hi], target, impl="triton") - plain).abs())
    errors.update(_kl_rank_errors(lo, hi, vocab, gen))
    return errors


def _kl_rank_errors(lo, hi, vocab, gen):
    """vocab_parallel_kl_divergence(impl='triton') on this rank's columns [lo, hi) vs the float64
    reference of the full rows and vs the torch path on the same slice, for each option."""
    student, teacher = _kl_problem(vocab, gen)
    errors = {}
    for i, opts in enumerate(KL_CASES):
        rows = slice(None) if opts.get("reduction") == "none" else slice(0, 4)  # (row 4 is +inf)
        z, u = student[rows], teacher[rows]
        want, g_want = _kl_truth(z, u, **opts)
        got, g_got = _value_and_grad(lambda x: vocab_parallel_kl_divergence(
            x, u[:, lo:hi], impl="triton", **opts), z[:, lo:hi])
        torch_path, g_torch = _value_and_grad(lambda x: vocab_parallel_kl_divergence(
            x, u[:, lo:hi], impl="torch", **opts), z[:, lo:hi])
        errors[f"kl{i}_value"] = _gap(got, want)
        errors[f"kl{i}_grad"] = _gap(g_got, g_want[:, lo:hi])
        errors[f"kl{i}_value_vs_torch"] = _gap(got, torch_path)
        errors[f"kl{i}_grad_vs_torch"] = _gap(g_got, g_torch)
    return errors


@pytest.mark.parametrize("sizes", [(20, 17), (9, 0, 28)], ids=["2 ranks uneven", "3 ranks, one empty"])
def test_gloo_ranks_match_the_full_vocabulary(device, sizes):
    if device.type != "cpu":
        pytest.skip("the gloo ranks run CPU tensors (the NCCL case needs several GPUs)")
    results = run_ranks(_ranks_case, len(sizes), args=(sizes,), timeout=240.0, group_timeout=120.0)
    for rank, errors in enumerate(results):
        worst = max(errors.values())
        assert worst < 1e-10, f"rank {rank}: {errors}"


def test_shard_kernels_as_custom_ops(small_blocks, device):
    """The launches a compiled caller traces: schema, fakes, and the same values as eager."""
    from logitlab._triton import sharded

    z = torch.randn(4, C, device=device)
    target = torch.tensor([3, -100, 40, 0], device=device)  # 40: owned by another slice
    keep = target != -100
    weight = torch.rand(C, device=device) + 0.5
    args = (z, target, weight, keep, 2, True)
    torch.library.opcheck(sharded._stats_op, args, test_utils=("test_schema", "test_faketensor"))
    stats = sharded._stats_op(*args)
    torch.testing.assert_close(stats, sharded.shard_stats(z, target, weight, keep, vocab_start=2, smooth=True))
    assert stats[2, 2] == 0 and stats[0, 1] == -math.inf
    torch.testing.assert_close(stats[2, 0], z[0, 1])
    lse, coef, hit = torch.randn(4, device=device), torch.rand(4, device=device), torch.rand(4, device=device)
    grad_args = (z, target, weight, keep, lse, coef, hit, 2, 0.01)
    torch.library.opcheck(sharded._grad_op, grad_args, test_utils=("test_schema", "test_faketensor"))
    want = coef[:, None] * (z - lse[:, None]).exp() - 0.01 * weight
    want[0, 1] -= hit[0]
    want[1] = 0
    torch.testing.assert_close(sharded._grad_op(*grad_args), want)


# ---- vocab_parallel_kl_divergence ---------------------------------------------------------

KL_CASES = [dict(), dict(temperature=2.0, reduction="sum"), dict(temperature=0.7, reduction="none", validate=False)]


def _kl_problem(vocab, gen=None):
    """(5, vocab) student and teacher logits in float64 with each −inf pattern: row 2 excludes
    classes from both (p = q = 0 there: 0 · log 0) and more from the teacher alone; row 3's
    teacher is all −inf (no mass: 0, as the reference's softmax of such a row is 0); row 4's
    student excludes classes the teacher keeps (q = 0 < p: +inf, gradient q − p)."""
    student = torch.randn(5, vocab, dtype=D, generator=gen) * 3
    teacher = torch.randn(5, vocab, dtype=D, generator=gen) * 2
    student[2, ::6] = -math.inf
    teacher[2, ::3] = -math.inf
    teacher[3] = -math.inf
    student[4, 1::7] = -math.inf
    return student, teacher


def _kl_truth(student, teacher, *, temperature=1.0, reduction="mean", validate=True):
    """The float64 reference's value, and the gradient (q − p) / T of ⟨seed, value⟩ (the seed of
    ``_value_and_grad``) with q, p the reference's softmaxes."""
    q = reference.softmax(student, temperature=temperature)
    p = reference.softmax(teacher, temperature=temperature)
    rows = reference.kl_divergence(p, q)
    value = rows if reduction == "none" else rows.sum() if reduction == "sum" else rows.mean()
    seed = torch.linspace(0.5, 1.5, value.numel(), dtype=D).reshape(value.shape)
    factor = seed.unsqueeze(1) if reduction == "none" else seed / (1 if reduction == "sum" else rows.numel())
    return value, factor * (q - p) / temperature


def _gap(a, b):
    """The largest |a − b| (0 where both are the same infinity)."""
    a, b = a.detach().cpu(), b.detach().cpu()
    same = (a == b) | (torch.isnan(a) & torch.isnan(b))
    return float(torch.where(same, 0.0, (a - b).abs()).max()) if a.numel() else 0.0


@pytest.mark.parametrize("opts", KL_CASES, ids=["mean", "T=2 sum", "T=0.7 none"])
def test_kl_one_process_matches_reference_in_float64(small_blocks, device, opts):
    student, teacher = _kl_problem(C)
    if opts.get("validate", True):  # without a group, validation refuses row 3's teacher on either path
        for impl in ("triton", "torch"):
            with pytest.raises(ValueError, match=r"argument 'local_teacher_logits' expected at least one logit > -inf"):
                vocab_parallel_kl_divergence(student[:4].to(device), teacher[:4].to(device), impl=impl, **opts)
    # (row 4 is +inf, which a mean or sum would be; row 3 only where validation is off)
    rows = slice(None) if opts.get("reduction") == "none" else [0, 1, 2]
    z, u = student[rows], teacher[rows]
    ours, g = _value_and_grad(lambda x: vocab_parallel_kl_divergence(x, u.to(device), impl="triton", **opts),
                              z.to(device))
    truth, g_truth = _kl_truth(z, u, **opts)
    torch.testing.assert_close(ours.cpu(), truth, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g.cpu(), g_truth, rtol=1e-10, atol=1e-12)
    if opts.get("reduction") == "none":
        assert ours[4] == math.inf and ours[3] == 0 and torch.isfinite(g).all()
        # the torch path where it is defined (its one-process log_softmax of row 3's teacher is NaN)
        kept = [0, 1, 2, 4]
        base, g_base = _value_and_grad(lambda x: vocab_parallel_kl_divergence(x, u[kept], impl="torch", **opts),
                                       z[kept])
        seed = torch.linspace(0.5, 1.5, 5, dtype=D)[kept]
        torch.testing.assert_close(ours.cpu()[kept], base, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(g.cpu()[kept] / seed[:, None],
                                   g_base / torch.linspace(0.5, 1.5, 4, dtype=D)[:, None], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_kl_low_precision_no_worse_than_the_torch_path(small_blocks, device, dtype):
    z64, u64 = torch.randn(6, C, dtype=D) * 4, torch.randn(6, C, dtype=D) * 3
    opts = dict(temperature=1.5)
    truth, g_truth = _kl_truth(z64, u64, **opts)
    z, u = z64.to(dtype), u64.to(dtype)
    base, g_base = _value_and_grad(lambda x: vocab_parallel_kl_divergence(x, u, impl="torch", **opts), z)
    ours, g_ours = _value_and_grad(
        lambda x: vocab_parallel_kl_divergence(x, u.to(device), impl="triton", **opts), z.to(device))
    assert ours.dtype == dtype and g_ours.dtype == dtype
    slack = ERROR_SLACK[dtype]
    assert (ours.cpu().double() - truth).abs().max() <= (base.double() - truth).abs().max() + slack
    assert (g_ours.cpu().double() - g_truth).abs().max() <= (g_base.double() - g_truth).abs().max() + slack


def test_kl_auto_picks_triton_for_cuda_tensors_only(device):
    cpu = torch.empty(2, 3)
    fn = "vocab_parallel_kl_divergence"
    assert backend.resolve(fn, "auto", cpu, native=lambda: False) == "torch"
    if torch.cuda.is_available():
        assert backend.resolve(fn, "auto", torch.empty(2, 3, device="cuda"), native=lambda: False) == "triton"
    assert backend.OPS[fn] == ("torch", "triton")
    with pytest.raises(ValueError, match=r"^vocab_parallel_kl_divergence\(\): argument 'impl' expected one of"):
        vocab_parallel_kl_divergence(cpu, cpu, impl="composite")


def test_kl_gradcheck_and_double_backward_raises_clearly(device):
    x = torch.randn(2, 5, dtype=D, device=device, requires_grad=True)
    u = torch.randn(2, 5, dtype=D, device=device)
    assert torch.autograd.gradcheck(
        lambda z: vocab_parallel_kl_divergence(z, u, temperature=2.0, reduction="none", impl="triton"), (x,))
    loss = vocab_parallel_kl_divergence(x, u, impl="triton")
    with pytest.raises(RuntimeError, match=r"^vocab_parallel_kl_divergence\(\): no double backward"):
        torch.autograd.grad(loss, x, create_graph=True)
    (grad,) = torch.autograd.grad(loss, x)  # the graph is intact: the first derivative still works
    assert torch.isfinite(grad).all()


def test_kl_shard_kernels_as_custom_ops(small_blocks, device):
    """The launches a compiled caller traces: schema, fakes, and the statistics they define."""
    from logitlab._triton import sharded

    z, u = torch.randn(3, C, dtype=D, device=device), torch.randn(3, C, dtype=D, device=device)
    z[1, 4], u[2, :] = -math.inf, -math.inf
    args = (z, u, 2.0)
    torch.library.opcheck(sharded._kl_stats_op, args, test_utils=("test_schema", "test_faketensor"))
    stats = sharded._kl_stats_op(*args)
    s, t = z / 2, u / 2
    m_s, m_t = s.amax(1), t.amax(1)
    e_t = (t - m_t[:, None]).exp().nan_to_num(0.0)
    both = torch.isfinite(s) & torch.isfinite(t)
    want = torch.stack([m_s, m_t, (s - m_s[:, None]).exp().sum(1), e_t.sum(1),
                        torch.where(both, e_t * (t - s), 0.0).sum(1),
                        (torch.isfinite(t) & ~torch.isfinite(s)).sum(1).to(D)])
    torch.testing.assert_close(stats, want.to(stats.dtype))
    assert stats[5, 1] == 1 and stats[1, 2] == -math.inf and stats[3, 2] == 0
    lse = torch.stack([torch.logsumexp(s, 1), torch.logsumexp(t, 1)])
    grad_args = (z, u, lse, 2.0)
    torch.library.opcheck(sharded._kl_grad_op, grad_args, test_utils=("test_schema", "test_faketensor"))
    q, p = torch.softmax(s, 1), torch.softmax(t, 1).nan_to_num(0.0)  # row 2's teacher has no mass
    torch.testing.assert_close(sharded._kl_grad_op(*grad_args), (q - p) / 2)
