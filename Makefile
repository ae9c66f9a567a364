# Entry points named in the README. `make install` is idempotent.
VENV ?= $(CURDIR)/.venv
PY := $(VENV)/bin/python

.PHONY: install demo compose-demo test test-fast bench lint
install:
	bash scripts/install.sh

demo: install
	$(VENV)/bin/ciliate demo

# The same demo on Docker (docker-compose.yml), against the engine DOCKER_HOST
# names; COMPOSE="docker-compose" picks Debian's compose 1.29 over v2.
compose-demo: install
	$(PY) -m demo.compose_run $(if $(COMPOSE),--compose "$(COMPOSE)")

# The whole suite on two workers: kernel tests of two modules may run side by
# side, an exclusive one runs alone (a lock, tests/conftest.py).
test: install
	$(PY) -m pytest -q -ra -n 2 --dist loadscope

# The edit loop: no kernel, Envoy, Docker or etcd; no root needed.
test-fast: install
	$(PY) -m pytest -q -ra -n 2 -m "not privileged and not envoy and not etcd"

bench: install
	$(PY) bench/run_all.py

lint: install
	$(VENV)/bin/lint-imports
