# Two commands do everything on a fresh machine: `make study` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
RUN    ?= demo
CONFIG ?= configs/demo.yaml

.PHONY: help study test install bench data-coco weights shared-coco isegm isegm-custom policy policy-synthetic clean-venv

# Install into .venv when the pins changed (pip takes torch/torchvision from this machine's disk).
# sam2 is an sdist whose build imports torch: it is built last, against the torch just installed (an
# isolated build would install a second torch with its CUDA libraries into a temporary folder), and
# with SAM2_BUILD_CUDA=0 (no CUDA extension: it only serves SAM 2's optional hole filling).
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	grep -v '^sam2==' requirements.txt > $(VENV)/requirements-but-sam2.txt
	$(PY) -m pip install -q -r $(VENV)/requirements-but-sam2.txt
	SAM2_BUILD_CUDA=0 $(PY) -m pip install -q --no-deps --no-build-isolation $$(grep '^sam2==' requirements.txt)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

## Install into .venv (when requirements.txt or pyproject.toml changed)
install: $(STAMP)

## List the targets with what they do (the "## " line above each target)
help:
	@awk '/^## /{doc=substr($$0,4); next} /^[a-zA-Z_-]+:/{if(doc!=""){split($$0,t,":"); printf "  %-18s %s\n", t[1], doc}; doc=""; next} {doc=""}' $(MAKEFILE_LIST)

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

## Real images: the 341-image COCO sample in ../shared/data/coco-sample (read in place)
shared-coco: $(STAMP)
	$(VENV)/bin/samstudy run --config configs/shared-coco.yaml --run shared-coco

## GrabCut + Berkeley click benchmarks (../shared/data/isegm): NoC@85/90
isegm: $(STAMP)
	$(VENV)/bin/samstudy run --config configs/isegm.yaml --run isegm

## The same benchmarks for the custom model trained by `make shared-coco` (run that first)
isegm-custom: $(STAMP)
	$(VENV)/bin/samstudy run --config configs/isegm-custom.yaml --run isegm-custom

## The labeling-policy experiment on COCO vehicles and pedestrians
policy: $(STAMP)
	$(VENV)/bin/samstudy run --config configs/policy-automotive.yaml --run policy-automotive

## The same policy experiment on the synthetic probe set (no external data)
policy-synthetic: $(STAMP)
	$(VENV)/bin/samstudy run --config configs/policy-synthetic.yaml --run policy-synthetic

## COCO 2017 val + train + annotations into data/coco (needs internet; MD5 verified)
data-coco: $(STAMP)
	$(VENV)/bin/samstudy download coco --dest data/coco

## Checkpoint into data/weights (needs internet): MODEL=vit_h | sam_hq_vit_b | mobile_sam | efficientvit_sam_l0 | ...
weights: $(STAMP)
	$(VENV)/bin/samstudy download model --model $${MODEL:-vit_h} --dest data/weights

## Remove .venv
clean-venv:
	rm -rf $(VENV)
