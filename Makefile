# The README's commands. Each installs the project (once per pyproject.toml change) first.
PYTHON ?= python

.PHONY: install demo test lint format

.install.stamp: pyproject.toml
	$(PYTHON) -m pip install -e ".[dev,faces,optuna,slurm]"
	touch $@

install: .install.stamp

demo: install  ## train SCN on the built-in synthetic faces (no download, a few CPU minutes)
	$(PYTHON) run.py experiment=demo

test: install  ## the test suite (CPU, a few minutes)
	$(PYTHON) -m pytest

lint: install
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

format: install
	$(PYTHON) -m ruff check --fix .
	$(PYTHON) -m ruff format .
