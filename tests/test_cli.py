"""The command line: --help everywhere, and bad study options exit 2 with the valid choices."""

from __future__ import annotations

import pytest

from logitlab import cli


def _run(argv, capsys):
    try:
        status = cli.main(argv)
    except SystemExit as exit:
        status = exit.code
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize("verb", [[], ["study"], ["report"], ["list"], ["env"], ["demo"]])
def test_help_everywhere(verb, capsys):
    status, out, _ = _run([*verb, "--help"], capsys)
    assert status == 0 and "usage: logitlab" in out


def test_study_help_lists_set_keys_and_flags(capsys):
    _, out, _ = _run(["study", "--help"], capsys)
    for flag in ("--dataset", "--model", "--seeds", "--steps", "--set", "--out", "--resume", "--force",
                 "nll_smoothing", "temperature_scaling", "label"):
        assert flag in out


@pytest.mark.parametrize("argv,message", [
    (["--set", "epoch=3"], "unknown key 'epoch'; valid keys: dataset, label, model, seeds, steps"),
    (["--set", "seeds=three"], "seeds: expected an int >= 1, got 'three'"),
    (["--set", "lr=-1"], "lr: expected a finite number > 0, got -1.0"),
    (["--set", "lr=inf"], "lr: expected a finite number > 0, got inf"),
    (["--set", "weight_decay=inf"], "weight_decay: expected a finite number >= 0, got inf"),
    (["--steps", "0"], "steps: expected an int >= 1, got 0"),
    (["--set", "temperature_scaling=maybe"], "temperature_scaling: expected true or false, got 'maybe'"),
    (["--set", "optimizer=lbfgs"], "unknown optimizer 'lbfgs'; valid choices: adam, sgd"),
    (["--dataset", "mnist"],
     "unknown dataset 'mnist'; valid choices: digits, wine, breast_cancer, iris, stdlib-text, or the path"),
    (["--model", "cnn"], "unknown model 'cnn'; valid choices: linear, mlp"),
    (["--set", "pairs=softmax+hinge"],
     "unknown or invalid pair 'softmax+hinge'; valid pairs for class-index training: softmax+cross_entropy"),
    (["--set", "pairs=sigmoid+cross_entropy"], "unknown or invalid pair 'sigmoid+cross_entropy'"),
    (["--set", "pairs=standard+kl[positivity=square]"], "combination standard+kl[positivity=square] cannot run"),
    (["--set", "pairs=softmax+cross_entropy,softmax+cross_entropy"], "duplicate combination(s): softmax+cross_entropy"),
    (["--set", "pairs"], "--set 'pairs': expected key=value"),
])
def test_bad_study_options_exit_2_listing_choices(argv, message, capsys, tmp_path):
    status, out, err = _run(["study", *argv, "--out", str(tmp_path / "run")], capsys)
    assert status == 2
    assert message in err
    assert not (tmp_path / "run").exists()


def test_bad_combination_parameter_exits_2(capsys, tmp_path):
    status, _, err = _run(["study", "--set", "pairs=softmax+focal[gamma=abc]", "--out", str(tmp_path / "r")], capsys)
    assert status == 2 and "combination softmax+focal[gamma=abc] cannot run" in err


def test_report_of_a_missing_run_exits_2(capsys, tmp_path):
    status, _, err = _run(["report", str(tmp_path)], capsys)
    assert status == 2 and "is not a run directory" in err


def test_list_still_works(capsys):
    status, out, _ = _run(["list"], capsys)
    assert status == 0 and "softmax + cross_entropy" in out


@pytest.mark.parametrize("spec_text,message", [
    ('{"bad json', "is not a stored study spec (Unterminated string starting at: line 1 column 2"),
    ("{}", "is not a stored study spec (missing keys: dataset, label, model"),
    ("[1, 2]", "is not a stored study spec (expected a JSON object, got list)"),
])
def test_report_of_a_damaged_spec_exits_2(spec_text, message, capsys, tmp_path):
    # Was: a JSONDecodeError / KeyError traceback (exit status 1) instead of a usage error.
    (tmp_path / "spec.json").write_text(spec_text, encoding="utf-8")
    status, _, err = _run(["report", str(tmp_path)], capsys)
    assert status == 2 and message in err


def test_report_of_damaged_records_says_what_it_skipped(capsys, tmp_path):
    # Was: exit 2 and no report. A damaged complete line is skipped, and the report names it.
    from logitlab.experiments import records
    from logitlab.experiments.spec import StudySpec

    records.write_json(tmp_path / records.SPEC, StudySpec().to_json())
    (tmp_path / records.RECORDS).write_text('{"a": 1}\nnot json\n', encoding="utf-8")
    status, _, _ = _run(["report", str(tmp_path)], capsys)
    assert status == 0
    text = (tmp_path / records.REPORT).read_text()
    assert f"{tmp_path / records.RECORDS}: skipped 1 line(s) (line 2: not JSON" in text


def test_out_that_is_a_file_exits_2(capsys, tmp_path):
    out = tmp_path / "file"
    out.write_text("x")
    status, _, err = _run(["study", "--out", str(out), "--steps", "1"], capsys)
    assert status == 2 and f"--out {out}: is a file, not a directory" in err
    assert len(err.strip().splitlines()[-1]) > 0 and "Traceback" not in err


def test_missing_study_extra_names_the_install_command(capsys, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sklearn" else real(name, *a))
    for argv in (["study", "--out", str(tmp_path / "r")], ["report", str(tmp_path)]):
        status, _, err = _run(argv, capsys)
        assert status == 2 and "the study needs scikit-learn (not installed): pip install 'logitlab[study]'" in err


def test_list_says_that_binary_cross_entropy_averages_over_classes(capsys):
    # Was: "Σ_k BCE(...)" while the function averages; the study's gradient analysis read 1/C of it.
    import torch

    from logitlab.registry import make_objective

    status, out, _ = _run(["list"], capsys)
    line = next(line for line in out.splitlines() if line.strip().startswith("binary_cross_entropy "))
    assert status == 0 and "averaged over the C classes" in line
    logits, target = torch.tensor([[2.0, -1.0, 0.5, 3.0]], dtype=torch.float64), torch.tensor([1])
    per_class = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, torch.nn.functional.one_hot(target, 4).double(), reduction="none")
    assert float(make_objective("sigmoid", "binary_cross_entropy")(logits, target)) == \
        pytest.approx(float(per_class.mean()))


def test_gradient_sweep_puts_bce_on_the_per_example_summed_convention():
    import math

    from logitlab.experiments import theory
    from logitlab.experiments.spec import parse_combination

    data = theory._gradient_sweep([parse_combination("sigmoid+binary_cross_entropy")])
    curve = data["curves"]["sigmoid+binary_cross_entropy"]
    margin = data["margins"][-1]
    sigmoid = 1 / (1 + math.exp(-margin))
    # ∂/∂z_k of Σ_k BCE: σ(z_k) − y_k; true class at logit 0, class 1 at the margin, 8 others at 0
    expected = math.sqrt((0.5 - 1) ** 2 + sigmoid ** 2 + 8 * 0.5 ** 2)
    assert curve["grad_norm"][-1] == pytest.approx(expected, rel=1e-9) and curve["scale"] == 10
