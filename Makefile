# The two commands: `make test` (set up and run the tests) and `make demo` (set up and run the platform).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE := ai-platform:$(VERSION)

.PHONY: install test demo down lint protos bench clean image lab

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

# uPlot (MIT), the dashboard's charts: the npm package's built files and licence, copied at build time and served
# from web/vendor/ (not committed), so the page works offline.
UPLOT_VERSION := 1.6.32
web/vendor/uPlot.iife.min.js:
	@command -v npm >/dev/null || { command -v apt-get >/dev/null && apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm; } || \
		{ echo "npm is needed once to fetch uPlot for the dashboard's charts: install npm"; exit 1; }
	rm -rf .web-build && mkdir -p .web-build web/vendor
	cd .web-build && npm pack --silent uplot@$(UPLOT_VERSION) >/dev/null && tar xzf uplot-$(UPLOT_VERSION).tgz
	cp .web-build/package/dist/uPlot.iife.min.js .web-build/package/dist/uPlot.min.css web/vendor/
	cp .web-build/package/LICENSE web/vendor/uPlot.LICENSE
	rm -rf .web-build

# Swagger UI and ReDoc (Apache-2.0, MIT), the API docs at /docs and /redoc: served by the gateway from web/vendor/
# like uPlot, so the docs work offline.
SWAGGER_UI_VERSION := 5.35.0
REDOC_VERSION := 2.5.0
web/vendor/swagger-ui/swagger-ui-bundle.js web/vendor/redoc/redoc.standalone.js: web/vendor/uPlot.iife.min.js
	rm -rf .web-build && mkdir -p .web-build web/vendor/swagger-ui web/vendor/redoc
	cd .web-build && npm pack --silent swagger-ui-dist@$(SWAGGER_UI_VERSION) redoc@$(REDOC_VERSION) >/dev/null \
		&& mkdir swagger redoc && tar xzf swagger-ui-dist-$(SWAGGER_UI_VERSION).tgz -C swagger \
		&& tar xzf redoc-$(REDOC_VERSION).tgz -C redoc
	cp .web-build/swagger/package/swagger-ui-bundle.js .web-build/swagger/package/swagger-ui.css web/vendor/swagger-ui/
	cp .web-build/swagger/package/LICENSE web/vendor/swagger-ui/LICENSE
	# ReDoc's sidebar shows a logo from its CDN: the page's own icon instead, so nothing leaves the gateway.
	sed 's#https://cdn.redoc.ly/redoc/logo-mini.svg#/favicon.svg#g' .web-build/redoc/package/bundles/redoc.standalone.js \
		> web/vendor/redoc/redoc.standalone.js
	cp .web-build/redoc/package/LICENSE web/vendor/redoc/LICENSE
	rm -rf .web-build

install: $(STAMP) web/vendor/uPlot.iife.min.js web/vendor/swagger-ui/swagger-ui-bundle.js

test: install /usr/bin/chromium
	$(PY) -m ruff check .
	$(PY) -m pytest

# Start the whole platform (reused when it is already up) and run the MNIST example through it. PORT=BASE moves
# all seven ports together (gateway BASE, storage BASE+1, scheduler BASE+2, inference BASE+3, metrics BASE+4..6).
PORT ?=
demo: install
	@$(VENV)/bin/aip status >/dev/null 2>&1 || \
		$(VENV)/bin/aip up --detach $(if $(PORT),--port '$(PORT)' --port-hint PORT)
	$(VENV)/bin/aip demo mnist
	@echo
	@echo "The platform keeps serving; stop it with: make down (or aip down)"
	@echo "Use aip from this directory: source .venv/bin/activate (then aip status, aip models ls, aip --help),"
	@echo "or call it as .venv/bin/aip. The Python client and the notebooks find the platform the same way."

down: install
	$(VENV)/bin/aip down

# JupyterLab (and ipywidgets, for the notebooks' progress bars) in the venv, opened on notebooks/. The notebooks use
# the platform `make demo` left running, or start one themselves.
lab: install
	$(PY) -m pip install -q 'jupyterlab>=4' 'ipywidgets>=8'
	cd notebooks && ../$(VENV)/bin/jupyter lab

# The platform's image, $(IMAGE), with docker where a Docker engine runs, else podman (installed and set up for
# this host with apt); without an image registry the base comes from Debian's packages. See deploy/image.sh.
image: install
	deploy/image.sh

lint: install
	$(PY) -m ruff check .

protos: install
	$(PY) -m ai_platform.protos.generate

bench: install
	for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b; done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
