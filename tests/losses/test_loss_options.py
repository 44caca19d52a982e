"""shift= on cross_entropy and linear_cross_entropy, and linear_cross_entropy_with_lse, against the
naive computation (slice the logits, shift the targets by hand, logsumexp, argmax)."""

import pytest
import torch
import torch.nn.functional as F

import logitlab
from logitlab import cross_entropy, linear_cross_entropy, linear_cross_entropy_with_lse

B, T, D, V = 3, 7, 5, 11


def _data(dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, D, generator=g, dtype=dtype)
    weight = torch.randn(V, D, generator=g, dtype=dtype)
    target = torch.randint(0, V, (B, T), generator=g)
    target[0, 2] = -100
    target[2, 4:] = -100  # right padding
    return hidden, weight, target


def _naive_shifted(hidden, weight, target, k, reduction, softcap=None):
    """The obvious computation: drop the last k positions of the logits, the first k targets."""
    logits = hidden[:, : T - k] @ weight.T
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    rows = F.cross_entropy(logits.reshape(-1, V), target[:, k:].reshape(-1), reduction="none")
    if reduction == "none":
        return torch.cat([rows.reshape(B, T - k), rows.new_zeros(B, k)], dim=1)
    if reduction == "sum":
        return rows.sum()
    return rows.sum() / (target[:, k:] != -100).sum()


@pytest.mark.parametrize("impl", ["composite", "torch"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("k", [1, 3])
def test_linear_cross_entropy_shift_matches_naive(impl, reduction, k):
    hidden, weight, target = _data()
    hidden.requires_grad_(True), weight.requires_grad_(True)
    ours = linear_cross_entropy(hidden, weight, target, shift=k, impl=impl, chunk_size=4, reduction=reduction)
    h2, w2 = hidden.detach().clone().requires_grad_(True), weight.detach().clone().requires_grad_(True)
    naive = _naive_shifted(h2, w2, target, k, reduction)
    torch.testing.assert_close(ours, naive)
    probe = torch.randn_like(ours)
    (ours * probe).sum().backward()
    (naive * probe).sum().backward()
    torch.testing.assert_close(hidden.grad, h2.grad)
    torch.testing.assert_close(weight.grad, w2.grad)
    assert torch.all(hidden.grad[:, T - k:] == 0)  # the last k positions predict nothing


def test_shift_true_is_one_and_zero_is_unshifted():
    hidden, weight, target = _data()
    torch.testing.assert_close(linear_cross_entropy(hidden, weight, target, shift=True),
                               linear_cross_entropy(hidden, weight, target, shift=1))
    torch.testing.assert_close(linear_cross_entropy(hidden, weight, target, shift=0),
                               linear_cross_entropy(hidden, weight, target))


@pytest.mark.parametrize("impl", ["native", "torch", "composite"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_cross_entropy_shift_matches_naive(impl, reduction):
    hidden, weight, target = _data(torch.float32 if impl == "native" else torch.float64)
    logits = (hidden @ weight.T).requires_grad_(True)
    ours = cross_entropy(logits, target, shift=1, impl=impl, reduction=reduction)
    ref_logits = logits.detach().clone().requires_grad_(True)
    naive = _naive_shifted_logits(ref_logits, target, reduction)
    torch.testing.assert_close(ours, naive)
    ours.sum().backward(), naive.sum().backward()
    torch.testing.assert_close(logits.grad, ref_logits.grad)


def _naive_shifted_logits(logits, target, reduction):
    rows = F.cross_entropy(logits[:, :-1].reshape(-1, V), target[:, 1:].reshape(-1), reduction="none")
    if reduction == "none":
        return torch.cat([rows.reshape(B, T - 1), rows.new_zeros(B, 1)], dim=1)
    return rows.sum() / (target[:, 1:] != -100).sum()


def test_cross_entropy_shift_follows_the_target_sequence_dim_in_torch_layout():
    hidden, weight, target = _data()
    logits = hidden @ weight.T                       # (B, T, V)
    channels_first = logits.transpose(1, 2)          # (B, V, T), torch's layout with dim=1
    torch.testing.assert_close(cross_entropy(channels_first, target, dim=1, shift=2),
                               cross_entropy(logits, target, shift=2))
    torch.testing.assert_close(cross_entropy(logits, target, shift=2),
                               F.cross_entropy(logits[:, :-2].reshape(-1, V), target[:, 2:].reshape(-1)))


def test_cross_entropy_module_takes_shift():
    hidden, weight, target = _data()
    logits = hidden @ weight.T
    module = logitlab.nn.CrossEntropyLoss(shift=1)
    torch.testing.assert_close(module(logits, target), cross_entropy(logits, target, shift=1))
    assert "shift=1" in repr(module)


@pytest.mark.parametrize("impl", ["composite", "torch"])
@pytest.mark.parametrize("softcap", [None, 2.0])
def test_with_lse_matches_naive_lse_and_accuracy(impl, softcap):
    hidden, weight, target = _data()
    out = linear_cross_entropy_with_lse(hidden, weight, target, shift=1, impl=impl, chunk_size=4, softcap=softcap)
    logits = hidden @ weight.T
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    shifted = torch.cat([target[:, 1:], torch.full((B, 1), -100)], dim=1)
    keep = shifted != -100
    lse = torch.where(keep, logits.logsumexp(-1), torch.zeros(()))
    torch.testing.assert_close(out.lse, lse)
    hits = (logits.argmax(-1) == shifted) & keep
    torch.testing.assert_close(out.accuracy, hits.sum().double() / keep.sum())
    torch.testing.assert_close(out.loss, _naive_shifted(hidden, weight, target, 1, "mean", softcap))


@pytest.mark.parametrize("reduction", ["none", "sum"])
def test_with_lse_accuracy_follows_the_reduction(reduction):
    hidden, weight, target = _data()
    out = linear_cross_entropy_with_lse(hidden, weight, target, chunk_size=3, reduction=reduction)
    hits = ((hidden @ weight.T).argmax(-1) == target) & (target != -100)
    expected = hits.double() if reduction == "none" else hits.sum().double()
    torch.testing.assert_close(out.accuracy, expected)
    assert out.lse.shape == target.shape and not out.lse.requires_grad


def test_with_lse_loss_and_gradients_equal_linear_cross_entropy_float32():
    # float32 goes through the native row kernel in linear_cross_entropy and through the eager
    # kernel (which records the statistics) in the sibling: the same loss and gradients.
    hidden, weight, target = _data(torch.float32, seed=1)
    hidden.requires_grad_(True)
    a = linear_cross_entropy(hidden, weight, target, chunk_size=4, z_loss=1e-2)
    (ga,) = torch.autograd.grad(a, hidden)
    b = linear_cross_entropy_with_lse(hidden, weight, target, chunk_size=4, z_loss=1e-2)
    (gb,) = torch.autograd.grad(b.loss, hidden)
    torch.testing.assert_close(a, b.loss)
    torch.testing.assert_close(ga, gb)
    assert b.lse.dtype == torch.float32


def test_with_lse_bfloat16_chunked_runs_on_the_eager_kernel():
    hidden, weight, target = _data(torch.bfloat16, seed=2)
    out = linear_cross_entropy_with_lse(hidden, weight, target, chunk_size=4)
    logits = hidden.float() @ weight.float().T
    keep = target != -100
    torch.testing.assert_close(out.lse, torch.where(keep, logits.logsumexp(-1), torch.zeros(())),
                               atol=0.05, rtol=0.02)
    assert out.lse.dtype == torch.float32 and out.loss.dtype == torch.bfloat16


def test_with_lse_backward_that_recomputes_leaves_the_statistics_alone():
    hidden, weight, target = _data()
    hidden.requires_grad_(True)
    out = linear_cross_entropy_with_lse(hidden, weight, target, chunk_size=4, reduction="none")
    before = out.lse.clone()
    out.lse.zero_()  # the caller owns the returned tensor
    out.loss.sum().backward()
    assert torch.all(out.lse == 0) and before.abs().sum() > 0


def test_all_ignored_gives_zero_accuracy_not_nan():
    hidden, weight, _ = _data()
    target = torch.full((B, T), -100)
    out = linear_cross_entropy_with_lse(hidden, weight, target, impl="auto")
    assert float(out.accuracy) == 0.0 and float(out.loss) == 0.0


@pytest.mark.parametrize("fn", [linear_cross_entropy, linear_cross_entropy_with_lse])
def test_shift_on_a_sequence_of_length_one_is_a_clear_error(fn):
    hidden, weight = torch.randn(2, 1, D), torch.randn(V, D)
    with pytest.raises(ValueError, match=r"argument 'shift' expected a shift smaller than the sequence length "
                                         r".*target.shape\[-1\] = 1\), got 1.*pass shift=0"):
        fn(hidden, weight, torch.zeros(2, 1, dtype=torch.long), shift=1)


def test_cross_entropy_shift_errors():
    logits = torch.randn(2, 4, V)
    with pytest.raises(ValueError, match=r"cross_entropy\(\): argument 'shift' expected an int >= 0"):
        cross_entropy(logits, torch.zeros(2, 4, dtype=torch.long), shift=-1)
    with pytest.raises(TypeError, match=r"argument 'shift' expected an int >= 0 or a bool"):
        cross_entropy(logits, torch.zeros(2, 4, dtype=torch.long), shift=1.0)
    with pytest.raises(TypeError, match=r"argument 'shift' expected 0 with a probability \(floating\) target"):
        cross_entropy(logits, torch.softmax(logits, -1), shift=1)
    with pytest.raises(ValueError, match=r"argument 'shift' expected a shift smaller than the sequence length"):
        cross_entropy(torch.randn(V), torch.tensor(3), shift=1)


def _sharded_with_lse(rank, world, sizes):
    """linear_cross_entropy_with_lse over this rank's rows of the head vs the full head."""
    import torch.distributed as dist

    hidden, weight, target = _data()
    start = sum(sizes[:rank])
    local = weight[start:start + sizes[rank]].clone().requires_grad_(True)
    h = hidden.clone().requires_grad_(True)
    out = linear_cross_entropy_with_lse(h, local, target, shift=1, z_loss=1e-2, chunk_size=4,
                                        process_group=dist.group.WORLD)
    out.loss.backward()
    full_h, full_w = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    ref = linear_cross_entropy_with_lse(full_h, full_w, target, shift=1, z_loss=1e-2, impl="composite")
    ref.loss.backward()
    return {"loss": float((out.loss - ref.loss).abs()), "lse": float((out.lse - ref.lse).abs().max()),
            "accuracy": float((out.accuracy - ref.accuracy).abs()),
            "grad_hidden": float((h.grad - full_h.grad).abs().max()),
            "grad_weight": float((local.grad - full_w.grad[start:start + sizes[rank]]).abs().max())}


def test_with_lse_on_a_vocabulary_sharded_head_matches_the_full_head():
    from logitlab.distributed import run_ranks

    sizes = (4, 7)
    for rank, errors in enumerate(run_ranks(_sharded_with_lse, len(sizes), args=(sizes,), timeout=90)):
        assert all(e <= 1e-10 for e in errors.values()), (rank, errors)
