"""The divergence row functions (logitlab._divergence_rows): each divergence's value and its
closed-form gradient with respect to softmax logits, used by the plain, chunked and
vocabulary-parallel losses."""

from __future__ import annotations

import math
import threading

import pytest
import torch

import logitlab
from logitlab import _divergence_rows as rows
from logitlab import registry
from logitlab.fused import divergence as fused_divergence
from logitlab.losses import divergences as D

F64 = torch.float64
NAMES = list(rows.DIVERGENCES)
PARAMS = {"js": 0.3, "alpha": 0.3, "renyi": 2.5}  # else the default
EXTRA_ORDERS = [("alpha", 1.7), ("alpha", -0.4), ("alpha", 1.0), ("alpha", 0.0), ("renyi", 0.4), ("renyi", 1.0)]
CASES = [(name, PARAMS.get(name)) for name in NAMES] + EXTRA_ORDERS


def _target(shape, sparse):
    p = torch.softmax(2 * torch.randn(shape, dtype=F64), -1)
    if sparse:
        drop = torch.rand(shape) < 0.4
        drop[..., 0] = False
        p = torch.where(drop, torch.zeros_like(p), p)
        p = p / p.sum(-1, keepdim=True)
    return p


def _log(p):
    return torch.where(p > 0, p.log(), torch.full_like(p, -math.inf))


@pytest.mark.parametrize("name,value", CASES, ids=[f"{n}-{v}" for n, v in CASES])
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse_target"])
def test_closed_form_gradient_is_the_gradient_of_the_value(name, value, sparse):
    torch.manual_seed(0)
    record = rows.DIVERGENCES[name]
    s = (2 * torch.randn(6, 9, dtype=F64)).requires_grad_(True)
    p = _target((6, 9), sparse)
    log_q = torch.log_softmax(s, -1)
    row = record(p, _log(p), log_q.exp(), log_q, value, grad=True)
    finite = torch.isfinite(row.value)
    assert bool(torch.isfinite(row.grad).all()) and row.grad.shape == s.shape
    if bool(finite.any()):
        (autograd,) = torch.autograd.grad(row.value[finite].sum(), s)
        torch.testing.assert_close(row.grad[finite], autograd[finite], rtol=1e-9, atol=1e-12)
    assert bool((row.grad[~finite] == 0).all()) or name == "kl" or (name, value) in {("alpha", 1.0), ("renyi", 1.0)}


@pytest.mark.parametrize("name,value", CASES, ids=[f"{n}-{v}" for n, v in CASES])
def test_row_values_match_the_references(name, value):
    record = rows.DIVERGENCES[name]
    p, q = _target((5, 7), False), _target((5, 7), False)
    options = {} if record.param is None else {record.param: record.default if value is None else value}
    got = record(p, p.log(), q, q.log(), value).value
    torch.testing.assert_close(got, registry.LOSSES[name].reference(p, q, **options), rtol=1e-9, atol=1e-12)


def test_the_gradient_at_a_kl_infinite_row_is_finite():
    # KL(p ‖ q) = +inf with p > 0 where the model excludes the class; its gradient stays q − p,
    # as the chunked loss has always returned (and cross_entropy does for an excluded target).
    s = torch.tensor([[0.0, -math.inf, 1.0]], dtype=F64)
    p = torch.tensor([[0.5, 0.25, 0.25]], dtype=F64)
    log_q = torch.log_softmax(s, -1)
    row = rows.kl(p, p.log(), log_q.exp(), log_q, grad=True)
    assert row.value.item() == math.inf
    torch.testing.assert_close(row.grad, log_q.exp() - p)


def _sharded(record, value, p, q, pieces):
    """The row function run on column slices in threads whose ``total`` sums across them (an
    all-reduce between 'ranks'), as the vocabulary-parallel losses run it."""
    bounds = torch.linspace(0, p.shape[1], pieces + 1).round().long().tolist()
    barrier, sums, out = threading.Barrier(pieces), {}, [None] * pieces

    def rank(r):
        calls = [0]

        def total(*terms):
            key = calls[0]
            calls[0] += 1
            sums[(key, r)] = torch.stack([t.sum(-1) for t in terms])
            barrier.wait()
            reduced = sum(sums[(key, other)] for other in range(pieces))
            barrier.wait()
            return tuple(reduced)

        cols = slice(bounds[r], bounds[r + 1])
        pr, qr = p[:, cols], q[:, cols]
        out[r] = record(pr, _log(pr), qr, _log(qr), value, total=total, grad=True)

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(pieces)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


@pytest.mark.parametrize("name", [n for n, d in rows.DIVERGENCES.items() if d.shardable])
def test_shardable_rows_give_the_full_rows_on_every_slice(name):
    record = rows.DIVERGENCES[name]
    value = PARAMS.get(name)
    p, q = _target((4, 11), True), _target((4, 11), False)
    whole = record(p, _log(p), q, _log(q), value, grad=True)
    parts = _sharded(record, value, p, q, pieces=3)
    for part in parts:
        torch.testing.assert_close(part.value, whole.value, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(torch.cat([part.grad for part in parts], 1), whole.grad, rtol=1e-12, atol=1e-14)


def test_every_sum_of_a_shardable_row_goes_through_one_total_call():
    # one all-reduce per chunk for the divergence's sums (the chunked loss adds its hard-label term to it)
    assert set(fused_divergence.DIVERGENCES) <= {n for n, d in rows.DIVERGENCES.items() if d.shardable}
    p, q = _target((3, 5), False), _target((3, 5), False)
    for name, record in rows.DIVERGENCES.items():
        if not record.shardable:
            continue
        calls = []

        def total(*terms):
            calls.append(len(terms))
            return rows.row_sums(*terms)

        record(p, p.log(), q, q.log(), PARAMS.get(name), total=total, grad=True)
        assert len(calls) == 1, (name, calls)


def test_the_plain_chunked_and_vocab_parallel_losses_agree_through_the_row_functions():
    torch.manual_seed(1)
    hidden, weight = torch.randn(6, 4, dtype=F64), torch.randn(9, 4, dtype=F64)
    teacher_hidden, teacher_weight = torch.randn(6, 3, dtype=F64), torch.randn(9, 3, dtype=F64)
    z, u = hidden @ weight.T, teacher_hidden @ teacher_weight.T
    for name, value in (("kl", None), ("reverse_kl", None), ("js", 0.3)):
        options = {"beta": value} if name == "js" else {}
        fused = logitlab.linear_divergence_loss(hidden, weight, teacher_hidden=teacher_hidden,
                                                teacher_weight=teacher_weight, divergence=name, temperature=1.5,
                                                chunk_size=4, impl="torch", **options)
        plain = D.divergence_loss(z, target_logits=u, divergence=name, temperature=1.5, **options)
        torch.testing.assert_close(fused, plain, rtol=1e-10, atol=1e-12)
    student = z.clone().requires_grad_(True)
    logitlab.distributed.vocab_parallel_kl_divergence(student, u, temperature=1.5).backward()
    reference = z.clone().requires_grad_(True)
    D.kl_divergence(reference, torch.softmax(u / 1.5, -1), temperature=1.5).backward()
    torch.testing.assert_close(student.grad, reference.grad, rtol=1e-10, atol=1e-12)


def test_log_softmax_full_without_a_group_is_log_softmax():
    blocks = [torch.randn(3, 5, dtype=F64), torch.randn(3, 5, dtype=F64)]
    for got, block in zip(fused_divergence.log_softmax_full(blocks, None), blocks):
        torch.testing.assert_close(got, torch.log_softmax(block, 1))


def test_each_record_names_its_public_function_and_module():
    for name, record in rows.DIVERGENCES.items():
        fn = getattr(D, record.public)
        assert getattr(logitlab, record.public) is fn and fn.__name__ == record.public
        assert record.public in D.__all__ and fn.__doc__.startswith(record.doc.split("\n")[0])
        if record.param is not None:
            assert fn.__signature__.parameters[record.param].default == record.default
