"""A tiny study, run once per test session and shared by the study tests."""

from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

from logitlab import cli

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--dataset", "digits", "--steps", "30", "--seeds", "2", "--jobs", "1", "--set", "eval_points=3",
        "--set", "pairs=softmax+cross_entropy,sparsemax+sparsemax_loss"]


def run_cli(argv, capsys):
    """Run ``logitlab argv`` in this process; return (exit status, stdout lines, stderr)."""
    try:
        status = cli.main(argv)
    except SystemExit as exit:
        status = exit.code
    out, err = capsys.readouterr()
    return status, out.splitlines(), err


def subprocess_env() -> dict[str, str]:
    """The environment for ``python -m logitlab`` in a child process (finds src/ like pytest does)."""
    env = dict(os.environ)
    paths = [str(ROOT / "src")] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


PYTHON = sys.executable


class TinyRun(NamedTuple):
    run_dir: Path
    lines: list[str]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> TinyRun:
    """Run the tiny study through the CLI once; return its directory and the lines it printed."""
    run_dir = tmp_path_factory.mktemp("study") / "run"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = cli.main(["study", *TINY, "--out", str(run_dir)])
    assert status == 0
    return TinyRun(run_dir, out.getvalue().splitlines())
