# Two commands on a fresh machine: `make demo` and `make test`. Each sets up what it needs:
# a virtual environment in .venv with spurcore, every plugin under plugins/ and the third-party
# example plugins under examples/third_party/ installed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PLUGIN_PROJECTS := $(wildcard plugins/*/pyproject.toml examples/third_party/*/pyproject.toml)
PLUGINS := $(patsubst %/pyproject.toml,%,$(PLUGIN_PROJECTS))
STAMP := $(VENV)/.installed

.PHONY: install test demo bench docs clean

# spurcore-sweep is named plainly too: pip lets the entry with extras ([ray]) satisfy no other
# plugin's requirement of it (spurcore-tracking's)
$(STAMP): pyproject.toml $(PLUGIN_PROJECTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]' $(addprefix -e ,$(PLUGINS)) \
		-e 'plugins/spurcore-sweep[ray]'  # Ray for the sweep's Ray launcher, tested in CI
	touch $(STAMP)

install: $(STAMP)

test: install
	$(BIN)/python -m pytest -q

# ERM, the seeds' three methods and DFR on waterdigits, 2 seeds, two runs at a time (about 9
# minutes on 2 cores); launched again, it skips finished runs. Then one table (report.md) and one
# figure (wga.png). `make demo DEMO_METHODS=all` adds every other installed mitigation but the 22
# baselines of spurcore-baselines (plugin `baselines`, blocked by DEMO_PLUGINS: with them the
# demo would take hours); `make demo DEMO_METHODS=all DEMO_PLUGINS=` runs every installed method
# (plugins/spurcore-baselines/tests/test_demo.py reads these commands).
DEMO_OUT ?= runs/demo
DEMO_SEEDS ?= 0,1
DEMO_PLUGINS ?= -p no:baselines
DEMO_METHODS ?= fairdropout,neurontune,prunedtwin,dfr,dfr-class
demo: install
	-$(BIN)/spur $(DEMO_PLUGINS) sweep examples/erm.toml --methods $(DEMO_METHODS) --seeds $(DEMO_SEEDS) \
		--grid prunedtwin.train.epochs=1 --jobs 2 --out $(DEMO_OUT)
	$(BIN)/spur $(DEMO_PLUGINS) report $(DEMO_OUT) --selector val-worst-class

bench: install
	$(BIN)/python benchmarks/overhead.py

docs: install
	$(BIN)/python docs/make_hook_reference.py
	$(BIN)/python docs/make_api_reference.py

clean:
	rm -rf $(VENV) runs
