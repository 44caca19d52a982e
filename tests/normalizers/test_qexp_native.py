"""The native q-exponential kernel (``_native/qexp.c``: α-entmax rows with α < 1.0625) against the
float64 reference, the torch q-exponential solver it mirrors, and the entmax package; its
operators through opcheck and gradcheck (float64 instantiation); every build the CPU executes."""

from __future__ import annotations

import ctypes
import math

import pytest
import torch

import logitlab
from conftest import count_calls
from logitlab import backend
from logitlab import reference as ref
from logitlab._native import prototypes, selected_build
from logitlab._native import qexp as native_qexp
from logitlab.normalizers._qexp import DENSE_BELOW
from logitlab.normalizers.entmax import ConvergenceError

pytestmark = pytest.mark.usefixtures("each_build")

F64 = torch.float64
# The peer's range below the engine's (its tests draw α from (0.05, 2.55)), α = 1 itself (as a
# tensor: a float α = 1 takes torch's softmax), and both sides of it closely.
ALPHAS = [0.05, 0.2, 0.5, 0.8, 0.95, 0.999, 1 - 1e-9, 1.0, 1 + 1e-9, 1.001, 1.03, 1.06]
# Float32 output of an exact float64 value: half an ulp at 1, and the tol = 1e-10 stop.
ATOL32 = 1.2e-7


@pytest.fixture(autouse=True)
def _native_available():
    if not native_qexp.supports(torch.zeros(1, 1)):
        pytest.skip("the native qexp kernel cannot be built here")


@pytest.fixture
def calls(monkeypatch):
    """Counts of native forward and backward calls."""
    return count_calls(monkeypatch, native_qexp, fwd="qexp_forward", bwd="qexp_backward")


def _logits(shape, scale=2.0, dtype=torch.float32):
    return (torch.randn(shape, dtype=F64) * scale).to(dtype)


def _alpha_rows(alpha, rows):
    return torch.full((rows, 1), alpha, dtype=F64)


def _value_and_grads(z, alpha, w, impl, alpha_grad=True):
    x = z.clone().requires_grad_()
    a = alpha.clone().requires_grad_(alpha_grad)
    p = logitlab.entmax(x, a, impl=impl)
    (p * w).sum().backward()
    return p.detach(), x.grad, a.grad


def _reference_grads(z, alpha, w, h=1e-4):
    """∂⟨w, p⟩/∂z by autograd through the float64 reference, ∂/∂α by central differences (h = 1e-4:
    the reference computes exp_α with 1/(α−1), which cancels next to α = 1 at smaller steps)."""
    x = z.to(F64).clone().requires_grad_()
    p = ref.entmax_any_alpha(x, alpha)
    (p * w.to(F64)).sum().backward()
    plus = (ref.entmax_any_alpha(z.to(F64), alpha + h) * w.to(F64)).sum(-1, keepdim=True)
    minus = (ref.entmax_any_alpha(z.to(F64), alpha - h) * w.to(F64)).sum(-1, keepdim=True)
    return p.detach(), x.grad, (plus - minus) / (2 * h)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_values_match_the_float64_reference_and_the_torch_solver(alpha, calls):
    z = _logits((7, 300))
    a = _alpha_rows(alpha, 7)
    got = logitlab.entmax_with_info(z, a, impl="native")
    assert calls["fwd"] == 1
    torch.testing.assert_close(got.probs.to(F64), ref.entmax_any_alpha(z.to(F64), alpha), atol=ATOL32, rtol=0)
    torch_path = logitlab.entmax_with_info(z, a, impl="torch")
    assert calls["fwd"] == 1
    torch.testing.assert_close(got.probs, torch_path.probs, atol=ATOL32, rtol=0)
    # The same solve step for step: the same report (to the rounding of the sums).
    assert bool(got.converged.all()) and got.max_violation <= 1e-10
    assert (got.n_iter - torch_path.n_iter).abs().max() <= 1
    torch.testing.assert_close(got.tau, torch_path.tau, atol=1e-6, rtol=1e-6)
    assert got.tau.dtype == torch_path.tau.dtype == torch.float32


@pytest.mark.parametrize("alpha", [0.05, 0.5, 0.95, 1.0, 1.001, 1.06])
def test_both_gradients_match_the_reference_and_the_torch_backward(alpha, calls):
    z = _logits((5, 40))
    w = torch.randn(5, 40)
    a = _alpha_rows(alpha, 5)
    p, grad_z, grad_a = _value_and_grads(z, a, w, "native")
    assert calls == {"fwd": 1, "bwd": 1}
    _, want_z, want_a = _reference_grads(z, alpha, w)
    torch.testing.assert_close(grad_z.to(F64), want_z, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(grad_a, want_a, atol=2e-6, rtol=1e-5)
    _, torch_z, torch_a = _value_and_grads(z, a, w, "torch")
    # The torch path's backward runs in float32 for float32 logits (the kernel's in double).
    torch.testing.assert_close(grad_z, torch_z, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(grad_a, torch_a, atol=1e-5, rtol=1e-4)


def test_one_float_alpha_shared_by_the_rows_and_its_gradient(calls):
    z = _logits((6, 33))
    w = torch.randn(6, 33)
    shared = torch.tensor(0.7, dtype=F64, requires_grad=True)
    x = z.clone().requires_grad_()
    (logitlab.entmax(x, shared.reshape(1, 1), impl="native") * w).sum().backward()
    _, want_z, want_a = _reference_grads(z, 0.7, w)
    torch.testing.assert_close(x.grad.to(F64), want_z, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(shared.grad, want_a.sum(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logitlab.entmax(z, 0.7, impl="native").to(F64),
                               ref.entmax_any_alpha(z.to(F64), 0.7), atol=ATOL32, rtol=0)
    assert calls["fwd"] == 2


def test_per_row_alpha_crossing_one_splits_the_rows_between_the_kernels(calls):
    alphas = [0.3, 0.9, 1.0, 1 - 1e-7, 1.05, 1.3, 2.0, 0.06]
    z = _logits((len(alphas), 50))
    a = torch.tensor(alphas, dtype=F64).reshape(-1, 1)
    w = torch.randn(len(alphas), 50)
    p, grad_z, grad_a = _value_and_grads(z, a, w, "native")
    assert calls == {"fwd": 1, "bwd": 1}  # the dense rows, in one call
    for i, alpha in enumerate(alphas):
        torch.testing.assert_close(p[i].to(F64), ref.entmax_any_alpha(z[i].to(F64), alpha), atol=ATOL32, rtol=0)
    _, torch_z, torch_a = _value_and_grads(z, a, w, "torch")
    # The torch path's backward runs in float32 for float32 logits (the kernel's in double).
    torch.testing.assert_close(grad_z, torch_z, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(grad_a, torch_a, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("alpha", [0.1, 0.6, 1.0, 1.04])
def test_half_precision_is_the_float64_value_rounded(dtype, alpha, calls):
    z = _logits((4, 130), dtype=dtype)
    out = logitlab.entmax(z, _alpha_rows(alpha, 4), impl="native")
    assert out.dtype == dtype and calls["fwd"] == 1
    truth = ref.entmax_any_alpha(z.to(F64), alpha)
    # Rounded to the half type through float32: within one of its ulps (half of one, plus float32's).
    torch.testing.assert_close(out.to(F64), truth, atol=torch.finfo(dtype).eps / 2 + ATOL32, rtol=0)
    w = torch.randn(4, 130).to(dtype)
    x = z.clone().requires_grad_()
    (logitlab.entmax(x, _alpha_rows(alpha, 4), impl="native") * w).sum().backward()
    _, want_z, _ = _reference_grads(z, alpha, w)
    assert x.grad.dtype == dtype
    torch.testing.assert_close(x.grad.to(F64), want_z, atol=4 * torch.finfo(dtype).eps, rtol=4 * torch.finfo(dtype).eps)


# Row lengths at the edges of the kernel's blocks: VL elements, 16 on the AVX-512 and portable
# builds and 8 on AVX2, read as two double halves (one register each).
EDGES = [1, 2, 7, 8, 9, 15, 16, 17, 24, 31, 33, 259]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("classes", EDGES)
def test_row_lengths_at_the_block_edges_with_excluded_classes(classes, dtype, calls):
    alphas = (0.6, 1.0)  # per row; 1.0 as a tensor runs the q-exponential solver at ε = 0
    z = _logits((2, classes), dtype=dtype)
    excluded = torch.zeros(2, classes, dtype=torch.bool)
    excluded[1, 1::3] = True
    x = z.masked_fill(excluded, -math.inf).requires_grad_()
    a = torch.tensor(alphas, dtype=F64).reshape(2, 1)
    p = logitlab.entmax(x, a, impl="native")
    w = torch.randn(2, classes).to(dtype)
    (p * w).sum().backward()
    assert calls == {"fwd": 1, "bwd": 1} and p.dtype == x.grad.dtype == dtype
    assert torch.equal(p[excluded], torch.zeros(int(excluded.sum()), dtype=dtype))
    assert torch.equal(x.grad[excluded], torch.zeros(int(excluded.sum()), dtype=dtype))
    eps = torch.finfo(dtype).eps
    p_tol, g_tol = (ATOL32, 2e-6) if dtype == torch.float32 else (eps / 2 + ATOL32, 4 * eps)
    torch_path = logitlab.entmax(x.detach(), a, impl="torch")
    torch.testing.assert_close(p.detach(), torch_path, atol=2 * p_tol, rtol=0)
    for i, alpha in enumerate(alphas):
        kept = ~excluded[i]
        zi = z[i, kept].to(F64).requires_grad_()
        want = ref.entmax_any_alpha(zi, alpha)
        (want * w[i, kept].to(F64)).sum().backward()
        torch.testing.assert_close(p[i, kept].detach().to(F64), want.detach(), atol=p_tol, rtol=0)
        torch.testing.assert_close(x.grad[i, kept].to(F64), zi.grad, atol=g_tol, rtol=g_tol)


@pytest.mark.parametrize("alpha", [0.3, 1.0, 1.04])
def test_excluded_classes_and_all_excluded_rows(alpha, calls):
    z = _logits((4, 37))
    mask = torch.zeros(4, 37, dtype=torch.bool)
    mask[0, ::3] = True
    mask[1] = True
    mask[3, 1:] = True  # one class left
    x = z.masked_fill(mask, -math.inf).requires_grad_()
    info = logitlab.entmax_with_info(x, _alpha_rows(alpha, 4), impl="native")
    p = info.probs
    assert torch.equal(p[mask], torch.zeros(int(mask.sum())))
    assert torch.equal(p[1], torch.zeros(37)) and float(info.tau[1]) == math.inf and int(info.n_iter[1]) == 0
    assert float(p[3, 0].detach()) == 1.0
    for i in (0, 2):
        kept = ~mask[i]
        torch.testing.assert_close(p[i, kept].to(F64), ref.entmax_any_alpha(z[i, kept].to(F64), alpha),
                                   atol=ATOL32, rtol=0)
    torch_path = logitlab.entmax_with_info(x.detach(), _alpha_rows(alpha, 4), impl="torch")
    torch.testing.assert_close(info.tau, torch_path.tau, atol=1e-6, rtol=1e-6)
    (p * torch.randn(4, 37)).sum().backward()
    assert calls == {"fwd": 1, "bwd": 1}
    assert torch.isfinite(x.grad).all()
    assert torch.equal(x.grad[mask], torch.zeros(int(mask.sum())))
    assert torch.equal(x.grad[1], torch.zeros(37)) and torch.equal(x.grad[3], torch.zeros(37))


def test_wide_rows_many_threads_non_contiguous_and_every_dim(calls):
    # 64 x 2100 elements: above the kernels' serial threshold, so the OpenMP path runs.
    z = _logits((2100, 64))
    got = logitlab.entmax(z, 0.4, dim=0, impl="native")
    torch.testing.assert_close(got.to(F64), ref.entmax_any_alpha(z.to(F64), 0.4, dim=0), atol=ATOL32, rtol=0)
    cube = _logits((3, 5, 7))
    for dim in range(-3, 3):
        torch.testing.assert_close(logitlab.entmax(cube, 0.8, dim=dim, impl="native").to(F64),
                                   ref.entmax_any_alpha(cube.to(F64), 0.8, dim=dim), atol=ATOL32, rtol=0)
    assert calls["fwd"] == 7


def test_heavy_tails_and_large_logits():
    """α near 0 (p_i ~ |z_i|^{−1/(1−α)}, nearly flat rows) and logits of magnitude 1e4 and 1e30."""
    for scale, alpha in ((1e4, 0.05), (1e4, 0.9), (1e30, 0.5), (1e-6, 0.2), (50.0, 1.05)):
        z = _logits((3, 200), scale=scale)
        got = logitlab.entmax(z, _alpha_rows(alpha, 3), impl="native")
        # The reference shifted by the row maxima (its bisection cannot resolve μ next to 1e30).
        shifted = z.to(F64) - z.to(F64).amax(-1, keepdim=True)
        torch.testing.assert_close(got.to(F64), ref.entmax_any_alpha(shifted, alpha), atol=ATOL32, rtol=0)


def test_solve_report_convergence_error_and_bad_rows(calls):
    z = _logits((3, 2000))
    info = logitlab.entmax_with_info(z, 0.2, impl="native")
    assert bool(info.converged.all()) and info.max_violation <= 1e-10 and (info.n_iter >= 1).all()
    expected = ((0.2 - 1) * z.to(F64) - info.tau[:, None].to(F64)) ** (1 / (0.2 - 1))
    torch.testing.assert_close(info.probs.to(F64), expected / expected.sum(-1, keepdim=True), atol=1e-6, rtol=0)
    bad = logitlab.entmax_with_info(z, 0.2, max_iter=1, impl="native")
    assert not bool(bad.converged.any()) and (bad.n_iter == 1).all() and bad.max_violation > 1e-10
    with pytest.raises(ConvergenceError, match=r"^entmax\(\): the threshold solve did not converge within max_iter=1"):
        logitlab.entmax(z, 0.2, max_iter=1, impl="native")
    rows = torch.randn(4, 9)
    rows[1, 3], rows[3, 0] = math.nan, math.inf
    with pytest.raises(ValueError, match=r"^entmax\(\): argument 'logits' expected values without NaN or \+inf"):
        logitlab.entmax(rows, 0.5, impl="native")
    out = logitlab.entmax_with_info(rows, 0.5, validate=False, impl="native")
    assert torch.isnan(out.probs[1]).all() and torch.isnan(out.probs[3]).all() and torch.isfinite(out.probs[0]).all()
    assert torch.isnan(out.tau[1]) and torch.isnan(out.violation[3])
    p = logitlab.entmax(torch.randn(3, 8), torch.tensor([[0.5], [0.0], [-2.0]]), validate=False, impl="native")
    assert torch.isfinite(p[0]).all() and torch.isnan(p[1:]).all()
    assert calls["fwd"] == 6


def test_impl_auto_picks_the_kernel_native_forces_it_and_loses_table_is_read(calls, monkeypatch):
    z = _logits((4, 20))
    logitlab.entmax(z, 0.5)
    assert calls["fwd"] == 1  # auto
    logitlab.entmax(z, 0.5, impl="torch")
    logitlab.entmax(z.double(), 0.5)  # float64: the torch path (the gradcheck target)
    assert calls["fwd"] == 1
    with pytest.raises(ValueError, match=r"^entmax\(\): argument 'impl' expected 'native' only for float32"):
        logitlab.entmax(z.double(), 0.5, impl="native")
    monkeypatch.setitem(backend.NATIVE_LOSES, ("qexp", selected_build()[0]), "measured slower here")
    logitlab.entmax(z, 0.5)
    assert calls["fwd"] == 1  # auto leaves it to torch
    logitlab.entmax(z, 0.5, impl="native")
    assert calls["fwd"] == 2
    picks = backend.auto_choices()
    assert picks[f"entmax (alpha < {DENSE_BELOW})"]["float32"] == "torch"
    monkeypatch.delitem(backend.NATIVE_LOSES, ("qexp", selected_build()[0]))
    picks = backend.auto_choices()
    assert picks[f"entmax (alpha < {DENSE_BELOW})"] == {"float32": "native", "bfloat16": "native", "float64": "torch"}
    assert picks[f"entmax_with_info (alpha < {DENSE_BELOW})"]["float32"] == "native"


def test_double_backward_runs_the_torch_backward_on_the_saved_probabilities(calls):
    z = _logits((3, 12), scale=1.0)
    a = _alpha_rows(0.6, 3)
    v = torch.randn(3, 12)

    def hvp(impl):
        x = z.clone().requires_grad_()
        p = logitlab.entmax(x, a, impl=impl)
        (g,) = torch.autograd.grad((p * p).sum(), x, create_graph=True)
        return torch.autograd.grad((g * v).sum(), x)[0]

    torch.testing.assert_close(hvp("native"), hvp("torch"), atol=1e-5, rtol=1e-4)
    # The first backward (create_graph) is torch ops on p; the second goes back through p's own
    # backward, the kernel's.
    assert calls == {"fwd": 1, "bwd": 1}


def test_operators_pass_opcheck_and_gradcheck_in_float64():
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(5, 37, generator=g)
    rows[2, ::4] = -math.inf
    per_row = torch.tensor([0.2, 0.9, 1.0, 1.03, 0.5], dtype=F64)
    for alpha in (per_row, torch.tensor([0.7], dtype=F64)):
        torch.library.opcheck(torch.ops.logitlab.qexp_forward.default, (rows, alpha, 1e-10, 100, True))
        out = torch.ops.logitlab.qexp_forward(rows, alpha, 1e-10, 100, True)[0]
        for need_alpha in (True, False):
            torch.library.opcheck(torch.ops.logitlab.qexp_backward.default,
                                  (torch.randn(5, 37, generator=g), out, alpha, need_alpha))
    z = torch.randn(4, 9, dtype=F64, generator=g).requires_grad_()
    alpha = torch.tensor([0.3, 1 - 1e-9, 1.0, 1.05], dtype=F64, requires_grad=True)
    shared = torch.tensor([0.6], dtype=F64, requires_grad=True)

    def op(x, a):
        return torch.ops.logitlab.qexp_forward(x, a, 1e-14, 100, True)[0]

    assert torch.autograd.gradcheck(op, (z, alpha))
    assert torch.autograd.gradcheck(op, (z, shared))
    torch.testing.assert_close(op(z, shared), ref.entmax_any_alpha(z.detach(), 0.6), atol=1e-13, rtol=0)
    x = z.detach().requires_grad_()
    with pytest.raises(RuntimeError, match="logitlab::qexp_forward: no double backward through the kernel op"):
        torch.autograd.grad(op(x, alpha).square().sum(), x, create_graph=True)


def test_operators_refuse_bad_arguments():
    rows = torch.randn(4, 9)
    with pytest.raises(ValueError, match=r"alpha must be a contiguous float64 tensor of 1 or 4 elements"):
        torch.ops.logitlab.qexp_forward(rows, torch.tensor([0.5, 0.5], dtype=F64), 1e-8, 50, True)
    with pytest.raises(ValueError, match=r"qexp_forward: expected float32, bfloat16, float16 or float64 rows"):
        torch.ops.logitlab.qexp_forward(rows.to(torch.int64), torch.tensor([0.5], dtype=F64), 1e-8, 50, True)
    with pytest.raises(ValueError, match=r"qexp_backward: grad must match probs"):
        torch.ops.logitlab.qexp_backward(torch.randn(4, 8), rows, torch.tensor([0.5], dtype=F64), False)


def test_prototypes_parse_from_the_c_definitions():
    restype, argtypes = prototypes.prototype("qexp", "ll_qexp_fwd_bf16")
    assert restype is ctypes.c_int64 and len(argtypes) == 15
    assert argtypes[7] is ctypes.c_int64 and argtypes[8] is ctypes.c_double and argtypes[9] is ctypes.c_int
    restype, argtypes = prototypes.prototype("qexp", "ll_qexp_bwd_f64")
    assert restype is ctypes.c_int64 and len(argtypes) == 12
    assert prototypes.prototype("qexp", "ll_qexp_openmp") == (ctypes.c_int, ())


def test_against_the_entmax_package_below_one():
    peer = pytest.importorskip("entmax")
    z = _logits((6, 25))
    for alpha in (0.1, 0.5, 0.9):
        a = z.clone().requires_grad_()
        b = z.double().clone().requires_grad_()
        pa = logitlab.entmax(a, _alpha_rows(alpha, 6), impl="native")
        pb = peer.entmax_bisect(b, alpha, n_iter=200)
        torch.testing.assert_close(pa.to(F64), pb.detach(), atol=ATOL32, rtol=0)
        w = torch.randn(6, 25)
        (pa * w).sum().backward()
        (pb * w.double()).sum().backward()
        torch.testing.assert_close(a.grad.to(F64), b.grad, atol=2e-6, rtol=1e-5)


def test_unavailable_kernel_falls_back_to_the_same_results(monkeypatch, calls):
    z = _logits((3, 40))
    want = logitlab.entmax(z, 0.5)
    monkeypatch.setattr(native_qexp, "supports", lambda rows: False)
    torch.testing.assert_close(logitlab.entmax(z, 0.5), want, atol=ATOL32, rtol=0)
    with pytest.raises(ValueError, match=r"^entmax\(\): argument 'impl' expected 'native' where the native"):
        logitlab.entmax(z, 0.5, impl="native")
    assert calls["fwd"] == 1
