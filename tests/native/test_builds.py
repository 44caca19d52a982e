"""The native builds: each one this CPU can execute compiles, is selected when forced, and gives
the results of the torch path; a build the CPU cannot execute is refused by name."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import logitlab
from logitlab import _native

SRC = str(Path(__file__).resolve().parents[2] / "src")


def test_the_best_supported_build_is_selected():
    supported = _native.supported_builds()
    assert supported[-1] == "portable"
    flags = _native.cpu_flags()
    if "avx2" in flags and "fma" in flags and "bmi2" in flags:
        assert "avx2" in supported
    if "avx512f" in flags and "avx512bw" in flags:
        assert "avx512" in supported
    assert _native.selected_build()[0] == supported[0]


@pytest.mark.parametrize("build", _native.supported_builds())
def test_each_build_runs_its_own_binary_and_agrees_with_torch(build):
    x = torch.randn(37, 211, dtype=torch.float32)
    target = torch.randint(0, 211, (37,))
    with _native.use_build(build):
        got = logitlab.cross_entropy(x, target, reduction="none")
        probs = logitlab.sparsemax(x)
        info = _native.status()["xent"]
    if _native._compiler() is None:
        pytest.skip("no C compiler here: the torch path is the only one (tested everywhere)")
    assert "error" not in info, info
    assert info["build"] == (build if build != "avx512bf16" else "avx512")
    assert f"-{info['build']}-" in Path(info["path"]).name
    assert torch.allclose(got, torch.nn.functional.cross_entropy(x, target, reduction="none"), atol=1e-5)
    assert torch.allclose(probs.sum(1), torch.ones(37), atol=1e-5)


@pytest.mark.skipif(not {"avx512", "avx2"} <= set(_native.supported_builds()),
                    reason="needs a CPU that executes both the AVX-512 and the AVX2 builds")
def test_the_qexp_kernel_gives_the_same_bits_on_the_avx2_and_avx512_builds():
    """Its AVX2 build runs vectors of half the width (8 floats, 4 doubles); its sums add in one order
    whatever the width, so the two builds (both with FMA) give the same bits."""
    from logitlab._native import qexp as native_qexp

    if not native_qexp.supports(torch.zeros(1, 1)):
        pytest.skip("the native qexp kernel cannot be built here")
    g = torch.Generator().manual_seed(0)
    alpha = torch.tensor([[0.3], [1.0], [0.9], [1.05]], dtype=torch.float64)
    for classes in (1, 7, 8, 9, 15, 16, 17, 33, 1001):
        for dtype in (torch.float32, torch.bfloat16):
            z = (torch.randn(4, classes, generator=g) * 3).to(dtype)
            z[1, 1::5] = -float("inf")
            w = torch.randn(4, classes, generator=g).to(dtype)
            runs = []
            for build in ("avx512", "avx2"):
                with _native.use_build(build):
                    x, a = z.clone().requires_grad_(), alpha.clone().requires_grad_()
                    info = logitlab.entmax_with_info(x, a, impl="native")
                    (info.probs * w).sum().backward()
                runs.append((info.probs.detach(), info.tau, info.n_iter, x.grad, a.grad))
            for name, got, want in zip(("probs", "tau", "n_iter", "grad", "grad_alpha"), *runs):
                assert torch.equal(got, want), (classes, dtype, name)


def test_a_build_the_cpu_cannot_execute_is_refused():
    with pytest.raises(ValueError, match=r"use_build\(\): argument 'name' expected one of the builds"):
        with _native.use_build("sse9"):
            pass
    env = {**os.environ, "PYTHONPATH": SRC, "LOGITLAB_NATIVE_BUILD": "sse9"}
    done = subprocess.run([sys.executable, "-c", "import torch, logitlab; logitlab.cross_entropy(torch.randn(2, 3), "
                           "torch.tensor([0, 1]))"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode != 0 and "LOGITLAB_NATIVE_BUILD='sse9'" in done.stderr


def test_env_names_each_kernels_build():
    env = {**os.environ, "PYTHONPATH": SRC, "LOGITLAB_NATIVE_BUILD": "portable"}
    done = subprocess.run([sys.executable, "-m", "logitlab", "env"], capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    assert "native kernel xent:" in done.stdout and "build portable (forced by LOGITLAB_NATIVE_BUILD)" in done.stdout


def test_bf16_matmuls_go_to_torch_by_default_only_where_it_wins():
    from logitlab._native import gemm

    if not gemm._available("gemm_bf16_gw"):
        pytest.skip("the AVX512-BF16 kernels are not built on this CPU")
    amx = "amx_bf16" in _native.cpu_flags()
    assert gemm._preferred("gemm_bf16_gw") is not amx
    assert gemm._preferred("gemm_f32_gh") == gemm._available("gemm_f32_gh")
    with _native.use_build("avx512bf16"):  # forced: the kernels run whatever the CPU has
        assert gemm._preferred("gemm_bf16_gw")
