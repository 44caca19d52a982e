"""The compiled-kernel cache: verified before loading, rebuilt when damaged, shareable, locked."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[2] / "src")
# Load the cross-entropy kernel, check one call against torch, print what load() did.
PROBE = """
import json, torch, logitlab
from logitlab import _native
x, t = torch.randn(5, 37), torch.tensor([0, 3, 36, 1, 2])
assert torch.allclose(logitlab.cross_entropy(x, t), torch.nn.functional.cross_entropy(x, t))
print(json.dumps(_native.status().get("xent", {})))
"""


def _probe(cache: Path) -> dict:
    env = {**os.environ, "LOGITLAB_CACHE_DIR": str(cache), "PYTHONPATH": SRC, "LOGITLAB_NATIVE": "1"}
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    info = _probe(cache)
    if "error" in info or not info:
        pytest.skip(f"the native kernels cannot be built here: {info}")
    return cache, info


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncate", "empty", "no_record"])
def test_a_damaged_library_is_rebuilt_not_loaded(built, damage, tmp_path):
    cache, info = built
    copy = tmp_path / "cache"
    copy.mkdir()
    library = Path(info["path"])
    for path in cache.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    target = copy / library.name
    data = target.read_bytes()
    if damage == "truncate":
        target.write_bytes(data[: len(data) // 3])
    elif damage == "empty":
        target.write_bytes(b"")
    else:
        target.with_suffix(".json").unlink()
    again = _probe(copy)
    assert again["compiled"] is True and "error" not in again
    assert _probe(copy)["compiled"] is False  # and then it is trusted


def test_an_intact_library_is_loaded_and_readable_by_everyone(built):
    cache, info = built
    assert _probe(cache)["compiled"] is False
    library = Path(info["path"])
    record = json.loads(library.with_suffix(".json").read_text())
    assert record["size"] == library.stat().st_size
    mode = library.stat().st_mode
    assert mode & stat.S_IROTH and mode & stat.S_IXOTH and mode & stat.S_IRGRP


@pytest.mark.slow
def test_two_processes_on_an_empty_cache_compile_once(tmp_path):
    env = {**os.environ, "LOGITLAB_CACHE_DIR": str(tmp_path), "PYTHONPATH": SRC, "LOGITLAB_NATIVE": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", PROBE], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for _ in range(2)]
    infos = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        infos.append(json.loads(out.strip().splitlines()[-1]))
    if any("error" in info for info in infos):
        pytest.skip(f"the native kernels cannot be built here: {infos}")
    assert sorted(info["compiled"] for info in infos) == [False, True]
