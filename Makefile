# Entry points named in the README. `make install` is idempotent.
VENV ?= $(CURDIR)/.venv
PY := $(VENV)/bin/python

.PHONY: install demo compose-demo test bench lint
install:
	bash scripts/install.sh

demo: install
	$(VENV)/bin/ciliate demo

# The same demo on Docker (docker-compose.yml), against the engine DOCKER_HOST
# names; COMPOSE="docker-compose" picks Debian's compose 1.29 over v2.
compose-demo: install
	$(PY) -m demo.compose_run $(if $(COMPOSE),--compose "$(COMPOSE)")

test: install
	$(PY) -m pytest -q -ra

bench: install
	$(PY) bench/run_all.py

lint: install
	$(VENV)/bin/lint-imports
