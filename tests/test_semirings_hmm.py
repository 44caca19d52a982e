"""Semirings (log, max, k-max, entropy) on the CRF's forward algorithm, and an HMM on the same
code, each against brute-force enumeration of every sequence (issue 24, item 4)."""

from __future__ import annotations

import math

import pytest
import torch

import logitlab
from logitlab import reference as R
from logitlab.semirings import EntropySemiring, KMaxSemiring, LogSemiring, MaxSemiring

F64 = torch.float64


def _crf(b=3, t=4, k=3, scale=1.0):
    return (scale * torch.randn(b, t, k, dtype=F64), scale * torch.randn(k, k, dtype=F64),
            torch.randn(k, dtype=F64), torch.randn(k, dtype=F64))


def _mask(lengths, t):
    return torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]


@pytest.mark.parametrize("k,t", [(1, 3), (2, 1), (3, 4), (4, 3)])
def test_every_semiring_against_brute_force(k, t):
    emissions, transitions, start, end = _crf(3, t, k)
    mask = _mask([t, max(t - 1, 1), 1], t)
    kw = dict(mask=mask, start_transitions=start, end_transitions=end)
    log_z = logitlab.chain_forward(emissions, transitions, semiring="log", **kw)
    best = logitlab.chain_forward(emissions, transitions, semiring="max", **kw)
    kbest = logitlab.chain_forward(emissions, transitions, semiring=KMaxSemiring(5), **kw)
    ent = logitlab.chain_forward(emissions, transitions, semiring="entropy", **kw)
    torch.testing.assert_close(log_z, logitlab.crf_log_partition(emissions, transitions, **kw))
    torch.testing.assert_close(ent[:, 0], log_z)
    torch.testing.assert_close(logitlab.crf_entropy(emissions, transitions, **kw), ent[:, 1])
    torch.testing.assert_close(logitlab.crf_kbest_scores(emissions, transitions, k=5, **kw), kbest)
    torch.testing.assert_close(best, logitlab.viterbi_decode(emissions, transitions, **kw).score)
    for row, length in enumerate(mask.sum(1).tolist()):
        truth = R.linear_chain_crf_brute_force(emissions[row, :length], transitions, start_transitions=start,
                                               end_transitions=end)
        torch.testing.assert_close(log_z[row], truth["log_partition"])
        torch.testing.assert_close(best[row], truth["best_score"])
        torch.testing.assert_close(ent[row, 1], truth["entropy"])
        want = truth["sorted_scores"][:5]
        want = torch.cat([want, torch.full((5 - want.numel(),), -math.inf, dtype=F64)])
        torch.testing.assert_close(kbest[row], want)


def test_gradients_of_the_log_and_max_values_are_marginals_and_the_best_path():
    emissions, transitions, start, end = _crf(2, 5, 3)
    e = emissions.clone().requires_grad_()
    logitlab.chain_forward(e, transitions, semiring="log", start_transitions=start,
                           end_transitions=end).sum().backward()
    torch.testing.assert_close(e.grad, logitlab.crf_marginals(emissions, transitions, start_transitions=start,
                                                              end_transitions=end))
    e.grad = None
    logitlab.chain_forward(e, transitions, semiring="max", start_transitions=start,
                           end_transitions=end).sum().backward()
    tags = logitlab.viterbi_decode(emissions, transitions, start_transitions=start, end_transitions=end).tags
    torch.testing.assert_close(e.grad, torch.nn.functional.one_hot(tags, 3).to(F64))


def test_entropy_semiring_gradcheck_and_value_identity():
    emissions, transitions, start, end = _crf(2, 3, 3)
    e = emissions.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: logitlab.crf_entropy(x, transitions, start_transitions=start), (e,))
    # H = log Z − E_p[s(y)], E_p[s] = Σ marginals·emissions + edge terms: check on emissions only.
    no_edges = torch.full((3, 3), 0.0, dtype=F64)
    marg = logitlab.crf_marginals(emissions, no_edges)
    expected_score = (marg * emissions).sum((1, 2))
    torch.testing.assert_close(logitlab.crf_entropy(emissions, no_edges),
                               logitlab.crf_log_partition(emissions, no_edges) - expected_score)


def test_semiring_units_and_errors():
    x = torch.tensor([[0.0, 1.0], [2.0, -math.inf]], dtype=F64)
    for sr, want in [(LogSemiring(), torch.logsumexp(x, 0)), (MaxSemiring(), x.amax(0))]:
        torch.testing.assert_close(sr.sum(sr.lift(x), 0).squeeze(-1), want)
    ent = EntropySemiring().sum(EntropySemiring().lift(torch.zeros(4, dtype=F64)), 0)
    torch.testing.assert_close(ent, torch.tensor([math.log(4), math.log(4)], dtype=F64))
    with pytest.raises(ValueError, match=r"^KMaxSemiring\(\): argument 'k' expected an int >= 1, got 0"):
        KMaxSemiring(0)
    with pytest.raises(ValueError, match=r"^chain_forward\(\): argument 'semiring' expected 'log', 'max', 'entropy'"):
        logitlab.chain_forward(torch.zeros(1, 2, 2), torch.zeros(2, 2), semiring="sum")
    with pytest.raises(ValueError, match=r"^crf_kbest_scores\(\): argument 'k' expected an int >= 1"):
        logitlab.crf_kbest_scores(torch.zeros(1, 2, 2), torch.zeros(2, 2), k=0)


# --- the HMM --------------------------------------------------------------------------------

def _hmm(k=3, v=4):
    pi = torch.softmax(torch.randn(k, dtype=F64), -1)
    trans = torch.softmax(torch.randn(k, k, dtype=F64), -1)
    emit = torch.softmax(torch.randn(k, v, dtype=F64), -1)
    return pi, trans, emit


@pytest.mark.parametrize("k,v,t", [(1, 2, 3), (2, 3, 1), (3, 4, 5)])
def test_hmm_against_brute_force(k, v, t):
    pi, trans, emit = _hmm(k, v)
    obs = torch.randint(0, v, (3, t))
    mask = _mask([t, max(t - 2, 1), 0], t)
    obs[~mask] = 99  # past a row's length, anything goes
    args = (obs, pi.log(), trans.log(), emit.log())
    log_px = logitlab.hmm_log_likelihood(*args, mask=mask)
    post = logitlab.hmm_posteriors(*args, mask=mask)
    best = logitlab.hmm_viterbi(*args, mask=mask)
    ent = logitlab.hmm_entropy(*args, mask=mask)
    assert float(log_px[2]) == 0.0 and float(ent[2]) == 0.0 and torch.equal(post[2], torch.zeros(t, k, dtype=F64))
    for row, length in enumerate(mask.sum(1).tolist()[:2]):
        truth = R.hmm_brute_force(obs[row, :length].tolist(), pi, trans, emit)
        torch.testing.assert_close(log_px[row], truth["likelihood"].log())
        torch.testing.assert_close(post[row, :length], truth["posteriors"])
        assert torch.equal(post[row, length:], torch.zeros(t - length, k, dtype=F64))
        torch.testing.assert_close(best.score[row], truth["best_joint"].log())
        assert torch.equal(best.tags[row, :length], truth["best_states"])
        torch.testing.assert_close(ent[row], truth["entropy"])


def test_hmm_posteriors_are_the_gradient_of_log_likelihood_and_differentiable():
    pi, trans, emit = _hmm(3, 4)
    obs = torch.randint(0, 4, (2, 5))
    mask = _mask([5, 3], 5)
    params = [x.log().clone().requires_grad_() for x in (pi, trans, emit)]
    emissions = params[2].t()[obs]  # E[b, t, k] = log B[k, x_bt]
    log_px = logitlab.chain_forward(emissions, params[1], semiring="log", mask=mask, start_transitions=params[0],
                                    validate=False)
    grad, = torch.autograd.grad(log_px.sum(), emissions)
    post = logitlab.hmm_posteriors(obs, *params, mask=mask)
    torch.testing.assert_close(post, grad, rtol=1e-12, atol=1e-13)
    assert post.requires_grad
    # gradcheck off the simplex: validate=False (a perturbed log-distribution no longer sums to 1)
    assert torch.autograd.gradcheck(lambda a, b, c: logitlab.hmm_posteriors(obs, a, b, c, mask=mask, validate=False),
                                    tuple(params))


def test_hmm_with_impossible_events_and_forward_backward_gradient():
    pi = torch.tensor([1.0, 0.0], dtype=F64)
    trans = torch.tensor([[0.0, 1.0], [0.5, 0.5]], dtype=F64)  # 0 must go to 1
    emit = torch.tensor([[0.9, 0.1], [0.2, 0.8]], dtype=F64)
    obs = torch.tensor([[0, 1, 1]])
    truth = R.hmm_brute_force([0, 1, 1], pi, trans, emit)
    args = (obs, pi.log(), trans.log(), emit.log())
    torch.testing.assert_close(logitlab.hmm_log_likelihood(*args), truth["likelihood"].log().reshape(1))
    torch.testing.assert_close(logitlab.hmm_posteriors(*args)[0], truth["posteriors"])
    torch.testing.assert_close(logitlab.hmm_entropy(*args)[0], truth["entropy"])
    # Baum–Welch's E-step: ∂ log p(x)/∂ log B[k, v] = expected count of (z = k, x = v).
    log_b = emit.log().clone().requires_grad_()
    logitlab.hmm_log_likelihood(obs, pi.log(), trans.log(), log_b).sum().backward()
    counts = torch.zeros(2, 2, dtype=F64)
    for t, symbol in enumerate([0, 1, 1]):
        counts[:, symbol] += truth["posteriors"][t]
    torch.testing.assert_close(log_b.grad, counts)
    with pytest.raises(ValueError, match=r"^hmm_log_likelihood\(\): argument 'transitions' expected scores .*"
                                         r"allow at least one tag sequence"):
        logitlab.hmm_log_likelihood(torch.tensor([[0]]), pi.log(), trans.log(),
                                    torch.tensor([[0.0, 1.0], [0.0, 1.0]], dtype=F64).log())


@pytest.mark.slow
def test_hmm_module_learns_by_maximum_likelihood():
    torch.manual_seed(0)
    pi, trans, emit = _hmm(2, 3)
    # Sample sequences from a sticky HMM, then fit: the fitted likelihood beats the start's.
    true_t = torch.tensor([[0.95, 0.05], [0.05, 0.95]], dtype=F64)
    true_b = torch.tensor([[0.8, 0.15, 0.05], [0.05, 0.15, 0.8]], dtype=F64)
    obs = torch.zeros(40, 12, dtype=torch.long)
    for row in range(40):
        z = int(torch.randint(0, 2, ()))
        for t in range(12):
            obs[row, t] = int(torch.multinomial(true_b[z], 1))
            z = int(torch.multinomial(true_t[z], 1))
    model = logitlab.nn.HiddenMarkovModel(2, 3).double()
    with torch.no_grad():
        model.emission_logits.copy_(torch.randn(2, 3, dtype=F64) * 0.1)
    opt = torch.optim.Adam(model.parameters(), lr=0.3)
    first = float(model(obs).detach())
    for _ in range(40):
        opt.zero_grad()
        model(obs).backward()
        opt.step()
    assert float(model(obs).detach()) < first - 2.0
    # A sticky fitted chain: the decoded states change rarely, and the posterior entropy is small.
    tags = model.decode(obs).tags
    assert float((tags[:, 1:] != tags[:, :-1]).double().mean()) < 0.2
    assert float(model.entropy(obs).detach().mean()) < 12 * math.log(2) / 2
    torch.testing.assert_close(model.posteriors(obs).sum(-1), torch.ones(40, 12, dtype=F64))


def test_hmm_bad_inputs():
    pi, trans, emit = _hmm(2, 3)
    cases = [
        (lambda: logitlab.hmm_log_likelihood(torch.tensor([[0, 3]]), pi.log(), trans.log(), emit.log()),
         ValueError, r"^hmm_log_likelihood\(\): argument 'observations' expected symbols in \[0, 2\]"),
        (lambda: logitlab.hmm_log_likelihood(torch.tensor([[0]]), pi.log() + 1, trans.log(), emit.log()),
         ValueError, r"^hmm_log_likelihood\(\): argument 'log_initial' expected rows summing to 1"),
        (lambda: logitlab.hmm_posteriors(torch.tensor([[0.0]]), pi.log(), trans.log(), emit.log()),
         TypeError, r"^hmm_posteriors\(\): argument 'observations' expected a \(B, T\) integer tensor"),
        (lambda: logitlab.hmm_viterbi(torch.tensor([[0]]), pi.log(), trans.log()[:1], emit.log()),
         ValueError, r"^hmm_viterbi\(\): argument 'log_transition' expected shape \(2, 2\)"),
    ]
    for call, kind, pattern in cases:
        with pytest.raises(kind, match=pattern):
            call()
