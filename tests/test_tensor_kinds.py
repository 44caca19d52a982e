"""Meta tensors, mixed devices, DTensors and empty class axes at every public op: a correct
(meta) result or an exception in the project's format, never a crash or a raw torch error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import logitlab as L
from logitlab.distributed import vocab_parallel_cross_entropy, vocab_parallel_kl_divergence

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _calls(device: str, other: str, reduction: str = "mean"):
    """name -> call, for logits on ``device`` and every other tensor on ``other``."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, generator=g).to(device)
    t = torch.tensor([0, 4, 2]).to(other)
    p = torch.softmax(torch.randn(3, 5, generator=g), -1).to(other)
    h, w = torch.randn(3, 4, generator=g).to(device), torch.randn(5, 4, generator=g).to(other)
    th, tw = torch.randn(3, 2, generator=g).to(other), torch.randn(5, 2, generator=g).to(other)
    m = torch.tensor([True, False, True]).to(other)
    r = {"reduction": reduction}
    return {
        "cross_entropy": lambda: L.cross_entropy(x, t, **r),
        "cross_entropy_probs": lambda: L.cross_entropy(x, p, **r),
        "cross_entropy_mask": lambda: L.cross_entropy(x, t, mask=m, **r),
        "cross_entropy_weight": lambda: L.cross_entropy(x, t, weight=torch.ones(5).to(other), **r),
        "nll_loss": lambda: L.nll_loss(x, t, **r),
        "binary_cross_entropy_with_logits": lambda: L.binary_cross_entropy_with_logits(x, p, **r),
        "focal_loss": lambda: L.focal_loss(x, t, **r),
        "poly1_cross_entropy": lambda: L.poly1_cross_entropy(x, t, **r),
        "divergence_loss": lambda: L.divergence_loss(x, p, **r),
        "js_divergence": lambda: L.js_divergence(x, p, **r),
        "brier_loss": lambda: L.brier_loss(x, p, **r),
        "fenchel_young_loss": lambda: L.fenchel_young_loss(x, t, **r),
        "sparsemax_loss": lambda: L.sparsemax_loss(x, p, **r),
        "entmax_loss": lambda: L.entmax_loss(x, t, alpha=1.3, **r),
        "linear_cross_entropy": lambda: L.linear_cross_entropy(h, w, t, **r),
        "linear_cross_entropy_chunked": lambda: L.linear_cross_entropy(h, w, t, impl="auto", **r),
        "linear_divergence_loss": lambda: L.linear_divergence_loss(h, w, teacher_hidden=th, teacher_weight=tw, **r),
        "vocab_parallel_cross_entropy": lambda: vocab_parallel_cross_entropy(x, t, **r),
        "vocab_parallel_kl_divergence": lambda: vocab_parallel_kl_divergence(x, p, **r),
        "kl_between": lambda: L.kl_between(p, torch.softmax(x, -1)),
        "decompose": lambda: L.decompose(x, p).kl,
    }


NORMALIZERS = {
    "softmax": L.softmax, "log_softmax": L.log_softmax, "sigmoid": L.sigmoid, "log_sigmoid": L.log_sigmoid,
    "standard_normalize": lambda x, **kw: L.standard_normalize(x.abs(), **kw),
    "standard_softplus": lambda x, **kw: L.standard_normalize(x, positivity="softplus", **kw),
    "spherical_softmax": L.spherical_softmax, "taylor_softmax": L.taylor_softmax,
    "sparsemax": L.sparsemax, "entmax15": L.entmax15, "entmax": lambda x, **kw: L.entmax(x, alpha=1.3, **kw),
}


@pytest.mark.parametrize("name", sorted(NORMALIZERS))
@pytest.mark.parametrize("dim", [0, -1])
def test_normalizers_on_meta_give_meta(name, dim):
    x = torch.randn(3, 5, dtype=torch.bfloat16)
    real = NORMALIZERS[name](x, dim=dim)
    meta = NORMALIZERS[name](x.to("meta"), dim=dim)
    assert meta.device.type == "meta" and meta.shape == real.shape and meta.dtype == real.dtype


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_losses_on_meta_give_meta(reduction):
    real, meta = _calls("cpu", "cpu", reduction), _calls("meta", "meta", reduction)
    for name in real:
        expected, got = real[name](), meta[name]()
        assert got.device.type == "meta", name
        assert (got.shape, got.dtype) == (expected.shape, expected.dtype), name


MIXED = """
import sys
sys.path.insert(0, {tests!r})
from test_tensor_kinds import _calls
for name, call in sorted(_calls("cpu", "meta").items()):
    print(name, flush=True)  # the last line names the case if the process crashes
    try:
        call()
    except ValueError as error:
        if "expected a tensor on " not in str(error) or "(): argument '" not in str(error):
            raise SystemExit(f"{{name}}: unclear error: {{error}}")
        continue
    raise SystemExit(f"{{name}}: no error")
print("ok")
"""


def test_tensors_on_another_device_than_the_logits_raise():
    done = subprocess.run([sys.executable, "-c", MIXED.format(tests=str(Path(__file__).parent))],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": SRC})
    last = done.stdout.strip().splitlines()[-1:]
    assert done.returncode == 0 and last == ["ok"], (done.returncode, last, done.stderr[-2000:])


DTENSOR = """
import os, torch, torch.distributed as dist, logitlab
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str({port}))
dist.init_process_group("gloo", rank=0, world_size=1)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Replicate, distribute_tensor
mesh = init_device_mesh("cpu", (1,))
x = distribute_tensor(torch.randn(4, 40), mesh, [Replicate()])
t = distribute_tensor(torch.tensor([0, 1, 2, 3]), mesh, [Replicate()])
for name, call in [("sparsemax", lambda: logitlab.sparsemax(x)), ("entmax15", lambda: logitlab.entmax15(x)),
                   ("cross_entropy", lambda: logitlab.cross_entropy(x, t.to_local())),
                   ("softmax", lambda: logitlab.softmax(x))]:
    print(name, flush=True)
    try:
        call()
    except TypeError as error:
        assert (f"{{name}}(): argument 'logits' expected a plain (local) torch.Tensor, got <DTensor>"
                in str(error)), error
        assert "to_local()" in str(error)
        continue
    raise SystemExit(f"{{name}}: no error")
dist.destroy_process_group()
print("ok", flush=True)
# Every check has run. Leave without the interpreter's teardown, which gloo's worker threads can
# abort with "terminate called without an active exception" (pytorch/pytorch#179291): torch's
# exit, not logitlab's calls, which the lines above have already checked.
os._exit(0)
"""


@pytest.mark.slow  # a spawned process group
def test_a_dtensor_is_refused_clearly_not_crashed():
    from logitlab.distributed.launch import free_port

    done = subprocess.run([sys.executable, "-c", DTENSOR.format(port=free_port())], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": SRC})
    last = done.stdout.strip().splitlines()[-1:]
    assert done.returncode == 0 and last == ["ok"], (done.returncode, last, done.stderr[-2000:])


@pytest.mark.parametrize("name", sorted(NORMALIZERS))
@pytest.mark.parametrize("shape,dim", [((3, 0), -1), ((2, 0, 3), 1), ((0,), 0)])
def test_no_class_gives_an_empty_result(name, shape, dim):
    x = torch.randn(shape, requires_grad=True)
    out = NORMALIZERS[name](x, dim=dim)
    assert out.shape == x.shape
    out.sum().backward()
    assert x.grad.shape == x.shape


def test_a_meta_call_never_compiles_a_host_kernel(tmp_path):
    code = ("import torch, logitlab\n"
            "x = torch.randn(4, 40, device='meta')\n"
            "logitlab.cross_entropy(x, torch.zeros(4, dtype=torch.long, device='meta'))\n"
            "logitlab.sparsemax(x); logitlab.entmax15(x)\n"
            "logitlab.linear_cross_entropy(torch.randn(4, 8, device='meta'), torch.randn(40, 8, device='meta'),\n"
            "                              torch.zeros(4, dtype=torch.long, device='meta'))\n")
    env = {**os.environ, "PYTHONPATH": SRC, "LOGITLAB_CACHE_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not list(tmp_path.glob("*.so")), sorted(p.name for p in tmp_path.iterdir())
