# Two commands for a newcomer: `make demo` and `make test`. Both set up .venv themselves.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed-stamp
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT := false

.PHONY: install demo test clean-demo

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -c requirements.lock -e '.[dev]'
	touch $(STAMP)

demo: install
	python -m tools.demo --target merge_history

test: install
	python -m pytest -q

clean-demo:
	rm -rf data/delta data/history data/quarantine data/clean models metrics reports source.db
