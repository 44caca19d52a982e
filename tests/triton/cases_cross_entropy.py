"""cross_entropy(impl='triton'): the Triton row kernel against the float64 reference and the CPU
path, over the option grid, the dtypes, excluded rows, -inf logits and the autograd contract."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (it is in the test extra)")

from _triton_fixtures import device, small_blocks, triton_mode  # noqa: E402,F401

from conftest import ERROR_SLACK  # noqa: E402
from logitlab import reference  # noqa: E402
from logitlab.losses.cross_entropy import cross_entropy  # noqa: E402

D = torch.float64
C = 37  # not a multiple of any block


def _value_and_grad(fn, logits, seed=0):
    x = logits.detach().clone().requires_grad_()
    out = fn(x)
    g = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(seed)).to(out.device)
    out.backward(g)
    return out.detach(), x.grad


def _target(kind, n, device, ignore=True):
    if kind == "index":
        y = torch.randint(0, C, (n,))
        if ignore:
            y[1] = -100
        return y.to(device)
    return torch.softmax(torch.randn(n, C, dtype=D) * 2, 1).to(device)


GRID = list(itertools.product(
    ["index", "probs"],
    [False, True],      # class weights
    [0.0, 0.2],         # label smoothing
    [0.0, 0.05],        # z-loss
    [1.0, 0.6],         # temperature
))
# Every combination of the options, each with one reduction in turn (the interpreter is slow; each
# reduction still meets every option both ways).
GRID = [(*case, ("mean", "none", "sum")[i % 3]) for i, case in enumerate(GRID)]


@pytest.mark.parametrize("kind,weighted,eps,z,temp,reduction", GRID)
def test_option_grid_matches_reference_in_float64(small_blocks, device, kind, weighted, eps, z, temp, reduction):
    n = 5
    logits = (torch.randn(n, C, dtype=D) * 3).to(device)
    target = _target(kind, n, device)
    weight = (torch.rand(C, dtype=D) + 0.5).to(device) if weighted else None
    opts = dict(weight=weight, label_smoothing=eps, z_loss=z, temperature=temp, reduction=reduction)
    ours, g_ours = _value_and_grad(lambda x: cross_entropy(x, target, impl="triton", **opts), logits)
    truth, g_truth = _value_and_grad(lambda x: reference.cross_entropy(x.cpu(), target.cpu(), **opts), logits)
    torch.testing.assert_close(ours.cpu(), truth, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_ours.cpu(), g_truth.cpu(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind,options", [
    ("index", {}),
    ("index", dict(label_smoothing=0.1, z_loss=1e-3, temperature=1.7)),
    ("probs", dict(label_smoothing=0.1)),
])
@pytest.mark.parametrize("weighted", [False, True])
def test_low_precision_no_worse_than_the_cpu_path(small_blocks, device, dtype, kind, options, weighted):
    """|triton − truth| ≤ |CPU fused at the same dtype − truth| + slack, truth in float64."""
    n = 6
    logits64 = torch.randn(n, C, dtype=D) * 4
    target64 = _target(kind, n, "cpu")
    weight = torch.rand(C) + 0.5 if weighted else None
    truth, g_truth = _value_and_grad(
        lambda x: reference.cross_entropy(x, target64, weight=None if weight is None else weight.double(), **options),
        logits64)
    low = logits64.to(dtype)
    tgt = target64 if kind == "index" else target64.to(dtype)
    cpu, g_cpu = _value_and_grad(lambda x: cross_entropy(x, tgt, weight=weight, impl="torch", **options), low)
    ours, g_ours = _value_and_grad(
        lambda x: cross_entropy(x, tgt.to(device), weight=None if weight is None else weight.to(device),
                                impl="triton", **options), low.to(device))
    assert ours.dtype == dtype and g_ours.dtype == dtype
    slack = ERROR_SLACK[dtype]
    assert (ours.cpu().double() - truth).abs().max() <= (cpu.double() - truth).abs().max() + slack
    assert (g_ours.cpu().double() - g_truth).abs().max() <= (g_cpu.double() - g_truth).abs().max() + slack


def test_gradcheck_float64(device):
    logits = torch.randn(3, 7, dtype=D, device=device, requires_grad=True)
    target = torch.tensor([1, -100, 6], device=device)
    weight = torch.rand(7, dtype=D, device=device) + 0.5
    assert torch.autograd.gradcheck(
        lambda x: cross_entropy(x, target, weight=weight, label_smoothing=0.1, z_loss=0.1, temperature=0.8,
                                impl="triton"), (logits,))
    probs = torch.softmax(torch.randn(3, 7, dtype=D, device=device), 1)
    assert torch.autograd.gradcheck(
        lambda x: cross_entropy(x, probs, reduction="none", label_smoothing=0.3, impl="triton"), (logits,))


def test_excluded_rows_read_nothing_and_write_zeros(small_blocks, device):
    """Ignored and masked-out rows give 0 and a zero gradient even when they hold NaN or are all
    -inf; a batch with every row excluded gives 0, not NaN, for every reduction."""
    logits = torch.randn(4, C, dtype=D)
    logits[1] = math.nan
    logits[2] = -math.inf
    target = torch.tensor([3, -100, 5, 7])
    mask = torch.tensor([True, True, False, True])
    for reduction in ("mean", "sum", "none"):
        kw = dict(mask=mask.to(device), reduction=reduction)
        ours, g = _value_and_grad(lambda x: cross_entropy(x, target.to(device), impl="triton", **kw),
                                  logits.to(device))
        truth = reference.cross_entropy(logits, target, mask=mask, reduction=reduction)
        torch.testing.assert_close(ours.cpu(), truth, rtol=1e-10, atol=1e-12)
        assert torch.all(g[1:3] == 0)
        everything = torch.full((4,), -100, device=device)
        out, g_all = _value_and_grad(lambda x: cross_entropy(x, everything, impl="triton", reduction=reduction),
                                     logits.to(device))
        assert torch.all(out == 0) and torch.all(g_all == 0)


def test_minus_inf_logits_exclude_classes(small_blocks, device):
    logits = torch.randn(3, C, dtype=D)
    logits[:, ::3] = -math.inf            # excluded classes, in every block
    logits[2, : C - 2] = -math.inf        # one finite class (C - 2), in the last (partial) block
    target = torch.tensor([1, 3, C - 2])  # row 1 targets an excluded class: +inf loss
    ours, g = _value_and_grad(lambda x: cross_entropy(x, target.to(device), impl="triton", reduction="none"),
                              logits.to(device))
    truth = reference.cross_entropy(logits, target, reduction="none")
    assert ours[1] == math.inf and torch.isfinite(g).all()
    torch.testing.assert_close(ours.cpu()[[0, 2]], truth[[0, 2]], rtol=1e-10, atol=1e-12)
    assert torch.all(g[:, ::3][[0, 2]] == 0)
    # probability targets with zero mass on the excluded classes: 0 · log 0 = 0.
    probs = torch.softmax(logits, 1)
    ours = cross_entropy(logits.to(device), probs.to(device), impl="triton", reduction="none")
    torch.testing.assert_close(ours.cpu(), reference.cross_entropy(logits, probs, reduction="none"),
                               rtol=1e-10, atol=1e-12)


def test_class_axis_and_batch_shape(device):
    logits = torch.randn(2, 5, 3, 4, dtype=D)  # torch's (N, C, d1, d2) layout
    target = torch.randint(0, 5, (2, 3, 4))
    ours = cross_entropy(logits.to(device), target.to(device), dim=1, impl="triton", reduction="none")
    truth = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    assert ours.shape == truth.shape
    torch.testing.assert_close(ours.cpu(), truth, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inplace_backward_writes_the_gradient_into_the_logits(device, dtype):
    logits = torch.randn(5, C, dtype=dtype, device=device)
    target = torch.tensor([0, 4, -100, 36, 2], device=device)
    expected, g_expected = _value_and_grad(lambda x: cross_entropy(x, target, impl="triton"), logits)
    x = logits.clone().requires_grad_()
    y = x * 1  # a non-leaf: its memory may be overwritten
    loss = cross_entropy(y, target, impl="triton", inplace_backward=True)
    seed = torch.randn((), generator=torch.Generator().manual_seed(0)).to(loss)  # as _value_and_grad
    loss.backward(seed)
    torch.testing.assert_close(loss.detach(), expected)
    torch.testing.assert_close(x.grad, g_expected)
    assert torch.equal(y.detach(), g_expected)  # the logits now hold the gradient


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_incoming_gradient_one_is_skipped_and_others_scale(device, reduction):
    """The backward's scaling kernel leaves the gradient alone where the incoming factor is 1
    (read on the device) and multiplies it elsewhere: a factor of 1 and one of 2.5 agree."""
    logits = torch.randn(4, C, device=device)
    target = torch.tensor([1, 2, -100, 4], device=device)
    grads = []
    for factor in (1.0, 2.5):
        x = logits.clone().requires_grad_()
        out = cross_entropy(x, target, impl="triton", reduction=reduction)
        out.backward(torch.full_like(out, factor))
        grads.append(x.grad)
    torch.testing.assert_close(grads[0] * 2.5, grads[1])
    x = logits.double().requires_grad_()
    reference.cross_entropy(x.cpu(), target.cpu(), reduction=reduction).sum().backward()
    torch.testing.assert_close(grads[0].cpu().double(), x.grad.cpu(), rtol=1e-5, atol=1e-7)


def test_backward_twice_recomputes_and_double_backward_raises(device):
    logits = torch.randn(4, 9, dtype=D, device=device, requires_grad=True)
    target = torch.tensor([1, 2, 3, 4], device=device)
    loss = cross_entropy(logits, target, impl="triton")
    (g1,) = torch.autograd.grad(loss, logits, retain_graph=True)
    (g2,) = torch.autograd.grad(loss, logits)
    torch.testing.assert_close(g1, g2)
    loss = cross_entropy(logits, target, impl="triton")
    with pytest.raises(RuntimeError, match="no double backward"):
        torch.autograd.grad(loss, logits, create_graph=True)


def test_validate_checks_on_request_and_the_kernel_marks_bad_indices(device):
    logits = torch.randn(3, 6, device=device)
    bad = logits.clone()
    bad[1, 2] = math.nan
    target = torch.tensor([0, 1, 2], device=device)
    with pytest.raises(ValueError, match=r"cross_entropy\(\).*logits.*row 1"):
        cross_entropy(bad, target, impl="triton", validate=True)
    with pytest.raises(ValueError, match=r"cross_entropy\(\).*target.*index 6"):
        cross_entropy(logits, torch.tensor([0, 6, 2], device=device), impl="triton", validate=True)
    # With the checks off the kernel reads no memory for an out-of-range index: NaN for its row.
    out = cross_entropy(logits, torch.tensor([0, 6, -3], device=device), impl="triton", validate=False,
                        reduction="none")
    torch.testing.assert_close(out[0], cross_entropy(logits[:1], target[:1], reduction="none")[0])
    assert torch.isnan(out[1:]).all()


def test_impl_triton_needs_cuda_or_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError,
                       match=r"cross_entropy\(\).*'impl'.*'triton' only for CUDA tensors.*TRITON_INTERPRET=1"):
        cross_entropy(torch.randn(2, 3), torch.tensor([0, 1]), impl="triton")
    # 'auto' on CPU tensors stays on the CPU path, interpreter or not.
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    out = cross_entropy(torch.zeros(2, 3), torch.tensor([0, 1]))
    torch.testing.assert_close(out, torch.tensor(math.log(3)))


def test_weight_or_target_that_needs_a_gradient_is_refused(device):
    logits = torch.randn(2, 3, device=device)
    weight = torch.ones(3, device=device, requires_grad=True)
    with pytest.raises(ValueError, match=r"cross_entropy\(\).*impl.*weight requires a gradient"):
        cross_entropy(logits, torch.tensor([0, 1], device=device), weight=weight, impl="triton")


def test_compiled_caller_has_no_graph_break(device):
    """Under torch.compile(fullgraph=True) the kernel is the custom op logitlab::triton_xent_rows
    (an opaque node with a fake and an autograd formula): same loss, same gradient."""
    target = torch.tensor([1, -100, 3, 0], device=device)
    weight = torch.rand(C, device=device) + 0.5

    def step(x):
        return cross_entropy(x * 2.0, target, weight=weight, label_smoothing=0.1, z_loss=1e-2, impl="triton")

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager" if device.type == "cpu" else "inductor")
    logits = torch.randn(4, C, device=device)
    ours, g_ours = _value_and_grad(compiled, logits)
    eager, g_eager = _value_and_grad(step, logits)
    torch.testing.assert_close(ours, eager)
    torch.testing.assert_close(g_ours, g_eager)
