# Two commands on a fresh machine: `make demo` and `make test`. Each sets up what it needs:
# a virtual environment in .venv with spurcore and every plugin under plugins/ installed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PLUGINS := $(patsubst %/pyproject.toml,%,$(wildcard plugins/*/pyproject.toml))
STAMP := $(VENV)/.installed

.PHONY: install test demo bench clean

$(STAMP): pyproject.toml $(wildcard plugins/*/pyproject.toml)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]' $(addprefix -e ,$(PLUGINS))
	touch $(STAMP)

install: $(STAMP)

test: install
	$(BIN)/python -m pytest -q

demo: install
	$(BIN)/spur run examples/erm.toml --out runs/demo --resume

bench: install
	$(BIN)/python benchmarks/overhead.py

clean:
	rm -rf $(VENV) runs
