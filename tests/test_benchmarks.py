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
    # --no-memory: the quick run's 12 memory processes (one torch import each) would be most of its time.
    "cross_entropy.py": (["--no-memory"], ["speedup", "STREAM%", "logitlab_inplace", "idx_256x1000"]),
    "divergences.py": ([], ["kl", "fy_softmax", "sparsemax_loss", "entmax15_loss", "mem ours/peer"]),
    # One small float32 shape, without the torch peer's memory process: the quick run's 4 cases
    # x 6 memory processes would be most of the suite's benchmark time. Every logitlab implementation still runs.
    "fused.py": (["--dtypes", "float32", "--shapes", "128x64x1024", "--skip", "torch_lce"],
                 ["/floor", "/naive", "logitlab_recompute", "not measured: skipped"]),
    "theory.py": ([], ["max-entropy solver", "CRF log-partition", "nll fwd+bwd ms"]),
    "distill.py": ([], ["distill kl", "ours/naive", "extra MiB ours/naive"]),
    "entmax_alpha.py": ([], ["torch/native", "peer/native", "qexp", "threshold engine"]),
    "chunk_sweep.py": (["--builds", "portable"], ["/floor", "portable/native/c32", "torch/c32", "composite", "CPU:"]),
}


@pytest.mark.slow  # one benchmark script end to end
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
    # every script writes the shared schema: rows that name the op, the machine and the software
    assert records["schema"] == "logitlab-bench/1" and records["rows"], script
    for row in records["rows"]:
        assert set(row) >= {"op", "impl", "shape", "dtype", "time_ms", "peak_mem_mib", "cpu_model", "cpu_flags",
                            "build", "torch_version", "commit", "extra"}, row
        assert row["time_ms"] is None or row["time_ms"]["p50"] > 0, row


@pytest.mark.slow  # a benchmark's memory process
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


def _harness():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import _harness
        import render_docs
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return _harness, render_docs


def _row(cpu, flags, impl, p50):
    return {"op": "cross_entropy", "impl": impl, "shape": [4096, 1000], "dtype": "float32",
            "time_ms": {"p10": p50 * 0.9, "p50": p50, "p90": p50 * 1.2, "min": p50 * 0.8, "max": p50 * 1.5, "n": 7},
            "peak_mem_mib": 3.0, "cpu_model": cpu, "cpu_flags": flags, "build": flags[-1] if flags else "portable",
            "torch_version": "2.13.0", "commit": "abc", "extra": {}}


def test_docs_have_one_section_per_machine_and_keep_the_hand_written_text(tmp_path):
    harness, render_docs = _harness()
    for name, cpu, flags in (("a", "AMD EPYC", ["avx2", "fma"]), ("b", "Intel Xeon", ["avx2", "avx512f"])):
        (tmp_path / "results" / name).mkdir(parents=True)
        (tmp_path / "results" / name / "cross_entropy.json").write_text(json.dumps(
            {"schema": harness.SCHEMA, "benchmark": "cross_entropy", "detail": [],
             "rows": [_row(cpu, flags, "logitlab", 10.0), _row(cpu, flags, "torch", 30.0)]}))
    (tmp_path / "results" / "old.json").write_text("[]")  # an older results file: skipped
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# Benchmarks\n\nBy hand.\n\n{render_docs.BEGIN}\nstale\n{render_docs.END}\n\nAfter.\n")
    assert render_docs.main([str(tmp_path / "results"), "--out", str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith("# Benchmarks\n\nBy hand.") and text.endswith("After.\n") and "stale" not in text
    assert sum(line.startswith("### ") for line in text.splitlines()) == 2
    assert "### AMD EPYC (avx2, fma)" in text and "### Intel Xeon (avx2, avx512f)" in text
    table_rows = [line for line in text.splitlines() if line.startswith("| cross_entropy |")]
    assert len(table_rows) == 4
    assert all(("AMD EPYC" in line and "| fma |" in line) or ("Intel Xeon" in line and "| avx512f |" in line)
               for line in table_rows)
    assert "| 10 (9–12, n=7) |" in text
    first = text
    assert render_docs.main([str(tmp_path / "results"), "--out", str(doc)]) == 0
    assert doc.read_text() == first  # a pure function of the records


def test_records_missing_a_schema_field_are_refused(tmp_path):
    harness, _ = _harness()
    bad = _row("cpu", [], "logitlab", 1.0)
    del bad["commit"]
    with pytest.raises(ValueError, match=r"write_records\(\): row 0 \(cross_entropy, logitlab\) lacks \['commit'\]"):
        harness.write_records(tmp_path / "x.json", {}, rows=[bad])
    empty = dict(_row("cpu", [], "logitlab", 1.0), time_ms=None, peak_mem_mib=None)
    with pytest.raises(ValueError, match="neither a time nor a memory figure nor a status"):
        harness.write_records(tmp_path / "x.json", {}, rows=[empty])
    assert not (tmp_path / "x.json").exists()
