# Gatehouse — the two commands a newcomer needs are `make run` and `make test`.
# Everything they depend on (virtualenv, packages, generated code) is built here.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
BUF    := $(VENV)/bin/buf
RUFF   := $(VENV)/bin/ruff
STAMP_INSTALL := $(VENV)/.installed
STAMP_GEN     := libs/gatehouse/.generated
PROTO_FILES   := $(shell find protos -name '*.proto' 2>/dev/null)

.PHONY: help install gen run test test-fast lint fmt bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

# Re-install when a top-level package appears (the editable finder maps packages at install time).
TOP_PACKAGES  := $(wildcard libs/*/__init__.py services/*/*/__init__.py)

$(STAMP_INSTALL): pyproject.toml $(TOP_PACKAGES)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

install: $(STAMP_INSTALL) ## create .venv and install Gatehouse with its dev tools

$(STAMP_GEN): $(STAMP_INSTALL) $(PROTO_FILES) scripts/gen_protos.py
	$(PY) scripts/gen_protos.py
	@touch $@

gen: $(STAMP_GEN) ## generate Python contracts from protos/

run: $(STAMP_GEN) ## start all services and the gateway on SQLite (Ctrl-C stops them)
	$(VENV)/bin/gatehouse-run

lint: $(STAMP_GEN) ## ruff, buf lint and buf breaking against main
	$(RUFF) check libs services tests bench scripts examples
	$(RUFF) format --check libs services tests bench scripts examples
	$(BUF) lint
	@if git rev-parse --verify --quiet main >/dev/null && [ -n "$$(git ls-tree -r --name-only main -- protos | grep '\.proto$$')" ]; then \
		echo "buf breaking against main"; \
		rm -rf build/against && mkdir -p build/against/build && \
		git archive main buf.yaml protos | tar -x -C build/against && \
		cp -r build/third_party build/against/build/ && \
		$(BUF) build build/against -o build/against.binpb && \
		$(BUF) build -o build/current.binpb && \
		$(BUF) breaking build/current.binpb --against build/against.binpb; \
	else echo "buf breaking: skipped (main has no protos yet)"; fi

fmt: $(STAMP_INSTALL) ## format the Python code
	$(RUFF) format libs services tests bench scripts examples
	$(RUFF) check --fix libs services tests bench scripts examples

test: $(STAMP_GEN) lint ## run every test (SQLite and PostgreSQL)
	$(PY) scripts/ensure_postgres.py
	$(PY) -m pytest

test-fast: $(STAMP_GEN) ## tests without lint and without the stack tests
	$(PY) -m pytest -m 'not stack'

bench: $(STAMP_GEN) ## run every benchmark in bench/ (prints figures; recorded in docs/)
	$(PY) scripts/ensure_postgres.py
	@for f in bench/bench_*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

clean: ## remove the virtualenv, generated code and local data
	rm -rf $(VENV) build .gatehouse $(STAMP_GEN) libs/gatehouse/_descriptors.binpb \
		libs/gatehouse/identity libs/gatehouse/tenancy libs/gatehouse/authz libs/gatehouse/audit libs/gatehouse/type
