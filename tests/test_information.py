"""Information-theory helpers: references, the decomposition H(p, q) = H(p) + KL(p ‖ q), errors."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import ODD_SHAPES, dims_of
from logitlab import information as I
from logitlab import reference as R

F64 = torch.float64


def _dist(shape, dim, *, zeros=False):
    probs = torch.softmax(3 * torch.randn(shape, dtype=F64), dim)
    if zeros and probs.shape[dim] > 1:
        probs = torch.where(probs < probs.mean(), torch.zeros_like(probs), probs)
        probs = probs / probs.sum(dim, keepdim=True)
    return probs


@pytest.mark.parametrize("shape", ODD_SHAPES, ids=str)
def test_match_references_on_every_dim(shape):
    for dim in dims_of(shape):
        p, q = _dist(shape, dim, zeros=True), _dist(shape, dim)
        torch.testing.assert_close(I.entropy(p, dim=dim), R.entropy(p, dim=dim))
        torch.testing.assert_close(I.cross_entropy_between(p, q, dim=dim), R.cross_entropy_between(p, q, dim=dim))
        torch.testing.assert_close(I.kl_between(p, q, dim=dim), R.kl_divergence(p, q, dim=dim))


@pytest.mark.parametrize("shape", ODD_SHAPES, ids=str)
def test_decomposition_on_random_distributions(shape):
    for dim in dims_of(shape):
        logits, p = 2 * torch.randn(shape, dtype=F64), _dist(shape, dim, zeros=True)
        parts = I.decompose(logits, p, dim=dim)
        torch.testing.assert_close(parts.cross_entropy, parts.entropy + parts.kl)
        q = torch.softmax(logits, dim)
        torch.testing.assert_close(parts.cross_entropy, R.cross_entropy_between(p, q, dim=dim))
        torch.testing.assert_close(parts.entropy, R.entropy(p, dim=dim))
        torch.testing.assert_close(parts.kl, R.kl_divergence(p, q, dim=dim))
        assert (parts.kl >= 0).all() and (parts.entropy >= 0).all()


def test_decomposition_with_one_hot_targets_is_all_kl():
    logits, index = torch.randn(7, 5, dtype=F64), torch.randint(0, 5, (7,))
    one_hot = torch.nn.functional.one_hot(index, 5).to(F64)
    parts = I.decompose(logits, one_hot)
    assert (parts.entropy == 0).all()
    torch.testing.assert_close(parts.kl, parts.cross_entropy)
    torch.testing.assert_close(parts.cross_entropy,
                               torch.nn.functional.cross_entropy(logits, index, reduction="none"))


def test_bases_and_known_values():
    uniform = torch.full((8,), 1 / 8)
    assert math.isclose(float(I.entropy(uniform, base=2)), 3.0, rel_tol=1e-6)
    assert math.isclose(float(I.entropy(uniform)), math.log(8), rel_tol=1e-6)
    assert float(I.entropy(torch.tensor([0.0, 1.0, 0.0]))) == 0.0
    p, q = torch.tensor([0.5, 0.5]), torch.tensor([0.25, 0.75])
    want = -0.5 * math.log(0.25) - 0.5 * math.log(0.75)
    assert math.isclose(float(I.cross_entropy_between(p, q)), want, rel_tol=1e-6)
    assert math.isclose(float(I.kl_between(p, q, base=10)),
                        (want - math.log(2)) / math.log(10), rel_tol=1e-5)


def test_zero_probabilities_give_inf_not_nan_with_finite_gradients():
    p = torch.tensor([0.5, 0.5, 0.0])
    q = torch.tensor([1.0, 0.0, 0.0], requires_grad=True)
    ce = I.cross_entropy_between(p, q)
    kl = I.kl_between(p, q)
    assert ce == math.inf and kl == math.inf
    (ce + kl).backward()
    assert q.grad.tolist() == [0.0, 0.0, 0.0]  # an infinite row has zero gradient, not NaN
    probs = torch.tensor([0.0, 1.0], requires_grad=True)
    I.entropy(probs).backward()
    assert probs.grad.tolist() == [0.0, -1.0]  # −(log p + 1) where p > 0; 0 · log 0 = 0 gives 0
    # A finite pair with a zero slot: ∂/∂q_i of 2·(−Σ p log q) = −2 p_i / q_i, 0 where p_i = 0.
    q = torch.tensor([0.25, 0.75, 0.0], requires_grad=True)
    (I.cross_entropy_between(p, q) + I.kl_between(p, q)).backward()
    torch.testing.assert_close(q.grad, torch.tensor([-4.0, -4.0 / 3, 0.0]))
    assert float(I.kl_between(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0]))) == 0.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_dtype_is_preserved(dtype):
    p = _dist((3, 4), -1).to(dtype)
    assert I.entropy(p, validate=False).dtype == dtype
    assert I.kl_between(p, p, validate=False).dtype == dtype
    assert I.decompose(torch.randn(3, 4).to(dtype), p, validate=False).kl.dtype == dtype


def test_error_messages():
    p = torch.full((2, 3), 1 / 3)
    cases = [
        (lambda: I.entropy(torch.tensor([0.5, 0.6])), ValueError,
         r"entropy\(\): argument 'probs' expected rows summing to 1"),
        (lambda: I.entropy(torch.tensor([1.5, -0.5])), ValueError, r"argument 'probs' expected probabilities >= 0"),
        (lambda: I.entropy(p, base=1), ValueError, r"argument 'base' expected a number > 0 other than 1, got 1.0"),
        (lambda: I.entropy(p, base=-2), ValueError, r"argument 'base' expected a finite number > 0"),
        (lambda: I.entropy(torch.tensor([1, 0])), TypeError, r"argument 'probs' expected a floating-point tensor"),
        (lambda: I.kl_between(p, p[:, :2]), ValueError,
         r"kl_between\(\): argument 'probs' expected shape \(2, 3\) \(the shape of target_probs\)"),
        (lambda: I.cross_entropy_between(p * 2, p), ValueError,
         r"cross_entropy_between\(\): argument 'target_probs' expected rows summing to 1"),
        (lambda: I.decompose(torch.tensor([[0.0, math.nan, 0.0]] * 2), p), ValueError,
         r"decompose\(\): argument 'logits' expected values without NaN"),
        (lambda: I.decompose(torch.zeros(2, 4), p), ValueError,
         r"decompose\(\): argument 'target_probs' expected shape \(2, 4\)"),
        (lambda: I.entropy(p, dim=3), IndexError, r"argument 'dim' expected an int in \[-2, 1\]"),
    ]
    for call, kind, pattern in cases:
        with pytest.raises(kind, match=pattern):
            call()


# ---- folded from test_audit_information.py: Adversarial inputs for logitlab.information found by the audit.


def test_decompose_rejects_a_row_of_all_neg_inf_logits():
    # Was: cross_entropy = kl = 0 < entropy = 1.03, silently breaking H(p, q) = H(p) + KL.
    with pytest.raises(ValueError, match=r"decompose\(\): argument 'logits' expected at least one logit "
                                         r"> -inf per row, got <a row of all -inf>"):
        I.decompose(torch.full((2, 3), -math.inf), torch.full((2, 3), 1 / 3))


@pytest.mark.parametrize("fn", [I.entropy])
def test_entropy_of_a_zero_dim_tensor_is_zero(fn):
    # Was: IndexError from the probability check; a 0-d tensor is one class with probability 1.
    assert float(fn(torch.tensor(1.0))) == 0.0


@pytest.mark.parametrize("fn", [I.kl_between, I.cross_entropy_between])
def test_pair_functions_on_zero_dim_tensors(fn):
    assert float(fn(torch.tensor(1.0), torch.tensor(1.0))) == 0.0
    with pytest.raises(ValueError, match=r"argument 'probs' expected rows summing to 1"):
        fn(torch.tensor(1.0), torch.tensor(0.5))


def test_decompose_of_zero_dim_tensors():
    parts = I.decompose(torch.tensor(3.0), torch.tensor(1.0))
    assert all(part.shape == () and float(part) == 0.0 for part in parts)
