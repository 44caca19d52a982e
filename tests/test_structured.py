"""Linear-chain CRF: forward algorithm, marginals and Viterbi against brute-force enumeration."""

from __future__ import annotations

import math

import pytest
import torch

import logitlab
from logitlab import reference
from logitlab.structured import crf_log_partition, crf_marginals, linear_chain_crf_nll, viterbi_decode

F64 = torch.float64


def _case(b, t, k, *, ends=True, lengths=None, dtype=F64):
    emissions = torch.randn(b, t, k, dtype=dtype) * 2
    transitions = torch.randn(k, k, dtype=dtype) * 2
    start = torch.randn(k, dtype=dtype) if ends else None
    end = torch.randn(k, dtype=dtype) if ends else None
    lengths = torch.tensor(lengths if lengths is not None else [t] * b)
    mask = torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)
    return emissions, transitions, start, end, mask


@pytest.mark.parametrize("t, k, lengths", [
    (1, 1, [1]), (1, 3, [1, 1]), (2, 2, [2, 1, 2]), (3, 3, [3, 2, 1]), (4, 2, [4, 3]), (5, 3, [5, 0, 2]),
    (3, 4, [3, 3]),
])
@pytest.mark.parametrize("ends", [False, True])
def test_log_partition_marginals_and_best_path_equal_enumeration(t, k, lengths, ends):
    emissions, transitions, start, end, mask = _case(len(lengths), t, k, ends=ends, lengths=lengths)
    kw = dict(mask=mask, start_transitions=start, end_transitions=end)
    log_z = crf_log_partition(emissions, transitions, **kw)
    marginals = crf_marginals(emissions, transitions, **kw)
    best = viterbi_decode(emissions, transitions, **kw)
    for row, length in enumerate(lengths):
        if length == 0:
            assert log_z[row] == 0 and (marginals[row] == 0).all() and (best.tags[row] == -1).all()
            assert best.score[row] == 0
            continue
        truth = reference.linear_chain_crf_brute_force(emissions[row, :length], transitions,
                                                       start_transitions=start, end_transitions=end)
        torch.testing.assert_close(log_z[row], truth["log_partition"], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(marginals[row, :length], truth["marginals"], rtol=1e-10, atol=1e-12)
        assert (marginals[row, length:] == 0).all()
        assert torch.equal(best.tags[row, :length], truth["best_tags"])
        assert (best.tags[row, length:] == -1).all()
        torch.testing.assert_close(best.score[row], truth["best_score"], rtol=1e-12, atol=1e-12)
        # The nll of any sequence is log Z − its score.
        tags = torch.zeros(t, dtype=torch.long)
        tags[:length] = truth["best_tags"]
        nll = linear_chain_crf_nll(emissions[row : row + 1], transitions, tags.unsqueeze(0), mask=mask[row : row + 1],
                                   start_transitions=start, end_transitions=end)
        torch.testing.assert_close(nll, truth["log_partition"] - truth["best_score"], rtol=1e-12, atol=1e-12)


def test_every_sequence_probability_sums_to_one():
    emissions, transitions, start, end, _ = _case(1, 4, 3)
    truth = reference.linear_chain_crf_brute_force(emissions[0], transitions, start_transitions=start,
                                                   end_transitions=end)
    import itertools

    sequences = torch.tensor(list(itertools.product(range(3), repeat=4)))
    nll = linear_chain_crf_nll(emissions.expand(81, 4, 3), transitions, sequences, start_transitions=start,
                               end_transitions=end, reduction="none")
    torch.testing.assert_close(torch.exp(-nll).sum(), torch.tensor(1.0, dtype=F64))
    torch.testing.assert_close(-nll, truth["scores"] - truth["log_partition"])


def test_one_position_reduces_to_softmax_cross_entropy():
    logits = torch.randn(7, 5, dtype=F64)
    target = torch.randint(0, 5, (7,))
    transitions = torch.randn(5, 5, dtype=F64)  # irrelevant with one position
    nll = linear_chain_crf_nll(logits.unsqueeze(1), transitions, target.unsqueeze(1))
    torch.testing.assert_close(nll, torch.nn.functional.cross_entropy(logits, target))
    torch.testing.assert_close(crf_marginals(logits.unsqueeze(1), transitions)[:, 0], torch.softmax(logits, 1))
    torch.testing.assert_close(crf_log_partition(logits.unsqueeze(1), transitions), torch.logsumexp(logits, 1))
    torch.testing.assert_close(nll, logitlab.cross_entropy(logits, target))


def test_gradcheck_float64():
    emissions, transitions, start, end, mask = _case(3, 4, 3, lengths=[4, 2, 1])
    tags = torch.randint(0, 3, (3, 4))
    inputs = tuple(x.requires_grad_() for x in (emissions, transitions, start, end))

    def nll(e, a, s, f):
        return linear_chain_crf_nll(e, a, tags, mask=mask, start_transitions=s, end_transitions=f, reduction="sum")

    assert torch.autograd.gradcheck(nll, inputs)

    def marginals(e, a):
        return crf_marginals(e, a, mask=mask, start_transitions=start.detach(), end_transitions=end.detach())

    assert torch.autograd.gradcheck(marginals, inputs[:2])


def test_gradient_of_nll_is_marginals_minus_gold_indicators():
    emissions, transitions, _, _, mask = _case(2, 4, 3, ends=False, lengths=[4, 3])
    tags = torch.randint(0, 3, (2, 4))
    emissions.requires_grad_()
    linear_chain_crf_nll(emissions, transitions, tags, mask=mask, reduction="sum").backward()
    gold = torch.nn.functional.one_hot(tags, 3).to(F64) * mask.unsqueeze(2)
    torch.testing.assert_close(emissions.grad, crf_marginals(emissions.detach(), transitions, mask=mask) - gold)


def test_forbidden_transitions_match_enumeration_with_finite_gradients():
    emissions, transitions, _, _, _ = _case(1, 4, 3, ends=False)
    transitions[0, 1] = -math.inf
    transitions[2, 2] = -math.inf
    truth = reference.linear_chain_crf_brute_force(emissions[0], transitions)
    emissions.requires_grad_()
    log_z = crf_log_partition(emissions, transitions)
    torch.testing.assert_close(log_z[0], truth["log_partition"])
    log_z.sum().backward()
    assert torch.isfinite(emissions.grad).all()
    torch.testing.assert_close(emissions.grad[0], truth["marginals"])
    best = viterbi_decode(emissions.detach(), transitions)
    assert torch.equal(best.tags[0], truth["best_tags"])


def test_reductions_and_empty_rows():
    emissions, transitions, _, _, mask = _case(3, 3, 2, lengths=[3, 0, 2])
    tags = torch.randint(0, 2, (3, 3))
    per_row = linear_chain_crf_nll(emissions, transitions, tags, mask=mask, reduction="none")
    assert per_row.shape == (3,) and per_row[1] == 0 and (per_row[[0, 2]] > 0).all()
    torch.testing.assert_close(linear_chain_crf_nll(emissions, transitions, tags, mask=mask, reduction="sum"),
                               per_row.sum())
    torch.testing.assert_close(linear_chain_crf_nll(emissions, transitions, tags, mask=mask), per_row.sum() / 2)
    nothing = torch.zeros(3, 3, dtype=torch.bool)
    assert linear_chain_crf_nll(emissions, transitions, tags, mask=nothing) == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_low_precision_is_computed_in_float32_and_returned_in_input_dtype(dtype):
    emissions, transitions, _, _, mask = _case(4, 6, 5, ends=False, lengths=[6, 5, 3, 1])
    tags = torch.randint(0, 5, (4, 6))
    truth = crf_log_partition(emissions, transitions, mask=mask)
    low = crf_log_partition(emissions.to(dtype), transitions.to(dtype), mask=mask)
    assert low.dtype == dtype
    assert linear_chain_crf_nll(emissions.to(dtype), transitions.to(dtype), tags, mask=mask).dtype == dtype
    assert crf_marginals(emissions.to(dtype), transitions.to(dtype), mask=mask).dtype == dtype
    # Error no worse than rounding the float64 answer computed from the rounded inputs.
    rounded = crf_log_partition(emissions.to(dtype).double(), transitions.to(dtype).double(), mask=mask)
    naive_err = (rounded.to(dtype).double() - truth).abs().max()
    from tests.conftest import ERROR_SLACK

    assert (low.double() - truth).abs().max() <= naive_err + ERROR_SLACK[dtype] * truth.abs().max() * 10


def test_marginals_stay_differentiable_when_asked():
    emissions, transitions, _, _, _ = _case(1, 3, 2, ends=False)
    emissions.requires_grad_()
    marginals = crf_marginals(emissions, transitions)
    assert marginals.requires_grad
    (marginals[0, 1, 0]).backward()
    assert torch.isfinite(emissions.grad).all() and emissions.grad.abs().sum() > 0
    assert not crf_marginals(emissions.detach(), transitions).requires_grad


def test_marginals_are_the_gradient_of_log_z_and_their_gradient_its_hessian():
    # The explicit forward-backward recursion against autograd through the forward algorithm
    # (first and second derivatives), with ragged lengths, an empty row and start/end scores.
    emissions, transitions, start, end, mask = _case(3, 4, 3, lengths=[4, 2, 0])
    kw = dict(mask=mask, start_transitions=start, end_transitions=end)
    e, a = emissions.clone().requires_grad_(), transitions.clone().requires_grad_()
    log_z = logitlab.chain_forward(e, a, semiring="log", **kw)
    grad_e, = torch.autograd.grad(log_z.sum(), e, create_graph=True)
    marginals = crf_marginals(e, a, **kw)
    torch.testing.assert_close(marginals, grad_e, rtol=1e-12, atol=1e-13)
    v = torch.randn_like(emissions)
    want = torch.autograd.grad((grad_e * v).sum(), (e, a))
    got = torch.autograd.grad((marginals * v).sum(), (e, a))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
    assert float(got[0].abs().max()) > 1e-3


def test_marginals_gradgradcheck_float64():
    emissions, transitions, start, end, mask = _case(2, 3, 3, lengths=[3, 2])
    e, a = emissions.requires_grad_(), transitions.requires_grad_()
    assert torch.autograd.gradgradcheck(
        lambda x, y: crf_marginals(x, y, mask=mask, start_transitions=start, end_transitions=end), (e, a))


@pytest.mark.parametrize("fn", [crf_log_partition, crf_marginals, viterbi_decode, "nll"])
def test_bad_input_is_a_clear_error(fn):
    name = "linear_chain_crf_nll" if fn == "nll" else fn.__name__

    def call(emissions, transitions, **kw):
        if fn == "nll":
            tags = kw.pop("tags", torch.zeros(emissions.shape[:2], dtype=torch.long) if emissions.ndim == 3 else
                          torch.zeros(1, dtype=torch.long))
            return linear_chain_crf_nll(emissions, transitions, tags, **kw)
        return fn(emissions, transitions, **kw)

    e, a = torch.randn(2, 3, 4), torch.randn(4, 4)
    prefix = rf"{name}\(\): argument "
    with pytest.raises(ValueError, match=prefix + r"'mask' expected a left-aligned mask .* got <a hole in row 1: "
                                              r"False at position 0, True at 1>"):
        call(e, a, mask=torch.tensor([[True, True, False], [False, True, True]]))
    with pytest.raises(ValueError, match=prefix + r"'mask' expected shape \(2, 3\)"):
        call(e, a, mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match=prefix + r"'mask' expected a bool tensor"):
        call(e, a, mask=torch.ones(2, 3))
    with pytest.raises(ValueError, match=prefix + r"'emissions' expected a \(B, T, K\) tensor"):
        call(torch.randn(3, 4), a)
    with pytest.raises(ValueError, match=prefix + r"'transitions' expected shape \(4, 4\)"):
        call(e, torch.randn(4, 3))
    with pytest.raises(ValueError, match=prefix + r"'start_transitions' expected shape \(4,\)"):
        call(e, a, start_transitions=torch.zeros(3))
    with pytest.raises(ValueError, match=prefix + r"'emissions' expected values without NaN"):
        call(torch.full((2, 3, 4), math.nan), a)
    with pytest.raises(TypeError, match=prefix + r"'emissions' expected a floating-point tensor"):
        call(torch.zeros(2, 3, 4, dtype=torch.long), a)


def test_nll_bad_tags_and_reduction():
    e, a = torch.randn(2, 3, 4), torch.randn(4, 4)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    tags = torch.tensor([[0, 3, -100], [2, 99, 99]])  # padding past each length is ignored
    assert torch.isfinite(linear_chain_crf_nll(e, a, tags, mask=mask))
    with pytest.raises(ValueError, match=r"linear_chain_crf_nll\(\): argument 'tags' expected tag indices in "
                                         r"\[0, 3\] at masked-in positions, got <index 4>"):
        linear_chain_crf_nll(e, a, torch.tensor([[0, 4, 0], [0, 0, 0]]))
    with pytest.raises(ValueError, match=r"argument 'tags' expected shape \(2, 3\)"):
        linear_chain_crf_nll(e, a, torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(TypeError, match=r"argument 'tags' expected an integer tensor"):
        linear_chain_crf_nll(e, a, torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"argument 'reduction' expected one of 'none', 'mean', 'sum'"):
        linear_chain_crf_nll(e, a, torch.zeros(2, 3, dtype=torch.long), reduction="avg")


def test_module_matches_the_functions():
    from logitlab.nn.structured import LinearChainCRF

    crf = LinearChainCRF(3, reduction="sum").double()
    with torch.no_grad():
        for p in crf.parameters():
            p.normal_()
    assert repr(crf) == "LinearChainCRF(num_tags=3, reduction='sum')"
    emissions, _, _, _, mask = _case(2, 4, 3, lengths=[4, 2])
    tags = torch.randint(0, 3, (2, 4))
    kw = dict(mask=mask, start_transitions=crf.start_transitions, end_transitions=crf.end_transitions)
    torch.testing.assert_close(crf(emissions, tags, mask),
                               linear_chain_crf_nll(emissions, crf.transitions, tags, reduction="sum", **kw))
    assert torch.equal(crf.decode(emissions, mask).tags, viterbi_decode(emissions, crf.transitions, **kw).tags)
    torch.testing.assert_close(crf.marginals(emissions, mask), crf_marginals(emissions, crf.transitions, **kw))
    crf(emissions, tags, mask).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in crf.parameters())
    with pytest.raises(ValueError, match=r"LinearChainCRF\(\): argument 'num_tags' expected an int >= 1, got 0"):
        LinearChainCRF(0)


def test_hand_written_backward_equals_autograd_of_the_recursion():
    from logitlab.structured import _forward_autograd

    emissions, transitions, start, end, mask = _case(4, 6, 3, lengths=[6, 3, 1, 0])
    transitions[1, 2] = -math.inf
    inputs = [x.clone().requires_grad_() for x in (emissions, transitions, start, end)]
    weights = torch.randn(4, dtype=F64)
    (crf_log_partition(inputs[0], inputs[1], mask=mask, start_transitions=inputs[2], end_transitions=inputs[3])
     * weights).sum().backward()
    ours = [x.grad for x in inputs]
    plain = [x.clone().requires_grad_() for x in (emissions, transitions, start, end)]
    (_forward_autograd(plain[0], plain[1], mask, plain[2], plain[3]) * weights).sum().backward()
    for a, b in zip(ours, plain):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("scale", [1e10, 1e30, 1e37])
def test_marginals_stay_bounded_for_huge_scores(scale):
    """Node marginals lie in [0, 1] and sum to 1 per position; expected transition counts lie in
    [0, T − 1] and sum to T − 1 (exp(α + β − log Z) overflowed to inf at 1e30)."""
    torch.manual_seed(0)
    emissions = (torch.randn(3, 6, 4) * scale).requires_grad_()
    transitions = torch.randn(4, 4).requires_grad_()
    crf_log_partition(emissions, transitions).sum().backward()
    node, edge = emissions.grad, transitions.grad
    assert torch.isfinite(node).all() and torch.isfinite(edge).all()
    assert node.min() >= 0 and node.max() <= 1
    assert torch.allclose(node.sum(2), torch.ones(3, 6))
    assert edge.min() >= 0 and edge.max() <= 3 * 5
    assert torch.allclose(edge.sum(), torch.tensor(3.0 * 5))


# ---- folded from test_audit_structured.py: Adversarial inputs for logitlab.structured found by the audit.


FUNCTIONS = {
    "crf_log_partition": lambda e, a, **kw: crf_log_partition(e, a, **kw),
    "linear_chain_crf_nll": lambda e, a, **kw: linear_chain_crf_nll(
        e, a, torch.zeros(e.shape[:2], dtype=torch.long), **kw),
    "crf_marginals": lambda e, a, **kw: crf_marginals(e, a, **kw),
    "viterbi_decode": lambda e, a, **kw: viterbi_decode(e, a, **kw),
}


@pytest.mark.parametrize("name", FUNCTIONS)
def test_a_row_without_any_allowed_sequence_is_rejected(name):
    # Was: log Z = -inf, NLL = -inf - (-inf) = NaN, marginals NaN, Viterbi an arbitrary path.
    emissions = torch.zeros(2, 3, 2)
    transitions = torch.full((2, 2), -math.inf)  # no tag may follow any tag
    mask = torch.tensor([[True, False, False], [True, True, False]])  # row 1 needs a transition
    with pytest.raises(ValueError, match=name + r"\(\): argument 'transitions' expected scores .* allow at "
                                              r"least one tag sequence .*, got <row 1: every sequence scores -inf>"):
        FUNCTIONS[name](emissions, transitions, mask=mask)
    # A row of length 1 needs no transition: it stays valid, and validate=False skips the check.
    assert torch.isfinite(crf_log_partition(emissions[:1], transitions, mask=mask[:1])).all()
    assert crf_log_partition(emissions, transitions, mask=mask, validate=False)[1] == -math.inf


def test_marginals_of_zero_length_sequences_are_empty():
    # Was: RuntimeError "element 0 of tensors does not require grad" from autograd.grad.
    emissions = torch.zeros(2, 0, 3, dtype=torch.float64)
    out = crf_marginals(emissions, torch.zeros(3, 3))
    assert out.shape == (2, 0, 3) and out.dtype == torch.float64
