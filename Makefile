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

.PHONY: run test test-newest test-debian12 system-deps deb deb-deps bench clean

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
# curl (the seed's own check), venv for the system Python, and debootstrap and
# systemd-nspawn to boot a Debian 12 for the system test.
system-deps:
	@missing=""; \
	command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || missing="$$missing mariadb-server"; \
	command -v curl >/dev/null 2>&1 || missing="$$missing curl"; \
	[ -x /usr/sbin/debootstrap ] || missing="$$missing debootstrap"; \
	[ -x /usr/bin/systemd-nspawn ] || missing="$$missing systemd-container"; \
	$(PYTHON) -c 'import ensurepip' 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" != 0 ]; then echo "make test needs:$$missing (run as root, or apt-get install them)"; exit 1; fi; \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

test: system-deps test-newest test-debian12 test-system

test-newest: $(VENV)/.installed
	@echo "== tests on the newest dependencies"
	RATECARED_REQUIRE_MARIADB=1 $(VENV)/bin/python -m pytest -q --ignore=tests/system

test-debian12: $(VENV_DEB12)/.installed
	@echo "== tests on Debian 12's dependency versions"
	RATECARED_REQUIRE_MARIADB=1 $(VENV_DEB12)/bin/python -m pytest -q -p no:cacheprovider --ignore=tests/system

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
		--exclude='*.egg-info' -cf - . | tar -C $(DEB_BUILD) -xf -
	cp -r packaging/debian $(DEB_BUILD)/debian
	cp systemd/ratecared.service $(DEB_BUILD)/debian/ratecared.service
	cd $(DEB_BUILD) && env PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg-buildpackage -us -uc -b
	env PATH=/usr/sbin:/usr/bin:/sbin:/bin lintian --fail-on error,warning build/deb/ratecared_$(VERSION)_*.changes
	@echo "built $(DEB)"

deb-deps:
	@missing=""; for p in $(DEB_BUILD_DEPS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" != 0 ]; then echo "make deb needs:$$missing"; exit 1; fi; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

bench: $(VENV)/.installed
	$(VENV)/bin/python bench/breaker_socket.py
	$(VENV)/bin/python bench/jobs.py

clean:
	rm -rf $(VENV) $(VENV_DEB12) storage build *.egg-info
