# The two commands of the README: `make study` (the main job) and `make test`.
# Both set up a virtual environment first. torch is pinned to the CPU build of 2.13.0,
# which lies on local disk: an unpinned torch would pull a multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PIN ?= torch==2.13.0
STAMP := $(VENV)/.logitlab-installed
# pytest-xdist workers for `make test` / `make test-fast` (auto: one per core; JOBS=0 runs in one process).
JOBS ?= auto

.PHONY: setup study demo test test-fast lint bench bench-docs clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@echo "setup: a virtual environment in $(VENV) (once; about 2 minutes, nothing printed while pip works)"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "setup: installing $(TORCH_PIN) (the CPU build) ..."
	$(PY) -m pip install -q --disable-pip-version-check $(TORCH_PIN)
	@echo "setup: installing logitlab (editable) with its test and study extras: pytest, hypothesis, numpy, scipy, scikit-learn, entmax, matplotlib, transformers, accelerate ..."
	$(PY) -m pip install -q --disable-pip-version-check -e ".[test,study]"
	touch $(STAMP)

# `make study` reruns the study in its run directory (--force replaces a finished run there);
# `make study ARGS=--resume` completes an interrupted one instead.
study: setup
	@echo "study: logitlab study $(ARGS) (the default run takes about half a minute on 2 cores; the last line printed is the report)"
	$(PY) -m logitlab study $(if $(findstring --resume,$(ARGS)),,--force) $(ARGS)

demo: setup
	$(PY) -m logitlab demo

# `make test`: lint, then every test (the slow tier included); CI runs it (.ci/run).
# `make test-fast`: every test not marked slow (the inner loop: no study end to end, no spawned
# process groups, no browser, no benchmark smoke runs). Both spread the tests over $(JOBS) workers.
test: setup lint
	$(PY) -m pytest -q -n $(JOBS) $(ARGS)

test-fast: setup
	$(PY) -m pytest -q -n $(JOBS) -m "not slow" $(ARGS)

lint: setup
	$(PY) -m ruff check src tests benchmarks examples

bench: setup
	$(PY) benchmarks/run_all.py

# docs/benchmarks.md from the results files (benchmarks/results/, or RESULTS=dirs of other machines' files)
bench-docs: setup
	$(PY) benchmarks/render_docs.py $(RESULTS)

clean:
	rm -rf $(VENV) runs .pytest_cache
