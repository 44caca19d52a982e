"""Shared seeds, tolerances and fixtures."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import settings

from logitlab import _native

torch.set_num_threads(min(2, os.cpu_count() or 1))

# Hypothesis: deterministic, bounded, no deadline (timings on a shared machine are noise).
settings.register_profile("ci", max_examples=60, deadline=None, derandomize=True, print_blob=True)
settings.load_profile("ci")

# Odd shapes from the brief: sizes 1, 2, 7, 127 and a (3, 5, 7) tensor.
ODD_SHAPES = [(1,), (2,), (7,), (127,), (4, 1), (3, 2), (2, 7), (3, 127), (3, 5, 7)]
LOW_PRECISION = [torch.float32, torch.bfloat16, torch.float16]
# Added to the naive op's error when comparing an op's low-precision error against it.
ERROR_SLACK = {torch.float32: 1e-6, torch.bfloat16: 4e-3, torch.float16: 5e-4, torch.float64: 1e-12}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def dims_of(shape):
    """Every valid dim of a tensor of ``shape``, negative and positive."""
    n = len(shape)
    return list(range(-n, n))


# avx512bf16 differs from avx512 only in the bf16 matmul kernels (the others share its binary).
ROW_KERNEL_BUILDS = [b for b in _native.supported_builds() if b != "avx512bf16"
                     or "avx512" not in _native.supported_builds()]


@pytest.fixture(params=ROW_KERNEL_BUILDS)
def each_build(request):
    """Run the test once per native build of the row kernels this CPU can execute (so an AVX-512
    machine also tests the AVX2 and portable builds that other machines' users get)."""
    with _native.use_build(request.param):
        yield request.param


@pytest.fixture
def bf16_kernels():
    """Force the build of the AVX512-BF16 matmul kernels where the CPU runs it: on a CPU with AMX
    the default build leaves bfloat16 matmuls to torch, and the kernels are still tested."""
    if "avx512bf16" in _native.supported_builds():
        with _native.use_build("avx512bf16"):
            yield
    else:
        yield


def count_calls(monkeypatch, module, **names: str) -> dict[str, int]:
    """Wrap the functions ``module.<name>`` (given by key, e.g. ``fwd="sparse_forward"``) so that
    each call is counted; returns the live counts by key."""
    seen = dict.fromkeys(names, 0)
    for key, name in names.items():
        original = getattr(module, name)

        def counting(*args, _key=key, _original=original, **kwargs):
            seen[_key] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, name, counting)
    return seen
