# lbd: `make demo` and `make test` work on a fresh Debian host as root.
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: all host venv test test-unit test-bpf test-netns demo bench install clean deb deb-lock

all: venv

# System packages, kernel-header links for bcc, bpffs (idempotent, fast when done).
host:
	/usr/bin/python3 -m lbd.hostsetup install

# A venv that sees Debian's bcc; lbd installed editable with its test extras.
$(STAMP): pyproject.toml lbd/dataplane/_maglev.c
	@test -x $(PY) || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,bench]'
	@touch $(STAMP)

venv: host $(STAMP)

test: venv
	$(PY) -m pytest -v tests

test-unit: venv
	$(PY) -m pytest -v -m unit tests

test-bpf: venv
	$(PY) -m pytest -v -m bpf tests

test-netns: venv
	$(PY) -m pytest -v -m netns tests

# Build the namespace lab, run lbd on configs/demo.yaml, send real HTTP through it.
demo: venv
	$(PY) -m lbd.testing.demo

bench: venv
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) build *.egg-info lbd_*.deb

# Install on an edge host: Debian packages (runtime only), a venv under
# $(PREFIX) that sees Debian's bcc, lbd itself (not editable), the systemd unit,
# /etc/default/lbd and /etc/lbd/lbd.yaml unless they exist (never overwritten),
# bpffs mounted. Running it again upgrades lbd in place; then
# `systemctl restart lbd` is hitless. The variables may be overridden (the
# netns tier installs into a temporary directory). The Dockerfile runs
# install-lbd after installing hostsetup's RUNTIME_PACKAGES.
PREFIX      ?= /opt/lbd
ETCDIR      ?= /etc
SYSTEMD_DIR ?= /etc/systemd/system
# every unit in systemd/ (the Debian package ships the same ones: systemd/debian/build.py UNITS)
UNITS       := $(notdir $(wildcard systemd/*.service systemd/*.timer))
BINDIR      ?= /usr/local/bin

install:
	/usr/bin/python3 -m lbd.hostsetup install --runtime-only
	$(MAKE) install-lbd
	if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
	@echo "lbd installed in $(PREFIX) (commands linked in $(BINDIR)). Next: edit $(ETCDIR)/lbd/lbd.yaml," \
	      "check it with lbd check $(ETCDIR)/lbd/lbd.yaml," \
	      "then systemctl enable --now lbd"

.PHONY: install-lbd uninstall
# Neither touches a venv the Debian package installed (make deb; apt upgrades and removes that one).
NOT_THE_PACKAGES = ! dpkg-query -S $(PREFIX)/venv/bin/lbd >/dev/null 2>&1 || { echo "$(PREFIX)/venv belongs" \
	"to the lbd package: upgrade it with apt install ./lbd_*.deb (make deb), remove it with apt remove lbd" >&2; exit 1; }
install-lbd:
	@$(NOT_THE_PACKAGES)
	test -x $(PREFIX)/venv/bin/python || /usr/bin/python3 -m venv --system-site-packages $(PREFIX)/venv
	# one retry: a busy index sometimes answers "no versions" once
	$(PREFIX)/venv/bin/python -m pip install -q . || $(PREFIX)/venv/bin/python -m pip install -q .
	test ! -f README.md || install -m 0644 README.md $(PREFIX)/README.md
	# the docs beside it (the units' Documentation=; README.md links into docs/)
	test ! -d docs || { install -d -m 0755 $(PREFIX)/docs && install -m 0644 docs/*.md $(PREFIX)/docs/; }
	install -d -m 0755 $(BINDIR) $(SYSTEMD_DIR) $(ETCDIR)/default $(ETCDIR)/lbd
	for tool in lbd lbctl lbd-backend; do ln -sfn $(PREFIX)/venv/bin/$$tool $(BINDIR)/$$tool; done
	for unit in $(UNITS); do \
	    sed -e 's|/opt/lbd|$(PREFIX)|g' -e 's|/etc/default/lbd|$(ETCDIR)/default/lbd|g' \
	        -e 's|/etc/lbd/|$(ETCDIR)/lbd/|g' systemd/$$unit > $(SYSTEMD_DIR)/$$unit.tmp && \
	    chmod 0644 $(SYSTEMD_DIR)/$$unit.tmp && mv $(SYSTEMD_DIR)/$$unit.tmp $(SYSTEMD_DIR)/$$unit; \
	done
	test -e $(ETCDIR)/default/lbd || sed -e 's|/etc/lbd/|$(ETCDIR)/lbd/|g' systemd/lbd.env > $(ETCDIR)/default/lbd
	test -e $(ETCDIR)/lbd/lbd.yaml || install -m 0644 configs/lbd.yaml $(ETCDIR)/lbd/lbd.yaml

# Stop forwarding and remove what `make install` put in place, except the
# config ($(ETCDIR)/lbd, $(ETCDIR)/default/lbd) and the Debian packages.
uninstall:
	@$(NOT_THE_PACKAGES)
	if [ -d /run/systemd/system ]; then systemctl disable --now $(UNITS) || true; fi
	if [ -x $(PREFIX)/venv/bin/lbd ] && [ -e $(ETCDIR)/lbd/lbd.yaml ]; then \
	    $(PREFIX)/venv/bin/lbd --teardown --config $(ETCDIR)/lbd/lbd.yaml || true; fi
	rm -f $(addprefix $(SYSTEMD_DIR)/,$(UNITS)) $(BINDIR)/lbd $(BINDIR)/lbctl $(BINDIR)/lbd-backend
	rm -rf $(PREFIX)
	if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi

# The Debian package lbd_<version>_<arch>.deb, here (`apt install ./lbd_*.deb`
# on an edge host; docs/install.md): lbd in its own venv
# under /opt/lbd from the pinned systemd/debian/requirements.lock, the units,
# the conffiles, maintainer scripts; built with dpkg-deb and checked with
# lintian (systemd/debian/build.py says how). DEB_OUT: where it goes.
DEB_OUT ?= .
deb:
	/usr/bin/python3 systemd/debian/build.py --out $(DEB_OUT)

# Re-pin the package's Python dependencies (needs PyPI; review the diff).
deb-lock:
	/usr/bin/python3 systemd/debian/build.py lock
