"""Every public op has its ``logitlab.nn`` Module (issue 24, item 5), and ``decompose`` speaks bits.

Each public function has its row in ``logitlab.registry.OPS`` (or ``DISTRIBUTED_OPS``) naming
the Module that wraps it or saying why it is not a layer, and naming its reference. A new public
function without a row fails ``test_every_public_op_has_a_module``.
"""

from __future__ import annotations

import inspect
import math
import re

import pytest
import torch

import logitlab
from logitlab import distributed, functional, reference, registry
from logitlab import nn as lnn

F64 = torch.float64

def _rows():
    """The registry's rows of every public op (issue 19: the tables the contract tests read)."""
    return {op.name: op for op in list(registry.OPS.values()) + list(registry.DISTRIBUTED_OPS.values())}


def _public_functions():
    names = [n for n in functional.__all__ if inspect.isfunction(getattr(functional, n))]
    return names + [n for n in distributed.__all__ if n.startswith("vocab_parallel_")]


def test_every_public_op_has_a_module():
    rows = _rows()
    missing = [n for n in _public_functions() if n not in rows]
    assert not missing, f"public ops without a registry row (its Module, or why it is not a layer): {missing}"
    for name, op in rows.items():
        if op.module is not None:
            module = op.module
            assert module in lnn.__all__ and issubclass(getattr(lnn, module), torch.nn.Module), (name, module)
        else:
            assert op.not_a_layer, name
    assert set(rows) == set(_public_functions()), "stale rows in the tables"
    for name, op in rows.items():
        assert op.fn is (getattr(functional, name) if name in functional.__all__ else getattr(distributed, name))


def test_every_public_op_has_a_reference():
    for name, op in _rows().items():
        if op.reference is None:
            # a note names the reference functions that check it
            named = [w for w in re.findall(r"[a-z_0-9]+", op.reference_note or "") if inspect.isfunction(
                getattr(reference, w, None))]
            assert named, name
            continue
        base = getattr(op.reference, "func", op.reference)  # a functools.partial binds a kind= or alpha=
        assert base.__module__ == "logitlab.reference" and getattr(reference, base.__name__) is base, name


def test_generated_modules_follow_their_functions():
    # The one stateless pattern: options of __init__ are the function's keyword-only options
    # (same names, defaults), forward takes its tensors, and the call is the function's.
    from logitlab.nn._stateless import stateless_module

    layer_cls = stateless_module(logitlab.entmax, "EntmaxLayer")
    options = {n: p.default for n, p in inspect.signature(logitlab.entmax).parameters.items()
               if p.kind is p.KEYWORD_ONLY}
    init = {n: p.default for n, p in inspect.signature(layer_cls.__init__).parameters.items()
            if p.kind is p.KEYWORD_ONLY}
    assert init == options
    x = torch.randn(3, 5, dtype=F64)
    alpha = torch.nn.Parameter(torch.tensor(1.3, dtype=F64))
    layer = layer_cls(alpha, dim=0)
    torch.testing.assert_close(layer(x), logitlab.entmax(x, alpha, dim=0))
    assert "dim=0" in repr(layer) and [n for n, _ in layer.named_parameters()] == ["alpha"]
    with pytest.raises(TypeError, match=r"EntmaxLayer.forward\(\) takes 1 tensors \(logits\), got 2"):
        layer(x, x)
    kl = stateless_module(logitlab.kl_divergence, "KL")(reduction="none", normalizer="entmax", alpha=1.3)
    target = torch.softmax(torch.randn(3, 5, dtype=F64), -1)
    mask = torch.tensor([True, False, True])
    torch.testing.assert_close(kl(x, target, mask),
                               logitlab.kl_divergence(x, target, reduction="none", normalizer="entmax", alpha=1.3,
                                                      mask=mask))
    weight = stateless_module(logitlab.cross_entropy, "CE")(weight=torch.ones(5, dtype=F64))
    assert "weight" in dict(weight.named_buffers())
    with pytest.raises(TypeError, match=r"^CE\(\): .*'wieght'"):
        stateless_module(logitlab.cross_entropy, "CE")(wieght=None)


NEW = [
    (lnn.LogLikelihood, logitlab.log_likelihood, []),
    (lnn.LinearDivergenceLoss, logitlab.linear_divergence_loss, ["bias", "teacher_bias", "teacher_hidden",
                                                                  "teacher_weight", "target"]),
    (lnn.VocabParallelCrossEntropy, distributed.vocab_parallel_cross_entropy, []),
    (lnn.VocabParallelKLDivergence, distributed.vocab_parallel_kl_divergence, []),
]


@pytest.mark.parametrize("module,fn,per_call", NEW, ids=lambda x: getattr(x, "__name__", ""))
def test_new_module_signatures_match_their_functions(module, fn, per_call):
    options = {n: p.default for n, p in inspect.signature(fn).parameters.items()
               if p.kind is p.KEYWORD_ONLY and n not in per_call}
    init = {n: p.default for n, p in inspect.signature(module.__init__).parameters.items() if p.kind is p.KEYWORD_ONLY}
    assert init == options and list(init) == list(options)
    tensors = [n for n, p in inspect.signature(fn).parameters.items() if p.kind is p.POSITIONAL_OR_KEYWORD]
    forward = inspect.signature(module.forward).parameters
    assert list(forward)[1:len(tensors) + 1] == tensors
    assert set(forward) - {"self"} == set(tensors) | set(per_call)


def test_new_modules_equal_their_functions():
    logits = torch.randn(5, 7, dtype=F64)
    target = torch.tensor([0, 6, 2, 2, 3])
    torch.testing.assert_close(lnn.LogLikelihood()(logits, target), logitlab.log_likelihood(logits, target))
    torch.testing.assert_close(lnn.VocabParallelCrossEntropy(label_smoothing=0.2, z_loss=1e-3)(logits, target),
                               logitlab.cross_entropy(logits, target, label_smoothing=0.2, z_loss=1e-3))
    teacher = torch.randn(5, 7, dtype=F64)
    torch.testing.assert_close(lnn.VocabParallelKLDivergence(temperature=2.0)(logits, teacher),
                               logitlab.kl_divergence(logits, torch.softmax(teacher / 2, -1), temperature=2.0))
    hidden, teacher_hidden = torch.randn(6, 4, dtype=F64), torch.randn(6, 4, dtype=F64)
    weight, teacher_weight = torch.randn(9, 4, dtype=F64), torch.randn(9, 4, dtype=F64)
    labels = torch.tensor([1, 2, 3, -100, 8, 0])
    module = lnn.LinearDivergenceLoss(divergence="js", beta=0.3, temperature=1.5, hard_label_weight=0.25)
    got = module(hidden, weight, teacher_hidden=teacher_hidden, teacher_weight=teacher_weight, target=labels)
    want = logitlab.linear_divergence_loss(hidden, weight, teacher_hidden=teacher_hidden, teacher_weight=teacher_weight,
                                           divergence="js", beta=0.3, temperature=1.5, target=labels,
                                           hard_label_weight=0.25)
    torch.testing.assert_close(got, want)
    assert "divergence='js'" in repr(module)
    assert "temperature=2.0" in repr(lnn.VocabParallelKLDivergence(temperature=2.0))


def test_decompose_in_bits():
    logits = torch.randn(4, 6, dtype=F64)
    target = torch.softmax(torch.randn(4, 6, dtype=F64), -1)
    nats = logitlab.decompose(logits, target)
    bits = logitlab.decompose(logits, target, base=2)
    for n, b in zip(nats, bits):
        torch.testing.assert_close(b, n / math.log(2))
    torch.testing.assert_close(bits.entropy, logitlab.entropy(target, base=2))
    torch.testing.assert_close(bits.cross_entropy, bits.entropy + bits.kl)
    uniform = logitlab.decompose(torch.zeros(8, dtype=F64), torch.full((8,), 1 / 8, dtype=F64), base=2)
    assert float(uniform.cross_entropy) == pytest.approx(3.0, abs=1e-12)
    for bad, pattern in [(1.0, r"a number > 0 other than 1, got 1.0"), (0.0, r"a finite number > 0, got 0.0")]:
        with pytest.raises(ValueError, match=rf"^decompose\(\): argument 'base' expected {pattern}"):
            logitlab.decompose(logits, target, base=bad)
