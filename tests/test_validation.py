import pytest
import torch

from logitlab import _validation as v
from logitlab._reduction import from_rows, reduce_loss, rowwise, to_rows


def test_messages_name_function_argument_expected_and_received():
    with pytest.raises(ValueError, match=r"f\(\): argument 'temperature' expected a finite number > 0, got -1.0"):
        v.check_positive("f", "temperature", -1.0)
    with pytest.raises(TypeError, match=r"argument 'logits' expected a floating-point tensor, got <dtype torch.int64>"):
        v.check_floating("f", "logits", torch.tensor([1, 2]))
    with pytest.raises(TypeError, match=r"argument 'logits' expected a torch.Tensor, got <list>"):
        v.check_floating("f", "logits", [1.0])
    with pytest.raises(IndexError, match=r"argument 'dim' expected an int in \[-2, 1\] for a 2-D tensor, got 2"):
        v.check_dim("f", 2, 2)
    with pytest.raises(ValueError, match=r"argument 'reduction' expected one of 'none', 'mean', 'sum', got 'avg'"):
        v.check_reduction("f", "avg")
    with pytest.raises(ValueError, match=r"expected a number in \[0.0, 1.0\), got 1.0"):
        v.check_range("f", "label_smoothing", 1.0, 0.0, 1.0, high_open=True)
    with pytest.raises(ValueError, match=r"argument 'x' expected a real number, got nan"):
        v.check_positive("f", "x", float("nan"))


def test_check_dim_normalizes():
    assert v.check_dim("f", -1, 3) == 2
    assert v.check_dim("f", 0, 0) == 0  # a 0-d tensor has one axis, as in torch


def test_check_finite_allows_only_minus_inf_by_default():
    v.check_finite("f", "logits", torch.tensor([0.0, float("-inf")]))
    with pytest.raises(ValueError, match=r"without NaN or \+inf.*first at index \(1,\)"):
        v.check_finite("f", "logits", torch.tensor([0.0, float("inf")]))
    with pytest.raises(ValueError, match="finite values"):
        v.check_finite("f", "logits", torch.tensor([float("-inf")]), allow_neg_inf=False)


def test_check_probs_and_index_target():
    v.check_probs("f", "target", torch.tensor([[0.25, 0.75]]))
    with pytest.raises(ValueError, match=r"rows summing to 1.*row 0 sums to 0.9"):
        v.check_probs("f", "target", torch.tensor([[0.2, 0.7]]))
    with pytest.raises(ValueError, match=r"probabilities >= 0"):
        v.check_probs("f", "target", torch.tensor([[-0.5, 1.5]]))
    v.check_index_target("f", "target", torch.tensor([0, 2, -100]), 3, ignore_index=-100)
    with pytest.raises(ValueError, match=r"class indices in \[0, 2\] or ignore_index=-100, got <index 3>"):
        v.check_index_target("f", "target", torch.tensor([0, 3]), 3, ignore_index=-100)


def test_reduce_loss_semantics():
    values = torch.tensor([1.0, 2.0, 6.0], requires_grad=True)
    keep = torch.tensor([True, False, True])
    assert reduce_loss(values, "sum", keep=keep).item() == 7.0
    assert reduce_loss(values, "mean", keep=keep).item() == 3.5
    assert reduce_loss(values, "none", keep=keep).tolist() == [1.0, 0.0, 6.0]
    w = torch.tensor([2.0, 5.0, 1.0])
    assert reduce_loss(values * w, "mean", keep=keep, row_weight=w).item() == pytest.approx(8.0 / 3.0)
    nothing = reduce_loss(values, "mean", keep=torch.zeros(3, dtype=torch.bool))
    nothing.backward()
    assert nothing.item() == 0.0 and values.grad.abs().sum().item() == 0.0


def test_rowwise_moves_any_dim():
    x = torch.randn(3, 4, 5)
    for dim in range(3):
        out = rowwise(lambda r: r.cumsum(-1), x, dim)
        torch.testing.assert_close(out, x.cumsum(dim))


def test_check_probs_accepts_a_bf16_rounded_softmax():
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(256, 10), -1).bfloat16()
    v.check_probs("f", "target", probs)  # some rows sum to 0.998 after rounding: still valid
    with pytest.raises(ValueError, match="rows summing to 1"):
        v.check_probs("f", "target", (probs.float() * 0.98).bfloat16())


@pytest.mark.parametrize("shape,dim", [((3, 0), 1), ((3, 0), 0), ((0, 4), 1), ((2, 0, 5), 1),
                                       ((2, 0, 5), 2), ((0,), 0), ((4, 3, 0), -1)])
def test_to_rows_and_rowwise_handle_empty_axes(shape, dim):
    x = torch.zeros(shape)
    d = dim % x.ndim
    rows, moved = to_rows(x, d)
    n = shape[d]
    assert rows.shape == (_rest(shape, d), n)
    assert torch.equal(from_rows(rows, moved, d, x.ndim), x)
    assert rowwise(lambda r: r + 1, x, d).shape == x.shape


def _rest(shape, dim):
    count = 1
    for i, s in enumerate(shape):
        if i != dim:
            count *= s
    return count


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), None])
@pytest.mark.parametrize("allow_neg_inf", [False, True])
def test_all_finite_agrees_with_isfinite_wherever_the_bad_entry_lies(dtype, value, allow_neg_inf):
    # all_finite reads the minimum and maximum (no boolean tensor): NaN anywhere, in any
    # vector lane or tail, on a transposed view too, must still be found.
    gen = torch.Generator().manual_seed(0)
    for shape, position in [((1,), 0), ((37, 129), 0), ((37, 129), 4772), ((37, 129), 2000), ((256, 300), 76799)]:
        x = torch.randn(shape, generator=gen).to(dtype)
        if value is not None:
            x.view(-1)[position] = value
        bad = torch.isnan(x) | (x == float("inf")) | ((x == -float("inf")) & (not allow_neg_inf))
        for view in (x, x.t() if x.ndim == 2 else x):
            assert v.all_finite(view, allow_neg_inf=allow_neg_inf) is (not bool(bad.any()))
    assert v.all_finite(torch.empty(0, 3)) and v.all_finite(torch.tensor([1, 2]))
