"""Smoke runs of every benchmark script: ``--quick`` exits 0, prints its table, writes its JSON.

No timing asserts (numbers on a shared machine are noise); this only keeps the scripts running as
the library changes. Each run writes its records to a tmp dir through ``--out``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# script -> (extra flags beyond --quick, strings its printed table must contain)
SCRIPTS = {
    "normalizers.py": ([], ["normalizer", "ours ms", "peer ms", "ratio", "softmax"]),
    "sparse_normalizers.py": ([], ["pkg/ours", "ours/smax", "sparsemax", "entmax15", "entmax_alpha"]),
    # --no-memory: the quick run's 12 memory processes (one torch import each) take ~20 s alone.
    "cross_entropy.py": (["--no-memory"], ["speedup", "STREAM%", "logitlab_inplace", "idx_256x1000"]),
    "divergences.py": ([], ["kl", "fy_softmax", "sparsemax_loss", "entmax15_loss", "mem ours/peer"]),
    # One small float32 shape, without the torch peer's memory process: the quick run's 4 cases
    # x 6 memory processes take ~65 s. Every logitlab implementation still runs.
    "fused.py": (["--dtypes", "float32", "--shapes", "128x64x1024", "--skip", "torch_lce"],
                 ["/floor", "/naive", "logitlab_recompute", "not measured: skipped"]),
    "theory.py": ([], ["max-entropy solver", "CRF log-partition", "nll fwd+bwd ms"]),
    "distill.py": ([], ["distill kl", "ours/naive", "extra MiB ours/naive"]),
    "entmax_alpha.py": ([], ["peer/ours", "qexp (torch, float64)", "threshold engine"]),
    "chunk_sweep.py": (["--builds", "portable"], ["/floor", "portable/native/c32", "torch/c32", "composite", "CPU:"]),
}


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_quick_run(script, tmp_path):
    pytest.importorskip("entmax")  # the peer of the sparse maps and sparse losses
    flags, table = SCRIPTS[script]
    out = tmp_path / f"{Path(script).stem}.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--quick", *flags, "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for text in table:
        assert text in proc.stdout, f"{text!r} missing from the output of {script}:\n{proc.stdout}"
    assert proc.stdout.strip().splitlines()[-1] == str(out)
    records = json.loads(out.read_text())
    assert records


def test_fused_memory_of_a_compiled_impl_counts_its_gradients_once():
    """The warm-up call of a compiled peer leaves gradients behind; they must not be subtracted twice.

    naive, measured as if it were compiled, holds about its (N, V) logits at its peak (16 MiB
    here; it read 16 MiB extra), beside 34 MiB of returned gradients: counting the warm-up call's
    gradients in the RSS before the measured call read -16 MiB.
    """
    code = ("import sys, json; sys.path.insert(0, 'benchmarks'); import fused; fused.COMPILED.add('naive'); "
            "print(json.dumps(fused.measure_memory('naive', 512, 1024, 8192, 'float32')))")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    logits_mib = 512 * 8192 * 4 / 2**20
    assert json.loads(proc.stdout.strip().splitlines()[-1])["extra_mem_mib"] >= logits_mib / 2
