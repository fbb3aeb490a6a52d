# The two commands of the README: `make demo` and `make test`. Both set everything up first.
# Also: `make test-fast` (the pure parts, under a minute) and `make docs` (the manual, into site/).
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
PACKAGE := models/mobilenetv2-fmnist
export MALLOC_MMAP_THRESHOLD_ := 2147483647
export MALLOC_TRIM_THRESHOLD_ := 4294967295
# the emulated devices of the published figures: every bench that names this file emulates the same devices
DEVICES := --device-profile docs/results/device-profile.json

.PHONY: setup demo test test-fast docs site lint bench-engine bench-runtime bench-paper bench-energy bench-overhead bench-join bench-chaos bench-serve bench-multisource bench-rollout

setup:
	@scripts/setup.sh

# The shipped model's exit profile, then a short mdi-exit run on the emulated 5-device edge cluster.
demo: setup
	$(BIN)/mdiexit profile $(PACKAGE)
	$(BIN)/mdiexit run --cluster examples/edge4.yaml --mode mdi-exit --admission rate --duration 20 --out runs/demo

# everything: lint, the manual (a broken link fails), every test tier
test: setup lint site
	$(BIN)/pytest

# the pure parts (policies, protocol, cores, ledger, gate, simulator, config, inputs): no cluster, no training, no root
test-fast: setup
	$(BIN)/pytest -m "not cluster and not training and not root and not slow"

# the documentation site: the reference pages regenerated from the code, then a strict build (warnings fail)
docs: setup
	$(BIN)/python scripts/gen_reference.py
	@$(MAKE) --no-print-directory site

# the strict build alone, of the pages as committed (`make test` runs it; a test checks the reference is current)
site: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir site

lint: setup
	$(BIN)/ruff check src tests scripts

bench-engine: setup
	$(BIN)/mdiexit bench engine $(PACKAGE)

bench-runtime: setup
	$(BIN)/mdiexit bench runtime --cluster examples/edge4.yaml $(DEVICES) --out docs/results/runtime.json

bench-paper: setup
	$(BIN)/mdiexit bench paper --cluster examples/edge4.yaml $(DEVICES) --out docs/results/edge4

bench-overhead: setup
	$(BIN)/mdiexit bench overhead --cluster examples/edge4.yaml $(DEVICES) --out docs/results/overhead.json

bench-join: setup
	$(BIN)/mdiexit bench join --cluster examples/edge4.yaml $(DEVICES) --out docs/results/join.json

bench-rollout: setup
	$(BIN)/mdiexit bench rollout --cluster examples/edge4.yaml $(DEVICES) --out docs/results

bench-multisource: setup
	$(BIN)/mdiexit bench multisource --cluster examples/cameras3.yaml $(DEVICES) --out docs/results

bench-energy: setup
	$(BIN)/mdiexit bench energy --cluster examples/edge4.yaml $(DEVICES) --out docs/results/energy.json

bench-chaos: setup
	$(BIN)/mdiexit bench chaos --cluster examples/edge4.yaml $(DEVICES) --out docs/results/chaos

bench-serve: setup
	$(BIN)/mdiexit bench serve --cluster examples/edge4.yaml $(DEVICES) --dilation 4 --out docs/results/serve-dilated.json
	$(BIN)/mdiexit bench serve --cluster examples/edge4.yaml $(DEVICES) --out docs/results/serve.json
