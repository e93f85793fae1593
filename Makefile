# The two commands: `make test` (set up and run the tests) and `make demo` (set up and run the platform).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: install test lint protos bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

# Debian's Chromium for the browser tests (Playwright drives it; it cannot download browsers here).
/usr/bin/chromium:
	@command -v apt-get >/dev/null || { echo "install Chromium at /usr/bin/chromium for the browser tests"; exit 1; }
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

install: $(STAMP) /usr/bin/chromium

test: install
	$(PY) -m ruff check .
	$(PY) -m pytest

lint: install
	$(PY) -m ruff check .

protos: install
	$(PY) -m ai_platform.protos.generate

bench: install
	for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b; done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
