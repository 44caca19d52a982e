"""linear_divergence_loss(impl='triton'): the distillation row kernel on each chunk's blocks of
both heads, against the float64 reference and the CPU path."""

from __future__ import annotations

import itertools

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (it is in the test extra)")

from _triton_fixtures import device, small_blocks, triton_mode  # noqa: E402,F401

from conftest import ERROR_SLACK  # noqa: E402
from logitlab import reference  # noqa: E402
from logitlab.fused.divergence import linear_divergence_loss  # noqa: E402

D = torch.float64
N, H, HT, V = 9, 5, 4, 37


def _grads(fn, *tensors, seed=0):
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in tensors]
    out = fn(*leaves)
    g = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(seed)).to(out.device)
    out.backward(g)
    return [out.detach()] + [t.grad if t is not None else None for t in leaves]


def _inputs(device, dtype=D):
    gen = torch.Generator().manual_seed(1)
    tensors = dict(hidden=torch.randn(N, H, generator=gen, dtype=D), weight=torch.randn(V, H, generator=gen, dtype=D),
                   bias=torch.randn(V, generator=gen, dtype=D),
                   teacher_hidden=torch.randn(N, HT, generator=gen, dtype=D),
                   teacher_weight=torch.randn(V, HT, generator=gen, dtype=D),
                   teacher_bias=torch.randn(V, generator=gen, dtype=D))
    target = torch.randint(0, V, (N,), generator=gen)
    target[[1, 6]] = -100
    return {k: t.to(device, dtype) for k, t in tensors.items()}, target.to(device)


GRID = list(itertools.product(
    ["kl", "reverse_kl", "js"],
    [1.0, 2.0],          # temperature
    [0.0, 0.5],          # hard-label weight
))
# Every divergence with every temperature and hard-label weight; the biases on every other case
# and the reductions in turn (the interpreter is slow).
GRID = [(*case, i % 2 == 1, ("mean", "none", "sum")[i % 3]) for i, case in enumerate(GRID)]


@pytest.mark.parametrize("divergence,temperature,alpha,biased,reduction", GRID)
def test_option_grid_matches_reference_in_float64(small_blocks, device, divergence, temperature, alpha, biased,
                                                 reduction):
    t, target = _inputs(device)
    opts = dict(divergence=divergence, beta=0.3, temperature=temperature, reduction=reduction,
                hard_label_weight=alpha)
    opts["target"] = target if alpha or reduction != "none" else None  # without target: every row counts
    teacher = dict(teacher_hidden=t["teacher_hidden"], teacher_weight=t["teacher_weight"],
                   teacher_bias=t["teacher_bias"] if biased else None)
    b = t["bias"] if biased else None
    ours = _grads(lambda h, w, bb: linear_divergence_loss(h, w, bias=bb, impl="triton", chunk_size=4, **teacher,
                                                          **opts), t["hidden"], t["weight"], b)

    def cpu(x):
        return None if x is None else x.cpu()

    truth = _grads(lambda h, w, bb: reference.linear_divergence_loss(
        h.cpu(), w.cpu(), bias=cpu(bb), **{k: cpu(x) for k, x in teacher.items()},
        **{**opts, "target": cpu(opts["target"])}), t["hidden"], t["weight"], b)
    for a, r in zip(ours, truth):
        if r is not None:
            torch.testing.assert_close(a.cpu(), r.cpu(), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("dtype,divergence", [(torch.float32, "kl"), (torch.bfloat16, "js"),
                                              (torch.float16, "reverse_kl"), (torch.bfloat16, "kl")])
def test_low_precision_no_worse_than_the_cpu_path(small_blocks, device, dtype, divergence):
    t, target = _inputs("cpu")
    opts = dict(divergence=divergence, temperature=2.0, target=target.cpu(), hard_label_weight=0.3)
    teacher = {k: t[k] for k in ("teacher_hidden", "teacher_weight", "teacher_bias")}
    truth = _grads(lambda h, w, b: reference.linear_divergence_loss(h, w, bias=b, **teacher, **opts),
                   t["hidden"], t["weight"], t["bias"])
    low = {k: x.to(dtype) for k, x in t.items()}
    low_teacher = {k: low[k] for k in teacher}
    cpu = _grads(lambda h, w, b: linear_divergence_loss(h, w, bias=b, impl="torch", chunk_size=4, **low_teacher,
                                                        **opts), low["hidden"], low["weight"], low["bias"])
    dev = {k: x.to(device) for k, x in low.items()}
    ours = _grads(lambda h, w, b: linear_divergence_loss(
        h, w, bias=b, impl="triton", chunk_size=4, **{k: dev[k] for k in teacher},
        **{**opts, "target": target.to(device)}), dev["hidden"], dev["weight"], dev["bias"])
    for a, c, r in zip(ours, cpu, truth):
        assert a.dtype == dtype
        assert (a.cpu().double() - r).abs().max() <= (c.double() - r).abs().max() * 1.5 + ERROR_SLACK[dtype]


def test_gradcheck_float64(device):
    gen = torch.Generator().manual_seed(2)
    h = torch.randn(3, 3, dtype=D, generator=gen).to(device).requires_grad_()
    w = torch.randn(7, 3, dtype=D, generator=gen).to(device).requires_grad_()
    th, tw = torch.randn(3, 2, dtype=D, generator=gen).to(device), torch.randn(7, 2, dtype=D, generator=gen).to(device)
    target = torch.tensor([1, -100, 6], device=device)
    for divergence, reduction in (("js", "none"),):  # 'none': the backward that recomputes the chunks
        assert torch.autograd.gradcheck(
            lambda a, b: linear_divergence_loss(a, b, teacher_hidden=th, teacher_weight=tw, divergence=divergence,
                                                temperature=1.5, target=target, hard_label_weight=0.2,
                                                reduction=reduction, impl="triton", chunk_size=2), (h, w))


def test_all_rows_ignored_give_zero(device):
    t, target = _inputs(device)
    nobody = torch.full_like(target, -100)
    for reduction in ("mean", "sum", "none"):
        out = _grads(lambda h, w: linear_divergence_loss(h, w, teacher_hidden=t["teacher_hidden"],
                                                         teacher_weight=t["teacher_weight"], target=nobody,
                                                         reduction=reduction, impl="triton"), t["hidden"], t["weight"])
        assert all(torch.all(x == 0) for x in out)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_compiled_caller_has_no_graph_break(device, reduction):
    """Under torch.compile(fullgraph=True) the chunk loop runs inside the custom ops
    logitlab::fused_linear_divergence(_grads) with the Triton row kernel: the same loss and
    gradients as the eager call (the 'mean' factor stays on the device)."""
    t, target = _inputs(device)

    def step(h, w, b):
        return linear_divergence_loss(h * 1.5, w, bias=b, teacher_hidden=t["teacher_hidden"],
                                      teacher_weight=t["teacher_weight"], teacher_bias=t["teacher_bias"],
                                      divergence="js", beta=0.3, temperature=2.0, target=target,
                                      hard_label_weight=0.5, reduction=reduction, impl="triton", chunk_size=4,
                                      validate=False)

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager" if device.type == "cpu" else "inductor")
    ours = _grads(compiled, t["hidden"], t["weight"], t["bias"])
    eager = _grads(step, t["hidden"], t["weight"], t["bias"])
    for a, b in zip(ours, eager):
        torch.testing.assert_close(a, b)
