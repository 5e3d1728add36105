# crispy: `make run` starts the runtime, `make test` runs the whole suite.
# Both do all setup first (system packages, node preparation, .venv); setup is idempotent.
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: setup system venv run test lint bench clean

setup: system venv

system:
	@sh scripts/setup-system.sh

$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	@$(VENV)/bin/pip install -q --upgrade pip
	@$(VENV)/bin/pip install -q -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

run: setup
	exec $(VENV)/bin/crispyd

test: setup
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/pytest

lint: venv
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy

bench: venv
	@CRISPY_BENCH=1 sh scripts/setup-system.sh
	$(VENV)/bin/python -m bench

clean:
	rm -rf $(VENV) build src/*.egg-info
