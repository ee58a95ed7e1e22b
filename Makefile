# make run: the daemon in the foreground on SQLite under ./storage, with demo data.
# make test: every test, on the newest dependencies and on Debian 12's versions.
PYTHON ?= python3
VENV := .venv
VENV_DEB12 := .venv-deb12
DEV_CONFIG := examples/dev.toml

.PHONY: run test test-newest test-debian12 system-deps bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet --upgrade -e '.[test]'
	touch $@

$(VENV_DEB12)/.installed: pyproject.toml tests/requirements-debian12.txt
	$(PYTHON) -m venv $(VENV_DEB12)
	$(VENV_DEB12)/bin/pip install --quiet -r tests/requirements-debian12.txt
	$(VENV_DEB12)/bin/pip install --quiet --no-deps -e .
	touch $@

run: $(VENV)/.installed
	$(VENV)/bin/python -m ratecared.demo --config $(DEV_CONFIG)
	exec $(VENV)/bin/python -m ratecared.demo_app --config $(DEV_CONFIG) -- $(VENV)/bin/ratecared --config $(DEV_CONFIG)

# What the tests need from Debian: MariaDB (started by the tests in a temp dir),
# curl (the seed's own check), venv for the system Python.
system-deps:
	@missing=""; \
	command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || missing="$$missing mariadb-server"; \
	command -v curl >/dev/null 2>&1 || missing="$$missing curl"; \
	$(PYTHON) -c 'import ensurepip' 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" != 0 ]; then echo "make test needs:$$missing (run as root, or apt-get install them)"; exit 1; fi; \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

test: system-deps test-newest test-debian12

test-newest: $(VENV)/.installed
	@echo "== tests on the newest dependencies"
	RATECARED_REQUIRE_MARIADB=1 $(VENV)/bin/python -m pytest -q

test-debian12: $(VENV_DEB12)/.installed
	@echo "== tests on Debian 12's dependency versions"
	RATECARED_REQUIRE_MARIADB=1 $(VENV_DEB12)/bin/python -m pytest -q -p no:cacheprovider

bench: $(VENV)/.installed
	$(VENV)/bin/python bench/breaker_socket.py

clean:
	rm -rf $(VENV) $(VENV_DEB12) storage build *.egg-info
