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

# The suite's interpreters (pytest's workers, every `ciliate` a test starts)
# keep their bytecode in .venv/pycache even where PYTHONDONTWRITEBYTECODE is
# set: without it each one compiles the project from source, and pytest
# rewrites every test module's asserts again, on every run (on a loaded
# machine ~20 s before the fast tier's first test, 4 s with the cache).
# (scripts/install.sh writes the project's own bytecode beside the sources,
# for `ciliate` run outside the tests; git ignores it.)
PYTEST := env -u PYTHONDONTWRITEBYTECODE PYTHONPYCACHEPREFIX=$(VENV)/pycache $(PY) -m pytest

# The whole suite on two workers: kernel tests of two modules may run side by
# side, an exclusive one runs alone (a lock, tests/conftest.py).
test: install
	$(PYTEST) -q -ra -n 2 --dist loadscope

# The edit loop: no kernel, Envoy, Docker or etcd; no root needed.
test-fast: install
	$(PYTEST) -q -ra -n 2 -m "not privileged and not envoy and not etcd"

bench: install
	$(PY) bench/run_all.py

lint: install
	$(VENV)/bin/lint-imports
