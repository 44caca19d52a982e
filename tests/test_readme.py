"""Every ```python block of the README runs, and its ```pycon quick start gives the output it shows."""

from __future__ import annotations

import doctest
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
TEXT = README.read_text(encoding="utf-8")
BLOCKS = re.findall(r"```python\n(.*?)```", TEXT, flags=re.S)
SESSIONS = re.findall(r"```pycon\n(.*?)```", TEXT, flags=re.S)
FLAGS = doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS


def test_readme_has_examples():
    assert len(BLOCKS) >= 5
    assert SESSIONS and TEXT.index("```pycon") < TEXT.index("make study")  # the quick start comes first


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index, capsys):
    exec(compile(BLOCKS[index], f"README.md block {index}", "exec"), {"__name__": "readme"})


@pytest.mark.parametrize("index", range(len(SESSIONS)))
def test_readme_session_output(index):
    test = doctest.DocTestParser().get_doctest(SESSIONS[index], {}, f"README.md pycon {index}", str(README), 0)
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    runner.run(test)
    assert runner.summarize(verbose=False).failed == 0
