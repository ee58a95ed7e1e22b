# make run: the daemon in the foreground on SQLite under ./storage, with demo data.
# make test: every test, on the newest dependencies and on Debian 12's versions.
PYTHON ?= python3
VENV := .venv
VENV_DEB12 := .venv-deb12
DEV_CONFIG := examples/dev.toml

VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' ratecared/__init__.py)
DEB_BUILD := build/deb/ratecared-$(VERSION)
DEB := build/deb/ratecared_$(VERSION)_all.deb
DEB_BUILD_DEPS := debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools bash-completion \
	lintian fakeroot

.PHONY: run run-deps test test-newest test-debian12 system-deps deb deb-deps bench clean

# Debian packages a target needs: $(call debian-deps,WHO,PACKAGES) installs the
# missing ones when run as root; for anyone else it names them in one line and
# fails. A package is missing when its has_<package> check fails (dpkg -s when
# there is no check), so a tool that is there by other means counts as there.
has_python3-venv = $(PYTHON) -c 'import ensurepip'
has_sqlite3 = command -v sqlite3
has_curl = command -v curl
has_mariadb-server = command -v mariadbd || [ -x /usr/sbin/mariadbd ]
has_debootstrap = [ -x /usr/sbin/debootstrap ]
has_systemd-container = [ -x /usr/bin/systemd-nspawn ]
has_prometheus = command -v promtool
has_php-cli = command -v php
has_php-curl = php -r 'exit(extension_loaded("curl") ? 0 : 1);'
has_phpunit = command -v phpunit
has_nginx-light = command -v nginx || [ -x /usr/sbin/nginx ]
debian-deps = missing=""; \
	$(foreach p,$(2),{ $(or $(has_$(p)),dpkg -s $(p)); } >/dev/null 2>&1 || missing="$$missing $(p)";) \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" != 0 ]; then \
			echo "$(1) needs:$$missing (run as root, or: sudo apt-get install$$missing)" >&2; exit 1; \
		fi; \
		echo "$(1): installing$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

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

# venv for the system Python; sqlite3 and curl for the README's "Try it" steps.
run-deps:
	@$(call debian-deps,make run,python3-venv sqlite3 curl)

run: run-deps $(VENV)/.installed
	$(VENV)/bin/python -m ratecared.demo --config $(DEV_CONFIG)
	exec $(VENV)/bin/python -m ratecared.demo_app --config $(DEV_CONFIG) -- $(VENV)/bin/ratecared --config $(DEV_CONFIG)

# What the tests need from Debian: MariaDB (started by the tests in a temp dir),
# curl (the seed's own check), venv for the system Python, PHP, phpunit and nginx
# for the PHP client and the nginx example, Prometheus with promtool for the
# metrics, and debootstrap and systemd-nspawn to boot a Debian 12 for the system test.
system-deps:
	@$(call debian-deps,make test,mariadb-server curl debootstrap systemd-container python3-venv \
		php-cli php-curl phpunit nginx-light prometheus)

# Set by make test, which installs what they need: these tests fail where it is missing, never skip.
REQUIRE := RATECARED_REQUIRE_MARIADB=1 RATECARED_REQUIRE_PHP=1 RATECARED_REQUIRE_NGINX=1 \
	RATECARED_REQUIRE_PROMETHEUS=1

# The three suites run side by side (2 CPUs are mostly idle while tests wait on
# daemons); each suite's output is printed whole when it ends.
test: system-deps
	@echo "== make test: the newest dependencies, Debian 12's versions and the booted Debian 12, side by side"
	@$(MAKE) --no-print-directory -j3 --output-sync=target test-newest test-debian12 test-system

test-newest: $(VENV)/.installed
	@echo "== tests on the newest dependencies"
	$(REQUIRE) $(VENV)/bin/python -m pytest -q --ignore=tests/system

# The newest dependencies run the daemons on uvloop, Debian 12's versions on asyncio's own loop, and the
# booted Debian 12 on Debian's python3-uvloop, which the package recommends.
test-debian12: $(VENV_DEB12)/.installed
	@echo "== tests on Debian 12's dependency versions, on asyncio's own event loop"
	$(REQUIRE) RATECARED_TEST_EVENT_LOOP=asyncio $(VENV_DEB12)/bin/python -m pytest -q -p no:cacheprovider \
		--ignore=tests/system

# The .deb installed on a Debian 12 booted with systemd (root only; CI is root).
test-system: $(VENV)/.installed deb
	@echo "== system test: the package on a booted Debian 12"
	RATECARED_REQUIRE_SYSTEM=1 $(VENV)/bin/python -m pytest -v -p no:cacheprovider tests/system

# The Debian package, built with debhelper and dh-python from a copy of the tree.
deb: deb-deps
	@grep -q "^ratecared ($(VERSION))" packaging/debian/changelog || \
		{ echo "packaging/debian/changelog has no entry for $(VERSION)"; exit 1; }
	rm -rf build/deb && mkdir -p $(DEB_BUILD)
	tar --exclude=./.git --exclude='./.venv*' --exclude=./build --exclude=./storage --exclude='*/__pycache__' \
		--exclude='*.egg-info' --exclude=./.pytest_cache -cf - . | tar -C $(DEB_BUILD) -xf -
	cp -r packaging/debian $(DEB_BUILD)/debian
	cp systemd/ratecared.service $(DEB_BUILD)/debian/ratecared.service
	cd $(DEB_BUILD) && env PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg-buildpackage -us -uc -b
	env PATH=/usr/sbin:/usr/bin:/sbin:/bin lintian --fail-on error,warning build/deb/ratecared_$(VERSION)_*.changes
	@echo "built $(DEB)"

deb-deps:
	@$(call debian-deps,make deb,$(DEB_BUILD_DEPS))

bench: $(VENV)/.installed
	$(VENV)/bin/python bench/breaker_socket.py
	$(VENV)/bin/python bench/breaker_leases.py
	$(VENV)/bin/python bench/breaker_kill9.py
	$(VENV)/bin/python bench/jobs.py
	$(VENV)/bin/python bench/gains.py
	$(VENV)/bin/python bench/mariadb_purge_pause.py

clean:
	rm -rf $(VENV) $(VENV_DEB12) storage build *.egg-info
