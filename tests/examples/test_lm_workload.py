"""A short version of examples/lm_workload.py: same curve with the naive and the fused loss."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # an example end to end

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "lm_workload.py"


@pytest.fixture(scope="module")
def lm():
    spec = importlib.util.spec_from_file_location("lm_workload", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_naive_and_fused_training_give_the_same_curve(lm):
    ids, vocab, chars = lm.prepare(max_mb=0.6, vocab=4096)
    assert vocab == 4096 and chars >= 600_000 and int(ids.max()) < vocab
    runs = {kind: lm.train(kind, ids=ids, vocab=vocab, steps=4, tokens_per_step=256, dim=16, width=32)
            for kind in ("naive", "fused")}
    naive, fused = runs["naive"]["curve"], runs["fused"]["curve"]
    assert len(naive) == len(fused) == 4
    assert naive[-1] < naive[0]  # it learns
    for a, b in zip(naive, fused):
        assert abs(a - b) <= 1e-5 * abs(a)


def test_tokenizer_refuses_a_vocabulary_larger_than_the_text(lm):
    with pytest.raises(ValueError, match=r"build_tokenizer\(\): argument 'vocab_size' expected at most 4"):
        lm.build_tokenizer("a b c", 10)
