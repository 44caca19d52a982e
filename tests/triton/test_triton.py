"""Runs the Triton kernels' cases (``cases_*.py``) on CPU tensors under Triton's interpreter.

Each file runs in a fresh process with ``TRITON_INTERPRET=1`` (see ``_triton_fixtures``); a
failure shows that process's report. Skipped only where triton is not installed.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("triton", reason="triton is not installed (it is in the test extra)")

HERE = pathlib.Path(__file__).parent
ROOT = HERE.parent.parent
CASES = sorted(p.name for p in HERE.glob("cases_*.py"))


@pytest.mark.parametrize("case", CASES)
def test_cases_under_the_interpreter(case):
    env = dict(os.environ, TRITON_INTERPRET="1", LOGITLAB_TRITON_DEVICE="cpu")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "--no-header",
         "-W", "ignore::RuntimeWarning", "--rootdir", str(ROOT), "-c", str(ROOT / "pyproject.toml"),
         str(HERE / case)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{case} under TRITON_INTERPRET=1:\n{done.stdout[-8000:]}\n{done.stderr[-4000:]}"
