"""linear_cross_entropy(impl='triton'): chunks of rows, torch matmuls and the Triton row kernel on
each (chunk, V) block in place, against the float64 reference and the CPU path."""

from __future__ import annotations

import itertools

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (it is in the test extra)")

from _triton_fixtures import device, small_blocks, triton_mode  # noqa: E402,F401

from conftest import ERROR_SLACK  # noqa: E402
from logitlab import reference  # noqa: E402
from logitlab.fused.cross_entropy import linear_cross_entropy, linear_cross_entropy_with_lse  # noqa: E402

D = torch.float64
N, H, V = 11, 6, 37  # V not a multiple of the block; chunks of 4 rows: the last one partial


def _grads(fn, *tensors, seed=0):
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in tensors]
    out = fn(*leaves)
    g = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(seed)).to(out.device)
    out.backward(g)
    return [out.detach()] + [t.grad if t is not None else None for t in leaves]


def _inputs(device, dtype=D, ignore=True):
    hidden = torch.randn(N, H, dtype=D)
    weight = torch.randn(V, H, dtype=D)
    bias = torch.randn(V, dtype=D)
    target = torch.randint(0, V, (N,))
    if ignore:
        target[[2, 7]] = -100
    return (hidden.to(device, dtype), weight.to(device, dtype), bias.to(device, dtype), target.to(device))


GRID = list(itertools.product(
    [False, True],       # bias
    [False, True],       # class weights
    [0.0, 0.1],          # label smoothing
    [0.0, 1e-2],         # z-loss
    [None, 2.5],         # softcap
))
# Every combination of the options, each with one reduction in turn (the interpreter is slow; each
# reduction still meets every option both ways).
GRID = [(*case, ("mean", "none", "sum")[i % 3]) for i, case in enumerate(GRID)]


@pytest.mark.parametrize("with_bias,weighted,eps,z,softcap,reduction", GRID)
def test_option_grid_matches_reference_in_float64(small_blocks, device, with_bias, weighted, eps, z, softcap,
                                                 reduction):
    hidden, weight, bias, target = _inputs(device)
    cw = (torch.rand(V, dtype=D) + 0.5).to(device) if weighted else None
    opts = dict(class_weight=cw, label_smoothing=eps, z_loss=z, softcap=softcap, reduction=reduction)
    b = bias if with_bias else None
    ours = _grads(lambda h, w, bb: linear_cross_entropy(h, w, target, bias=bb, impl="triton", chunk_size=4, **opts),
                  hidden, weight, b)
    truth = _grads(lambda h, w, bb: reference.linear_cross_entropy(
        h.cpu(), w.cpu(), target.cpu(), bias=None if bb is None else bb.cpu(),
        **{**opts, "class_weight": None if cw is None else cw.cpu()}), hidden, weight, b)
    for a, t in zip(ours, truth):
        if t is not None:
            torch.testing.assert_close(a.cpu(), t.cpu(), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("options", [{}, dict(label_smoothing=0.1, z_loss=1e-3, softcap=4.0)])
def test_low_precision_no_worse_than_the_cpu_path(small_blocks, device, dtype, options):
    """|triton − truth| ≤ |CPU chunked at the same dtype − truth| + slack, truth in float64, for
    the loss and every gradient (bias included), with the default float32 accum_dtype."""
    hidden, weight, bias, target = _inputs("cpu")
    truth = _grads(lambda h, w, b: reference.linear_cross_entropy(h, w, target, bias=b, **options),
                   hidden, weight, bias)
    low = [t.to(dtype) for t in (hidden, weight, bias)]
    cpu = _grads(lambda h, w, b: linear_cross_entropy(h, w, target, bias=b, impl="torch", chunk_size=4, **options),
                 *low)
    ours = _grads(lambda h, w, b: linear_cross_entropy(h, w, target.to(device), bias=b, impl="triton", chunk_size=4,
                                                       **options), *[t.to(device) for t in low])
    slack = ERROR_SLACK[dtype]
    for a, c, t in zip(ours, cpu, truth):
        assert a.dtype == dtype
        assert (a.cpu().double() - t).abs().max() <= (c.double() - t).abs().max() * 1.5 + slack


def test_gradcheck_float64(device):
    """Small (3 rows, 3 features, 7 classes): gradcheck runs the loss twice per input element."""
    hidden = torch.randn(3, 3, dtype=D, device=device, requires_grad=True)
    weight = torch.randn(7, 3, dtype=D, device=device, requires_grad=True)
    bias = torch.randn(7, dtype=D, device=device, requires_grad=True)
    target = torch.tensor([1, -100, 6], device=device)
    cw = (torch.rand(7, dtype=D) + 0.5).to(device)
    for reduction in ("mean", "none"):  # precomputed gradients, and the recomputing backward
        assert torch.autograd.gradcheck(
            lambda h, w, b: linear_cross_entropy(h, w, target, bias=b, class_weight=cw, label_smoothing=0.2,
                                                 z_loss=0.05, softcap=3.0, impl="triton", chunk_size=2,
                                                 reduction=reduction), (hidden, weight, bias))


def test_ignored_rows_and_all_ignored(device):
    """Ignored rows (even NaN ones) cost nothing and get zero gradient; all ignored: 0 loss, zero grads."""
    hidden, weight, bias, target = _inputs(device)
    hidden[2] = float("nan")
    loss, gh, gw, gb = _grads(lambda h, w, b: linear_cross_entropy(h, w, target, bias=b, impl="triton", chunk_size=3),
                              hidden, weight, bias)
    assert torch.isfinite(loss) and torch.all(gh[[2, 7]] == 0) and torch.isfinite(gw).all()
    h2 = hidden.clone()
    h2[2] = 0
    truth = reference.linear_cross_entropy(h2.cpu(), weight.cpu(), target.cpu(), bias=bias.cpu())
    torch.testing.assert_close(loss.cpu(), truth, rtol=1e-10, atol=1e-12)
    nobody = torch.full((N,), -100, device=device)
    for reduction in ("mean", "sum", "none"):
        out = _grads(lambda h, w, b: linear_cross_entropy(h, w, nobody, bias=b, impl="triton", reduction=reduction),
                     hidden, weight, bias)
        assert all(torch.all(t == 0) for t in out)


def test_minus_inf_bias_excludes_classes(device):
    hidden, weight, bias, target = _inputs(device, ignore=False)
    bias[::4] = float("-inf")
    target = torch.where(target % 4 == 0, target + 1, target)
    ours = _grads(lambda h, w: linear_cross_entropy(h, w, target, bias=bias, impl="triton", chunk_size=4),
                  hidden, weight)
    # (The reference's 0 · inf for the excluded classes' smoothing term is NaN: torch's is the truth here.)
    truth = _grads(lambda h, w: linear_cross_entropy(h, w, target, bias=bias, impl="composite"), hidden, weight)
    for a, t in zip(ours, truth):
        torch.testing.assert_close(a.cpu(), t.cpu(), rtol=1e-10, atol=1e-12)


def test_accum_dtype_bfloat16_and_the_default_chunk(device):
    """With a bfloat16 head, accum_dtype=bfloat16 sums grad_weight in place in bfloat16 and the
    default (GPU) chunk covers these few rows at once; same loss, close gradients."""
    hidden, weight, bias, target = _inputs(device, torch.bfloat16)
    wide = _grads(lambda h, w: linear_cross_entropy(h, w, target, impl="triton"), hidden, weight)
    narrow = _grads(lambda h, w: linear_cross_entropy(h, w, target, impl="triton", accum_dtype=torch.bfloat16,
                                                      chunk_size=3), hidden, weight)
    torch.testing.assert_close(wide[0], narrow[0])
    torch.testing.assert_close(wide[2].float(), narrow[2].float(), rtol=2e-2, atol=2e-2)


def test_shift_and_with_lse(device):
    hidden = torch.randn(2, 6, H, dtype=D, device=device)
    weight = torch.randn(V, H, dtype=D, device=device)
    target = torch.randint(0, V, (2, 6), device=device)
    ours = linear_cross_entropy(hidden, weight, target, impl="triton", shift=1)
    naive = linear_cross_entropy(hidden, weight, target, impl="composite", shift=1)
    torch.testing.assert_close(ours, naive)
    # The statistics of the sibling come from the eager kernel: the same loss.
    out = linear_cross_entropy_with_lse(hidden, weight, target, impl="triton", shift=1)
    torch.testing.assert_close(out.loss, naive)


def test_no_host_read_of_the_incoming_gradient(device, monkeypatch):
    """The Triton path multiplies the precomputed gradients by grad_out without comparing it to 1
    (a host read on CUDA): a Tensor.__bool__ during its backward fails the test."""
    hidden, weight, _, target = _inputs(device, ignore=False)
    h = hidden.clone().requires_grad_()
    loss = linear_cross_entropy(h, weight, target, impl="triton", validate=False)

    def no_bool(self):
        raise AssertionError("read on the host")

    seed = torch.randn((), dtype=D, generator=torch.Generator().manual_seed(0)).to(device)  # as _grads
    monkeypatch.setattr(torch.Tensor, "__bool__", no_bool)
    loss.backward(seed)
    monkeypatch.undo()
    torch.testing.assert_close(h.grad, _grads(lambda x: linear_cross_entropy(x, weight, target, impl="composite"),
                                              hidden)[1])


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_compiled_caller_has_no_graph_break(device, reduction):
    """Under torch.compile(fullgraph=True) the chunk loop runs inside the custom ops
    logitlab::fused_linear_xent(_grads): the same loss and gradients as the eager call."""
    hidden, weight, bias, target = _inputs(device)
    cw = (torch.rand(V, dtype=D) + 0.5).to(device)

    def step(h, w, b):
        return linear_cross_entropy(h * 1.5, w, target, bias=b, class_weight=cw, label_smoothing=0.1, z_loss=1e-2,
                                    softcap=3.0, impl="triton", chunk_size=4, reduction=reduction, validate=False)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager" if device.type == "cpu" else "inductor")
    ours = _grads(compiled, hidden, weight, bias)
    eager = _grads(step, hidden, weight, bias)
    for a, b in zip(ours, eager):
        torch.testing.assert_close(a, b)


def test_impl_triton_needs_cuda_or_the_interpreter(monkeypatch):
    hidden, weight, _, target = _inputs("cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match=r"linear_cross_entropy\(\).*'impl'.*'triton' only for CUDA tensors"):
        linear_cross_entropy(hidden, weight, target, impl="triton")
