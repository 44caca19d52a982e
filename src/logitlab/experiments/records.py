"""A run directory and its records: JSON Lines, append-only, one line per finished (combination, seed).

Layout of a run directory::

    spec.json       the StudySpec the run was started with
    records.jsonl   one JSON object per line, appended and flushed (fsync) as each combination ends
    theory.json     the theory data (logitlab.analysis / maxent / information) for the report
    report.html     rendered from the three files above alone

A kill can interrupt a write; :func:`read_records` then ignores the unfinished last line and
:class:`RecordWriter` cuts it off before appending, so every finished record stays readable.
Non-finite floats are stored as ``null`` (strict JSON).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable

__all__ = ["RECORDS", "SPEC", "THEORY", "REPORT", "RecordWriter", "read_records", "to_json",
           "write_json", "read_json"]

RECORDS = "records.jsonl"
SPEC = "spec.json"
THEORY = "theory.json"
REPORT = "report.html"


def to_json(obj: Any) -> Any:
    """``obj`` as strict-JSON data: tensors and arrays to lists, NaN and ±inf to None.

    Example:
        >>> to_json({"a": float("inf"), "b": (1, 2.5)})
        {'a': None, 'b': [1, 2.5]}
    """
    if isinstance(obj, dict):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json(v) for v in obj]
    if hasattr(obj, "tolist"):  # torch.Tensor, numpy arrays and scalars
        return to_json(obj.tolist())
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    raise TypeError(f"to_json(): argument 'obj' expected JSON-like data, got <{type(obj).__name__}>")


def _dumps(obj: Any) -> str:
    return json.dumps(to_json(obj), sort_keys=True, allow_nan=False, ensure_ascii=False)


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` to ``path`` atomically (temporary file, then rename)."""
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(_dumps(obj) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


class RecordWriter:
    """Append records to a JSONL file, flushing and syncing each one to disk."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._cut_unfinished_tail()
        self._file = open(self.path, "a", encoding="utf-8")

    def _cut_unfinished_tail(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(self.path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)

    def append(self, record: dict[str, Any]) -> None:
        self._file.write(_dumps(record) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "RecordWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every complete record of a JSONL file (an unfinished last line, cut by a kill, is skipped).

    Raises:
        ValueError: a complete line that is not valid JSON (the file was edited or corrupted).
    """
    path = Path(path)
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    complete, tail = lines[:-1], lines[-1]  # tail is "" when the file ends with a newline
    records = []
    for number, line in enumerate(complete, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise ValueError(f"read_records(): {path}:{number} is not a JSON record ({error})") from None
    del tail
    return records


def done_keys(records: Iterable[dict[str, Any]]) -> set[tuple[str, int]]:
    """The (combination, seed) pairs that already have a record."""
    return {(r["combination"], int(r["seed"])) for r in records if r.get("kind") == "result"}
