"""sparsemax and entmax15 with impl='triton': the Triton threshold kernels against the float64
reference (sort-based) and its gradient, the CPU path, every dim, -inf masking, the dtypes, the
bisection safeguard and the autograd contract."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (it is in the test extra)")

from _triton_fixtures import device, small_blocks, triton_mode  # noqa: E402,F401

from conftest import ERROR_SLACK  # noqa: E402
from logitlab import entmax15, reference, sparsemax  # noqa: E402
from logitlab._triton import sparse as triton_sparse  # noqa: E402

D = torch.float64
C = 37  # not a multiple of any block


def _on_reference_support(ref_fn, closed_form):
    """The map as a differentiable function of z: the reference's support S of each row (sort-based,
    float64), then the closed form on S, which autograd differentiates (the reference's own τ is
    a number, so its autograd would miss ∂τ/∂z)."""

    def fn(z, dim=-1):
        rows = z.movedim(dim, -1).reshape(-1, z.shape[dim])
        support = ref_fn(rows.detach().double()) > 0
        out = torch.stack([closed_form(row, keep) for row, keep in zip(rows.double(), support)])
        return out.reshape(z.movedim(dim, -1).shape).movedim(-1, dim)

    return fn


def _sparsemax_on(row, keep):
    if not keep.any():
        return row * 0
    x = row - row.max().detach()
    tau = (x[keep].sum() - 1) / keep.sum()
    return torch.where(keep, x - tau, 0.0)


def _entmax15_on(row, keep):
    if not keep.any():
        return row * 0
    x = (row - row.max().detach()) / 2
    k = keep.sum()
    mean = x[keep].sum() / k
    tau = mean - torch.sqrt((1 - ((x[keep] ** 2).sum() - k * mean ** 2)) / k)
    u = torch.where(keep, x - tau, 0.0)
    return u * u


MAPS = {"sparsemax": (sparsemax, reference.sparsemax, _on_reference_support(reference.sparsemax, _sparsemax_on)),
        "entmax15": (entmax15, reference.entmax15, _on_reference_support(reference.entmax15, _entmax15_on))}


def _grad(fn, z, g):
    x = z.detach().clone().requires_grad_()
    (out,) = torch.autograd.grad(fn(x), x, g)
    return out


@pytest.mark.parametrize("name", list(MAPS))
@pytest.mark.parametrize("shape,dim", [((1, 1), -1), ((2, 2), -1), ((5, C), -1), ((3, 5, 7), 1), ((3, 5, 7), 0)])
def test_float64_matches_reference_and_its_gradient(small_blocks, device, name, shape, dim):
    ours_fn, ref_fn, grad_ref = MAPS[name]
    z = torch.randn(shape, dtype=D) * 2
    probs = ours_fn(z.to(device), dim=dim, impl="triton")
    assert probs.dtype == D and probs.shape == z.shape
    torch.testing.assert_close(probs.cpu(), ref_fn(z, dim=dim), rtol=0, atol=1e-12)
    g = torch.randn(shape, dtype=D)
    ours = _grad(lambda x: ours_fn(x, dim=dim, impl="triton"), z.to(device), g.to(device))
    want = _grad(lambda x: grad_ref(x, dim=dim), z, g)
    torch.testing.assert_close(ours.cpu(), want, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", list(MAPS))
def test_wide_supports_and_long_rows_loop_over_blocks(small_blocks, device, name):
    """Rows of 300 columns in blocks of 8 (38 blocks a pass), supports from one entry to most of
    the row (tiny spread), and the same support as the CPU path."""
    ours_fn, ref_fn, _ = MAPS[name]
    z = torch.randn(4, 300, dtype=D) * torch.tensor([[10.0], [1.0], [0.01], [1e-5]], dtype=D)
    probs = ours_fn(z.to(device), impl="triton").cpu()
    torch.testing.assert_close(probs, ref_fn(z), rtol=0, atol=1e-12)
    assert torch.equal(probs > 0, ours_fn(z, impl="torch") > 0)


@pytest.mark.parametrize("name", list(MAPS))
def test_bisection_safeguard_gives_the_same_answer(small_blocks, device, name):
    """newton_passes=0 takes the midpoint of the bracket from the first pass: the same certified
    support and threshold; max_passes=1 leaves rows uncertified, reported as such."""
    kind = name
    z = torch.randn(6, C, dtype=D).to(device) * 0.3  # many entries within 1 of the maximum: several passes
    newton = triton_sparse.sparse_forward(z, kind)
    bisect = triton_sparse.sparse_forward(z, kind, newton_passes=0)
    assert torch.all(newton[3] > 0) and torch.all(bisect[3] > 0)  # every row certified
    torch.testing.assert_close(bisect[0], newton[0], rtol=0, atol=1e-12)
    assert torch.equal(bisect[2], newton[2])
    short = triton_sparse.sparse_forward(z, kind, max_passes=1)
    uncertified = short[3] < 0
    assert uncertified.any() and torch.equal(short[3][uncertified], -torch.ones_like(short[3][uncertified]))
    assert torch.all(short[4][~uncertified] < 1e-12)


@pytest.mark.parametrize("name", list(MAPS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_low_precision_no_worse_than_the_cpu_path(small_blocks, device, name, dtype):
    """|triton − truth| ≤ |CPU path at the same dtype − truth| + slack, truth in float64; the
    gradient likewise against the reference's in float64."""
    ours_fn, ref_fn, grad_ref = MAPS[name]
    z64 = torch.randn(6, C, dtype=D) * 3
    low = z64.to(dtype)
    truth = ref_fn(low.double())
    ours = ours_fn(low.to(device), impl="triton").cpu()
    cpu = ours_fn(low, impl="auto")
    assert ours.dtype == dtype
    slack = ERROR_SLACK[dtype]
    assert (ours.double() - truth).abs().max() <= (cpu.double() - truth).abs().max() + slack
    g = torch.randn(6, C, dtype=D)
    g_truth = _grad(grad_ref, low.double(), g)
    g_ours = _grad(lambda x: ours_fn(x, impl="triton"), low.to(device), g.to(dtype).to(device)).cpu()
    g_cpu = _grad(lambda x: ours_fn(x, impl="auto"), low, g.to(dtype))
    assert g_ours.dtype == dtype
    # The slack scaled to the gradient's size (|g − c| reaches a few units, where a bf16 ulp is 0.016).
    g_slack = slack * max(1.0, float(g_truth.abs().max()))
    assert (g_ours.double() - g_truth).abs().max() <= (g_cpu.double() - g_truth).abs().max() + g_slack


@pytest.mark.parametrize("name", list(MAPS))
def test_minus_inf_masks_classes_and_all_minus_inf_rows_are_zero(small_blocks, device, name):
    ours_fn, ref_fn, _ = MAPS[name]
    z = torch.randn(4, C, dtype=D) * 2
    z[0, ::3] = -math.inf               # excluded classes in every block
    z[1] = -math.inf                    # every class excluded
    z[2, : C - 1] = -math.inf           # one class left, in the last (partial) block
    x = z.to(device).requires_grad_()
    probs = ours_fn(x, impl="triton")
    want = ref_fn(z)
    torch.testing.assert_close(probs.detach().cpu(), want, rtol=0, atol=1e-12)
    assert torch.all(probs[0, ::3] == 0) and torch.all(probs[1] == 0) and probs[2, C - 1] == 1
    (probs * torch.randn(4, C, dtype=D).to(device)).sum().backward()
    assert torch.all(x.grad[1] == 0) and torch.all(x.grad[2] == 0) and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", list(MAPS))
def test_nan_and_plus_inf_raise_or_give_nan_rows(small_blocks, device, name):
    ours_fn = MAPS[name][0]
    z = torch.randn(3, C)
    z[1, C - 2] = math.nan
    z[2, 5] = math.inf
    with pytest.raises(ValueError, match=rf"^{name}\(\): argument 'logits' expected values without NaN or \+inf "
                                         rf".*got <2 bad entries in 2 row\(s\), first at row 1, class {C - 2}>"):
        ours_fn(z.to(device), impl="triton", validate=True)
    out = ours_fn(z.to(device), impl="triton", validate=False).cpu()
    assert torch.isnan(out[1:]).all() and torch.isfinite(out[0]).all()
    # validate=None, the default: on for CPU tensors, off for CUDA ones (no host read there).
    if device.type == "cuda":
        assert torch.equal(ours_fn(z.to(device), impl="triton").isnan(), out.isnan().to(device))
    else:
        with pytest.raises(ValueError, match=rf"^{name}\(\): argument 'logits'"):
            ours_fn(z, impl="triton")


@pytest.mark.parametrize("name", list(MAPS))
def test_gradcheck_and_double_backward_float64(device, name):
    ours_fn = MAPS[name][0]
    z = (torch.randn(3, 7, dtype=D) * 0.7).to(device).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: ours_fn(t, impl="triton"), (z,))
    # create_graph=True takes the differentiable closed form on the saved output.
    assert torch.autograd.gradgradcheck(lambda t: ours_fn(t, impl="triton"), (z,))


@pytest.mark.parametrize("name", list(MAPS))
def test_custom_op_path_gradcheck(device, name):
    """The path torch.compile traces: the engine's custom op with its autograd rule, on Triton."""
    from logitlab.normalizers import _threshold

    z = (torch.randn(3, 9, dtype=D) * 0.5).to(device).requires_grad_()
    alpha = torch.full((3, 1), 2.0 if name == "sparsemax" else 1.5, dtype=D, device=device)
    assert _threshold._engine(z, name, "triton", name) == "triton"

    def probs(t):
        return _threshold._threshold_op(t, alpha, name, 0.0, 1, True, True, name, "triton")[0]

    assert torch.autograd.gradcheck(probs, (z,))


def test_impl_resolution(device):
    """'auto' picks Triton for CUDA tensors (here only where the cases run on a GPU); α-entmax
    has no Triton kernel, so impl='triton' there is a clear error."""
    from logitlab.normalizers import _threshold

    z = torch.randn(2, 5, device=device)
    auto = _threshold._engine(z, "sparsemax", "auto", "sparsemax")
    assert auto == "triton" if device.type == "cuda" else auto != "triton"
    assert _threshold._engine(z, "entmax15", "triton", "entmax15") == "triton"
    assert _threshold._engine(z, "bisect", "auto", "entmax") != "triton"
    with pytest.raises(ValueError, match=r"^entmax\(\): argument 'impl' expected one of 'auto', 'native', 'torch'"):
        __import__("logitlab").entmax(z, 1.5, impl="triton")


def test_torch_compile_fullgraph(device):
    """A compiled caller traces the engine's custom op (the Triton launch inside) without a break."""
    def objective(logits, weights):
        return (sparsemax(logits, impl="triton") * weights).sum() + (entmax15(logits, impl="triton") * weights).sum()

    z = torch.randn(4, 11, device=device, requires_grad=True)
    w = torch.randn(4, 11, device=device)
    compiled = torch.compile(objective, fullgraph=True, backend="aot_eager")
    value = compiled(z, w)
    (grad,) = torch.autograd.grad(value, z)
    z2 = z.detach().clone().requires_grad_()
    expected = objective(z2, w)
    (expected_grad,) = torch.autograd.grad(expected, z2)
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(grad, expected_grad)
