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

pytestmark = [pytest.mark.skipif(not native_gemm._available(),
                                 reason="no C compiler or no AVX512-BF16: the torch float32 path is used"),
              pytest.mark.usefixtures("bf16_kernels")]

BF16 = torch.bfloat16


def _split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 -> (upper 16 bits as bfloat16, lower 16 bits as int16)."""
    bits = x.float().view(torch.int32)
    return (bits >> 16).to(torch.int16).view(BF16), (bits & 0xFFFF).to(torch.int16)


def _join(halves) -> torch.Tensor:
    upper, lower = (t.view(torch.int16).to(torch.int32) for t in halves)
    return ((upper << 16) | (lower & 0xFFFF)).view(torch.float32)


# (src, out): in place in float32 or bfloat16; from zeros (no source read); a float32 sum written
# into a bfloat16 result; a float32 sum split in halves, in place, from zeros, and rounded into
# its own upper halves (the last chunk of linear_cross_entropy's default bfloat16 path).
_SOURCES = {"float32_in_place": (torch.float32, torch.float32), "bf16_in_place": (BF16, BF16),
            "zeros_into_float32": (None, torch.float32), "zeros_into_bf16": (None, BF16),
            "float32_into_bf16": (torch.float32, BF16), "split_in_place": ("split", "split"),
            "zeros_into_split": (None, "split"), "split_into_its_upper_halves": ("split", BF16)}


@pytest.mark.parametrize("rows,vocab,dim", [(1, 3, 1), (7, 50, 70), (2, 6 * 48, 64), (13, 97, 64),
                                            (33, 6 * 48 + 5, 128 + 16 + 3), (128, 1000, 200)], ids=str)
@pytest.mark.parametrize("source", _SOURCES)
def test_matches_the_float64_sum(rows, vocab, dim, source):
    src_kind, out_kind = _SOURCES[source]
    gen = torch.Generator().manual_seed(rows * vocab + dim)
    grad = torch.randn(rows, vocab, generator=gen).to(BF16)
    h = torch.randn(rows, dim, generator=gen).to(BF16)
    start = torch.zeros(vocab, dim) if src_kind is None else torch.randn(vocab, dim, generator=gen)
    if src_kind == BF16:
        start = start.to(BF16).float()
    src = None if src_kind is None else _split(start) if src_kind == "split" else start.to(src_kind)
    before = None if src is None else [t.clone() for t in (src if isinstance(src, tuple) else (src,))]
    if source == "split_into_its_upper_halves":
        out = src[0]
    elif src_kind == out_kind:
        out = src
    else:  # out of place, every element of out must be written: NaN wherever the kernel missed one
        out = _split(torch.full((vocab, dim), float("nan"))) if out_kind == "split" else \
            torch.full((vocab, dim), float("nan"), dtype=out_kind)
    want = start.double() + grad.double().t() @ h.double()
    assert native_gemm.grad_weight_bf16(out, grad, h, src=src)
    if src is not None and out is not src and source != "split_into_its_upper_halves":
        assert all(torch.equal(a, b) for a, b in zip(before, src if isinstance(src, tuple) else (src,))), "src written"
    got = _join(out).double() if out_kind == "split" else out.double()
    size = start.double().abs() + grad.double().abs().t() @ h.double().abs()
    # float32 additions, then (bfloat16 out) one rounding to nearest.
    bound = 4 * rows * 2**-24 * size + (2**-8 * want.abs() if out_kind == BF16 else 0)
    assert bool(((got - want).abs() <= bound).all()), float((got - want).abs().max())


def test_split_sum_is_the_float32_sum_bit_for_bit():
    # The halves only store the float32 sum: the same additions as a float32 sum give the same bits,
    # and rounding the halves in place gives what rounding the float32 sum gives.
    gen = torch.Generator().manual_seed(1)
    grads = [torch.randn(9, 301, generator=gen).to(BF16) for _ in range(3)]
    hs = [torch.randn(9, 83, generator=gen).to(BF16) for _ in range(3)]
    wide, halves = torch.empty(301, 83), _split(torch.empty(301, 83))
    for i, (g, h) in enumerate(zip(grads, hs)):
        assert native_gemm.grad_weight_bf16(wide, g, h, src=wide if i else None)
        if i < 2:
            assert native_gemm.grad_weight_bf16(halves, g, h, src=halves if i else None)
        else:
            assert native_gemm.grad_weight_bf16(halves[0], g, h, src=halves)
        assert i == 2 or torch.equal(_join(halves), wide)
    assert torch.equal(halves[0], wide.to(BF16))


def test_row_strides_and_a_second_call_accumulates():
    # grad as a slice of a wider block, h as rows of a larger hidden: row strides, unit columns.
    gen = torch.Generator().manual_seed(3)
    block = torch.randn(9, 400, generator=gen).to(BF16)
    hidden = torch.randn(20, 80, generator=gen).to(BF16)
    grad, h = block[2:7, 10:310], hidden[5:10, :]
    grad_w = torch.zeros(300, 80)
    for _ in range(2):
        assert native_gemm.grad_weight_bf16(grad_w, grad, h, src=grad_w)
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
    upper, lower = torch.zeros(10, 8, dtype=BF16), torch.zeros(10, 8, dtype=torch.int16)
    assert not native_gemm.grad_weight_bf16((upper, lower.to(BF16)), g, h, src=None)  # halves: int16 lower
    assert not native_gemm.grad_weight_bf16((upper, torch.zeros(8, 10, dtype=torch.int16).t()), g, h, src=None)


def test_fused_gradients_agree_with_and_without_the_kernel(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    hidden = (torch.randn(37, 96, generator=gen) / 3).to(BF16)
    weight = (torch.randn(2100, 96, generator=gen) / 3).to(BF16)
    target = torch.randint(0, 2100, (37,), generator=gen)

    def grads():
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        linear_cross_entropy(h, w, target, chunk_size=8, label_smoothing=0.1).backward()
        return h.grad, w.grad

    calls = []
    for name in ("grad_weight_bf16", "grad_hidden_bf16", "logits_bf16"):
        real = getattr(native_gemm, name)
        monkeypatch.setattr(_matmul.native_gemm, name,
                            lambda *a, real=real, name=name, **k: calls.append(name) or real(*a, **k))
    with_kernel = grads()
    assert set(calls) == {"grad_weight_bf16", "grad_hidden_bf16", "logits_bf16"}, "the bf16 chunks missed the kernels"
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

