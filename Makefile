# Two commands on a fresh machine: `make demo` and `make test`.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# The CPU build of torch these machines carry; a bare `torch` would pull several GB of CUDA packages.
TORCH   ?= torch==2.13.0

.PHONY: venv test test-slow test-dist test-all lint demo teacher bench replicate curves ranking clean gpu-suite

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

# The default run: fast CPU tests, each feature through a short version, one single-threaded worker per core
# (pytest-xdist): about 2 min on 2 cores.
test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n auto

# The end-to-end runs (tiny replication, learning curves, ranking, demo runner, teacher pretraining, Inductor).
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# Several processes under torchrun (gloo, CPU).
test-dist: $(STAMP)
	$(BIN)/python -m pytest -q -m distributed

# Everything that runs without a GPU.
test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m "not gpu"

lint: $(STAMP)
	$(BIN)/ruff check jetvit tests benchmarks
	$(BIN)/ruff format --check jetvit tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

# The built-in teacher (jetvit/assets/teacher) and its all-window control, pretrained from a seed on the synthetic
# keyshapes task: two 800-step trainings, each about 40 min on the shared 2-core machine (measured as two parallel
# single-thread runs). One thread, as the committed weights were trained: the same torch build rebuilds them.
teacher: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/pretrain_teacher.py

# The main job on the built-in teacher: search (configs/demo.yaml), evaluation, benchmark, report in runs/demo.
# A rerun resumes; after editing the config start over with `make demo DEMO_ARGS=--fresh`.
demo: $(STAMP)
	$(BIN)/python -m jetvit.demo.run --out runs/demo $(DEMO_ARGS)

# The paper's findings on the built-in teacher, several seeds: benchmarks/results/replication.md.
# REPLICATE_ARGS="--budget converged" for the budget the learning curves justify: about 2 h of one core a seed (run
# seeds side by side as `--seeds N` processes with OMP_NUM_THREADS=1 and one --work; `--seeds 0 1 2` then gathers).
replicate: $(STAMP)
	$(BIN)/python benchmarks/replicate.py --out benchmarks/results $(REPLICATE_ARGS)

# How fast each kind of hybrid learns the built-in teacher: benchmarks/results/learning_curves.md.
curves: $(STAMP)
	$(BIN)/python benchmarks/learning_curves.py --out benchmarks/results $(CURVES_ARGS)

# Does the Step-1 supernet rank paths as they rank distilled alone? benchmarks/results/ranking.md (about 2 h of one
# core; benchmarks/results/README.md splits it over both cores, with the other ways of training the supernet).
ranking: $(STAMP)
	$(BIN)/python benchmarks/ranking.py --out benchmarks/results $(RANKING_ARGS)

# The device check (benchmarks/gpu_suite.py): smoke test, the `gpu` tests, then the paper's table (DINOv3-B/L, DAv2-L
# against their 2-F hybrids, 1-4 megapixels, bf16, eager / compiled / CUDA graphs) in at most 450 s, files in $OUT.
# No venv: on the GPU machine the image's python3 has torch. Through the device tool: `run` with command
# `make gpu-suite` (where the image lacks make: `PYTHONPATH=. python3 benchmarks/gpu_suite.py --out $OUT`) and
# timeout_s 540; the JSON, the table and the logs come back from $OUT. The CPU dry run here (tiny preset, seconds):
# `make gpu-suite PY=.venv/bin/python GPU_SUITE_ARGS=--dry-run`.
gpu-suite:
	PYTHONPATH=. $(PY) benchmarks/gpu_suite.py --out $${OUT:-runs/gpu-suite} $(GPU_SUITE_ARGS)
