# Two commands for a newcomer: `make demo` and `make test`. Both set up .venv themselves.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed-stamp
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT := false

.PHONY: install demo test test-fast clean-demo reproduce

# The commit-msg hook (.githooks/: a subject of at most 72 characters, CONTRIBUTING.md) is turned
# on for a git checkout.
install: $(STAMP)
	@git rev-parse --is-inside-work-tree >/dev/null 2>&1 && git config core.hooksPath .githooks || true

$(STAMP): pyproject.toml requirements.lock
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -c requirements.lock -e '.[dev,spark]'
	touch $(STAMP)

demo: install
	python -m tools.demo
	@$(MAKE) --no-print-directory stop >/dev/null
	@$(MAKE) --no-print-directory serve-bg
	@python -m tools.demo --next-steps

# Azurite (the Azure Blob emulator the azure:// remote tests start), installed into the project,
# never committed (node_modules/ is ignored).
AZURITE := node_modules/.bin/azurite-blob
$(AZURITE):
	npm install --prefix . --no-save --no-package-lock --no-audit --no-fund azurite@3.37.0

# Headless Chromium (Debian's package), for the test that `dvc plots show` draws offline.
CHROMIUM := /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
$(CHROMIUM):
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium \
	  || { $(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive \
	       apt-get install -y -q --no-install-recommends chromium; }

# checkov (IaC static analysis, tests/test_deploy_iac.py) in a virtualenv of its own under .tools/
# (ignored by the .gitignore the target writes there): it pins many packages differently from the
# project. Exact versions: deploy/terraform/checkov.lock.
CHECKOV := .tools/checkov/bin/checkov
$(CHECKOV): deploy/terraform/checkov.lock
	mkdir -p .tools && printf '*\n' > .tools/.gitignore
	rm -rf .tools/checkov && $(PYTHON) -m venv .tools/checkov
	.tools/checkov/bin/pip install -q --disable-pip-version-check -r deploy/terraform/checkov.lock
	touch $(CHECKOV)

.PHONY: checkov
checkov: $(CHECKOV)

# The whole suite, in a random order (pytest-randomly prints the seed; --randomly-seed=N replays).
test: install $(AZURITE) $(CHROMIUM) $(CHECKOV)
	python -m pytest -q

# The edit loop: no Spark, no browser, no demo, none of the slow end-to-end runs (markers in
# pyproject.toml); a few minutes here. CI runs `make test`.
test-fast: install
	python -m pytest -q -m "not spark and not browser and not demo and not slow"

# Rebuild a past model from its commit and check it is byte-identical (docs/reproducibility.md).
reproduce: install
	@test -n "$(COMMIT)$(RUN)" || { echo "usage: make reproduce COMMIT=<sha> (or RUN=<mlflow run id>)" >&2; exit 2; }
	python -m tools.reproduce $(if $(RUN),--run-id $(RUN),$(COMMIT))

clean-demo:
	rm -rf data/delta data/history data/quarantine data/clean models metrics reports source.db
	-git update-ref -d refs/heads/dailyrec-demo

# The recommendations API (docs/serving.md): serving/server.py (granian) on BIND, reading Redis at
# REDIS_URL.
# `serve` runs in the foreground; `serve-bg` starts it in the background (pid in .serve.pid,
# log in logs/serve.log), prints one curl call and its answer, and returns; `stop` stops it.
BIND ?= 127.0.0.1:8000
SERVE_PID := .serve.pid
SERVE := DAILYREC_BIND=$(BIND) python -m serving.server

.PHONY: serve serve-bg stop

serve: install
	$(SERVE)

serve-bg: install
	@if [ -f $(SERVE_PID) ] && kill -0 $$(cat $(SERVE_PID)) 2>/dev/null; then \
		echo "the API is already running (pid $$(cat $(SERVE_PID))); make stop first" >&2; exit 1; fi
	@mkdir -p logs
	@$(SERVE) </dev/null >>logs/serve.log 2>&1 & echo $$! > $(SERVE_PID)
	@user=$$(python -m serving.example http://$(BIND)) && \
		echo "API running on http://$(BIND) (pid $$(cat $(SERVE_PID)); make stop to stop it)" && \
		echo "\$$ curl -s 'http://$(BIND)/recommendations/$$user?n=5'" && \
		curl -s "http://$(BIND)/recommendations/$$user?n=5" && echo

# SIGTERM, then up to 15 s: stopping can take the workers' kill timeout (10 s, serving/server.py),
# and a 10 s wait said "stopped" while the server still ran; past 15 s, SIGKILL.
stop:
	@if [ ! -f $(SERVE_PID) ]; then echo "the API is not running (no $(SERVE_PID))"; exit 0; fi; \
	pid=$$(cat $(SERVE_PID)); kill $$pid 2>/dev/null || true; \
	for i in $$(seq 75); do kill -0 $$pid 2>/dev/null || break; sleep 0.2; done; \
	if kill -0 $$pid 2>/dev/null; then \
		echo "the API (pid $$pid) was still running 15 s after SIGTERM: killing it and its workers"; \
		pkill -KILL -P $$pid 2>/dev/null; kill -KILL $$pid 2>/dev/null; \
		for i in $$(seq 50); do kill -0 $$pid 2>/dev/null || break; sleep 0.2; done; fi; \
	if kill -0 $$pid 2>/dev/null; then echo "the API (pid $$pid) is still running" >&2; exit 1; fi; \
	rm -f $(SERVE_PID); echo "the API stopped (pid $$pid)"

# The MLflow UI over MLFLOW_TRACKING_URI (default sqlite:///mlflow.db), on 127.0.0.1:MLFLOW_PORT;
# docs/modeling.md shows how to compare the daily runs. Ctrl-C stops it.
MLFLOW_PORT ?= 5000
.PHONY: mlflow-ui
mlflow-ui: install
	mlflow ui --backend-store-uri "$${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db}" \
		--host 127.0.0.1 --port $(MLFLOW_PORT)

# Hyperparameter search with Optuna, scored like evaluate (docs/modeling.md); APPLY=1 writes the
# best values into params.yaml's train section.
TRIALS ?= 30
.PHONY: tune
tune: install
	python -m tools.tune --trials $(TRIALS) $(if $(APPLY),--apply)

# The scheduler's command (docs/operations.md): one day (DATE, default today UTC) or a backfill
# (FROM, TO); COMMIT=1 commits params.yaml + dvc.lock after each good day.
.PHONY: daily
daily: install
	python -m stages.daily $(if $(FROM),--from $(FROM) $(if $(TO),--to $(TO)),$(if $(DATE),--date $(DATE))) $(if $(COMMIT),--commit)
