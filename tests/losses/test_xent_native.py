"""The native cross-entropy kernel (``_native/xent.c``) against the eager path and the float64 truth.

Every float32/bf16/f16 call of ``cross_entropy`` on the CPU goes through the native kernel when
it is available; these tests hold it to the eager kernel (which the float64 gradchecks cover),
cover what only it does (threads, half-precision storage, in-place rows, row strides), and the
build machinery: the persistent cache and the fallback with one warning.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tests.conftest import ERROR_SLACK, LOW_PRECISION

import logitlab
from logitlab import _native
from logitlab._native import xent as native_xent
from logitlab.losses import _xent_kernel

pytestmark = [pytest.mark.skipif(not native_xent.supports(torch.empty(0, 0)),
                                 reason="no C compiler: the native kernel is unavailable here"),
              pytest.mark.usefixtures("each_build")]

SRC = str(Path(__file__).resolve().parents[2] / "src")


@pytest.fixture
def eager(monkeypatch):
    """Run cross_entropy on the eager torch kernel instead of the native one."""
    monkeypatch.setattr(_xent_kernel.native_xent, "supports", lambda rows: False)


def _loss_and_grad(logits, target, **kw):
    x = logits.detach().clone().requires_grad_(True)
    loss = logitlab.cross_entropy(x, target, **kw)
    (grad,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), grad


def _both_paths(monkeypatch, logits, target, **kw):
    native = _loss_and_grad(logits, target, **kw)
    with monkeypatch.context() as m:
        m.setattr(_xent_kernel.native_xent, "supports", lambda rows: False)
        eager = _loss_and_grad(logits, target, **kw)
    return native, eager


OPTIONS = [
    {},
    {"label_smoothing": 0.15},
    {"weight": "w"},
    {"weight": "w", "label_smoothing": 0.3, "z_loss": 1e-3},
    {"z_loss": 1e-2, "temperature": 2.5},
    {"temperature": 0.7, "label_smoothing": 0.05, "reduction": "sum"},
    {"reduction": "none", "weight": "w"},
    {"label_smoothing": 1.0},
]


def _inputs(n, c, dtype, probs, generator_seed=0):
    g = torch.Generator().manual_seed(generator_seed)
    logits = (torch.randn(n, c, generator=g) * 3).to(dtype)
    if probs:
        target = torch.softmax(torch.randn(n, c, generator=g) * 2, -1).to(dtype)
    else:
        target = torch.randint(0, c, (n,), generator=g)
        target[::5] = -100  # some ignored rows
    return logits, target


def _options(kw, c):
    kw = dict(kw)
    if kw.get("weight") == "w":
        kw["weight"] = torch.rand(c, generator=torch.Generator().manual_seed(1)) + 0.1
    return kw


@pytest.mark.parametrize("c", [1, 5, 16, 37, 300])
@pytest.mark.parametrize("probs", [False, True])
@pytest.mark.parametrize("kw", OPTIONS, ids=lambda kw: "-".join(kw) or "plain")
def test_float32_matches_eager(monkeypatch, kw, probs, c):
    logits, target = _inputs(23, c, torch.float32, probs)
    kw = _options(kw, c)
    (l_n, g_n), (l_e, g_e) = _both_paths(monkeypatch, logits, target, **kw)
    scale = max(1.0, float(l_e.abs().max()))
    torch.testing.assert_close(l_n, l_e, rtol=2e-6, atol=2e-6 * scale)
    torch.testing.assert_close(g_n, g_e, rtol=1e-5, atol=1e-6 * scale)


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("probs", [False, True])
@pytest.mark.parametrize("kw", OPTIONS[:5], ids=lambda kw: "-".join(kw) or "plain")
def test_error_against_float64_no_worse_than_eager(monkeypatch, kw, probs, dtype):
    """The project's rule: at each dtype, no worse than the naive op against the float64 truth."""
    logits, target = _inputs(64, 45, dtype, probs)
    kw = _options(kw, 45)
    (l_n, g_n), (l_e, g_e) = _both_paths(monkeypatch, logits, target, **kw)
    t64 = target.double() if probs else target
    kw64 = {k: (v.double() if torch.is_tensor(v) else v) for k, v in kw.items()}
    # validate=False: half-precision target rows sum to 1 only within their rounding.
    l_t, g_t = _loss_and_grad(logits.double(), t64, validate=False, **kw64)
    for ours, eager_value, truth in ((l_n, l_e, l_t), (g_n, g_e, g_t)):
        err_ours = float((ours.double() - truth).abs().max())
        err_eager = float((eager_value.double() - truth).abs().max())
        assert err_ours <= err_eager + ERROR_SLACK[dtype] * max(1.0, float(truth.abs().max()))


@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_matches_torch_and_keeps_dtype(dtype):
    logits, target = _inputs(50, 300, dtype, False)
    loss, grad = _loss_and_grad(logits, target, label_smoothing=0.1)
    x = logits.float().requires_grad_(True)
    expected = F.cross_entropy(x, target, label_smoothing=0.1)
    (expected_grad,) = torch.autograd.grad(expected, x)
    assert loss.dtype == dtype and grad.dtype == dtype
    tol = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}[dtype]
    torch.testing.assert_close(loss.float(), expected.detach(), rtol=tol, atol=tol)
    torch.testing.assert_close(grad.float(), expected_grad, rtol=tol, atol=tol * 1e-2)


@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_inplace_backward_writes_the_same_gradient_into_the_logits(dtype):
    logits, target = _inputs(40, 130, dtype, False)
    _, expected = _loss_and_grad(logits, target, z_loss=1e-3)
    x = logits.clone().requires_grad_(True)
    loss = logitlab.cross_entropy(x, target, z_loss=1e-3, inplace_backward=True)
    loss.backward()
    assert x.grad.data_ptr() == x.data_ptr()
    torch.testing.assert_close(x.grad, expected, rtol=0, atol=0)


def test_row_strides_and_dims(monkeypatch):
    big = torch.randn(30, 200)
    logits = big[:, 10:110]  # rows of 100 with a stride of 200
    assert logits.stride() == (200, 1)
    target = torch.randint(0, 100, (30,))
    (l_n, g_n), (l_e, g_e) = _both_paths(monkeypatch, logits, target, weight=torch.rand(100))
    torch.testing.assert_close(l_n, l_e)
    torch.testing.assert_close(g_n, g_e)
    cube = torch.randn(4, 33, 6)  # classes along dim 1
    t = torch.randint(0, 33, (4, 6))
    (l_n, g_n), (l_e, g_e) = _both_paths(monkeypatch, cube, t, dim=1, label_smoothing=0.2)
    torch.testing.assert_close(l_n, l_e)
    torch.testing.assert_close(g_n, g_e)


def _stream_bytes() -> int:
    """The gradient size from which xent.c writes half-precision gradients with non-temporal stores."""
    source = (Path(_native.__file__).parent / "xent.c").read_text()
    (value,) = [line.split(None, 2)[2] for line in source.splitlines()
                if line.startswith("#define LL_XENT_STREAM_BYTES")]
    return int(eval(value, {}))  # a constant expression such as (32.0 * 1024 * 1024)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("c", [32768, 32771], ids=["aligned-rows", "unaligned-rows"])
@pytest.mark.parametrize("kw", [{}, {"label_smoothing": 0.1}], ids=["plain", "smoothing"])
def test_a_streamed_gradient_is_bitwise_the_cached_one(dtype, c, kw):
    """A gradient past the streaming size (non-temporal stores, their unaligned first elements
    stored apart) against the same rows in two calls each under it (ordinary stores)."""
    n = -(-_stream_bytes() // (2 * c)) + 2  # rows to just past the size
    n += n % 2
    logits, target = _inputs(n, c, dtype, False)
    kw = {"reduction": "sum", **kw}
    whole = _loss_and_grad(logits, target, **kw)[1]
    halves = [_loss_and_grad(logits[i::2].contiguous(), target[i::2], **kw)[1] for i in (0, 1)]
    assert whole.numel() * whole.element_size() >= _stream_bytes() > halves[0].numel() * 2
    assert torch.equal(whole[0::2], halves[0]) and torch.equal(whole[1::2], halves[1])


def test_threads_give_bitwise_the_same_result():
    logits, target = _inputs(1024, 257, torch.float32, False)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _loss_and_grad(logits, target, reduction="none")
        torch.set_num_threads(2)
        two = _loss_and_grad(logits, target, reduction="none")
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])


@pytest.mark.parametrize("path", ["native", "eager", "composite"])
def test_padding_rows_of_all_minus_inf_are_allowed_when_excluded(monkeypatch, path):
    if path == "eager":
        monkeypatch.setattr(_xent_kernel.native_xent, "supports", lambda rows: False)
    impl = "composite" if path == "composite" else "auto"
    logits = torch.randn(6, 9)
    logits[[1, 4]] = -torch.inf
    target = torch.tensor([3, -100, 0, 8, -100, 2])
    loss, grad = _loss_and_grad(logits, target, label_smoothing=0.1, impl=impl)
    kept = [0, 2, 3, 5]
    expected, expected_grad = _loss_and_grad(logits[kept], target[kept], label_smoothing=0.1)
    torch.testing.assert_close(loss, expected)
    assert torch.isfinite(grad).all() and grad[[1, 4]].eq(0).all()
    torch.testing.assert_close(grad[kept], expected_grad, rtol=1e-5, atol=1e-7)
    mask = target != -100
    loss_masked, _ = _loss_and_grad(logits, target.clamp(min=0), mask=mask, impl=impl)
    torch.testing.assert_close(loss_masked, _loss_and_grad(logits[kept], target[kept])[0])
    with pytest.raises(ValueError, match=r"at least one finite logit per kept row.*row 1 "):
        logitlab.cross_entropy(logits, target.clamp(min=0), impl=impl)


def test_excluded_classes_get_zero_probability_and_gradient():
    logits = torch.randn(5, 40)
    logits[:, 7] = -torch.inf
    logits[2, 20:] = -torch.inf
    target = torch.tensor([0, 1, 2, 3, 4])
    _, grad = _loss_and_grad(logits, target)
    assert grad[:, 7].eq(0).all() and grad[2, 20:].eq(0).all()
    x64 = logits.double().requires_grad_(True)
    (g64,) = torch.autograd.grad(F.cross_entropy(x64, target), x64)
    torch.testing.assert_close(grad.double(), g64, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("dtype,big", [(torch.float32, 1e4), (torch.float16, 65504.0), (torch.bfloat16, 3e38)])
def test_extreme_logits_are_finite_and_right(dtype, big):
    """Logits at the dtype's limits: losses of about 0 and of about ``big`` (still representable)."""
    logits = torch.tensor([[big, -big, 0.0, big / 2], [-big / 2, big / 2, 0.0, 0.0]], dtype=dtype)
    target = torch.tensor([0, 0])
    loss, grad = _loss_and_grad(logits, target, reduction="none")
    truth = F.cross_entropy(logits.double(), target, reduction="none")
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    torch.testing.assert_close(loss.double(), truth, rtol=1e-2, atol=1e-6)
    torch.testing.assert_close(grad.double(), torch.tensor([[0.0, 0, 0, 0], [-1, 1, 0, 0]], dtype=torch.float64))


def test_nan_is_reported_at_its_row_across_threads():
    logits, target = _inputs(4096, 64, torch.float32, False)
    logits[3001, 5] = torch.nan
    logits[3501, 1] = torch.inf
    with pytest.raises(ValueError, match=r"NaN or \+inf in row 3001 of"):
        logitlab.cross_entropy(logits, target)
    loss = logitlab.cross_entropy(logits, target, validate=False, reduction="none")
    assert torch.isnan(loss[3001]) and torch.isfinite(loss[:3001]).all()


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("kw", [{}, {"label_smoothing": 0.1}], ids=["plain", "smoothing"])
def test_unchecked_nan_row_gives_a_nan_gradient_row_and_leaves_the_others(dtype, kw):
    """validate=False: a NaN logit makes its row's gradient NaN in every dtype (that row takes the
    rounding with NaN lanes, the others the one without), and no other row changes."""
    logits, target = _inputs(40, 300, dtype, False)
    target[7] = 3
    _, clean = _loss_and_grad(logits, target, validate=False, **kw)
    logits[7, 123] = torch.nan
    _, grad = _loss_and_grad(logits, target, validate=False, **kw)
    assert torch.isnan(grad[7]).all()
    others = torch.arange(40) != 7
    assert torch.equal(grad[others], clean[others])


def test_unavailable_compiler_warns_once_and_falls_back(monkeypatch, tmp_path):
    monkeypatch.setenv("LOGITLAB_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
    monkeypatch.setattr(_native, "_compiler", lambda: "false")
    monkeypatch.setattr(_native, "_libs", {})
    monkeypatch.setattr(_native, "_warned", set())
    monkeypatch.setattr(_native, "_symbols", {})
    monkeypatch.setattr(_native, "_info", {})
    logits, target = _inputs(8, 20, torch.float32, False)
    with pytest.warns(_native.NativeUnavailableWarning, match="native kernel 'xent' unavailable"):
        loss, grad = _loss_and_grad(logits, target)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = _loss_and_grad(logits, target)
    assert not native_xent.supports(logits)
    assert "error" in _native.status()["xent"]
    torch.testing.assert_close(loss, again[0])
    monkeypatch.undo()
    native_loss, native_grad = _loss_and_grad(logits, target)
    torch.testing.assert_close(loss, native_loss)
    torch.testing.assert_close(grad, native_grad)


_PROBE = """
import json, torch, logitlab
from logitlab import _native
logitlab.cross_entropy(torch.randn(4, 5), torch.tensor([0, 1, 2, 3]))
print(json.dumps(_native.status()))
"""


def test_compiled_once_then_loaded_from_the_cache(tmp_path):
    env = {**os.environ, "LOGITLAB_CACHE_DIR": str(tmp_path), "PYTHONPATH": SRC}
    runs = []
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True,
                             timeout=120, check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1])["xent"])
    assert runs[0]["compiled"] and not runs[1]["compiled"]
    assert runs[0]["path"] == runs[1]["path"] and Path(runs[0]["path"]).parent == tmp_path
    assert len(list(tmp_path.glob("xent-*.so"))) == 1  # no leftover temporary files
    off = subprocess.run([sys.executable, "-c", _PROBE], env={**env, "LOGITLAB_NATIVE": "0"},
                         capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(off.stdout.strip().splitlines()[-1]) == {}
