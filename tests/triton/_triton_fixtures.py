"""What the Triton kernels' cases share: the device they run on and a small block size.

The cases (``cases_*.py``) run on CPU tensors under Triton's interpreter, in a process of their
own that ``test_triton.py`` starts with ``TRITON_INTERPRET=1``: Triton reads that variable when
``triton`` is imported (its language's own helpers are decorated then), so it cannot be turned
on inside a test session that may have imported triton already, and setting it for the whole
session would change the other tests' environment. ``LOGITLAB_TRITON_DEVICE=cuda`` runs the same
cases compiled on a GPU (``python -m pytest tests/triton/cases_*.py``, benchmarks/gpu_check.sh).
"""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (it is in the test extra)")


DEVICE = os.environ.get("LOGITLAB_TRITON_DEVICE", "cpu")


@pytest.fixture(autouse=True)
def triton_mode():
    """Skip (with the reason) where the cases cannot run: a case file started without the
    interpreter (test_triton.py starts them with it), or asked for CUDA on a machine without."""
    if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("the Triton cases run on CPU tensors only under TRITON_INTERPRET=1 (test_triton.py "
                    "starts them so)")
    if DEVICE == "cuda" and not torch.cuda.is_available():
        pytest.skip("LOGITLAB_TRITON_DEVICE=cuda but no CUDA device is available")


@pytest.fixture
def device():
    return torch.device(DEVICE)


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 8 columns: a row of C = 37 classes takes 5 steps of the online log-sum-exp, the
    last one partial (C not a multiple of the block)."""
    from logitlab._triton import xent

    monkeypatch.setattr(xent, "MAX_BLOCK", 8)
