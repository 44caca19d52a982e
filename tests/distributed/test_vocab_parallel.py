"""Vocab-parallel losses on 2 and 3 gloo processes against the single-process result."""

from __future__ import annotations

import inspect
import time

import pytest
import torch
import torch.nn.functional as F

from logitlab import reference
from logitlab.distributed import run_ranks, vocab_parallel_cross_entropy, vocab_parallel_kl_divergence
from logitlab.fused import linear_cross_entropy, linear_divergence_loss

pytestmark = pytest.mark.slow  # process groups of 2 and 3 spawned ranks

F64 = torch.float64


def _problem(sizes, seed=0, rows=11, dim=5):
    gen = torch.Generator().manual_seed(seed)
    vocab = sum(sizes)
    logits = torch.randn(rows, vocab, dtype=F64, generator=gen) * 3
    teacher = torch.randn(rows, vocab, dtype=F64, generator=gen) * 2
    target = torch.randint(0, vocab, (rows,), generator=gen)
    target[[1, 4]] = -100
    hidden = torch.randn(rows, dim, dtype=F64, generator=gen)
    weight = torch.randn(vocab, dim, dtype=F64, generator=gen)
    bias = torch.randn(vocab, dtype=F64, generator=gen)
    class_weight = torch.rand(vocab, dtype=F64, generator=gen) + 0.5
    return logits, teacher, target, hidden, weight, bias, class_weight


def _slice(sizes, rank):
    start = sum(sizes[:rank])
    return start, start + sizes[rank]


def _err(a, b):
    return float((a.detach() - b.detach()).abs().max()) if a.numel() else 0.0


def _compare_all(rank, world, sizes, distill_sizes):
    """Every vocab-parallel loss on this rank's slice vs the full single-process computation.

    The distillation cases slice the same vocabulary as ``distill_sizes`` (which may leave a
    rank without any class)."""
    logits, teacher, target, hidden, weight, bias, class_weight = _problem(sizes)
    lo, hi = _slice(sizes, rank)
    errors = {}
    cases = [dict(), dict(reduction="sum"), dict(reduction="none"), dict(label_smoothing=0.2),
             dict(z_loss=1e-2, label_smoothing=0.1)]
    for i, opts in enumerate(cases):
        for name, tgt in (("some_ignored", target), ("all_ignored", torch.full_like(target, -100))):
            full = logits.clone().requires_grad_()
            expected = F.cross_entropy(full, tgt, reduction="none", label_smoothing=opts.get("label_smoothing", 0.0))
            keep = tgt != -100
            expected = expected + opts.get("z_loss", 0.0) * torch.logsumexp(full, 1).square() * keep
            red = opts.get("reduction", "mean")
            expected = (expected if red == "none" else expected.sum() if red == "sum"
                        else expected.sum() / max(int(keep.sum()), 1))
            local = logits[:, lo:hi].clone().requires_grad_()
            got = vocab_parallel_cross_entropy(local, tgt, **opts)
            seed = torch.linspace(0.5, 1.5, expected.numel(), dtype=F64).reshape(expected.shape)
            (expected * seed).sum().backward()
            (got * seed).sum().backward()
            errors[f"ce{i}_{name}_value"] = _err(got, expected)
            errors[f"ce{i}_{name}_grad"] = _err(local.grad, full.grad[:, lo:hi])

    for temperature in (1.0, 2.0):
        full = logits.clone().requires_grad_()
        p = torch.softmax(teacher / temperature, 1)
        expected = (p * (p.log() - torch.log_softmax(full / temperature, 1))).sum(1).mean()
        expected.backward()
        local = logits[:, lo:hi].clone().requires_grad_()
        got = vocab_parallel_kl_divergence(local, teacher[:, lo:hi], temperature=temperature)
        got.backward()
        errors[f"kl_T{temperature}_value"] = _err(got, expected)
        errors[f"kl_T{temperature}_grad"] = _err(local.grad, full.grad[:, lo:hi])

    group = torch.distributed.group.WORLD
    for i, opts in enumerate([dict(), dict(label_smoothing=0.1, z_loss=1e-3, class_weight=True),
                              dict(reduction="none")]):
        use_cw = opts.pop("class_weight", False)
        h = hidden.clone().requires_grad_()
        w_full = weight.clone().requires_grad_()
        b_full = bias.clone().requires_grad_()
        expected = reference.linear_cross_entropy(h, w_full, target, bias=b_full,
                                                  class_weight=class_weight if use_cw else None, **opts)
        w_local = weight[lo:hi].clone().requires_grad_()
        b_local = bias[lo:hi].clone().requires_grad_()
        h_local = hidden.clone().requires_grad_()
        got = linear_cross_entropy(h_local, w_local, target, bias=b_local, process_group=group, chunk_size=4,
                                   impl="auto", class_weight=class_weight[lo:hi] if use_cw else None, **opts)
        expected.sum().backward()
        got.sum().backward()
        errors[f"linear{i}_value"] = _err(got, expected)
        errors[f"linear{i}_grad_hidden"] = _err(h_local.grad, h.grad)
        errors[f"linear{i}_grad_weight"] = _err(w_local.grad, w_full.grad[lo:hi])
        errors[f"linear{i}_grad_bias"] = _err(b_local.grad, b_full.grad[lo:hi])
    errors.update(_distillation_errors(rank, distill_sizes, hidden, weight, bias, target))
    return errors


# Distillation over a sharded head: (options, target kind); "-inf" puts a -inf teacher logit on
# class 2 (probability 0, in rank 0's shard). Rows 1 and 4 of the target are ignored.
DISTILL_CASES = [
    (dict(divergence="kl"), "some_ignored"),
    (dict(divergence="kl", temperature=1.5, reduction="none"), None),
    (dict(divergence="reverse_kl", temperature=2.0, hard_label_weight=0.5, reduction="sum"), "some_ignored"),
    (dict(divergence="js", beta=0.3, hard_label_weight=0.3, impl="auto"), "some_ignored"),
    (dict(divergence="js", beta=0.5, temperature=0.7, hard_label_weight=1.0), "all_ignored"),
    (dict(divergence="kl", hard_label_weight=0.2, temperature=3.0, reduction="none"), "-inf"),
    (dict(divergence="js", beta=0.8, reduction="sum"), "-inf"),
]


def _distillation_errors(rank, sizes, hidden, weight, bias, target):
    """linear_divergence_loss(process_group=) on this rank's rows vs the full single-process loss."""
    lo, hi = _slice(sizes, rank)
    gen = torch.Generator().manual_seed(1)
    teacher_hidden = torch.randn(hidden.shape[0], 4, dtype=F64, generator=gen)
    teacher_weight = torch.randn(weight.shape[0], 4, dtype=F64, generator=gen)
    group = torch.distributed.group.WORLD
    errors = {}
    for i, (opts, kind) in enumerate(DISTILL_CASES):
        opts = dict(opts)
        impl = opts.pop("impl", "auto")
        teacher_bias = torch.randn(weight.shape[0], dtype=F64, generator=gen)
        if kind == "-inf":
            teacher_bias[2] = -torch.inf
        tgt = None if kind is None else torch.full_like(target, -100) if kind == "all_ignored" else target
        h, w_full, b_full = (x.clone().requires_grad_() for x in (hidden, weight, bias))
        expected = reference.linear_divergence_loss(h, w_full, bias=b_full, teacher_hidden=teacher_hidden,
                                                    teacher_weight=teacher_weight, teacher_bias=teacher_bias,
                                                    target=tgt, **opts)
        h_local, w_local, b_local = (x.clone().requires_grad_() for x in (hidden, weight[lo:hi], bias[lo:hi]))
        got = linear_divergence_loss(h_local, w_local, bias=b_local, teacher_hidden=teacher_hidden,
                                     teacher_weight=teacher_weight[lo:hi], teacher_bias=teacher_bias[lo:hi],
                                     target=tgt, process_group=group, impl=impl, chunk_size=4, **opts)
        seed = torch.linspace(0.5, 1.5, expected.numel(), dtype=F64).reshape(expected.shape)
        (expected * seed).sum().backward()
        (got * seed).sum().backward()
        errors[f"distill{i}_value"] = _err(got, expected)
        errors[f"distill{i}_grad_hidden"] = _err(h_local.grad, h.grad)
        errors[f"distill{i}_grad_weight"] = _err(w_local.grad, w_full.grad[lo:hi])
        errors[f"distill{i}_grad_bias"] = _err(b_local.grad, b_full.grad[lo:hi])
        if kind == "all_ignored":  # mean over no kept row: 0, with zero gradients
            errors[f"distill{i}_all_ignored_is_zero"] = float(got.detach().abs()) + float(h_local.grad.abs().max())
    return errors


def _fail_on_rank_one(rank, world):
    if rank == 1:
        raise ValueError("deliberate failure on rank 1")
    logits = torch.randn(3, 4)
    return float(vocab_parallel_cross_entropy(logits, torch.tensor([0, 1, 2])))


@pytest.mark.parametrize("sizes,distill_sizes", [((7, 6), (7, 6)), ((3, 9, 1), (5, 0, 8))],
                         ids=["2 ranks uneven", "3 ranks uneven, distillation with an empty shard"])
def test_vocab_parallel_matches_single_process(sizes, distill_sizes):
    assert sum(distill_sizes) == sum(sizes) and len(distill_sizes) == len(sizes)
    results = run_ranks(_compare_all, len(sizes), args=(sizes, distill_sizes), timeout=90)
    assert len(results) == len(sizes)
    for rank, errors in enumerate(results):
        bad = {k: e for k, e in errors.items() if not e <= 1e-10}
        assert not bad, f"rank {rank}: {bad}"
        assert len(errors) == 10 * 2 + 4 + 12 + 4 * len(DISTILL_CASES) + 1


def test_a_failing_rank_makes_the_others_raise_within_the_timeout():
    start = time.monotonic()
    with pytest.raises(RuntimeError) as info:
        run_ranks(_fail_on_rank_one, 2, timeout=60, group_timeout=5)
    message = str(info.value)
    assert "rank 1: ValueError: deliberate failure on rank 1" in message
    assert "rank 0: RuntimeError: vocab-parallel loss" in message
    assert time.monotonic() - start < 45


def test_single_process_without_group_is_the_plain_loss():
    logits, target = torch.randn(5, 7, dtype=F64), torch.tensor([0, 6, -100, 3, 3])
    got = vocab_parallel_cross_entropy(logits, target, label_smoothing=0.3)
    assert torch.allclose(got, F.cross_entropy(logits, target, label_smoothing=0.3))


def test_bad_shapes_are_clear_errors():
    with pytest.raises(ValueError, match=r"vocab_parallel_cross_entropy\(\): argument 'target' "
                                         r"expected class indices of shape \(3,\)"):
        vocab_parallel_cross_entropy(torch.randn(3, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"vocab_parallel_kl_divergence\(\): argument 'local_teacher_logits' "
                                         r"expected logits of shape \(3, 4\) "
                                         r"\(the shape of local_logits\), got <floating tensor of shape \(3, 5\)>"):
        vocab_parallel_kl_divergence(torch.randn(3, 4), torch.randn(3, 5))


def _mismatched_rows(rank, world):
    logits = torch.randn(3 + rank, 4)  # rank 1 passes one more row
    target = torch.zeros(3 + rank, dtype=torch.long)
    try:
        vocab_parallel_cross_entropy(logits, target, timeout=20)
    except ValueError as error:
        return str(error)
    return "no error"


def test_ranks_with_different_batch_sizes_raise_on_every_rank():
    start = time.monotonic()
    results = run_ranks(_mismatched_rows, 2, timeout=60, group_timeout=60)
    for message in results:
        assert message.startswith("vocab_parallel_cross_entropy(): argument 'target' expected the same number "
                                  "of rows on every rank"), message
        assert "[3, 4]" in message
    assert time.monotonic() - start < 45


def _rank_one_stays_alive(rank, world):
    logits, target = torch.randn(3, 4), torch.tensor([0, 1, 2])
    if rank == 1:  # fails before the collective, but its process (and the group) lives on
        time.sleep(8)
        return "alive"
    try:
        vocab_parallel_cross_entropy(logits, target, timeout=2)
    except RuntimeError as error:
        return str(error)
    return "no error"


def test_timeout_bounds_every_collective_when_a_failed_rank_stays_alive():
    start = time.monotonic()
    results = run_ranks(_rank_one_stays_alive, 2, timeout=60, group_timeout=120)
    assert results[1] == "alive"
    assert "did not complete within timeout=2 s on rank 0" in results[0], results[0]
    assert time.monotonic() - start < 40


@pytest.mark.parametrize("fn", [vocab_parallel_cross_entropy, vocab_parallel_kl_divergence])
def test_nan_logits_raise(fn):
    bad = torch.randn(3, 4)
    bad[1, 2] = float("nan")
    other = torch.tensor([0, 1, 2]) if fn is vocab_parallel_cross_entropy else torch.randn(3, 4)
    with pytest.raises(ValueError, match=fn.__name__ + r"\(\): argument 'local_logits' expected values without NaN"):
        fn(bad, other)  # validate=None, the default: on for CPU tensors (off for CUDA ones: no host read)
    assert inspect.signature(fn).parameters["validate"].default is None
    if fn is vocab_parallel_cross_entropy:  # an ignored row may hold anything
        x = bad.clone().requires_grad_()
        fn(x, torch.tensor([0, -100, 2])).backward()
        assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("fn", [vocab_parallel_cross_entropy, vocab_parallel_kl_divergence])
def test_double_backward_raises_clearly(fn):
    x = torch.randn(3, 4, dtype=F64, requires_grad=True)
    other = torch.tensor([0, 1, 2]) if fn is vocab_parallel_cross_entropy else torch.randn(3, 4, dtype=F64)
    loss = fn(x, other, impl="torch")
    with pytest.raises(RuntimeError, match=fn.__name__ + r"\(\): no double backward \(create_graph=True\)"):
        torch.autograd.grad(loss, x, create_graph=True)
    (grad,) = torch.autograd.grad(loss, x)  # the first derivative is still there
    assert torch.autograd.gradcheck(lambda z: fn(z, other, impl="torch", reduction="none"), (x,))
    assert torch.isfinite(grad).all()
