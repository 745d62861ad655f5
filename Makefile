# The README's two commands: `make train` (main job) and `make test` (test suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup train test test-fast bench clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

train: setup
	$(PY) train.py $(ARGS)

test: setup
	$(PY) -m pytest $(ARGS)

# Every baseline recipe under LOSO on the default corpus: one leaderboard, multirun/<dataset>/<time>/table.md.
bench: setup
	$(PY) train.py -m 'experiment=glob(bench/*)' $(ARGS)

test-fast: setup
	$(PY) -m pytest -m "not slow" $(ARGS)

clean:
	rm -rf $(VENV) cache outputs multirun
