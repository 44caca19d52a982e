"""grad_weight's sum over the chunks of ``linear_cross_entropy`` (``_matmul.GradWeightSum``).

The sum starts from nothing (the first chunk writes it), and with bfloat16 inputs and a float32
sum the last chunk writes the bfloat16 result directly. Whatever the mix of native kernel and
torch fallback over the chunks, the result must be the float64 sum of the chunks' products
within the rounding of the sum's dtype, returned in the weight's dtype.
"""

from __future__ import annotations

import pytest
import torch

from logitlab._native import gemm as native_gemm
from logitlab.fused import _matmul
from logitlab.fused._matmul import GradWeightSum

BF16, F32 = torch.bfloat16, torch.float32
_NATIVE = native_gemm._available()
pytestmark = pytest.mark.usefixtures("bf16_kernels")


def _chunks(count, dtype, vocab=97, dim=70, rows=9, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(rows, vocab, generator=gen).to(dtype), torch.randn(rows, dim, generator=gen).to(dtype))
            for _ in range(count)]


@pytest.mark.parametrize("dtype,sum_dtype", [(BF16, F32), (BF16, BF16), (F32, F32)], ids=str)
@pytest.mark.parametrize("kernel", ["native", "torch", "native_then_torch", "torch_then_native"])
@pytest.mark.parametrize("count", [1, 3])
def test_sum_over_chunks_matches_float64(monkeypatch, dtype, sum_dtype, kernel, count):
    if kernel != "torch" and not _NATIVE:
        pytest.skip("no AVX512-BF16 kernel")
    chunks = _chunks(count, dtype)
    weight = torch.empty(97, 70, dtype=dtype)
    total = GradWeightSum(weight, sum_dtype, native=True)
    real = native_gemm.grad_weight_bf16
    for i, (g, h) in enumerate(chunks):
        use_native = {"native": True, "torch": False, "native_then_torch": i == 0, "torch_then_native": i > 0}[kernel]
        monkeypatch.setattr(_matmul.native_gemm, "grad_weight_bf16", real if use_native else (lambda *a, **k: False))
        total.add(g, h, last=i == count - 1)
    got = total.result()
    assert got.dtype == dtype and got.shape == weight.shape
    want = sum(g.double().t() @ h.double() for g, h in chunks)
    size = sum(g.double().abs().t() @ h.double().abs() for g, h in chunks)
    # float32 sums (9 rows a chunk), rounded once per chunk into a bfloat16 sum, or once at the end.
    rounding = 2**-8 * (count if sum_dtype == BF16 else 1) if dtype == BF16 else 0
    bound = 4 * 9 * count * 2**-24 * size + rounding * size
    assert bool(((got.double() - want).abs() <= bound).all()), float((got.double() - want).abs().max())


@pytest.mark.skipif(not _NATIVE, reason="no AVX512-BF16 kernel")
def test_float32_sum_of_a_bf16_head_lives_in_halves_and_the_result_buffer():
    # Several chunks: the upper halves of the float32 sum sit in the buffer that the last chunk
    # rounds in place and returns, beside an int16 buffer of lower halves; no float32 (V, D) tensor.
    weight = torch.empty(97, 70, dtype=BF16)
    several = GradWeightSum(weight, F32, native=True)
    chunks = _chunks(3, BF16)
    several.add(*chunks[0], last=False)
    upper, lower = several.halves
    assert several.sum is None and upper.dtype == BF16 and lower.dtype == torch.int16
    several.add(*chunks[1], last=False)
    assert several.halves[0] is upper and several.halves[1] is lower
    several.add(*chunks[2], last=True)
    assert several.halves is None and several.sum is None and several.result() is upper
    with pytest.raises(RuntimeError, match="already added"):
        several.add(*chunks[0], last=True)
    # One chunk: no lower halves at all, the kernel writes the rounded sum straight into the result.
    one = GradWeightSum(weight, F32, native=True)
    one.add(*_chunks(1, BF16)[0], last=True)
    assert one.halves is None and one.sum is None and one.final is not None and one.result() is one.final


def test_nothing_added_gives_zeros_in_the_weights_dtype():
    got = GradWeightSum(torch.empty(5, 3, dtype=BF16), F32).result()
    assert got.dtype == BF16 and not got.any()
