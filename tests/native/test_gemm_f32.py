"""The native float32 kernels (``_native/gemm_f32_*.c``) against the float64 truth and against
torch.mm's rounding.

``linear_cross_entropy`` runs each float32 chunk's grad @ weight and h @ weight.T (+ bias) in them.
They sum in spans (512 classes, 128 features), so their error must stay within float32 additions
of the float64 product through every tail (row groups and blocks, pieces, spans, column strips,
vocabulary groups) and be no worse than torch.mm's.
"""

from __future__ import annotations

import pytest
import torch

from logitlab._native import gemm as native_gemm
from logitlab.fused import _matmul, linear_cross_entropy

pytestmark = pytest.mark.skipif(not native_gemm._f32_available(), reason="no C compiler or no AVX-512")


@pytest.mark.parametrize("rows,vocab,dim", [(1, 1, 1), (5, 3, 17), (6, 128, 64), (13, 600, 64 + 16),
                                            (64, 1001, 128), (7, 2 * 512 + 129, 3 * 64 + 40), (7, 300, 8)], ids=str)
def test_grad_hidden_f32_matches_the_float64_product(rows, vocab, dim):
    # Row groups of 6 and every shorter one, pieces of 128 classes and spans of 512 with partial
    # last ones, 64-column strips with partial last strips (below and above 16 columns).
    gen = torch.Generator().manual_seed(rows * vocab + dim)
    grad = torch.randn(rows, vocab, generator=gen)
    weight = torch.randn(vocab, dim, generator=gen)
    out = torch.full((rows, dim), float("nan"))
    assert native_gemm.grad_hidden_f32(out, grad, weight)
    want = grad.double() @ weight.double()
    bound = 4 * vocab * 2**-24 * (grad.double().abs() @ weight.double().abs())
    assert bool(((out.double() - want).abs() <= bound).all()), float((out.double() - want).abs().max())


def test_grad_hidden_f32_rounds_no_worse_than_torch_mm():
    # A loss gradient (softmax minus one-hot) over a large vocabulary: summed along the whole
    # vocabulary in one chain the error was 10x torch.mm's; in spans of 512 it matches.
    gen = torch.Generator().manual_seed(6)
    grad = torch.softmax(2 * torch.randn(32, 16384, generator=gen), -1)
    grad[torch.arange(32), torch.randint(0, 16384, (32,), generator=gen)] -= 1
    weight = torch.randn(16384, 256, generator=gen) / 4
    want = grad.double() @ weight.double()
    out = torch.empty(32, 256)
    assert native_gemm.grad_hidden_f32(out, grad, weight)
    ours = (out.double() - want).abs().mean()
    torch_mm = (torch.mm(grad, weight).double() - want).abs().mean()
    assert ours <= 1.5 * torch_mm, (float(ours), float(torch_mm))


def test_grad_hidden_f32_row_strides_and_declines():
    gen = torch.Generator().manual_seed(7)
    block = torch.randn(9, 700, generator=gen)
    table = torch.randn(650, 150, generator=gen)
    grad, weight = block[1:8, 20:620], table[30:630, 10:140]
    wide = torch.zeros(7, 200)
    out = wide[:, 50:180]
    assert native_gemm.grad_hidden_f32(out, grad, weight)
    torch.testing.assert_close(out, grad @ weight, rtol=1e-5, atol=1e-4)
    assert not bool(wide[:, :50].any()) and not bool(wide[:, 180:].any())
    assert not native_gemm.grad_hidden_f32(out.double(), grad.double(), weight.double())
    assert not native_gemm.grad_hidden_f32(out, grad.t().contiguous().t(), weight)  # strided columns
    with pytest.raises(ValueError, match="shapes"):
        native_gemm.grad_hidden_f32(torch.empty(7, 129), grad, weight)


@pytest.mark.parametrize("rows,vocab,dim", [(1, 1, 1), (5, 7, 3), (16, 12, 128), (64, 6 * 50 + 5, 129),
                                            (37, 100, 2 * 128 + 7), (128 + 3, 61, 40), (70, 6, 1), (88, 13, 33)],
                         ids=str)
@pytest.mark.parametrize("with_bias", [False, True], ids=["no_bias", "bias"])
def test_logits_f32_match_the_float64_product(rows, vocab, dim, with_bias):
    # Blocks of up to 64 rows with every partial last block (1 to 4 vectors of 16) and vectors
    # shared out between blocks (70 = 32 + 38, 88 = 48 + 40, 131 = 48 + 48 + 35), groups of 6
    # vocabulary rows with a padded last group, spans of 128 features with a partial last one.
    gen = torch.Generator().manual_seed(rows * vocab + dim)
    h = torch.randn(rows, dim, generator=gen)
    weight = torch.randn(vocab, dim, generator=gen)
    bias = torch.randn(vocab, generator=gen) if with_bias else None
    out = torch.full((rows, vocab), float("nan"))
    assert native_gemm.logits_f32(out, h, weight, bias)
    want = h.double() @ weight.double().t() + (0 if bias is None else bias.double())
    size = h.double().abs() @ weight.double().abs().t() + (0 if bias is None else bias.double().abs())
    bound = 4 * (dim + 1) * 2**-24 * size
    assert bool(((out.double() - want).abs() <= bound).all()), float((out.double() - want).abs().max())


def test_logits_f32_round_no_worse_than_torch_mm():
    # Summed along all 2048 features in one chain the error was 2-3x torch.mm's; in spans it is not.
    gen = torch.Generator().manual_seed(8)
    h = torch.randn(64, 2048, generator=gen) / 7
    weight = torch.randn(3000, 2048, generator=gen) / 7
    want = h.double() @ weight.double().t()
    out = torch.empty(64, 3000)
    assert native_gemm.logits_f32(out, h, weight, None)
    ours = (out.double() - want).abs().mean()
    torch_mm = (torch.mm(h, weight.t()).double() - want).abs().mean()
    assert ours <= 1.1 * torch_mm, (float(ours), float(torch_mm))


def test_logits_f32_row_strides_and_declines():
    gen = torch.Generator().manual_seed(9)
    hidden = torch.randn(30, 90, generator=gen)
    table = torch.randn(400, 100, generator=gen)
    h, weight = hidden[3:23, 5:85], table[50:350, 10:90]
    wide = torch.zeros(20, 320)
    out = wide[:, 10:310]
    assert native_gemm.logits_f32(out, h, weight, None)
    torch.testing.assert_close(out, h @ weight.t(), rtol=1e-5, atol=1e-4)
    assert not bool(wide[:, :10].any()) and not bool(wide[:, 310:].any())
    assert not native_gemm.logits_f32(out.double(), h.double(), weight.double(), None)
    assert not native_gemm.logits_f32(out, h, weight.t().contiguous().t(), None)  # strided columns
    with pytest.raises(ValueError, match="shapes"):
        native_gemm.logits_f32(out, h, weight, torch.zeros(299))


def test_fused_gradients_agree_with_and_without_the_kernels(monkeypatch):
    # Without the kernels, float32 blocks take MKL in class-major tiles and grad_hidden as a batch
    # over parts of the vocabulary; both ways must give the same loss and gradients.
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(37, 96, generator=gen) / 3
    weight = torch.randn(2100, 96, generator=gen) / 3
    bias = torch.randn(2100, generator=gen)
    target = torch.randint(0, 2100, (37,), generator=gen)

    def run():
        h, w, b = (t.clone().requires_grad_() for t in (hidden, weight, bias))
        loss = linear_cross_entropy(h, w, target, bias=b, chunk_size=8, label_smoothing=0.1)
        loss.backward()
        return loss.detach(), h.grad, w.grad, b.grad

    calls = []
    for name in ("grad_hidden_f32", "logits_f32"):
        real = getattr(native_gemm, name)
        monkeypatch.setattr(_matmul.native_gemm, name, lambda *a, real=real, name=name: calls.append(name) or real(*a))
    with_kernels = run()
    assert set(calls) == {"grad_hidden_f32", "logits_f32"}, "the float32 chunks did not reach the kernels"
    for name in ("grad_hidden_f32", "logits_f32", "_f32_available"):
        monkeypatch.setattr(_matmul.native_gemm, name, lambda *a: False)
    without = run()
    for a, b in zip(with_kernels, without):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
