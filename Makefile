# Two entry points for a fresh machine: `make demo` (the main job) and `make test` (the test suite).
VENV ?= .venv
PY := $(VENV)/bin/python
ONEFORMER := $(VENV)/bin/oneformer
DEMO ?= demo

.PHONY: install demo test test-fast lint schemas clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]' 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -c "import oneformer.cli, torch, transformers, pytorch_lightning"
	touch $@

# Main job: synthetic data in TAO's bucket layout -> train the CPU smoke model -> evaluate -> inference.
demo: install
	$(ONEFORMER) synth --out $(DEMO)/data --train 64 --val 16 --size 128
	$(ONEFORMER) train -e $(DEMO)/data/spec.yaml results_dir=$(DEMO)/results
	$(ONEFORMER) evaluate -e $(DEMO)/data/spec.yaml results_dir=$(DEMO)/results
	$(ONEFORMER) inference -e $(DEMO)/data/spec.yaml results_dir=$(DEMO)/results
	@echo "demo finished: metrics in $(DEMO)/results/evaluate/metrics.json, overlays in $(DEMO)/results/inference/overlays"

test: install
	$(PY) -m pytest -q -rs

test-fast: install
	$(PY) -m pytest -q -m "not slow"

lint: install
	$(VENV)/bin/ruff check .

schemas: install
	$(ONEFORMER) schema -o specs/schemas

clean:
	rm -rf $(DEMO) .pytest_cache
