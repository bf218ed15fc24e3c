# The two commands of the README, and the rest a developer needs.
# Every target creates and uses the virtual environment in .venv.

VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
NB     ?= notebooks/01_data_and_metrics.ipynb

.DEFAULT_GOAL := help
.PHONY: help setup test book chapter lint format data colab-cells gpu-wheels clean clean-all

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

setup: $(STAMP)  ## create .venv and install mlcl with the book and test tools

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || \
		{ echo "mlcl needs Python 3.10 or newer: run make PYTHON=python3.11 ..."; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

test: setup  ## run the test suite: unit tests, chapters 02-08 via `mlcl sweep quick`, 01 and 09 under nbval
	$(PY) -m pytest

book: setup  ## execute the chapters on the built-in data and build the HTML into _build/html
	$(VENV)/bin/jupyter-book build . --warningiserror --keep-going

chapter: setup  ## execute one chapter in place, e.g. make chapter NB=notebooks/02_baseline.ipynb
	$(VENV)/bin/jupyter execute --inplace $(NB)

lint: setup  ## ruff
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check mlcl tests

format: setup  ## ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format mlcl tests

colab-cells: setup  ## rewrite each chapter's Colab set-up cell from repository.url in _config.yml
	$(PY) tools/colab_cells.py

data: data/synthetic/mlcl_synthetic.json  ## write the built-in synthetic data set to data/synthetic

data/synthetic/mlcl_synthetic.json: | $(STAMP)
	$(VENV)/bin/mlcl data synth --out data/synthetic

# pydantic and pycocotools for the device machine's Python 3.12, which has PyTorch but not them
# at the versions of .venv (benchmarks/gpu_record.sh installs them there from this folder)
gpu-wheels: setup  ## download the wheels benchmarks/gpu_record.sh needs on a lent GPU into .gpu-wheels
	$(PY) -m pip download --quiet --dest .gpu-wheels --only-binary :all: --no-deps \
		--python-version 3.12 --platform manylinux2014_x86_64 \
		--platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
		$$($(PY) -m pip freeze | grep -iE '^(pydantic|pydantic[-_]core|annotated[-_]types|typing[-_]inspection|typing[-_]extensions|pycocotools)==')

clean:  ## remove the built book, caches and run directories
	rm -rf _build .pytest_cache .ruff_cache runs notebooks/runs

clean-all: clean  ## also remove .venv and the generated data
	rm -rf $(VENV) data .gpu-wheels
