"""The native float32 grad_hidden kernel (``_native/gemm_f32_gh.c``) against the float64 truth
and against torch.mm's rounding.

``linear_cross_entropy`` runs each float32 chunk's grad @ weight in it. It sums the vocabulary in
spans of 512 classes, so its error must stay within float32 additions of the float64 product
through every tail (row groups, pieces, spans, column strips) and no worse than torch.mm's.
"""

from __future__ import annotations

import pytest
import torch

from logitlab._native import gemm as native_gemm

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
