# lbd: `make demo` and `make test` work on a fresh Debian host as root.
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: all host venv test test-unit test-bpf test-netns demo bench install clean

all: venv

# System packages, kernel-header links for bcc, bpffs (idempotent, fast when done).
host:
	/usr/bin/python3 -m lbd.hostsetup install

# A venv that sees Debian's bcc; lbd installed editable with its test extras.
$(STAMP): pyproject.toml lbd/_maglev.c
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

bench: venv
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) build *.egg-info
