"""A run directory and its records: JSON Lines, append-only, one line per finished (combination, seed).

Layout of a run directory::

    spec.json       the StudySpec the run was started with
    records.jsonl   one JSON object per line, appended and flushed (fsync) as each combination ends
    theory.json     the theory data (logitlab.analysis / maxent / information) for the report
    report.html     rendered from the three files above alone

    .lock           held (``fcntl.flock``) by the one process writing to the directory

A kill can interrupt a write; :func:`read_records` then ignores the unfinished last line and
:class:`RecordWriter` cuts it off before appending, so every finished record stays readable.
A damaged *complete* line (edited, or a disk error) and a second record of the same
(combination, seed) are skipped on read, never silently used: :func:`scan_records` returns
them with their line numbers and reasons, and the CLI and the report say what was skipped.
:func:`lock_run` makes sure that only one process writes a run directory at a time.
Non-finite floats are stored as ``null`` (strict JSON).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple

__all__ = ["RECORDS", "SPEC", "THEORY", "REPORT", "LOCK", "RecordWriter", "read_records", "scan_records",
           "Scan", "Skipped", "RunLocked", "lock_run", "to_json", "write_json", "read_json"]

RECORDS = "records.jsonl"
SPEC = "spec.json"
THEORY = "theory.json"
REPORT = "report.html"
LOCK = ".lock"


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


class Skipped(NamedTuple):
    """A line of records.jsonl that was not used: its 1-based number and why."""

    line: int
    reason: str


class Scan(NamedTuple):
    """The usable records of a JSONL file and the complete lines that were skipped."""

    records: list[dict[str, Any]]
    skipped: list[Skipped]


def scan_records(path: Path) -> Scan:
    """Read a JSONL file of records, skipping damaged lines and duplicate results.

    An unfinished last line (cut by a kill) is not a record and is ignored silently. A complete
    line that is not a JSON object, or a result without a ``combination`` and an integer ``seed``,
    is skipped as damaged; a second result for the same (combination, seed) (two writers at once,
    or a copied file) is skipped as a duplicate of the first. Both are returned in ``skipped``.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "records.jsonl"
        >>> _ = path.write_text('{"kind": "result", "combination": "a", "seed": 0}\\nnot json\\n'
        ...                     '{"kind": "result", "combination": "a", "seed": 0}\\n')
        >>> scan = scan_records(path)
        >>> len(scan.records), [s.line for s in scan.skipped]
        (1, [2, 3])
    """
    path = Path(path)
    if not path.exists():
        return Scan([], [])
    text = path.read_bytes().decode("utf-8", errors="replace")
    complete = text.split("\n")[:-1]  # the last piece is "" or an unfinished line
    records: list[dict[str, Any]] = []
    skipped: list[Skipped] = []
    first: dict[tuple[str, int], int] = {}
    for number, line in enumerate(complete, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            skipped.append(Skipped(number, f"not JSON ({error})"))
            continue
        if not isinstance(record, dict):
            skipped.append(Skipped(number, f"not a JSON object ({type(record).__name__})"))
            continue
        if record.get("kind") == "result":
            combination, seed = record.get("combination"), record.get("seed")
            if not isinstance(combination, str) or isinstance(seed, bool) or not isinstance(seed, int):
                skipped.append(Skipped(number, "a result without a combination name and an integer seed"))
                continue
            if (combination, seed) in first:
                skipped.append(Skipped(number, f"duplicate of line {first[combination, seed]} "
                                               f"({combination} seed {seed})"))
                continue
            first[combination, seed] = number
        records.append(record)
    return Scan(records, skipped)


def describe_skipped(path: Path, skipped: Iterable[Skipped]) -> str:
    """One line saying which lines of ``path`` were skipped and why ('' when none)."""
    items = list(skipped)
    if not items:
        return ""
    listed = "; ".join(f"line {s.line}: {s.reason}" for s in items[:5])
    more = f"; and {len(items) - 5} more" if len(items) > 5 else ""
    return f"{path}: skipped {len(items)} line(s) ({listed}{more})"


class RunLocked(RuntimeError):
    """Another process holds the lock of a run directory."""


@contextlib.contextmanager
def lock_run(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``run_dir`` (its ``.lock`` file) for the duration of the block.

    The lock is an ``fcntl.flock`` on an open file, so the kernel releases it when the process
    ends, however it ends (a kill leaves no stale lock). On systems without ``fcntl`` the block
    runs unlocked.

    Raises:
        RunLocked: another process holds the lock (its process id is named when known).
    """
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks here
        yield
        return
    path = Path(run_dir) / LOCK
    with open(path, "a+", encoding="utf-8") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip()
            who = f" by process {holder}" if holder.isdigit() else ""
            raise RunLocked(f"{run_dir} is in use{who}: another `logitlab study` is writing it; "
                            "wait for it to finish or use another --out") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def read_records(path: Path) -> list[dict[str, Any]]:
    """The usable records of a JSONL file: :func:`scan_records` without the skipped lines."""
    return scan_records(path).records


def done_keys(records: Iterable[dict[str, Any]]) -> set[tuple[str, int]]:
    """The (combination, seed) pairs that already have a record."""
    return {(r["combination"], int(r["seed"])) for r in records if r.get("kind") == "result"}
