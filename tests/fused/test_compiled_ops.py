"""The fused heads under torch.compile(fullgraph=True): the chunk loop as custom ops (fused/_ops.py).

With ``impl`` "native", "torch" and "auto" on CPU (Triton's twin runs under its interpreter in
tests/triton), each compiled call must equal the eager one in value and gradients, for every
option and reduction, with ignored rows and several chunks; the graph must hold the op; each op
passes ``torch.library.opcheck`` and ``gradcheck`` in float64, and a second derivative raises.
"""

from __future__ import annotations

import pytest
import torch

from logitlab import backend
from logitlab._native import xent as native_xent
from logitlab.fused import (
    _ops,
    cross_entropy,
    divergence,
    linear_cross_entropy,
    linear_cross_entropy_with_lse,
    linear_divergence_loss,
)

F64, F32 = torch.float64, torch.float32
N_BATCH, DIM, VOCAB, TEACHER_DIM = (3, 5), 6, 13, 4

NATIVE = backend.native_enabled() and native_xent.supports(torch.empty(0, 0))
_needs_native = pytest.mark.skipif(not NATIVE, reason="the native kernels are unavailable here (LOGITLAB_NATIVE=0 "
                                                      "or no C compiler)")
# (impl, dtype): the native kernels take float32; the torch path is checked in float64 too.
IMPLS = [pytest.param("native", F32, marks=_needs_native, id="native-f32"),
         pytest.param("torch", F64, id="torch-f64"), pytest.param("torch", F32, id="torch-f32"),
         pytest.param("auto", F32, id="auto-f32")]


def _tol(dtype):
    return dict(rtol=1e-12, atol=1e-14) if dtype == F64 else dict(rtol=2e-6, atol=1e-7)


def _compiled(fn, backend_="aot_eager"):
    torch._dynamo.reset()
    return torch.compile(fn, fullgraph=True, backend=backend_)


def _recording(seen: set):
    """aot_eager, recording the call targets of each graph Dynamo hands it."""
    aot = torch._dynamo.lookup_backend("aot_eager")

    def backend_(gm, example_inputs):
        seen.update(str(node.target) for node in gm.graph.nodes if node.op == "call_function")
        return aot(gm, example_inputs)

    return backend_


def _value_and_grads(fn, *tensors):
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in tensors]
    out = fn(*leaves)
    loss = out[0] if isinstance(out, tuple) else out
    seed = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype).reshape(loss.shape)
    grads = torch.autograd.grad((loss * seed).sum(), [t for t in leaves if t is not None])
    extras = [x.detach() for x in out[1:]] if isinstance(out, tuple) else []
    return [loss.detach(), *extras, *grads]


def _assert_same(got, want, dtype):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        torch.testing.assert_close(g, w, **_tol(dtype))


def _head(dtype, seed=0, ignored=(1, 4, 5), vocab=VOCAB):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(*N_BATCH, DIM, generator=gen, dtype=F64).to(dtype)
    weight = torch.randn(vocab, DIM, generator=gen, dtype=F64).to(dtype)
    bias = torch.randn(vocab, generator=gen, dtype=F64).to(dtype)
    class_weight = (torch.rand(vocab, generator=gen, dtype=F64) + 0.5).to(dtype)
    target = torch.randint(0, vocab, N_BATCH, generator=gen)
    target.view(-1)[list(ignored)] = -100
    return hidden, weight, bias, class_weight, target


XENT_OPTIONS = {
    "plain": dict(),
    "bias+weights+smoothing+zloss": dict(bias=True, class_weight=True, label_smoothing=0.1, z_loss=1e-2),
    "softcap+bias": dict(bias=True, softcap=2.5),
    "default-chunk": dict(chunk_size=None, label_smoothing=0.05),
}


@pytest.mark.parametrize("impl,dtype", IMPLS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("options", list(XENT_OPTIONS))
def test_linear_cross_entropy_compiles_and_equals_eager(impl, dtype, reduction, options):
    hidden, weight, bias, class_weight, target = _head(dtype)
    opts = dict(XENT_OPTIONS[options])
    use_bias = opts.pop("bias", False)
    cw = class_weight if opts.pop("class_weight", False) else None
    opts.setdefault("chunk_size", 4)  # 15 rows, 12 kept: three chunks, the last one partial

    def step(h, w, b):
        return linear_cross_entropy(h, w, target, bias=b, class_weight=cw, reduction=reduction, impl=impl,
                                    validate=False, **opts)

    seen: set = set()
    got = _value_and_grads(_compiled(step, _recording(seen)), hidden, weight, bias if use_bias else None)
    want = _value_and_grads(step, hidden, weight, bias if use_bias else None)
    _assert_same(got, want, dtype)
    chunked = impl != "auto" or opts["chunk_size"] is not None  # "auto" materializes these small logits
    assert any("fused_linear_xent" in s for s in seen) == chunked, seen


@pytest.mark.parametrize("impl,dtype", IMPLS)
def test_validation_on_compiles_too(impl, dtype):
    # The data checks are skipped in a compiled graph; the structural ones still run while tracing.
    hidden, weight, bias, _, target = _head(dtype)

    def step(h, w):
        return linear_cross_entropy(h, w, target, impl=impl, chunk_size=4, validate=True)

    _assert_same(_value_and_grads(_compiled(step), hidden, weight), _value_and_grads(step, hidden, weight), dtype)
    with pytest.raises(Exception, match=r"linear_cross_entropy\(\): argument 'weight' expected shape \(V, 6\)"):
        _compiled(step)(hidden, weight[:, :4])


@pytest.mark.parametrize("impl,dtype", IMPLS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_every_row_ignored_gives_zero_loss_and_gradients(impl, dtype, reduction):
    hidden, weight, _, _, target = _head(dtype)
    nobody = torch.full_like(target, -100)
    got = _value_and_grads(_compiled(lambda h, w: linear_cross_entropy(h, w, nobody, reduction=reduction, impl=impl,
                                                                       chunk_size=4, validate=False)), hidden, weight)
    assert all(bool((x == 0).all()) for x in got)


@pytest.mark.parametrize("impl,dtype", IMPLS)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_linear_cross_entropy_with_lse_compiles_and_equals_eager(impl, dtype, reduction):
    hidden, weight, bias, _, target = _head(dtype, seed=3)

    def step(h, w, b):
        out = linear_cross_entropy_with_lse(h, w, target, bias=b, reduction=reduction, impl=impl, chunk_size=4,
                                            shift=1, z_loss=1e-3, validate=False)
        return out.loss, out.lse, out.accuracy

    _assert_same(_value_and_grads(_compiled(step), hidden, weight, bias),
                 _value_and_grads(step, hidden, weight, bias), dtype)


DIVERGENCE_OPTIONS = {
    "kl": dict(divergence="kl"),
    "reverse_kl+T": dict(divergence="reverse_kl", temperature=2.0),
    "js+hard-labels+biases": dict(divergence="js", beta=0.3, temperature=1.5, hard_label_weight=0.4, biases=True),
    "kl-no-target": dict(divergence="kl", target=False),
}


def _teacher(dtype, seed=5):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(*N_BATCH, TEACHER_DIM, generator=gen, dtype=F64).to(dtype),
            torch.randn(VOCAB, TEACHER_DIM, generator=gen, dtype=F64).to(dtype),
            torch.randn(VOCAB, generator=gen, dtype=F64).to(dtype))


@pytest.mark.parametrize("impl,dtype", IMPLS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("options", list(DIVERGENCE_OPTIONS))
def test_linear_divergence_loss_compiles_and_equals_eager(impl, dtype, reduction, options):
    hidden, weight, bias, _, target = _head(dtype, seed=7)
    teacher_hidden, teacher_weight, teacher_bias = _teacher(dtype)
    opts = dict(DIVERGENCE_OPTIONS[options])
    biases = opts.pop("biases", False)
    labels = target if opts.pop("target", True) else None

    def step(h, w, b):
        return linear_divergence_loss(h, w, bias=b, teacher_hidden=teacher_hidden, teacher_weight=teacher_weight,
                                      teacher_bias=teacher_bias if biases else None, target=labels,
                                      reduction=reduction, impl=impl, chunk_size=4, validate=False, **opts)

    seen: set = set()
    got = _value_and_grads(_compiled(step, _recording(seen)), hidden, weight, bias if biases else None)
    want = _value_and_grads(step, hidden, weight, bias if biases else None)
    _assert_same(got, want, dtype)
    assert any("fused_linear_divergence" in s for s in seen), seen


def test_the_mean_factor_of_linear_divergence_loss_stays_a_tensor(monkeypatch):
    """Its 'mean' factor is 1 / (number of kept rows) as a 0-d tensor in the accumulation dtype
    (0 when no row is kept), for every impl: never read on the host."""
    hidden, weight, _, _, target = _head(F64)
    teacher_hidden, teacher_weight, _ = _teacher(F64)
    scale = divergence.kept_rows_scale(target.reshape(-1) != -100, "mean", F64)
    assert isinstance(scale, torch.Tensor) and scale.ndim == 0
    torch.testing.assert_close(scale, torch.tensor(1 / 12, dtype=F64))
    assert float(divergence.kept_rows_scale(torch.zeros(3, dtype=torch.bool), "mean", F32)) == 0.0
    calls = []
    real = divergence.FusedLinearLoss.apply
    monkeypatch.setattr(divergence.FusedLinearLoss, "apply", lambda *a: calls.append(a[4]) or real(*a))
    linear_divergence_loss(hidden, weight, teacher_hidden=teacher_hidden, teacher_weight=teacher_weight,
                           target=target, impl="torch", chunk_size=4, validate=False)
    assert isinstance(calls[0], torch.Tensor)


def test_eager_calls_do_not_go_through_the_ops(monkeypatch):
    # Eager speed and behaviour stay those of FusedLinearLoss (gradients handed over in place).
    def refuse(*args, **kwargs):
        raise AssertionError("an eager call reached the compiled path")

    monkeypatch.setattr(cross_entropy, "compiled_linear_xent", refuse)
    monkeypatch.setattr(divergence, "compiled_linear_divergence", refuse)
    hidden, weight, _, _, target = _head(F32)
    teacher_hidden, teacher_weight, _ = _teacher(F32)
    for impl in ("torch", "native") if NATIVE else ("torch",):
        h = hidden.clone().requires_grad_()
        linear_cross_entropy(h, weight, target, impl=impl, chunk_size=4).backward()
        linear_divergence_loss(h, weight, teacher_hidden=teacher_hidden, teacher_weight=teacher_weight,
                               impl=impl, chunk_size=4, reduction="none").sum().backward()
        assert h.grad is not None


# ---- the ops themselves ------------------------------------------------------------------------------

def _xent_args(dtype, impl, reduction, *, record=False, grad=True):
    hidden, weight, bias, class_weight, target = _head(dtype, seed=11)
    hidden = hidden.reshape(-1, DIM)
    if grad:
        hidden, weight, bias = (t.requires_grad_() for t in (hidden, weight, bias))
    return (hidden, weight, bias, target.reshape(-1), class_weight, -100, 0.1, 1e-2, 3.0, 4, F32, reduction, impl,
            record, grad, grad, grad, None, 0, -1)  # no group: the whole vocabulary


def _divergence_args(dtype, impl, reduction, *, grad=True):
    hidden, weight, bias, _, target = _head(dtype, seed=13)
    teacher_hidden, teacher_weight, teacher_bias = _teacher(dtype)
    hidden = hidden.reshape(-1, DIM)
    if grad:
        hidden, weight, bias = (t.requires_grad_() for t in (hidden, weight, bias))
    flat = target.reshape(-1)
    return (hidden, weight, bias, teacher_hidden.reshape(-1, TEACHER_DIM), teacher_weight, teacher_bias, flat != -100,
            flat, "js", 0.4, 1.5, 0.3, 4, F32, reduction, impl, grad, grad, grad)


OP_IMPLS = [pytest.param("native", F32, marks=_needs_native, id="native-f32"), pytest.param("torch", F64, id="torch")]


@pytest.mark.parametrize("impl,dtype", OP_IMPLS)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_each_op_passes_opcheck(impl, dtype, reduction):
    forward, grads = _ops.OPS["fused_linear_xent"]
    torch.library.opcheck(forward, _xent_args(dtype, impl, reduction, record=reduction == "none"))
    args = _xent_args(dtype, impl, "none", grad=False)
    rows = args[0].shape[0]
    torch.library.opcheck(grads, (*args[:-6], True, True, True, *args[-3:], torch.linspace(0.5, 1.5, rows,
                                                                                          dtype=dtype)))
    forward, grads = _ops.OPS["fused_linear_divergence"]
    torch.library.opcheck(forward, _divergence_args(dtype, impl, reduction))
    args = _divergence_args(dtype, impl, "none", grad=False)
    torch.library.opcheck(grads, (*args[:-3], True, True, True, torch.linspace(0.5, 1.5, rows, dtype=dtype)))


def test_the_fakes_give_the_shapes_without_data():
    with torch._subclasses.FakeTensorMode():
        hidden, weight, bias = torch.empty(9, 4), torch.empty(7, 4), torch.empty(7)
        target = torch.zeros(9, dtype=torch.long)
        forward, _ = _ops.OPS["fused_linear_xent"]
        out = forward(hidden, weight, bias, target, None, -100, 0.0, 0.0, None, 4, F32, "none", "torch", True,
                      True, False, True, None, 0, -1)
        assert [tuple(t.shape) for t in out] == [(9,), (0,), (0,), (0,), (2, 9)]
        out = forward(hidden, weight, bias, target, None, -100, 0.0, 0.0, None, 4, F32, "mean", "torch", False,
                      True, True, True, "a group's name", 3, 20)  # a shard: the same shapes
        assert [tuple(t.shape) for t in out] == [(), (9, 4), (7, 4), (7,), (0,)]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradcheck_through_the_ops_in_float64(reduction):
    hidden, weight, bias, class_weight, target = _head(F64, seed=17)
    teacher_hidden, teacher_weight, teacher_bias = _teacher(F64)
    h2 = hidden.reshape(-1, DIM).detach().requires_grad_()
    w, b = weight.detach().requires_grad_(), bias.detach().requires_grad_()
    flat = target.reshape(-1)

    def xent(h, w_, b_):
        return _ops.linear_xent(h, w_, b_, flat, class_weight, ignore_index=-100, label_smoothing=0.1, z_loss=1e-2,
                                softcap=2.5, chunk=4, accum_dtype=F64, reduction=reduction, impl="torch")

    def distill(h, w_, b_):
        return _ops.linear_divergence(h, w_, b_, teacher_hidden.reshape(-1, TEACHER_DIM), teacher_weight,
                                      teacher_bias, flat != -100, flat, divergence="js", beta=0.3, temperature=1.5,
                                      hard_label_weight=0.2, chunk=4, accum_dtype=F64, reduction=reduction,
                                      impl="torch")

    assert torch.autograd.gradcheck(xent, (h2, w, b))
    assert torch.autograd.gradcheck(distill, (h2, w, b))


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_a_second_derivative_raises_clearly(reduction):  # eagerly through the op, and compiled
    hidden, weight, _, _, target = _head(F64)
    h = hidden.reshape(-1, DIM).detach().requires_grad_()
    loss = _ops.linear_xent(h, weight, None, target.reshape(-1), None, ignore_index=-100, label_smoothing=0.0,
                            z_loss=0.0, softcap=None, chunk=4, accum_dtype=F32, reduction=reduction, impl="torch")
    with pytest.raises(RuntimeError, match=r"linear_cross_entropy\(\): no double backward \(create_graph=True\)"):
        torch.autograd.grad(loss.sum(), h, create_graph=True)
    # Through a compiled call: AOTAutograd would hand back a first derivative that is not connected
    # to h (a later grad says h was unused; allow_unused=True gives None); the op's guard in the
    # compiled backward raises instead, naming the function, and a plain backward still works.
    compiled = _compiled(lambda x: linear_cross_entropy(x, weight, target.reshape(-1), impl="torch", chunk_size=4,
                                                        reduction=reduction, validate=False))
    with pytest.raises(RuntimeError, match=r"linear_cross_entropy\(\): no double backward \(create_graph=True\) "
                                           r"through a torch.compile'd call"):
        torch.autograd.grad(compiled(h).sum(), h, create_graph=True)
    (grad,) = torch.autograd.grad(compiled(h).sum(), h)
    (want,) = torch.autograd.grad(loss.sum(), h)
    torch.testing.assert_close(grad, want)
    (grad,) = torch.autograd.grad(compiled(h).sum(), h, retain_graph=True)  # a kept graph is no graph of grads
    torch.testing.assert_close(grad, want)


def test_the_op_refuses_an_unknown_impl():
    forward, _ = _ops.OPS["fused_linear_xent"]
    args = list(_xent_args(F64, "torch", "mean", grad=False))
    args[12] = "composite"
    with pytest.raises(ValueError, match=r"impl must be 'native', 'torch' or 'triton', got 'composite'"):
        forward(*args)
