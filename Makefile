# Two commands on a fresh machine (Python >= 3.11 and make): `make dev` runs the service with
# its Bakkt sandbox, `make test` runs the tests. Both install what they need first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install dev demo reset serve sandbox migrate test lint typecheck check fault bench clean

$(STAMP): requirements-dev.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements-dev.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

dev: $(STAMP)
	$(BIN)/fiat-onramp dev

# `make dev`, and the demo page (http://127.0.0.1:8000/demo) opened in the browser.
demo: $(STAMP)
	$(BIN)/fiat-onramp dev --open-demo

# Forget the embedded database and the sandbox's state together, then start afresh.
reset: $(STAMP)
	$(BIN)/fiat-onramp dev --reset

serve: $(STAMP)
	$(BIN)/fiat-onramp serve

sandbox: $(STAMP)
	$(BIN)/fiat-onramp sandbox

migrate: $(STAMP)
	$(BIN)/fiat-onramp migrate

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy app bakkt_sandbox

check: lint typecheck test

fault: $(STAMP)
	$(BIN)/python -m pytest -q -m fault tests/fault

# `make bench WORKERS=2` runs the service with two uvicorn workers; BENCH_ARGS passes more
# options (`--profile`, `--driver python`, see `fiat-onramp bench --help`).
WORKERS ?= 1
bench: $(STAMP)
	$(BIN)/fiat-onramp bench --workers $(WORKERS) $(BENCH_ARGS)

# hadolint, yamllint, the Kubernetes manifests against the schemas, promtool (docs/operations.md);
# installs its own tools (deploy/requirements-ops.txt into deploy/.venv, Debian's prometheus).
.PHONY: deploy-lint
deploy-lint:
	bash deploy/lint.sh

clean:
	rm -rf $(VENV) .data .pytest_cache .mypy_cache .ruff_cache
