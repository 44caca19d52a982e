"""Smoke run of benchmarks/gpu.py on a CPU: its correctness check and every step of the benchmark
at a tiny shape, the Triton kernels under the interpreter (no timing is asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="triton is not installed (it is in the test extra)")

ROOT = Path(__file__).resolve().parents[2]


def test_quick_run_writes_records(tmp_path):
    out = tmp_path / "gpu.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), PYTHONDONTWRITEBYTECODE="1", TRITON_INTERPRET="1")
    # naive_compile is skipped: inductor's CPU compile takes longer than the rest together.
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--quick", "--repeats", "1",
                           "--skip", "naive_compile", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == str(out)
    data = json.loads(out.read_text())
    records = data["detail"]  # the script's own records; data["rows"] are the shared schema's
    assert {(r["op"], r["impl"]) for r in data["rows"]} == {(r["op"], r["impl"]) for r in records
                                                          if {"op", "impl", "shape"} <= set(r)}
    checks = [r for r in records if "check" in r]
    assert {r["check"] for r in checks} == {"cross_entropy", "linear_cross_entropy"} and all(r["ok"] for r in checks)
    timed = {(r["op"], r["impl"]) for r in records if "time_ms_median" in r}
    assert {("linear_cross_entropy", "logitlab_triton"), ("linear_cross_entropy", "floor"),
            ("cross_entropy", "logitlab_triton"), ("cross_entropy", "copy")} <= timed
    assert all("torch" in r and "triton" in r and "gpu" in r and "driver" in r for r in records)
    assert any(r.get("status") == "not measured: skipped (--skip)" for r in records)
