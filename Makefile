# Two commands do everything on a fresh machine: `make study` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
RUN    ?= demo
CONFIG ?= configs/demo.yaml

.PHONY: study test install bench data-coco weights shared-coco isegm policy policy-synthetic clean-venv

# Install into .venv when the pins changed (pip takes torch/torchvision from this machine's disk).
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

install: $(STAMP)

## The whole study on the embedded synthetic default -> results/demo/report/index.html
study: $(STAMP)
	$(VENV)/bin/samstudy run --config $(CONFIG) --run $(RUN)

## Unit, property and pipeline tests (installs first when needed)
test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

## Benchmarks (print measured ratios; not part of `make test`)
bench: $(STAMP)
	$(PY) bench/bench_engine.py
	$(PY) bench/bench_custom.py

## Real-image runs (need ../shared/data or a downloaded COCO)
shared-coco: $(STAMP)
	$(VENV)/bin/samstudy run --config configs/shared-coco.yaml --run shared-coco

isegm: $(STAMP)
	$(VENV)/bin/samstudy run --config configs/isegm.yaml --run isegm

policy: $(STAMP)
	$(VENV)/bin/samstudy run --config configs/policy-automotive.yaml --run policy-automotive

## The same policy experiment on the synthetic probe set (no external data)
policy-synthetic: $(STAMP)
	$(VENV)/bin/samstudy run --config configs/policy-synthetic.yaml --run policy-synthetic

## Downloads for the real study (need internet)
data-coco: $(STAMP)
	$(VENV)/bin/samstudy download coco --dest data/coco

# MODEL: vit_b/vit_l/vit_h (SAM), or a registry name: sam_hq_vit_b, mobile_sam, efficientvit_sam_l0, sam2.1_hiera_t...
weights: $(STAMP)
	$(VENV)/bin/samstudy download model --model $${MODEL:-vit_h} --dest data/weights

clean-venv:
	rm -rf $(VENV)
