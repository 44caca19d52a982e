# The two commands of the README: `make study` (the main job) and `make test`.
# Both set up a virtual environment first. torch is pinned to the CPU build of 2.13.0,
# which lies on local disk: an unpinned torch would pull a multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PIN ?= torch==2.13.0
STAMP := $(VENV)/.logitlab-installed

.PHONY: setup study demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check $(TORCH_PIN)
	$(PY) -m pip install -q --disable-pip-version-check -e ".[test,study]"
	touch $(STAMP)

study: setup
	$(PY) -m logitlab study $(ARGS)

demo: setup
	$(PY) -m logitlab demo

test: setup
	$(PY) -m pytest -q $(ARGS)

bench: setup
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) runs .pytest_cache
