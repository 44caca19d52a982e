import gc
import os
import subprocess
import sys

import pytest
import torch

import logitlab
from logitlab._memory import _HUGE_PAGE, MIN_BYTES, SLOTS, empty_like_huge

LARGE = MIN_BYTES // 4 + 1024  # float32 elements: above the threshold of the pooled buffers
_LINUX = sys.platform.startswith("linux")
linux_only = pytest.mark.skipif(not _LINUX, reason="the buffer pool is Linux-only")


@pytest.fixture(autouse=True)
def empty_pool():
    gc.collect()
    logitlab.empty_cache()
    yield
    gc.collect()
    logitlab.empty_cache()


def test_large_buffers_are_ordinary_tensors():
    x = torch.empty(LARGE)
    out = empty_like_huge(x)
    assert out.shape == x.shape and out.dtype == x.dtype and out.is_contiguous()
    out.fill_(2.0)
    assert float(out.sum()) == 2.0 * x.numel()
    two_d = empty_like_huge(torch.empty(1024, LARGE // 1024 + 8, dtype=torch.bfloat16).t())
    assert two_d.shape == (LARGE // 1024 + 8, 1024) and two_d.dtype == torch.bfloat16 and two_d.is_contiguous()


@linux_only
def test_a_freed_buffer_is_reused_and_a_used_one_never_is():
    x = torch.empty(LARGE)
    first = empty_like_huge(x)
    address = first.data_ptr()
    assert address % _HUGE_PAGE == 0
    view = first[1:]  # a view keeps the buffer in use after the tensor itself is gone
    del first
    second = empty_like_huge(x)
    assert second.data_ptr() != address
    second.fill_(1.0)
    view.fill_(3.0)
    assert float(second.max()) == 1.0 and float(second.min()) == 1.0
    del view
    assert logitlab.cache_info()["free_bytes"] > 0
    third = empty_like_huge(x)
    assert third.data_ptr() == address
    assert logitlab.cache_info()["free_bytes"] == 0


@linux_only
def test_the_pool_is_bounded_and_empty_cache_releases_only_free_buffers():
    x = torch.empty(LARGE)
    alive = [empty_like_huge(x) for _ in range(SLOTS + 2)]
    info = logitlab.cache_info()
    assert info["buffers"] == SLOTS and info["free_bytes"] == 0
    for i, t in enumerate(alive):
        t.fill_(float(i))
    assert [float(t[-1]) for t in alive] == [float(i) for i in range(len(alive))]  # distinct memory
    del alive[0]
    logitlab.empty_cache()
    assert logitlab.cache_info()["buffers"] == SLOTS - 1
    assert [float(t[0]) for t in alive] == [float(i) for i in range(1, SLOTS + 2)]
    alive.clear()
    logitlab.empty_cache()
    assert logitlab.cache_info() == {"enabled": True, "buffers": 0, "free_bytes": 0, "used_bytes": 0}


@linux_only
def test_a_smaller_request_takes_a_free_buffer_only_within_the_slack():
    big = empty_like_huge(torch.empty(LARGE * 2))
    address = big.data_ptr()
    del big
    assert empty_like_huge(torch.empty(LARGE)).data_ptr() != address  # half the size: a new buffer
    assert empty_like_huge(torch.empty(int(LARGE * 1.8))).data_ptr() == address


def test_reuse_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("LOGITLAB_BUFFER_CACHE", "0")
    x = torch.empty(LARGE)
    out = empty_like_huge(x)
    out.fill_(1.0)
    assert logitlab.cache_info() == {"enabled": False, "buffers": 0, "free_bytes": 0, "used_bytes": 0}
    assert float(out.sum()) == out.numel()


def test_traced_meta_and_vmapped_tensors_get_a_plain_empty():
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    with FakeTensorMode():
        fake = empty_like_huge(torch.empty(LARGE))
    assert isinstance(fake, FakeTensor)
    assert empty_like_huge(torch.empty(LARGE, device="meta")).device.type == "meta"
    shapes = []
    torch.func.vmap(lambda row: shapes.append(empty_like_huge(row).shape) or row)(torch.empty(2, LARGE))
    assert shapes == [(LARGE,)]
    assert logitlab.cache_info()["buffers"] == 0


def test_small_buffers_come_from_torch():
    empty_like_huge(torch.empty(1024))
    assert logitlab.cache_info()["buffers"] == 0


def _poison_pool(numel: int, count: int = 1) -> None:
    """Leave ``count`` free pooled buffers full of NaN: an op that does not write every element of
    the buffer it reuses shows it."""
    buffers = [empty_like_huge(torch.empty(numel)) for _ in range(count)]
    for buffer in buffers:
        buffer.fill_(float("nan"))
    assert not _LINUX or logitlab.cache_info()["buffers"] == count


@pytest.mark.parametrize("impl", ["auto", "torch"])
def test_cross_entropy_with_a_reused_gradient_buffer_equals_torch(impl):
    torch.manual_seed(0)
    n, c = 2048, 8193  # the gradient is above the pool's threshold
    target = torch.randint(0, c, (n,))
    target[::7] = -100  # ignored rows: their gradient rows must be written as zeros too
    for _ in range(2):
        _poison_pool(n * c)
        logits = torch.randn(n, c, requires_grad=True)
        ours = logitlab.cross_entropy(logits, target, impl=impl)
        (g_ours,) = torch.autograd.grad(ours, logits)
        assert not _LINUX or logitlab.cache_info()["used_bytes"] > 0  # the gradient is a reused buffer
        ref = torch.nn.functional.cross_entropy(logits, target)
        (g_ref,) = torch.autograd.grad(ref, logits)
        torch.testing.assert_close(ours, ref)
        torch.testing.assert_close(g_ours, g_ref)
        del g_ours


@pytest.mark.parametrize("name", ["sparsemax", "entmax15"])
def test_sparse_maps_with_reused_buffers_equal_the_torch_path(name):
    torch.manual_seed(0)
    fn = getattr(logitlab, name)
    x = torch.randn(2048, 8193) * 3
    grad_out = torch.randn_like(x)
    expected = fn(x.double(), impl="torch")
    leaf = x.double().requires_grad_()
    (expected_grad,) = torch.autograd.grad(fn(leaf, impl="torch"), leaf, grad_out.double())
    for _ in range(2):
        _poison_pool(x.numel(), count=SLOTS)  # the output, then the gradient
        leaf = x.clone().requires_grad_()
        probs = fn(leaf)
        (grad,) = torch.autograd.grad(probs, leaf, grad_out)
        assert not _LINUX or logitlab.cache_info()["used_bytes"] > 0  # outputs in reused buffers
        torch.testing.assert_close(probs.double(), expected, atol=1e-6, rtol=0)
        torch.testing.assert_close(grad.double(), expected_grad, atol=1e-5, rtol=1e-5)
        del probs, grad


@pytest.mark.parametrize("setting, state", [("1", "on"), ("0", "off (LOGITLAB_BUFFER_CACHE=0)")])
def test_env_reports_the_pool(setting, state):
    env = {**os.environ, "LOGITLAB_BUFFER_CACHE": setting}
    done = subprocess.run([sys.executable, "-m", "logitlab", "env"], capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    expected = state if _LINUX else "off (Linux only)"
    assert f"reuse of large CPU output buffers: {expected}, up to {SLOTS} buffers" in done.stdout


@linux_only
def test_threads_never_share_a_buffer():
    import threading

    x = torch.empty(LARGE)
    errors = []

    def work(value: float) -> None:
        for _ in range(20):
            out = empty_like_huge(x)
            out.fill_(value)  # releases the GIL: the other thread runs meanwhile
            if float(out.min()) != value or float(out.max()) != value:
                errors.append(value)
            del out

    threads = [threading.Thread(target=work, args=(float(i),)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert logitlab.cache_info()["buffers"] <= SLOTS
