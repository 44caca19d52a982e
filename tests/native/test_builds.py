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
