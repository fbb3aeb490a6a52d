# The two commands of the README: `make demo` and `make test`. Both set everything up first.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
export MALLOC_MMAP_THRESHOLD_ := 2147483647
export MALLOC_TRIM_THRESHOLD_ := 4294967295

.PHONY: setup demo test lint

setup:
	@scripts/setup.sh

demo: setup
	$(BIN)/mdiexit profile models/mobilenetv2-fmnist
	$(BIN)/mdiexit evaluate models/mobilenetv2-fmnist

test: setup lint
	$(BIN)/pytest

lint: setup
	$(BIN)/ruff check src tests
