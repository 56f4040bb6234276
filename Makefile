# The two commands a newcomer runs on a fresh Debian machine:
#   make demo   - installs what it needs, then runs head office + daemon + simulated card and printer
#   make test   - installs what it needs, then runs the linter and the test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMPS := .make
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# System packages: the PC/SC stack with the vpcd virtual reader, what pyscard builds against,
# socat for printer ptys, fonts for receipt images, PostgreSQL for the head-office tests.
APT_PACKAGES := pcscd vsmartcard-vpcd libpcsclite-dev swig socat gcc python3-dev python3-venv \
	libusb-1.0-0 fonts-dejavu-core fonts-wqy-microhei postgresql util-linux

.PHONY: all demo test lint bench fuzz system-deps venv clean

all: test

$(STAMPS):
	mkdir -p $(STAMPS)

# Installs only what is missing, so a second run is quick and needs no network.
system-deps: $(STAMPS)/system-deps
$(STAMPS)/system-deps: Makefile | $(STAMPS)
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing system packages: $$missing"; \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	touch $@

venv: $(STAMPS)/venv
$(STAMPS)/venv: setup.cfg pyproject.toml constraints.txt $(STAMPS)/system-deps
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -c constraints.txt -e '.[test,bench]'
	touch $@

lint: venv
	$(VENV)/bin/ruff check .

test: venv lint
	$(PY) -m pytest -q

demo: venv
	$(VENV)/bin/smartpos demo

bench: venv
	for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

fuzz: venv
	mkdir -p fuzz/corpus
	$(PY) fuzz/make_seeds.py fuzz/corpus
	$(PY) fuzz/tlv_fuzz.py -max_total_time=300 fuzz/corpus

clean:
	rm -rf $(STAMPS) build *.egg-info .pytest_cache
