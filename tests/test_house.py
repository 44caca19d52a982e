"""House rules that tooling enforces: one version source, lint in `make test`, a slow tier that
`make test-fast` skips, and no test that installs system packages."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

import logitlab

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_the_version_is_written_once():
    project = PYPROJECT["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "logitlab.__version__"}
    init = ast.parse((ROOT / "src" / "logitlab" / "__init__.py").read_text(encoding="utf-8"))
    literal = [node.value.value for node in init.body if isinstance(node, ast.Assign)
               and [getattr(t, "id", None) for t in node.targets] == ["__version__"]]
    assert literal == [logitlab.__version__] and re.fullmatch(r"\d+\.\d+\.\d+.*", logitlab.__version__)


def _recipe(target: str) -> tuple[list[str], list[str]]:
    """(prerequisites, command lines) of a Makefile target."""
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    match = re.search(rf"^{re.escape(target)}:(.*)\n((?:\t.*\n)*)", text, flags=re.M)
    assert match, f"the Makefile has no target {target!r}"
    return match.group(1).split(), [line.strip() for line in match.group(2).splitlines()]


def test_make_test_lints_and_runs_everything_and_test_fast_skips_the_slow_tier():
    prerequisites, commands = _recipe("test")
    assert "lint" in prerequisites and any("pytest" in c and "slow" not in c for c in commands)
    # CI's time budget holds on 2 cores only with the tests spread over the cores.
    assert any("pytest" in c and "-n $(JOBS)" in c for c in commands)
    assert any(dep.startswith("pytest-xdist") for dep in PYPROJECT["project"]["optional-dependencies"]["test"])
    _, lint = _recipe("lint")
    assert any("ruff check" in c for c in lint)
    _, fast = _recipe("test-fast")
    assert any('-m "not slow"' in c for c in fast)
    assert {"E", "W", "F", "I"} <= set(PYPROJECT["tool"]["ruff"]["lint"]["select"])
    assert any(dep.startswith("ruff") for dep in PYPROJECT["project"]["optional-dependencies"]["test"])
    assert "make test" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_the_slow_tier_holds_each_kind_of_long_test():
    command = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "slow", "-p", "no:cacheprovider", "tests"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    slow = [line for line in done.stdout.splitlines() if "::" in line]
    kinds = {"study end to end": "test_study.py::", "spawned process groups": "distributed",
             "headless browser": "test_explorer.py::", "benchmark smoke runs": "test_benchmarks.py::test_quick_run"}
    missing = [kind for kind, where in kinds.items() if not any(where in line for line in slow)]
    assert not missing, f"not marked slow: {missing}"


def test_no_test_installs_system_packages():
    installer = re.compile(r"""["'](apt-get|apt|dnf|yum|apk|brew)["']|["'](apt-get|apt|dnf|yum|apk) install""")
    offenders = [str(path.relative_to(ROOT)) for path in sorted((ROOT / "tests").rglob("*.py"))
                 if installer.search(path.read_text(encoding="utf-8"))]
    assert offenders == []


def _private_names_imported_across_modules() -> list[str]:
    """``from logitlab.a import _b`` where ``_b`` is a name inside module ``a`` (not a submodule)."""
    src = ROOT / "src"
    found = []
    for path in sorted((src / "logitlab").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom) or not (node.module or "").startswith("logitlab"):
                continue
            package = src.joinpath(*node.module.split("."))
            for alias in node.names:
                is_module = (package / f"{alias.name}.py").exists() or (package / alias.name).is_dir()
                if alias.name.startswith("_") and not alias.name.startswith("__") and not is_module:
                    found.append(f"{path.relative_to(src)}: from {node.module} import {alias.name}")
    return found


def test_no_module_imports_another_modules_private_helpers():
    # A helper two modules share is promoted to a shared module (losses/_inputs.py, _reduction.py,
    # _divergence_rows.py) under a public name. The Triton package's own imports are its owner's.
    found = [line for line in _private_names_imported_across_modules() if not line.startswith("logitlab/_triton/")]
    assert not found, found


# A timing (a number, a space, then s / ms / µs / ns), a rate (GFLOP/s, GB/s, MiB/s) or a before → after pair
# of numbers (with -> or →) in the source.
_FIGURE = re.compile(r"\d(\.\d+)? (ms|µs|ns|s)\b|GFLOP/s|[GM]i?B/s|\d(\.\d+)? ?(->|→) ?\d")


def test_measurements_live_in_records_not_in_code():
    # Figures belong in benchmark records and docs/benchmarks.md; a comment keeps the reason and
    # names the benchmark. Doctest lines and ``literals`` (examples of output) are not figures.
    src = ROOT / "src" / "logitlab"
    found = [f"{path.relative_to(src)}:{number}: {line.strip()}"
             for path in sorted(p for p in src.rglob("*") if p.suffix in {".py", ".c", ".h"})
             for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if _FIGURE.search(line) and ">>>" not in line and "``" not in line]
    assert not found, "\n".join(found)
