"""The native bfloat16 kernels (``_native/gemm_bf16_*.c``) against the float64 truth.

``linear_cross_entropy`` with bfloat16 inputs sums each chunk's grad.T @ h into grad_weight with
it, float32 (the default ``accum_dtype``) or bfloat16. The products of two bfloat16 numbers are
exact in float32, so the kernel must agree with the float64 sum up to float32 additions, through
its register tiles and every tail (odd rows, vocabulary rows not a multiple of the tile,
columns not a multiple of 64), and the fused loss must give the same gradients with and without it.
grad_hidden (grad @ weight) and the logits (h @ weight.T + bias) of bfloat16 chunks are summed in
float32 and rounded once to bfloat16, so they must be within half a bfloat16 step of the float64
product, plus the float32 additions.
"""

from __future__ import annotations

import pytest
import torch

from logitlab._native import gemm as native_gemm
from logitlab.fused import _matmul, linear_cross_entropy

pytestmark = pytest.mark.skipif(not native_gemm._available(),
                                reason="no C compiler or no AVX512-BF16: the torch float32 path is used")

BF16 = torch.bfloat16


# (src, out) dtypes: in place in float32 or bfloat16, from zeros (no source read), and a float32
# sum written into a bfloat16 result (the last chunk).
_SOURCES = {"float32_in_place": (torch.float32, torch.float32), "bf16_in_place": (BF16, BF16),
            "zeros_into_float32": (None, torch.float32), "zeros_into_bf16": (None, BF16),
            "float32_into_bf16": (torch.float32, BF16)}


@pytest.mark.parametrize("rows,vocab,dim", [(1, 3, 1), (7, 50, 70), (2, 6 * 48, 64), (13, 97, 64),
                                            (33, 6 * 48 + 5, 128 + 16 + 3), (128, 1000, 200)], ids=str)
@pytest.mark.parametrize("source", _SOURCES)
def test_matches_the_float64_sum(rows, vocab, dim, source):
    src_dtype, out_dtype = _SOURCES[source]
    gen = torch.Generator().manual_seed(rows * vocab + dim)
    grad = torch.randn(rows, vocab, generator=gen).to(BF16)
    h = torch.randn(rows, dim, generator=gen).to(BF16)
    src = None if src_dtype is None else torch.randn(vocab, dim, generator=gen).to(src_dtype)
    start = torch.zeros(vocab, dim, dtype=torch.float64) if src is None else src.double()
    in_place = src is not None and src_dtype == out_dtype
    # Out of place, every element of out must be written: NaN wherever the kernel missed one.
    out = src if in_place else torch.full((vocab, dim), float("nan"), dtype=out_dtype)
    want = start + grad.double().t() @ h.double()
    assert native_gemm.grad_weight_bf16(out, grad, h, src=src)
    if src is not None and not in_place:
        assert torch.equal(src.double(), start), "the source was written"
    size = start.abs() + grad.double().abs().t() @ h.double().abs()
    # float32 additions, then (bfloat16 out) one rounding to nearest.
    bound = 4 * rows * 2**-24 * size + (2**-8 * want.abs() if out_dtype == BF16 else 0)
    assert bool(((out.double() - want).abs() <= bound).all()), float((out.double() - want).abs().max())


def test_row_strides_and_a_second_call_accumulates():
    # grad as a slice of a wider block, h as rows of a larger hidden: row strides, unit columns.
    gen = torch.Generator().manual_seed(3)
    block = torch.randn(9, 400, generator=gen).to(BF16)
    hidden = torch.randn(20, 80, generator=gen).to(BF16)
    grad, h = block[2:7, 10:310], hidden[5:10, :]
    grad_w = torch.zeros(300, 80)
    assert native_gemm.grad_weight_bf16(grad_w, grad, h, src=grad_w) and native_gemm.grad_weight_bf16(grad_w, grad, h, src=grad_w)
    want = 2 * grad.double().t() @ h.double()
    torch.testing.assert_close(grad_w.double(), want, rtol=0, atol=1e-5 * float(want.abs().max()))


def test_declines_what_it_does_not_take():
    g, h = torch.randn(4, 10).to(BF16), torch.randn(4, 8).to(BF16)
    assert not native_gemm.grad_weight_bf16(torch.zeros(10, 8, dtype=torch.float64), g, h, src=None)  # float64 sum
    assert not native_gemm.grad_weight_bf16(torch.zeros(10, 8), g.half(), h.half(), src=None)  # float16
    assert not native_gemm.grad_weight_bf16(torch.zeros(10, 8), g.t().contiguous().t(), h, src=None)  # strided columns
    assert not native_gemm.grad_weight_bf16(torch.zeros(10, 8), g[:0], h[:0], src=None)  # no rows: torch's zeros
    out = torch.zeros(10, 8)
    assert not native_gemm.grad_weight_bf16(out, g, h, src=torch.zeros(8, 10).t())  # a source laid out otherwise
    with pytest.raises(ValueError, match="shapes"):
        native_gemm.grad_weight_bf16(torch.zeros(10, 9), g, h, src=None)
    with pytest.raises(ValueError, match="shapes"):
        native_gemm.grad_weight_bf16(out, g, h, src=torch.zeros(10, 9))


def test_fused_gradients_agree_with_and_without_the_kernel(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    hidden = (torch.randn(37, 96, generator=gen) / 3).to(BF16)
    weight = (torch.randn(2100, 96, generator=gen) / 3).to(BF16)
    target = torch.randint(0, 2100, (37,), generator=gen)

    def grads():
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        linear_cross_entropy(h, w, target, impl="chunked", chunk_size=8, label_smoothing=0.1).backward()
        return h.grad, w.grad

    calls = []
    for name in ("grad_weight_bf16", "grad_hidden_bf16", "logits_bf16"):
        real = getattr(native_gemm, name)
        monkeypatch.setattr(_matmul.native_gemm, name, lambda *a, real=real, name=name, **k: calls.append(name) or real(*a, **k))
    with_kernel = grads()
    assert set(calls) == {"grad_weight_bf16", "grad_hidden_bf16", "logits_bf16"}, "the bfloat16 chunks did not reach the kernels"
    for name in ("grad_weight_bf16", "grad_hidden_bf16", "logits_bf16"):
        monkeypatch.setattr(_matmul.native_gemm, name, lambda *a, **k: False)
    without = grads()
    for a, b in zip(with_kernel, without):
        # Both are float32 sums of the same exact products, rounded once to bfloat16 at the end.
        torch.testing.assert_close(a.float(), b.float(), rtol=2**-7, atol=1e-6)


@pytest.mark.parametrize("rows,vocab,dim", [(1, 1, 1), (5, 3, 17), (6, 2 * 256, 64), (13, 2 * 256 + 7, 64 + 16),
                                            (64, 1001, 128), (131, 600, 3 * 64 + 40), (7, 300, 8)], ids=str)
def test_grad_hidden_matches_the_float64_product(rows, vocab, dim):
    # Row groups of 6 and every shorter group, vocabulary tiles of 256 and an odd last row,
    # 64-column strips with partial last strips (below and above 16 columns).
    gen = torch.Generator().manual_seed(rows * vocab + dim)
    grad = torch.randn(rows, vocab, generator=gen).to(BF16)
    weight = torch.randn(vocab, dim, generator=gen).to(BF16)
    out = torch.full((rows, dim), float("nan"), dtype=BF16)
    assert native_gemm.grad_hidden_bf16(out, grad, weight)
    want = grad.double() @ weight.double()
    bound = 2**-8 * want.abs() + 4 * vocab * 2**-24 * (grad.double().abs() @ weight.double().abs())
    assert bool(((out.double() - want).abs() <= bound).all()), float((out.double() - want).abs().max())


def test_grad_hidden_row_strides_and_declines():
    gen = torch.Generator().manual_seed(4)
    block = torch.randn(9, 700, generator=gen).to(BF16)
    table = torch.randn(650, 150, generator=gen).to(BF16)
    grad, weight = block[1:8, 20:620], table[30:630, 10:140]
    wide = torch.zeros(7, 200, dtype=BF16)
    out = wide[:, 50:180]
    assert native_gemm.grad_hidden_bf16(out, grad, weight)
    want = grad.double() @ weight.double()
    torch.testing.assert_close(out.double(), want, rtol=2**-7, atol=1e-3)
    assert not bool(wide[:, :50].any()) and not bool(wide[:, 180:].any())
    assert not native_gemm.grad_hidden_bf16(torch.empty(7, 130), grad, weight)  # float32 out
    assert not native_gemm.grad_hidden_bf16(out.half(), grad.half(), weight.half())
    assert not native_gemm.grad_hidden_bf16(out, grad.t().contiguous().t(), weight)  # strided columns
    with pytest.raises(ValueError, match="shapes"):
        native_gemm.grad_hidden_bf16(torch.empty(7, 129, dtype=BF16), grad, weight)


@pytest.mark.parametrize("rows,vocab,dim", [(1, 1, 1), (5, 7, 3), (16, 12, 64), (64, 6 * 50 + 5, 129),
                                            (37, 100, 2), (128 + 3, 61, 40), (70, 6, 1), (88, 13, 33),
                                            (100, 7, 18)], ids=str)
@pytest.mark.parametrize("with_bias", [False, True], ids=["no_bias", "bias"])
def test_logits_match_the_float64_product(rows, vocab, dim, with_bias):
    # Blocks of up to 64 rows with every partial last block (1 to 4 vectors of 16) and vectors
    # shared out between blocks (70 = 32 + 38, 88 = 48 + 40, 100 = 48 + 52, 131 = 48 + 48 + 35),
    # groups of 6 vocabulary rows with a padded last group, odd dims whose last column pairs with
    # zero.
    gen = torch.Generator().manual_seed(rows * vocab + dim)
    h = torch.randn(rows, dim, generator=gen).to(BF16)
    weight = torch.randn(vocab, dim, generator=gen).to(BF16)
    bias = torch.randn(vocab, generator=gen).to(BF16) if with_bias else None
    out = torch.full((rows, vocab), float("nan"), dtype=BF16)
    assert native_gemm.logits_bf16(out, h, weight, bias)
    want = h.double() @ weight.double().t() + (0 if bias is None else bias.double())
    size = h.double().abs() @ weight.double().abs().t() + (0 if bias is None else bias.double().abs())
    bound = 2**-8 * want.abs() + 4 * dim * 2**-24 * size
    assert bool(((out.double() - want).abs() <= bound).all()), float((out.double() - want).abs().max())


def test_logits_row_strides_and_declines():
    gen = torch.Generator().manual_seed(5)
    hidden = torch.randn(30, 90, generator=gen).to(BF16)
    table = torch.randn(400, 100, generator=gen).to(BF16)
    h, weight = hidden[3:23, 5:85], table[50:350, 10:90]
    wide = torch.zeros(20, 320, dtype=BF16)
    out = wide[:, 10:310]
    assert native_gemm.logits_bf16(out, h, weight, None)
    torch.testing.assert_close(out.double(), h.double() @ weight.double().t(), rtol=2**-7, atol=1e-3)
    assert not bool(wide[:, :10].any()) and not bool(wide[:, 310:].any())
    assert not native_gemm.logits_bf16(out.float(), h, weight, None)
    assert not native_gemm.logits_bf16(out, h, weight.t().contiguous().t(), None)  # strided columns
    with pytest.raises(ValueError, match="shapes"):
        native_gemm.logits_bf16(out, h, weight, torch.zeros(299, dtype=BF16))

