"""The native kernels only through the torch dispatcher: every operator passes torch's opcheck (schema,
fake kernel, autograd registration), and FakeTensors, torch.func transforms, torch.compile and
DTensors on a 2-rank mesh reach each native-backed op with a correct result or an error in the
project's format — each in a subprocess, so that a crash fails the test instead of the suite."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from logitlab._native import ops, prototypes, xent
from logitlab._native import sparse as native_sparse

SRC = str(Path(__file__).resolve().parents[2] / "src")
pytestmark = pytest.mark.skipif(not xent.supports(torch.empty(0, 0)),
                                reason="no C compiler: the native kernels are unavailable here")


def _run(code: str, timeout: int = 300) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": SRC})
    last = done.stdout.strip().splitlines()[-1:]
    assert done.returncode == 0 and last == ["ok"], (done.returncode, done.stdout[-2000:], done.stderr[-3000:])
    return done.stdout


def test_every_operator_passes_opcheck():
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(5, 37, generator=g)
    target = torch.tensor([0, 36, 5, 9, 2])
    keep = torch.tensor([True, True, False, True, True]).view(torch.uint8)
    scale = torch.full((5,), 0.25)
    common = (0.1, 0.01, 1.3, True, True)
    torch.library.opcheck(torch.ops.logitlab.xent_rows.default,
                          (rows, target, None, None, keep, scale, *common, True))
    probs = torch.softmax(torch.randn(5, 37, generator=g), 1)
    torch.library.opcheck(torch.ops.logitlab.xent_rows.default,
                          (rows, None, probs, torch.rand(37, generator=g), keep, scale, *common, False),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))
    torch.library.opcheck(torch.ops.logitlab.xent_rows_.default, (rows.clone(), target, None, None, keep, scale,
                                                                   *common))
    for kind, alpha in ((0, None), (1, None), (2, torch.tensor([1.3], dtype=torch.float64))):
        torch.library.opcheck(torch.ops.logitlab.sparse_forward.default, (rows, kind, alpha, 1e-8, 50, 64, True))
        out = torch.ops.logitlab.sparse_forward(rows, kind, alpha, 1e-8, 50, 64, True)[0]
        torch.library.opcheck(torch.ops.logitlab.sparse_backward.default,
                              (torch.randn(5, 37, generator=g), out, kind, alpha, kind == 2))
    h, w = torch.randn(6, 16, generator=g), torch.randn(37, 16, generator=g)
    torch.library.opcheck(torch.ops.logitlab.matmul_logits_.default, (torch.empty(6, 37), h, w, None))
    torch.library.opcheck(torch.ops.logitlab.matmul_grad_hidden_.default, (torch.empty(6, 16), torch.randn(6, 37), w))
    bf = torch.bfloat16
    torch.library.opcheck(torch.ops.logitlab.matmul_grad_weight_.default,
                          (torch.empty(37, 16, dtype=bf), None, torch.randn(6, 37).to(bf), h.to(bf), None, None))


def test_the_operators_refuse_a_short_alpha():
    rows = torch.randn(4, 9)
    with pytest.raises(ValueError, match=r"alpha must be a contiguous float64 tensor of 1 or 4 elements"):
        torch.ops.logitlab.sparse_forward(rows, 2, torch.tensor([1.5, 1.5], dtype=torch.float64), 1e-8, 50, 64, True)
    assert native_sparse.KIND_CODES == {"sparsemax": 0, "entmax15": 1, "bisect": 2}
    assert ops.LIBRARY.ns == "logitlab"


def test_argument_types_come_from_the_c_definitions(tmp_path, monkeypatch):
    restype, argtypes = prototypes.prototype("xent", "ll_xent_bf16_f16")
    assert restype is ctypes.c_int64 and len(argtypes) == 20
    assert argtypes[:2] == (ctypes.c_void_p, ctypes.c_int64) and argtypes[10] is ctypes.c_double
    assert argtypes[17] is ctypes.c_int and argtypes[15] is ctypes.c_float
    # Every exported definition of every kernel parses, and a prototype edit would change the types.
    for name in ("xent", "sparse", "gemm_bf16_gw", "gemm_bf16_gh", "gemm_bf16_logits", "gemm_f32_gh",
                 "gemm_f32_logits"):
        assert prototypes.prototypes(name), name
    (tmp_path / "k.c").write_text('#include "k_body.h"\nint ll_probe(void) { return 1; }\n')
    (tmp_path / "k_body.h").write_text("void CAT(ll_k_, X)(const float *x, int64_t n, double t, int flag) {\n}\n")
    monkeypatch.setattr(prototypes, "_HERE", tmp_path)
    prototypes.prototypes.cache_clear()
    try:
        assert prototypes.prototype("k", "ll_k_f32") == (None, (ctypes.c_void_p, ctypes.c_int64, ctypes.c_double,
                                                                ctypes.c_int))
        assert prototypes.prototype("k", "ll_probe") == (ctypes.c_int, ())
        with pytest.raises(LookupError, match="no definition of ll_missing"):
            prototypes.prototype("k", "ll_missing")
        (tmp_path / "k_body.h").write_text("void CAT(ll_k_, X)(const float *x, size_t n) {\n}\n")
        prototypes.prototypes.cache_clear()
        with pytest.raises(ValueError, match="parameter type 'size_t' has no ctypes mapping"):
            prototypes.prototype("k", "ll_k_f32")
    finally:
        prototypes.prototypes.cache_clear()


# Each native-backed op, called with impl="native" (and "auto" where it differs), on (x, t, h, w).
OPS = """
import torch, logitlab as L
CALLS = {
    "cross_entropy": lambda x, t, h, w: L.cross_entropy(x, t, impl="native", validate=False),
    "cross_entropy_auto": lambda x, t, h, w: L.cross_entropy(x, t, label_smoothing=0.1),
    "sparsemax": lambda x, t, h, w: L.sparsemax(x, impl="native"),
    "entmax15": lambda x, t, h, w: L.entmax15(x, impl="native"),
    "entmax": lambda x, t, h, w: L.entmax(x, alpha=1.3, impl="native"),
    "linear_cross_entropy": lambda x, t, h, w: L.linear_cross_entropy(h, w, t, impl="native", chunk_size=4),
    "linear_divergence_loss": lambda x, t, h, w: L.linear_divergence_loss(
        h, w, teacher_hidden=h.flip(0), teacher_weight=w.flip(0), impl="native", chunk_size=4),
}
g = torch.Generator().manual_seed(0)
x, t = torch.randn(6, 40, generator=g), torch.randint(0, 40, (6,), generator=g)
h, w = torch.randn(6, 8, generator=g), torch.randn(40, 8, generator=g)
"""


def test_fake_tensors_get_the_real_shapes():
    _run(OPS + textwrap.dedent("""
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
    for name, call in CALLS.items():
        print(name, flush=True)
        real = call(x, t, h, w)
        with FakeTensorMode() as mode:
            out = call(*(mode.from_tensor(a) for a in (x, t, h, w)))
        assert isinstance(out, FakeTensor) and (out.shape, out.dtype) == (real.shape, real.dtype), (name, out)
    print("ok")
    """))


def test_torch_func_transforms_work_or_refuse_clearly():
    _run(OPS + textwrap.dedent("""
    import torch.nn.functional as F
    from torch.func import grad, vmap
    close = torch.testing.assert_close
    close(grad(lambda z: L.cross_entropy(z, t))(x), grad(lambda z: F.cross_entropy(z, t))(x))
    close(vmap(lambda z, y: L.cross_entropy(z, y))(x.view(2, 3, 40), t.view(2, 3)),
          torch.stack([F.cross_entropy(x[:3], t[:3]), F.cross_entropy(x[3:], t[3:])]))
    for name in ("sparsemax", "entmax15"):
        z = x.clone().requires_grad_()
        getattr(L, name)(z)[:, 0].sum().backward()
        close(grad(lambda z: getattr(L, name)(z)[:, 0].sum())(x), z.grad)
        try:
            vmap(getattr(L, name))(x)
        except ValueError as error:
            assert f"{name}(): argument 'logits' expected a tensor outside torch.func.vmap" in str(error), error
        else:
            raise SystemExit(name + " under vmap: no error")
    try:
        vmap(lambda z: L.cross_entropy(z, t, impl="native"))(x.view(1, 6, 40))
    except ValueError as error:
        assert "cross_entropy(): argument 'impl' expected 'auto' or 'composite' inside a torch.func" in str(error)
    else:
        raise SystemExit("impl='native' under vmap: no error")
    print("ok")
    """))


def test_compiled_callers_have_no_graph_break():
    _run(OPS + textwrap.dedent("""
    close = torch.testing.assert_close
    for name, fn in [("sparsemax", lambda z: L.sparsemax(z, impl="native", validate=False)),
                     ("entmax15", lambda z: L.entmax15(z, impl="native", validate=False)),
                     ("cross_entropy", lambda z: L.cross_entropy(z, t, validate=False)),
                     ("cross_entropy_native", lambda z: L.cross_entropy(z, t, impl="native", validate=False))]:
        print(name, flush=True)
        z1, z2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        out = torch.compile(fn, fullgraph=True)(z1)
        close(out, fn(z2))
        out.sum().backward(), fn(z2).sum().backward()
        close(z1.grad, z2.grad)
    # The kernel's status is an assertion in the compiled graph: a bad class index still raises.
    bad = t.clone()
    bad[0] = 40
    try:
        torch.compile(lambda z: L.cross_entropy(z, bad, impl="native", validate=False), fullgraph=True)(x)
    except RuntimeError as error:
        assert "class index out of range" in str(error), error
    else:
        raise SystemExit("a bad index under torch.compile: no error")
    print("ok")
    """), timeout=600)


DTENSOR = OPS + """
import os, sys, torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Replicate, Shard, distribute_tensor
rank = int(sys.argv[1])
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2])
dist.init_process_group("gloo", rank=rank, world_size=2)
mesh = init_device_mesh("cpu", (2,))
for placement in (Replicate(), Shard(0)):
    dx = distribute_tensor(x, mesh, [placement])
    for name in ("cross_entropy", "sparsemax", "entmax15", "entmax"):
        for impl in ("native", "auto"):
            call = {"cross_entropy": lambda: L.cross_entropy(dx, t, impl=impl),
                    "entmax": lambda: L.entmax(dx, alpha=1.3, impl=impl)}.get(
                        name, lambda: getattr(L, name)(dx, impl=impl))
            try:
                call()
            except TypeError as error:
                assert f"{name}(): argument 'logits' expected a plain (local) torch.Tensor, got <DTensor>" in str(error)
                assert "to_local()" in str(error), error
            else:
                raise SystemExit(f"{name} impl={impl}: no error")
dist.destroy_process_group()
print("ok", flush=True)
# Every check has run. Leave without the interpreter's teardown, which gloo's worker threads can
# abort with "terminate called without an active exception" (pytorch/pytorch#179291): torch's
# exit, not logitlab's calls, which the lines above have checked.
os._exit(0)
"""


def test_a_dtensor_on_a_two_rank_mesh_is_refused_clearly():
    from logitlab.distributed.launch import free_port

    port = str(free_port())
    env = {**os.environ, "PYTHONPATH": SRC}
    code = textwrap.dedent(DTENSOR)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(rank), port], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for rank in range(2)]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0 and out.strip().splitlines()[-1:] == ["ok"], (proc.returncode, out, err[-3000:])
