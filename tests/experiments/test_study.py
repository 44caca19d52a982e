"""A tiny study end to end: records, report, re-rendering, determinism, kill and resume."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import time

import pytest
import torch

from logitlab.experiments import records as rec

from .conftest import PYTHON, run_cli, subprocess_env

pytestmark = pytest.mark.slow  # the study end to end (trainings, a kill and resume, worker processes)

METRICS = {"accuracy", "top5_accuracy", "nll", "nll_smoothed", "perplexity", "zero_prob_fraction", "brier",
           "ece_width", "ece_mass", "mce"}
SECTIONS = ["verdict", "warnings", "setup", "summary", "paired", "temperature", "calibration", "training",
            "classes", "theory", "records"]


def _strip_times(records):
    return [{k: v for k, v in r.items() if k not in ("wall_time_s", "examples_per_s", "step_peak_mib")}
            for r in records]


def test_records_hold_every_measure(tiny_run):
    records = rec.read_records(tiny_run.run_dir / rec.RECORDS)
    assert [(r["combination"], r["seed"]) for r in records] == [
        ("softmax+cross_entropy", 0), ("sparsemax+sparsemax_loss", 0),
        ("softmax+cross_entropy", 1), ("sparsemax+sparsemax_loss", 1)]
    for r in records:
        assert set(r["metrics"]) == METRICS
        assert not r["diverged"] and r["steps_run"] == 30
        assert 0.5 < r["metrics"]["accuracy"] <= 1  # 10 classes: far above chance after 30 steps
        assert r["curves"]["step"] == [10, 20, 30]
        for key in ("train_loss", "val_accuracy", "val_nll", "grad_norm"):
            assert len(r["curves"][key]) == 3 and all(math.isfinite(v) for v in r["curves"][key])
        assert set(r["metrics_scaled"]) == METRICS and 0.05 <= r["temperature"] <= 20
        assert len(r["predictions"]["target"]) == len(r["predictions"]["predicted"]) == r["n_test"]
        for binning in ("width", "mass"):
            d = r["reliability"][binning]
            assert len(d["count"]) == 15 and sum(d["count"]) == r["n_test"]
        assert r["wall_time_s"] > 0
    softmax = [r for r in records if r["normalizer"] == "softmax"]
    assert all(r["metrics"]["zero_prob_fraction"] == 0 for r in softmax)
    assert all(math.isfinite(r["metrics"]["nll"]) for r in softmax)


def test_report_has_every_section_table_and_figures(tiny_run):
    text = (tiny_run.run_dir / rec.REPORT).read_text()
    for section in SECTIONS:
        assert f'<section id="{section}">' in text
    assert "http://" not in text and "https://" not in text and "<script" not in text
    assert text.count('<img src="data:image/png;base64,') >= 4
    table = text.split('<table id="summary-table">')[1].split("</table>")[0]
    assert table.count("<tr>") == 3  # header + 2 combinations
    assert " ± " in table and "★" not in table
    assert "Measured" in text
    assert text.index('id="verdict"') < text.index('id="contents"') < text.index('id="setup"')
    assert "Verdict over 2 seeds" in text and "Softmax + CE's calibration advantage" in text
    assert '<table id="paired-table">' in text and '<table id="temperature-table">' in text
    for part in ("gradient_sweep", "scale_response", "maxent", "decomposition", "underflow"):
        assert f'<h3 id="theory-{part}">' in text
    notes = text.split('<section id="warnings">')[1].split("</section>")[0]
    assert "2 seed(s): the sign-flip test cannot reach p &lt; 0.05" in notes  # the only warnings: few seeds,
    assert text.count('class="note"') == notes.count('class="note"')       # and maybe a short run
    assert text.count('<img src="data:image/png;base64,') >= 10


def test_theory_parts_that_cannot_run_become_notes():
    from logitlab.experiments.report import render_theory

    html = render_theory(None)
    assert html.count('class="note"') == 5 and "theory.json missing" in html
    stored = {"maxent": {"available": False, "source": "logitlab.maxent.solve_maxent", "reason": "ImportError: x"},
              "underflow": {"available": True, "source": "s", "data": {"unexpected": 1}}}
    html = render_theory(stored)
    assert "solve_maxent</code> could not be used (ImportError: x)" in html
    assert "stored data has an unexpected form" in html


def test_report_rerenders_byte_identical(tiny_run, tmp_path, capsys):
    out = tmp_path / "again.html"
    status, lines, _ = run_cli(["report", str(tiny_run.run_dir), "-o", str(out)], capsys)
    assert status == 0 and lines[-1] == str(out)
    assert out.read_bytes() == (tiny_run.run_dir / rec.REPORT).read_bytes()


def test_study_prints_progress_and_ends_with_the_report_path(tiny_run):
    lines = tiny_run.lines
    for number, key in enumerate(["softmax+cross_entropy", "sparsemax+sparsemax_loss"] * 2, 1):
        assert any(line.startswith(f"[{number}/4] {key} seed {(number - 1) // 2}: 30 steps, loss ") for line in lines)
    assert any(line.startswith("warning: 2 seed(s)") for line in lines)
    assert lines[-1] == str(tiny_run.run_dir / rec.REPORT)


def test_same_seed_same_records(tiny_run):
    from logitlab.experiments.data import load_split
    from logitlab.experiments.runner import train_one
    from logitlab.experiments.spec import StudySpec

    spec = StudySpec.from_json(json.loads((tiny_run.run_dir / rec.SPEC).read_text()))
    stored = rec.read_records(tiny_run.run_dir / rec.RECORDS)
    again = []
    for seed in range(spec.seeds):
        data = load_split(spec.dataset, seed, val_fraction=spec.val_fraction, test_fraction=spec.test_fraction)
        again += [rec.to_json(train_one(spec, combo, seed, data)) for combo in spec.pairs]
    assert _strip_times(again) == _strip_times(stored)


def test_other_datasets_and_the_mlp_run(tmp_path):
    from logitlab.experiments.data import load_split
    from logitlab.experiments.runner import train_one
    from logitlab.experiments.spec import StudySpec, apply_overrides

    for dataset, classes in (("iris", 3), ("wine", 3), ("breast_cancer", 2)):
        spec = apply_overrides(StudySpec(), {"dataset": dataset, "model": "mlp", "steps": "4", "hidden": "8",
                                             "pairs": "softmax+cross_entropy,entmax15+entmax_loss"})
        data = load_split(dataset, 0)
        assert data.num_classes == classes
        assert abs(float(data.x_train.mean())) < 1e-5  # standardized on the training split
        for combo in spec.pairs:
            record = train_one(spec, combo, 0, data)
            assert record["steps_run"] == 4 and 0 <= record["metrics"]["accuracy"] <= 1


def test_unfinished_last_line_is_ignored_and_cut(tmp_path):
    path = tmp_path / rec.RECORDS
    with rec.RecordWriter(path) as writer:
        writer.append({"kind": "result", "combination": "a", "seed": 0})
    with open(path, "a") as f:
        f.write('{"kind": "result", "combi')  # a kill in the middle of a write
    assert rec.read_records(path) == [{"kind": "result", "combination": "a", "seed": 0}]
    with rec.RecordWriter(path) as writer:
        writer.append({"kind": "result", "combination": "b", "seed": 0})
    assert [r["combination"] for r in rec.read_records(path)] == ["a", "b"]
    path.write_text('{"a": 1}\nnot json\n{"b": 2}\n')
    scan = rec.scan_records(path)  # a damaged complete line is skipped and named, the others kept
    assert scan.records == [{"a": 1}, {"b": 2}] and [s.line for s in scan.skipped] == [2]
    assert "not JSON" in scan.skipped[0].reason


def test_killed_run_resumes_without_redoing(tmp_path):
    out = tmp_path / "run"
    argv = [PYTHON, "-m", "logitlab", "study", "--dataset", "digits", "--steps", "300", "--seeds", "2",
            "--set", "pairs=softmax+cross_entropy,softmax+brier,sparsemax+sparsemax_loss", "--out", str(out)]
    child = subprocess.Popen(argv, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    path = out / rec.RECORDS
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and child.poll() is None:
            if path.exists() and path.read_bytes().count(b"\n") >= 1:
                break
            time.sleep(0.01)
        assert child.poll() is None, f"the run ended before it could be killed: {child.stderr.read().decode()}"
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(30)
    assert child.returncode == -signal.SIGKILL
    partial = rec.read_records(path)
    assert 1 <= len(partial) < 6
    assert not (out / rec.REPORT).exists()
    done = subprocess.run(argv + ["--resume"], env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1] == str(out / rec.REPORT)
    assert sum("already recorded, skipped" in line for line in lines) == len(partial)
    final = rec.read_records(path)
    assert final[:len(partial)] == partial  # finished records untouched, not redone
    keys = [(r["combination"], r["seed"]) for r in final]
    assert len(keys) == 6 and len(set(keys)) == 6
    assert (out / rec.REPORT).exists()


def test_resume_with_different_options_exits_2(tiny_run, capsys):
    status, _, err = run_cli(["study", "--out", str(tiny_run.run_dir), "--resume", "--steps", "5"], capsys)
    assert status == 2 and "differ from the stored run" in err and "steps" in err


def test_resume_without_a_run_exits_2(tmp_path, capsys):
    status, _, err = run_cli(["study", "--out", str(tmp_path / "none"), "--resume"], capsys)
    assert status == 2 and "no run to resume" in err


def test_spec_round_trips_through_json(tiny_run):
    from logitlab.experiments.spec import StudySpec

    stored = json.loads((tiny_run.run_dir / rec.SPEC).read_text())
    assert StudySpec.from_json(stored).to_json() == stored


def test_ctrl_c_leaves_finished_records(tmp_path):
    from logitlab.experiments.runner import run_study
    from logitlab.experiments.spec import StudySpec, apply_overrides

    spec = apply_overrides(StudySpec(), {"dataset": "iris", "steps": "4", "seeds": "2",
                                         "pairs": "softmax+cross_entropy,softmax+brier"})

    def interrupt_after_first(line, final):
        if final and "test acc" in line:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_study(spec, tmp_path, progress=interrupt_after_first)
    records = rec.read_records(tmp_path / rec.RECORDS)
    assert [(r["combination"], r["seed"]) for r in records] == [("softmax+cross_entropy", 0)]
    assert (tmp_path / rec.RECORDS).read_text().endswith("\n")


# ---- damaged and shared run directories (issue 17, item 13)


def _copy_run(tiny_run, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(tiny_run.run_dir, out)
    return out


def test_resume_of_a_truncated_spec_exits_2_naming_it(tiny_run, tmp_path, capsys):
    out = _copy_run(tiny_run, tmp_path)
    text = (out / rec.SPEC).read_text()
    (out / rec.SPEC).write_text(text[: len(text) // 2])
    status, _, err = run_cli(["study", "--out", str(out), "--resume"], capsys)
    assert status == 2 and "Traceback" not in err
    assert f"--resume: {out / rec.SPEC} is not a stored study spec (" in err


def test_resume_skips_a_damaged_line_says_so_and_redoes_its_run(tiny_run, tmp_path, capsys):
    out = _copy_run(tiny_run, tmp_path)
    lines = (out / rec.RECORDS).read_text().splitlines(keepends=True)
    lines[1] = lines[1][:40] + "\n"  # a complete but damaged line: record 2 of 4
    (out / rec.RECORDS).write_text("".join(lines))
    (out / rec.REPORT).unlink()
    status, printed, _ = run_cli(["study", "--out", str(out), "--resume"], capsys)
    assert status == 0
    assert any("skipped 1 line(s) (line 2: not JSON" in line and "redone" in line for line in printed)
    assert sum("already recorded, skipped" in line for line in printed) == 3
    scan = rec.scan_records(out / rec.RECORDS)
    keys = sorted((r["combination"], r["seed"]) for r in scan.records)
    assert len(keys) == 4 and len(set(keys)) == 4
    assert "line 2: not JSON" in (out / rec.REPORT).read_text()


def test_duplicate_records_are_counted_once_and_named(tiny_run, tmp_path, capsys):
    from logitlab.experiments.report import aggregate

    out = _copy_run(tiny_run, tmp_path)
    with open(out / rec.RECORDS, "a") as f:
        f.write((out / rec.RECORDS).read_text().splitlines()[0] + "\n")  # as two concurrent --resumes did
    scan = rec.scan_records(out / rec.RECORDS)
    assert len(scan.records) == 4 and [s.line for s in scan.skipped] == [5]
    assert "duplicate of line 1 (softmax+cross_entropy seed 0)" in scan.skipped[0].reason
    rows = aggregate(json.loads((out / rec.SPEC).read_text()), scan.records)
    assert [len(r["runs"]) for r in rows] == [2, 2]  # the mean is over 2 seeds, not 3
    status, _, _ = run_cli(["report", str(out)], capsys)
    assert status == 0 and "duplicate of line 1" in (out / rec.REPORT).read_text()


def test_a_locked_run_directory_is_refused(tiny_run, tmp_path, capsys):
    # A second process holding the lock stands in for a concurrent `study --resume`.
    out = _copy_run(tiny_run, tmp_path)
    holder = subprocess.Popen([PYTHON, "-c", (
        "import sys, time; from logitlab.experiments import records as rec\n"
        f"with rec.lock_run({str(out)!r}):\n    print('locked', flush=True); time.sleep(60)")],
        env=subprocess_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = (out / rec.RECORDS).read_bytes()
        status, _, err = run_cli(["study", "--out", str(out), "--resume"], capsys)
        assert status == 2 and f"{out} is in use by process {holder.pid}" in err
        assert (out / rec.RECORDS).read_bytes() == before
    finally:
        holder.kill()
        holder.wait(30)
    with rec.lock_run(out):  # released when its holder died
        pass


def test_an_existing_run_is_kept_without_force(tiny_run, tmp_path, capsys):
    out = _copy_run(tiny_run, tmp_path)
    before = (out / rec.RECORDS).read_bytes()
    status, _, err = run_cli(["study", "--out", str(out), "--steps", "5"], capsys)
    assert status == 2 and "holds a run already" in err and "--resume" in err and "--force" in err
    assert (out / rec.RECORDS).read_bytes() == before
    status, _, _ = run_cli(["study", "--out", str(out), "--steps", "5", "--seeds", "1", "--force",
                            "--set", "pairs=softmax+cross_entropy"], capsys)
    assert status == 0 and len(rec.read_records(out / rec.RECORDS)) == 1


def test_worker_processes_give_the_same_records_in_job_order(tiny_run, tmp_path):
    from logitlab.experiments.runner import run_study
    from logitlab.experiments.spec import StudySpec

    spec = StudySpec.from_json(json.loads((tiny_run.run_dir / rec.SPEC).read_text()))
    lines = []
    run_study(spec, tmp_path / "parallel", workers=2, progress=lambda line, final: lines.append(line))
    parallel = rec.read_records(tmp_path / "parallel" / rec.RECORDS)
    assert _strip_times(parallel) == _strip_times(rec.read_records(tiny_run.run_dir / rec.RECORDS))
    assert any(line.startswith("[####################] 4/4") for line in lines)
    assert "theory: computed beside the training jobs" in lines
    assert (tmp_path / "parallel" / rec.THEORY).read_bytes() == (tiny_run.run_dir / rec.THEORY).read_bytes()


def test_next_token_study_on_the_stdlib_source(tmp_path, capsys):
    from logitlab.experiments.data import load_split

    data = load_split("stdlib-text", 0, vocab=128, context=3, text_mb=0.05, max_rows=2000)
    assert data.num_classes == 128 and data.x_train.dtype == torch.int64 and data.x_train.shape[1] == 3
    assert len(data.y_train) + len(data.y_val) + len(data.y_test) == 2000
    out = tmp_path / "lm"
    status, lines, _ = run_cli(["study", "--preset", "lm", "--jobs", "1", "--seeds", "1", "--steps", "20",
                                "--out", str(out), "--set", "vocab=128", "--set", "text_mb=0.05",
                                "--set", "max_rows=2000",
                                "--set", "pairs=softmax+cross_entropy,sparsemax+sparsemax_loss"], capsys)
    assert status == 0 and lines[-1] == str(out / rec.REPORT)
    records = rec.read_records(out / rec.RECORDS)
    assert [r["num_classes"] for r in records] == [128, 128]
    for r in records:
        m = r["metrics"]
        assert 0 <= m["accuracy"] <= m["top5_accuracy"] <= 1
        assert m["perplexity"] == pytest.approx(math.exp(m["nll_smoothed"]))
        assert r["examples_per_s"] > 0
        assert r["step_peak_mib"] is None or r["step_peak_mib"] >= 0
    assert [r["output_path"] for r in records] == ["linear_cross_entropy", "logits"]
    report = (out / rec.REPORT).read_text()
    assert "perplexity" in report and "memory per step (MiB)" in report


def test_the_fused_head_loss_is_the_logits_loss():
    """softmax + cross-entropy on the next-token model trains through linear_cross_entropy: the same
    loss and the same gradients as cross-entropy of the model's logits."""
    from logitlab.experiments.models import build_model
    from logitlab.experiments.runner import _fused_objective
    from logitlab.experiments.spec import Combination, StudySpec, apply_overrides
    from logitlab.registry import make_objective

    spec = apply_overrides(StudySpec(), {"model": "lm", "dataset": "stdlib-text"})
    torch.manual_seed(0)
    model = build_model("lm", 3, 50, hidden=16).double()
    x, y = torch.randint(0, 50, (40, 3)), torch.randint(0, 50, (40,))
    for params in ({}, {"label_smoothing": 0.1}, {"z_loss": 1e-3}):
        combo = Combination("softmax", "cross_entropy", tuple(params.items()))
        fused = _fused_objective(spec, combo, model)
        assert fused is not None
        model.zero_grad()
        got = fused(x, y)
        got.backward()
        grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        expected = make_objective("softmax", "cross_entropy", **params)(model(x), y)
        expected.backward()
        assert torch.allclose(got, expected)
        assert all(torch.allclose(a, p.grad) for a, p in zip(grads, model.parameters()))
    assert _fused_objective(spec, Combination("softmax", "brier", ()), model) is None
    assert _fused_objective(StudySpec(), Combination("softmax", "cross_entropy", ()), model) is None


def test_ctrl_c_with_worker_processes_exits_130_printing_the_resume_command(tmp_path):
    out = tmp_path / "run"
    # Long enough that the run cannot finish between its first record and the signal, even on a
    # loaded machine (with 400 steps and 6 cells it once did, and exited 0).
    argv = [PYTHON, "-m", "logitlab", "study", "--dataset", "digits", "--steps", "1500", "--seeds", "4", "--jobs", "2",
            "--set", "pairs=softmax+cross_entropy,softmax+brier", "--out", str(out)]
    child = subprocess.Popen(argv, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    path = out / rec.RECORDS
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and child.poll() is None and not (path.exists() and path.read_bytes()):
        time.sleep(0.05)
    assert child.poll() is None, "the run ended before it could be interrupted"
    child.send_signal(signal.SIGINT)
    stdout, stderr = child.communicate(timeout=60)
    assert child.returncode == 130, stderr
    assert "Traceback" not in stderr and f"`logitlab study --out {out} --resume`" in stderr
    assert 1 <= len(rec.read_records(path)) < 6
