"""The study's modules import one way, at the top: data first (theory, runner), drawing after (report, plots)."""

import ast
from pathlib import Path

import logitlab.experiments

PACKAGE = Path(logitlab.experiments.__file__).parent


def _imports(path: Path) -> tuple[set[str], list[tuple[int, str]]]:
    """(modules imported at module level, (line, module) of the logitlab imports inside functions)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top, local = set(), []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if isinstance(node, ast.ImportFrom) and node.module == "logitlab.experiments":
                names = [f"logitlab.experiments.{a.name}" for a in node.names]
            if node in tree.body:
                top.update(names)
            else:
                local += [(node.lineno, n) for n in names if n.startswith("logitlab")]
    return top, local


def test_no_function_local_imports_of_the_package():
    found = {p.name: _imports(p)[1] for p in sorted(PACKAGE.glob("*.py"))}
    assert {name: lines for name, lines in found.items() if lines} == {}


def test_drawing_does_not_import_the_data_side():
    for name in ("report.py", "plots.py", "stats.py", "records.py"):
        top, _ = _imports(PACKAGE / name)
        assert not top & {"logitlab.experiments.theory", "logitlab.experiments.runner"}, name
    theory, _ = _imports(PACKAGE / "theory.py")
    assert not theory & {"logitlab.experiments.report", "logitlab.experiments.plots"}
