"""Every public op has its ``logitlab.nn`` Module (issue 24, item 5), and ``decompose`` speaks bits.

``MODULE_OF`` maps each public function to the Module that wraps it; ``NOT_A_LAYER`` lists the
functions that are deliberately not layers, each with the reason. A new public function in
neither table fails ``test_every_public_op_has_a_module``.
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch

import logitlab
from logitlab import distributed, functional
from logitlab import nn as lnn

F64 = torch.float64

MODULE_OF = {
    "softmax": "Softmax", "log_softmax": "LogSoftmax", "sigmoid": "Sigmoid", "log_sigmoid": "LogSigmoid",
    "standard_normalize": "StandardNormalize", "spherical_softmax": "SphericalSoftmax",
    "taylor_softmax": "TaylorSoftmax", "sparsemax": "Sparsemax", "entmax15": "Entmax15", "entmax": "Entmax",
    "cross_entropy": "CrossEntropyLoss", "nll_loss": "NLLLoss", "binary_cross_entropy_with_logits": "BCEWithLogitsLoss",
    "log_likelihood": "LogLikelihood", "focal_loss": "FocalLoss", "poly1_cross_entropy": "Poly1CrossEntropyLoss",
    "divergence_loss": "DivergenceLoss", "kl_divergence": "KLDivergenceLoss",
    "reverse_kl_divergence": "ReverseKLDivergenceLoss", "js_divergence": "JSDivergenceLoss",
    "alpha_divergence": "AlphaDivergenceLoss", "renyi_divergence": "RenyiDivergenceLoss",
    "total_variation": "TotalVariationLoss", "hellinger_distance": "HellingerLoss", "brier_loss": "BrierLoss",
    "fenchel_young_loss": "FenchelYoungLoss", "sparsemax_loss": "SparsemaxLoss", "entmax_loss": "EntmaxLoss",
    "entmax15_loss": "Entmax15Loss",
    # The CRF layer holds the transition scores; its forward, decode and marginals call these.
    "linear_chain_crf_nll": "LinearChainCRF", "crf_log_partition": "LinearChainCRF",
    "crf_marginals": "LinearChainCRF", "viterbi_decode": "LinearChainCRF",
    "crf_entropy": "LinearChainCRF", "crf_kbest_scores": "LinearChainCRF",
    "hmm_log_likelihood": "HiddenMarkovModel", "hmm_posteriors": "HiddenMarkovModel",
    "hmm_viterbi": "HiddenMarkovModel", "hmm_entropy": "HiddenMarkovModel",
    "linear_cross_entropy": "LinearCrossEntropy", "linear_divergence_loss": "LinearDivergenceLoss",
    "vocab_parallel_cross_entropy": "VocabParallelCrossEntropy",
    "vocab_parallel_kl_divergence": "VocabParallelKLDivergence",
    "multiclass_hinge_loss": "MulticlassHingeLoss", "perceptron_loss": "PerceptronLoss",
}

NOT_A_LAYER = {
    "shannon_negentropy": "a regularizer Ω(p) of a normalizer: FenchelYoungLoss uses it",
    "gini_regularizer": "a regularizer Ω(p) of a normalizer: FenchelYoungLoss uses it",
    "tsallis15_regularizer": "a regularizer Ω(p) of a normalizer: FenchelYoungLoss uses it",
    "tsallis_regularizer": "a regularizer Ω(p) of a normalizer: FenchelYoungLoss uses it",
    "binary_negentropy": "a regularizer Ω(p) of a normalizer: FenchelYoungLoss uses it",
    "make_fenchel_young_loss": "a factory: it returns a loss function (the op), built from a user's Ω",
    "linear_cross_entropy_with_lse": "linear_cross_entropy plus statistics in a NamedTuple: LinearCrossEntropy "
                                     "is the layer, the statistics are logging",
    "entmax_with_info": "the solve report of entmax (Module Entmax): a diagnostic, not a layer",
    "entropy": "a measurement of given distributions (analysis), not a function of logits",
    "cross_entropy_between": "a measurement of given distributions (analysis); CrossEntropyLoss is the layer",
    "kl_between": "a measurement of given distributions (analysis); KLDivergenceLoss is the layer",
    "decompose": "a measurement returning three parts (analysis), not a loss",
    "chain_forward": "the generic dynamic program over a semiring; LinearChainCRF's methods are its uses",
}

DISTRIBUTED_OPS = ["vocab_parallel_cross_entropy", "vocab_parallel_kl_divergence"]


def _public_functions():
    names = [n for n in functional.__all__ if inspect.isfunction(getattr(functional, n))]
    return names + DISTRIBUTED_OPS


def test_every_public_op_has_a_module():
    missing = [n for n in _public_functions() if n not in MODULE_OF and n not in NOT_A_LAYER]
    assert not missing, f"public ops without an nn Module (add one, or say in NOT_A_LAYER why not): {missing}"
    for name, module in MODULE_OF.items():
        assert module in lnn.__all__ and issubclass(getattr(lnn, module), torch.nn.Module), (name, module)
    assert not set(MODULE_OF) & set(NOT_A_LAYER)
    assert set(MODULE_OF) | set(NOT_A_LAYER) == set(_public_functions()), "stale rows in the tables"


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
    assert "divergence='js'" in repr(module) and "temperature=2.0" in repr(lnn.VocabParallelKLDivergence(temperature=2.0))


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
