"""A short version of examples/hf_finetune.py: the stock and the patched Llama learn the same curve."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # an example end to end

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("transformers")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hf_finetune.py"


@pytest.fixture(scope="module")
def example():
    sys.path.insert(0, str(EXAMPLE.parent))
    try:
        spec = importlib.util.spec_from_file_location("hf_finetune", EXAMPLE)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(EXAMPLE.parent))
    return module


@pytest.mark.slow
def test_stock_and_patched_fine_tuning_give_the_same_curve(example):
    ids, vocab, _ = example.prepare(max_mb=0.6, vocab=2048)
    runs = {kind: example.train(kind, ids=ids, vocab=vocab, steps=3, batch=2, seq=32, lr=1e-3, seed=0)
            for kind in ("stock", "patched")}
    stock, patched = runs["stock"]["loss"], runs["patched"]["loss"]
    assert len(stock) == len(patched) == 3 and len(runs["patched"]["peak_step_mib"]) == 3
    assert stock[-1] < stock[0]  # it learns
    for a, b in zip(stock, patched):
        assert abs(a - b) <= 1e-5 * abs(a)
