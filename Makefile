# Quick start (see README): `make serve` installs and runs the service, `make test` installs and
# runs the whole test suite. Both create ./.venv and install Graphviz (Debian package) if missing.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8080

.PHONY: serve test lint demo bench diagrams graphviz clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

graphviz:
	@command -v dot >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "Installing Graphviz (Debian package graphviz) for SVG diagrams..."; \
	    apt-get update -qq >/dev/null && apt-get install -y -qq graphviz >/dev/null; \
	  else \
	    echo "Graphviz is missing: install the Debian package 'graphviz' (sudo apt-get install graphviz) for SVG diagrams."; \
	  fi; }

serve: $(VENV)/.installed graphviz
	$(BIN)/tollgate serve --host $(HOST) --port $(PORT)

lint: $(VENV)/.installed
	$(BIN)/ruff check tollgate/*.py workflows service bench tests examples
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint graphviz
	$(BIN)/python -m pytest -q

demo: $(VENV)/.installed
	$(BIN)/tollgate demo

diagrams: $(VENV)/.installed graphviz
	for wf in signup payment_method credit invoice; do \
	  $(BIN)/tollgate diagram $$wf --format mermaid -o docs/diagrams/$$wf.mmd && \
	  $(BIN)/tollgate diagram $$wf --format svg -o docs/diagrams/$$wf.svg; done

bench: $(VENV)/.installed
	$(BIN)/tollgate bench

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache .mypy_cache .hypothesis
