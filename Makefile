# Each target builds its own virtual environment on first use (about 2-3 minutes).
VENV ?= .venv
PY := $(VENV)/bin/python
# torch 2.14.1 and torchaudio 2.11 are the versions this project is tested with; pinning them
# first keeps pip from pulling a newer multi-GB build through the open `torch>=` range.
TORCH_PINS := torch==2.14.1 torchaudio==2.11.0

.PHONY: venv train test lint evaluate app

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

# accelerate picks the device: a GPU when there is one, the CPU otherwise. Without --cpu it
# would run a CPU job on one thread (its default); all cores for the one process instead.
THREADS ?= $(shell nproc 2>/dev/null || echo 1)
train: venv
	$(VENV)/bin/accelerate launch --num_processes 1 --num_cpu_threads_per_process $(THREADS) \
		train.py $(ARGS)

test: venv
	$(PY) -m pytest -q $(ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

app: venv
	$(PY) app.py $(ARGS)
