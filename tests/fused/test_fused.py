"""Fused linear + loss: values and gradients against the float64 reference and torch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import logitlab
from conftest import ERROR_SLACK
from logitlab import reference
from logitlab.fused import linear_cross_entropy, linear_divergence_loss
from logitlab.fused._engine import FusedLinearLoss, Plan, chunk_rows, needs_wide_block
from logitlab.fused.cross_entropy import build_kernel, choose_impl
from logitlab.nn import LinearCrossEntropy

F64 = torch.float64
BATCHES = [(1,), (2,), (7,), (127,), (3, 5, 7)]
OPTIONS = [dict(), dict(reduction="sum"), dict(reduction="none"), dict(label_smoothing=0.2),
           dict(z_loss=1e-2), dict(softcap=3.0), dict(class_weight=True, label_smoothing=0.1),
           dict(bias=True, z_loss=1e-3, reduction="sum"), dict(class_weight=True, z_loss=1e-2)]


def _inputs(batch, dim=6, vocab=13, dtype=F64, ignore=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(*batch, dim, generator=gen, dtype=F64).to(dtype)
    weight = torch.randn(vocab, dim, generator=gen, dtype=F64).to(dtype)
    target = torch.randint(0, vocab, batch, generator=gen)
    if ignore and target.numel() > 2:
        target.view(-1)[1::3] = -100
    return hidden, weight, target


def _expand(opts, vocab, dtype=F64):
    opts = dict(opts)
    gen = torch.Generator().manual_seed(1)
    if opts.pop("class_weight", False):
        opts["class_weight"] = (torch.rand(vocab, generator=gen, dtype=F64) + 0.5).to(dtype)
    if opts.pop("bias", False):
        opts["bias"] = torch.randn(vocab, generator=gen, dtype=F64).to(dtype)
    return opts


def _value_and_grads(fn, hidden, weight, target, opts):
    hidden = hidden.detach().clone().requires_grad_()
    weight = weight.detach().clone().requires_grad_()
    opts = dict(opts)
    leaves = [hidden, weight]
    if "bias" in opts:
        opts["bias"] = opts["bias"].detach().clone().requires_grad_()
        leaves.append(opts["bias"])
    loss = fn(hidden, weight, target, **opts)
    seed = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype).reshape(loss.shape)
    grads = torch.autograd.grad((loss * seed).sum(), leaves)
    return [loss.detach(), *grads]


# Every odd shape for the chunked path; the naive path (torch's own loss) on the largest.
IMPL_BATCHES = [("torch", b) for b in BATCHES] + [("composite", (3, 5, 7))]


@pytest.mark.parametrize("impl,batch", IMPL_BATCHES, ids=str)
@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: ",".join(o) or "default")
def test_matches_reference_in_float64(batch, opts, impl):
    hidden, weight, target = _inputs(batch)
    opts = _expand(opts, weight.shape[0])
    got = _value_and_grads(lambda *a, **k: linear_cross_entropy(*a, impl=impl, chunk_size=4, **k),
                           hidden, weight, target, opts)
    want = _value_and_grads(reference.linear_cross_entropy, hidden, weight, target, opts)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("precompute", [True, False], ids=["precompute", "recompute"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradcheck_of_the_autograd_function(precompute, reduction):
    hidden, weight, target = _inputs((7,), dim=4, vocab=9)
    bias = torch.randn(9, dtype=F64, requires_grad=True)
    hidden.requires_grad_(), weight.requires_grad_()
    kernel = build_kernel(target, torch.rand(9, dtype=F64) + 0.5, ignore_index=-100, vocab_start=0, vocab_total=9,
                          label_smoothing=0.1, z_loss=1e-2, dtype=F64)
    scale = None if reduction == "none" else 1.0 if reduction == "sum" else 0.25
    plan = Plan(chunk=3, accum_dtype=torch.float32, softcap=2.5, precompute=precompute)
    assert torch.autograd.gradcheck(lambda h, w, b: FusedLinearLoss.apply(h, w, b, kernel, scale, plan),
                                    (hidden, weight, bias))


def test_matches_torch_cross_entropy_and_torch_linear_cross_entropy():
    hidden, weight, target = _inputs((127,), dim=8, vocab=31)
    bias, cw = torch.randn(31, dtype=F64), torch.rand(31, dtype=F64) + 0.5
    ours = linear_cross_entropy(hidden, weight, target, bias=bias, class_weight=cw, label_smoothing=0.05,
                                chunk_size=16)
    torch_ce = F.cross_entropy(hidden @ weight.T + bias, target, weight=cw, label_smoothing=0.05)
    torch_lce = F.linear_cross_entropy(hidden, weight, target, linear_bias=bias, weight=cw, label_smoothing=0.05,
                                       ignore_index=-100)
    torch.testing.assert_close(ours, torch_ce, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours, torch_lce, rtol=1e-12, atol=1e-12)


def test_matches_logitlab_cross_entropy_when_available():
    cross_entropy = getattr(logitlab, "cross_entropy", None)
    if cross_entropy is None:
        pytest.skip("logitlab.cross_entropy has not landed on this branch yet")
    hidden, weight, target = _inputs((3, 5, 7), dim=8, vocab=17)
    cw = torch.rand(17, dtype=F64) + 0.5
    for opts in [dict(), dict(label_smoothing=0.1), dict(z_loss=1e-2), dict(reduction="none"),
                 dict(class_weight=cw, z_loss=1e-2, label_smoothing=0.2, reduction="sum")]:
        got = _value_and_grads(lambda *a, **k: linear_cross_entropy(*a, chunk_size=4, **k),
                               hidden, weight, target, opts)
        ours_to_theirs = {k if k != "class_weight" else "weight": val for k, val in opts.items()}
        want = _value_and_grads(lambda h, w, t, **k: cross_entropy(h @ w.T, t, **ours_to_theirs), hidden, weight,
                                target, {})
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("impl", ["torch", "composite"])
def test_all_ignored_rows_give_zero_mean_and_zero_gradient(impl):
    hidden, weight, _ = _inputs((9,))
    target = torch.full((9,), -100)
    loss, grad_h, grad_w = _value_and_grads(lambda *a, **k: linear_cross_entropy(*a, impl=impl, chunk_size=4, **k),
                                            hidden, weight, target, {})
    assert float(loss) == 0.0 and torch.isfinite(loss)
    assert not grad_h.any() and not grad_w.any()


def test_a_chunk_made_only_of_ignored_rows():
    hidden, weight, target = _inputs((12,), ignore=False)
    target[4:8] = -100  # the whole second chunk of 4
    opts = dict(label_smoothing=0.1, z_loss=1e-2)
    got = _value_and_grads(lambda *a, **k: linear_cross_entropy(*a, chunk_size=4, **k),
                           hidden, weight, target, opts)
    want = _value_and_grads(reference.linear_cross_entropy, hidden, weight, target, opts)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
    assert not got[1][4:8].any()


@pytest.mark.parametrize("dtype", [F64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("opts", [dict(), dict(reduction="none"), dict(softcap=2.0, label_smoothing=0.1)],
                         ids=["mean", "none", "softcap_smooth"])
def test_ignored_rows_are_left_out_of_the_chunks(monkeypatch, dtype, opts):
    """The loop computes logits only for the kept rows: 8 of 12 here, in chunks of 3 (the last one
    short), whichever row kernel (native or eager) gets the block."""
    from logitlab.fused._kernel import CrossEntropyKernel

    rows_seen = []
    for name in ("__call__", "native"):
        method = getattr(CrossEntropyKernel, name)

        def counting(self, z, *args, method=method):
            rows_seen.append(z.shape[0])
            return method(self, z, *args)

        monkeypatch.setattr(CrossEntropyKernel, name, counting)
    hidden, weight, target = _inputs((12,), dim=8, vocab=40, dtype=dtype, ignore=False)
    target[[0, 5, 6, 11]] = -100
    got = _value_and_grads(lambda *a, **k: linear_cross_entropy(*a, chunk_size=3, **k),
                           hidden, weight, target, opts)
    monkeypatch.undo()
    want = _value_and_grads(lambda *a, **k: linear_cross_entropy(*a, impl="composite", **k), hidden, weight, target,
                            opts)
    per_pass = [3, 3, 2]
    assert rows_seen in (per_pass, per_pass * 2)  # reduction 'none' runs the loop again in backward
    rtol, atol = (1e-10, 1e-12) if dtype == F64 else (2e-2, 1e-2)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=rtol, atol=atol)
    assert not got[1][[0, 5, 6, 11]].any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("opts", [dict(), dict(label_smoothing=0.1, z_loss=1e-3), dict(reduction="sum")],
                         ids=["default", "smooth_z", "sum"])
def test_low_precision_error_no_worse_than_naive(dtype, opts):
    hidden, weight, target = _inputs((40,), dim=32, vocab=301, dtype=dtype)
    truth = _value_and_grads(reference.linear_cross_entropy, hidden.to(F64), weight.to(F64), target, opts)
    ours = _value_and_grads(lambda *a, **k: linear_cross_entropy(*a, chunk_size=24, **k),
                            hidden, weight, target, opts)

    def naive(h, w, t, **k):  # the plain computation at the input dtype
        rows = F.cross_entropy(h @ w.T, t, reduction="none", label_smoothing=k.get("label_smoothing", 0.0))
        lse = torch.logsumexp((h @ w.T).float(), 1).to(dtype)
        rows = rows + k.get("z_loss", 0.0) * lse.square() * (t != -100)
        return rows.sum() if k.get("reduction") == "sum" else rows.sum() / (t != -100).sum()

    base = _value_and_grads(naive, hidden, weight, target, opts)
    for name, o, b, t in zip(["loss", "grad_hidden", "grad_weight"], ours, base, truth):
        assert o.dtype == dtype
        err_ours = float((o.to(F64) - t).abs().max())
        err_naive = float((b.to(F64) - t).abs().max())
        scale = max(float(t.abs().max()), 1.0)
        assert err_ours <= err_naive + ERROR_SLACK[dtype] * scale, (name, err_ours, err_naive)


def test_non_contiguous_inputs_and_rows_not_divisible_by_the_chunk():
    hidden, weight, target = _inputs((5, 7), dim=6, vocab=127)
    hidden_nc = hidden.transpose(0, 1).contiguous().transpose(0, 1)  # (5, 7, 6), non-contiguous
    weight_nc = weight.T.contiguous().T
    target_nc = target.T.contiguous().T
    assert not hidden_nc.is_contiguous() and not weight_nc.is_contiguous() and not target_nc.is_contiguous()
    want = _value_and_grads(reference.linear_cross_entropy, hidden, weight, target, {"label_smoothing": 0.1})
    for chunk in (3, 8, 35, 100):
        got = _value_and_grads(lambda *a, **k: linear_cross_entropy(*a, chunk_size=chunk, **k),
                               hidden_nc, weight_nc, target_nc, {"label_smoothing": 0.1})
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dim,vocab", [(6, 2 * 1024 + 77), (50, 13)], ids=["vocab_over_tiles", "dim_over_vocab"])
@pytest.mark.parametrize("opts", [dict(bias=True, label_smoothing=0.1), dict(softcap=5.0, bias=True)],
                         ids=["native", "eager"])
def test_vocabulary_tiles_cover_every_column_and_feature(dim, vocab, opts):
    # float32/float64 blocks are computed in class-major tiles of 1024 vocabulary rows
    # (_matmul.logits_into) and grad_hidden class-major (_matmul.grad_hidden_into): a partial last tile,
    # a last chunk with fewer rows, and more features than classes must all land in place.
    hidden, weight, target = _inputs((11,), dim=dim, vocab=vocab)
    opts = _expand(opts, vocab)
    want = _value_and_grads(reference.linear_cross_entropy, hidden, weight, target, opts)
    got = _value_and_grads(lambda *a, **k: linear_cross_entropy(*a, chunk_size=4, **k),
                           hidden, weight, target, opts)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
    opts32 = {k: v.float() if isinstance(v, torch.Tensor) else v for k, v in opts.items()}
    got32 = _value_and_grads(lambda *a, **k: linear_cross_entropy(*a, chunk_size=4, **k),
                             hidden.float(), weight.float(), target, opts32)
    for g, w in zip(got32, want):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g.double(), w, rtol=1e-4, atol=1e-5)
    # bfloat16 with the default float32 accum_dtype: grad_weight summed in float32
    # (_matmul.grad_weight_into: the native kernel, or torch one tile of 1024 classes at a time).
    opts16 = {k: v.bfloat16() if isinstance(v, torch.Tensor) else v for k, v in opts.items()}
    got16 = _value_and_grads(lambda *a, **k: linear_cross_entropy(*a, chunk_size=4, **k),
                             hidden.bfloat16(), weight.bfloat16(), target, opts16)
    for g, w in zip(got16, want):
        assert g.dtype == torch.bfloat16
        torch.testing.assert_close(g.double(), w, rtol=3e-2, atol=3e-2 * max(float(w.abs().max()), 1.0))


class _LargestAllocation(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_chunked_never_holds_more_than_a_chunk_of_logits():
    rows, dim, vocab, chunk = 256, 8, 1000, 16
    hidden = torch.randn(rows, dim, requires_grad=True)
    weight = torch.randn(vocab, dim, requires_grad=True)
    target = torch.randint(0, vocab, (rows,))
    for impl, bound in (("torch", chunk * vocab), ("composite", rows * vocab)):
        with _LargestAllocation() as mode:
            linear_cross_entropy(hidden, weight, target, impl=impl, chunk_size=chunk, label_smoothing=0.1).backward()
        assert mode.largest <= max(bound, vocab * dim), impl
        if impl == "composite":
            assert mode.largest >= rows * vocab  # the probe does see a full matrix when there is one


def test_auto_is_deterministic_in_the_shapes():
    small, large = torch.empty(32, 8), torch.empty(4096, 8)
    assert choose_impl("linear_cross_entropy", "auto", small, 32, 1000, None) == "composite"
    assert choose_impl("linear_cross_entropy", "auto", small, 32, 1000, 8) in ("native", "torch")  # chunks asked for
    assert choose_impl("linear_cross_entropy", "auto", large, 4096, 32768, None) in ("native", "torch")
    assert choose_impl("linear_cross_entropy", "auto", large.double(), 4096, 32768, None) == "torch"
    assert chunk_rows(4096, 32768) == 128 and chunk_rows(2048, 131072) == 64 and chunk_rows(3, 10) == 3
    assert chunk_rows(1, 10**7) == 1 and chunk_rows(10**5, 10**6) == 16  # at most 2^24 elements
    assert chunk_rows(256, 50000) == 64 and chunk_rows(8192, 1000) == 256  # at least 64 rows, 2^18 elements
    assert chunk_rows(16384, 32768, torch.bfloat16) == 168 and chunk_rows(4096, 32768, torch.float64) == 128
    assert chunk_rows(16384, 32768, torch.bfloat16, wide_block=False) == 512
    # A float32 grad_weight sum for a bf16 head: the block may grow to 512 rows but take no more
    # than 1/4 of the sum's bytes (D·4/8 rows of bf16, D·4/24 with a float32 twin), never fewer
    # rows than without it, never more than N.
    f32, bf16 = torch.float32, torch.bfloat16
    assert chunk_rows(2048, 131072, bf16, wide_block=False, dim=2048, sum_dtype=f32) == 512
    assert chunk_rows(4096, 32768, bf16, wide_block=False, dim=1024, sum_dtype=f32) == 512
    assert chunk_rows(4096, 32768, bf16, wide_block=False, dim=512, sum_dtype=f32) == 256
    assert chunk_rows(2048, 131072, bf16, dim=2048, sum_dtype=f32) == 336
    assert chunk_rows(300, 131072, bf16, wide_block=False, dim=2048, sum_dtype=f32) == 300
    assert chunk_rows(16384, 32768, bf16, wide_block=False, dim=64, sum_dtype=f32) == 512
    assert chunk_rows(2048, 131072, bf16, wide_block=False, dim=2048, sum_dtype=bf16) == 64
    assert chunk_rows(2048, 131072, f32, dim=2048, sum_dtype=f32) == 64
    # A float64 sum: the twin is float64 too (2048·8/(4·10) rows); float32 inputs never grow.
    assert chunk_rows(2048, 131072, bf16, dim=2048, sum_dtype=torch.float64) == 408
    assert chunk_rows(2048, 131072, f32, dim=2048, sum_dtype=torch.float64) == 64


@pytest.mark.parametrize("accum, grad, grows", [(torch.float32, True, True), (torch.bfloat16, True, False),
                                                (torch.float32, False, False)])
def test_auto_chunk_grows_only_beside_a_wider_grad_weight_sum(monkeypatch, accum, grad, grows):
    seen = []
    real = FusedLinearLoss.apply
    monkeypatch.setattr(FusedLinearLoss, "apply", lambda *a: seen.append(a[5].chunk) or real(*a))
    hidden = torch.randn(1024, 1024, dtype=torch.bfloat16)
    weight = torch.randn(4096, 1024, dtype=torch.bfloat16, requires_grad=grad)
    linear_cross_entropy(hidden, weight, torch.randint(4096, (1024,)), impl="auto", accum_dtype=accum)
    # 64 rows by the size rule; 1024·4/8 rows beside the float32 sum (1024·4/24 with a float32 twin).
    grown = 168 if needs_wide_block(hidden, None, None) else 512
    assert seen == [grown if grows else 64]


def test_bad_shapes_and_options_are_clear_errors():
    h, w, t = torch.randn(4, 3), torch.randn(10, 3), torch.tensor([1, 2, 3, 4])
    with pytest.raises(ValueError, match=r"linear_cross_entropy\(\): argument 'weight' expected shape \(V, 3\) "
                                         r"\(D = hidden.shape\[-1\]\), got <shape \(10, 5\)>"):
        linear_cross_entropy(h, torch.randn(10, 5), t)
    with pytest.raises(ValueError, match=r"argument 'target' expected class indices of shape \(4,\) "
                                         r"\(hidden.shape\[:-1\]\), got <integer tensor of shape \(3,\)>"):
        linear_cross_entropy(h, w, t[:3])
    with pytest.raises(ValueError, match=r"argument 'bias' expected shape \(10,\) \(V = weight.shape\[0\]\), "
                                         r"got <shape \(9,\)>"):
        linear_cross_entropy(h, w, t, bias=torch.randn(9))
    with pytest.raises(ValueError, match=r"argument 'class_weight' expected a 1-D tensor of 10 class weights"):
        linear_cross_entropy(h, w, t, class_weight=torch.ones(3))
    with pytest.raises(ValueError,
                       match=r"argument 'target' expected class indices in \[0, 9\] or ignore_index=-100, "
                             r"got <index 10>"):
        linear_cross_entropy(h, w, torch.tensor([1, 2, 3, 10]))
    with pytest.raises(ValueError,
                       match=r"argument 'impl' expected one of 'auto', 'native', 'torch', 'composite', 'triton', "
                             r"got 'fast'"):
        linear_cross_entropy(h, w, t, impl="fast")
    with pytest.raises(ValueError, match=r"argument 'chunk_size' expected None or an int >= 1, got 0"):
        linear_cross_entropy(h, w, t, chunk_size=0)
    with pytest.raises(TypeError, match=r"argument 'weight' expected dtype torch.float32 \(the dtype of hidden\)"):
        linear_cross_entropy(h, w.double(), t)
    with pytest.raises(TypeError, match=r"argument 'target' expected an integer tensor of class indices"):
        linear_cross_entropy(h, w, t.float())


def test_module_matches_function():
    hidden, weight, target = _inputs((3, 5), dim=4, vocab=11)
    cw = torch.rand(11, dtype=F64) + 0.5
    module = LinearCrossEntropy(class_weight=cw, label_smoothing=0.1, z_loss=1e-3, chunk_size=4)
    assert "label_smoothing=0.1" in repr(module) and "class_weight" in dict(module.named_buffers())
    bias = torch.randn(11, dtype=F64)
    torch.testing.assert_close(
        module(hidden, weight, target, bias=bias),
        linear_cross_entropy(hidden, weight, target, bias=bias, class_weight=cw, label_smoothing=0.1, z_loss=1e-3,
                             chunk_size=4))


def test_retained_graph_backward_twice_gives_the_same_gradients():
    hidden, weight, target = _inputs((9,), dim=4, vocab=11)
    hidden.requires_grad_()
    loss = linear_cross_entropy(hidden, weight, target, chunk_size=4)
    first, = torch.autograd.grad(loss, hidden, retain_graph=True)
    second, = torch.autograd.grad(loss * 2, hidden)
    torch.testing.assert_close(second, 2 * first)


# --------------------------------------------------------------------------------- distillation

DIVERGENCE_OPTIONS = [dict(divergence="kl"), dict(divergence="reverse_kl", temperature=2.0),
                      dict(divergence="js", beta=0.3), dict(divergence="js", beta=0.95),
                      dict(divergence="kl", temperature=1.5, hard_label_weight=0.3, reduction="sum"),
                      dict(divergence="js", reduction="none")]


def _distill(batch, dtype=F64):
    gen = torch.Generator().manual_seed(3)
    hidden = torch.randn(*batch, 5, generator=gen, dtype=F64).to(dtype)
    weight = torch.randn(19, 5, generator=gen, dtype=F64).to(dtype)
    teacher_hidden = torch.randn(*batch, 7, generator=gen, dtype=F64).to(dtype)
    teacher_weight = torch.randn(19, 7, generator=gen, dtype=F64).to(dtype)
    target = torch.randint(0, 19, batch, generator=gen)
    target.view(-1)[::4] = -100
    return hidden, weight, teacher_hidden, teacher_weight, target


def test_divergence_teacher_over_several_vocabulary_tiles():
    # The float64 teacher block is computed in class-major tiles of 1024 classes, like the student's.
    gen = torch.Generator().manual_seed(5)
    vocab = 2 * 1024 + 77
    hidden, weight = torch.randn(9, 5, generator=gen, dtype=F64), torch.randn(vocab, 5, generator=gen, dtype=F64)
    th, tw = torch.randn(9, 7, generator=gen, dtype=F64), torch.randn(vocab, 7, generator=gen, dtype=F64)
    extra = dict(teacher_hidden=th, teacher_weight=tw, teacher_bias=torch.randn(vocab, generator=gen, dtype=F64),
                 divergence="js", beta=0.3)
    got = _value_and_grads(lambda h, w, t, **k: linear_divergence_loss(h, w, chunk_size=4, **k),
                           hidden, weight, None, extra)
    want = _value_and_grads(lambda h, w, t, **k: reference.linear_divergence_loss(h, w, **k),
                            hidden, weight, None, extra)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("impl,batch", [("torch", (1,)), ("torch", (7,)), ("torch", (3, 5, 7)),
                                        ("composite", (7,))], ids=str)
@pytest.mark.parametrize("opts", DIVERGENCE_OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_divergence_matches_reference(batch, opts, impl):
    hidden, weight, th, tw, target = _distill(batch)
    tb = torch.randn(19, dtype=F64)
    extra = dict(teacher_hidden=th, teacher_weight=tw, teacher_bias=tb, target=target, **opts)
    got = _value_and_grads(lambda h, w, t, **k: linear_divergence_loss(h, w, impl=impl, chunk_size=3, **k),
                           hidden, weight, None, extra)
    want = _value_and_grads(lambda h, w, t, **k: reference.linear_divergence_loss(h, w, **k),
                            hidden, weight, None, extra)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


def test_divergence_skips_ignored_rows(monkeypatch):
    """Rows whose hard label is ignored count for nothing, so the loop gives the kernel only the
    others (7 of 9 here, teacher rows gathered to match)."""
    from logitlab.fused.divergence import DivergenceKernel

    hidden, weight, th, tw, target = _distill((9,))
    target[8] = 3  # rows 0 and 4 stay ignored
    rows_seen, call = [], DivergenceKernel.__call__

    def counting(self, z, *args):
        rows_seen.append(z.shape[0])
        return call(self, z, *args)

    monkeypatch.setattr(DivergenceKernel, "__call__", counting)
    extra = dict(teacher_hidden=th, teacher_weight=tw, target=target, divergence="js", hard_label_weight=0.5,
                 temperature=1.5)
    got = _value_and_grads(lambda h, w, t, **k: linear_divergence_loss(h, w, chunk_size=3, **k),
                           hidden, weight, None, extra)
    assert rows_seen == [3, 3, 1]
    want = _value_and_grads(lambda h, w, t, **k: reference.linear_divergence_loss(h, w, **k),
                            hidden, weight, None, extra)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("divergence", ["kl", "reverse_kl", "js"])
def test_divergence_gradcheck_and_frozen_teacher(divergence):
    hidden, weight, th, tw, target = _distill((6,))
    hidden.requires_grad_(), weight.requires_grad_(), th.requires_grad_(), tw.requires_grad_()
    bias = torch.randn(19, dtype=F64, requires_grad=True)

    def fn(h, w, b):
        return linear_divergence_loss(h, w, bias=b, teacher_hidden=th, teacher_weight=tw, divergence=divergence,
                                      temperature=1.7, target=target, hard_label_weight=0.3, impl="auto",
                                      chunk_size=4)

    assert torch.autograd.gradcheck(fn, (hidden, weight, bias), fast_mode=True)
    fn(hidden, weight, bias).backward()
    assert th.grad is None and tw.grad is None


def test_divergence_low_precision_and_bad_inputs():
    hidden, weight, th, tw, _ = _distill((40,), dtype=torch.bfloat16)
    loss = linear_divergence_loss(hidden, weight, teacher_hidden=th, teacher_weight=tw, chunk_size=16)
    truth = reference.linear_divergence_loss(hidden, weight, teacher_hidden=th, teacher_weight=tw)
    assert loss.dtype == torch.bfloat16 and abs(float(loss) - float(truth)) <= 2e-2 * float(truth)
    with pytest.raises(ValueError,
                       match=r"linear_divergence_loss\(\): argument 'teacher_weight' expected shape \(19, 7\)"):
        linear_divergence_loss(hidden, weight, teacher_hidden=th, teacher_weight=tw[:5])
    with pytest.raises(ValueError, match=r"argument 'teacher_hidden' expected batch shape \(40,\)"):
        linear_divergence_loss(hidden, weight, teacher_hidden=th[:3], teacher_weight=tw)
    with pytest.raises(ValueError, match=r"argument 'divergence' expected one of 'kl', 'reverse_kl', 'js', got 'tv'"):
        linear_divergence_loss(hidden, weight, teacher_hidden=th, teacher_weight=tw, divergence="tv")
    with pytest.raises(ValueError, match=r"argument 'target' expected class indices when hard_label_weight > 0"):
        linear_divergence_loss(hidden, weight, teacher_hidden=th, teacher_weight=tw, hard_label_weight=1.0)


def test_bfloat16_accumulation_is_an_option_with_bounded_error():
    hidden, weight, target = _inputs((96,), dim=16, vocab=257, dtype=torch.bfloat16)
    truth = _value_and_grads(reference.linear_cross_entropy, hidden.to(F64), weight.to(F64), target, {})
    fp32 = _value_and_grads(lambda *a, **k: linear_cross_entropy(*a, chunk_size=16, **k),
                            hidden, weight, target, {})
    bf16 = _value_and_grads(lambda *a, **k: linear_cross_entropy(*a, chunk_size=16,
                                                                 accum_dtype=torch.bfloat16, **k),
                            hidden, weight, target, {})
    torch.testing.assert_close(bf16[0], fp32[0])  # the value does not depend on it
    torch.testing.assert_close(bf16[1], fp32[1])  # nor does grad_hidden
    scale = float(truth[2].abs().max())
    err_fp32 = float((fp32[2].to(F64) - truth[2]).abs().max())
    err_bf16 = float((bf16[2].to(F64) - truth[2]).abs().max())
    assert err_fp32 <= err_bf16 and err_bf16 <= 2**-6 * scale  # six roundings of 2^-9 at most


@pytest.mark.parametrize("impl", ["auto", "composite", "torch", "native"])
@pytest.mark.parametrize("fill", [float("nan"), float("inf")])
def test_padding_rows_of_hidden_may_hold_anything(impl, fill):
    """An ignored row's hidden state never reaches grad_weight (0 * NaN was NaN with impl='composite')."""
    torch.manual_seed(0)
    dtype = torch.float32 if impl == "native" else torch.float64  # the native kernels: float32/bf16/f16
    hidden, weight = torch.randn(6, 4, dtype=dtype), torch.randn(9, 4, dtype=dtype)
    target = torch.tensor([1, -100, 3, 8, -100, 0])
    dirty = hidden.clone()
    dirty[1], dirty[4, 2] = fill, fill
    h, w = dirty.clone().requires_grad_(), weight.clone().requires_grad_()
    loss = linear_cross_entropy(h, w, target, impl=impl)
    loss.backward()
    h0, w0 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    torch.nn.functional.cross_entropy(h0 @ w0.T, target).backward()
    assert torch.allclose(loss, torch.nn.functional.cross_entropy(hidden @ weight.T, target))
    assert torch.allclose(w.grad, w0.grad) and torch.isfinite(h.grad).all()
    with pytest.raises(ValueError, match=r"linear_cross_entropy\(\): argument 'hidden' expected finite values"):
        linear_cross_entropy(dirty, weight, torch.tensor([1, 2, 3, 8, -100, 0]), impl=impl)
