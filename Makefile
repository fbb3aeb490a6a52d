# The two commands of the README: `make demo` and `make test`. Both set everything up first.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
PACKAGE := models/mobilenetv2-fmnist
export MALLOC_MMAP_THRESHOLD_ := 2147483647
export MALLOC_TRIM_THRESHOLD_ := 4294967295
# the emulated devices of the published figures: every bench that names this file emulates the same devices
DEVICES := --device-profile docs/results/device-profile.json

.PHONY: setup demo test lint bench-engine bench-runtime bench-paper bench-chaos bench-serve

setup:
	@scripts/setup.sh

# The shipped model's exit profile, then a short mdi-exit run on the emulated 5-device edge cluster.
demo: setup
	$(BIN)/mdiexit profile $(PACKAGE)
	$(BIN)/mdiexit run --cluster examples/edge4.yaml --mode mdi-exit --admission rate --duration 20 --out runs/demo

test: setup lint
	$(BIN)/pytest

lint: setup
	$(BIN)/ruff check src tests

bench-engine: setup
	$(BIN)/mdiexit bench engine $(PACKAGE)

bench-runtime: setup
	$(BIN)/mdiexit bench runtime --cluster examples/edge4.yaml $(DEVICES) --out docs/results/runtime.json

bench-paper: setup
	$(BIN)/mdiexit bench paper --cluster examples/edge4.yaml $(DEVICES) --out docs/results/edge4

bench-chaos: setup
	$(BIN)/mdiexit bench chaos --cluster examples/edge4.yaml $(DEVICES) --out docs/results/chaos

bench-serve: setup
	$(BIN)/mdiexit bench serve --cluster examples/edge4.yaml $(DEVICES) --out docs/results/serve.json
