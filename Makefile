# Entry points named in the README. `make install` is idempotent.
VENV ?= $(CURDIR)/.venv
PY := $(VENV)/bin/python

.PHONY: install demo test bench lint
install:
	bash scripts/install.sh

demo: install
	$(VENV)/bin/ciliate demo

test: install
	$(PY) -m pytest -q -ra

bench: install
	$(PY) bench/run_all.py

lint: install
	$(VENV)/bin/lint-imports
