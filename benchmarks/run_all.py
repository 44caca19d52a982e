"""Run every benchmark script in turn, each in its own process (``make bench``).

Extra arguments go to every script, e.g. ``python benchmarks/run_all.py --quick`` for a smoke
run of seconds. Each script prints its own table and writes its records to benchmarks/results/.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = ["normalizers.py", "sparse_normalizers.py", "cross_entropy.py", "divergences.py",
           "fused.py", "distill.py", "theory.py"]


def main(argv: list[str]) -> int:
    env = dict(os.environ)
    src = str(HERE.parent / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "") if env.get("PYTHONPATH") else src
    failed = []
    for script in SCRIPTS:
        print(f"\n===== {script} {' '.join(argv)}", flush=True)
        code = subprocess.call([sys.executable, str(HERE / script), *argv], env=env)
        if code:
            failed.append(f"{script} (exit {code})")
    if failed:
        print("failed: " + ", ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
