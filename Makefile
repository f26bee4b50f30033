# Two entry points for a fresh machine: `make demo` (the main job) and `make test` (the test suite).
VENV ?= .venv
PY := $(VENV)/bin/python
ONEFORMER := $(VENV)/bin/oneformer
DEMO ?= demo
DEMO_ALL ?= demo-all

.PHONY: install demo demo-all test test-fast lint schemas clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]' 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -c "import oneformer.cli, torch, transformers, pytorch_lightning"
	touch $@

# Main job: synthetic data in TAO's bucket layout -> the whole pipeline (AutoML, best checkpoint, evaluate,
# export, INT8, TensorRT where present, inference overlays, MLflow registry), everything under $(DEMO)/.
demo: install
	$(ONEFORMER) synth --out $(DEMO)/data --train 64 --val 16 --size 128
	cd $(DEMO) && ONEFORMER_CACHE=$$PWD/cache PREFECT_HOME=$$PWD/prefect PREFECT_SERVER_ANALYTICS_ENABLED=false \
	  $(abspath $(PY)) -m flows.pipeline --spec data/spec.yaml --results-dir results \
	  --mlflow-uri sqlite:///$$PWD/mlflow.db --train data/train --eval data/eval --inference data/inference \
	  --calibration data/calibration

# The three networks (OneFormer, Mask2Former, SegFormer) through the same pipeline on the same synthetic images,
# registered as three models, then their mIoU, latency (eager, ORT FP32, INT8) and size side by side.
demo-all: install
	mkdir -p $(DEMO_ALL) && cd $(DEMO_ALL) && ONEFORMER_CACHE=$$PWD/cache PREFECT_HOME=$$PWD/prefect \
	  PREFECT_SERVER_ANALYTICS_ENABLED=false $(abspath $(PY)) -m flows.compare --out .

test: install
	$(PY) -m pytest -q -rs --durations=20 -n auto --dist loadgroup

# Fast tier (under 2 minutes on 2 cores): training steps, the actions and every predictor on a random-weights
# checkpoint, staging against S3; the slow tier adds learning, the pipeline and a Prefect server + worker.
test-fast: install
	$(PY) -m pytest -q -m "not slow" -n auto --dist loadgroup

lint: install
	$(VENV)/bin/ruff check .

schemas: install
	$(ONEFORMER) schema -o specs/schemas

clean:
	rm -rf $(DEMO) $(DEMO_ALL) .pytest_cache
