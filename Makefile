# Tessera — the commands README.md promises. Run `make help` for the list.
SHELL := /bin/bash
CARGO ?= cargo
VENV  ?= .venv
PY    := $(VENV)/bin/python

.PHONY: help run test venv browser-deps lint audit bench clean

help:
	@echo "make run    - run the service on the embedded default (SQLite, generated dev KEK under ./data/)"
	@echo "make test   - set up the Python verifier venv and the browser test (Chromium, playwright-core), then run the whole test suite"
	@echo "make venv   - the Python venv (.venv) with PyJWT, for the README's offline verification"
	@echo "make lint   - cargo fmt --check, clippy -D warnings, offline RustSec audit of Cargo.lock"
	@echo "make bench  - release build, then the figures of issues 2-5 against their targets (about 15 minutes)"

run:
	$(CARGO) run --bin tessera -- serve

# The black-box test verifies tokens with PyJWT; the venv is its only non-Rust dependency.
$(PY): tests/blackbox/requirements.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r tests/blackbox/requirements.txt
	@touch $(PY)

venv: $(PY)

# The browser test drives Debian's Chromium with playwright-core (no browser download).
BROWSER_DEPS := tests/browser/node_modules/playwright-core/package.json
$(BROWSER_DEPS): tests/browser/package-lock.json
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q chromium; \
	  else echo "chromium missing: sudo apt-get install -y chromium (the browser test will be SKIPPED)"; fi; \
	fi
	cd tests/browser && npm ci --no-audit --no-fund --loglevel=error

browser-deps: $(BROWSER_DEPS)

test: venv browser-deps
	$(CARGO) test

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(MAKE) audit

audit:
	python3 ../shared/tools/lock-audit Cargo.lock

bench:
	bash benches/run.sh

clean:
	$(CARGO) clean
	rm -rf $(VENV)
