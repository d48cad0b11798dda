# One command per habit; CI calls these verbatim (.ci/run).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install run test lint format proto bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[all,dev]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv with aimesh, every runtime and the dev tools

run: $(STAMP)  ## the demo on the embedded defaults (bus, registry, the fraud model)
	$(BIN)/aimesh demo

test: $(STAMP)  ## the whole test suite
	$(BIN)/pytest

lint: $(STAMP)  ## ruff and mypy --strict (the package, then the benchmarks)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	cd bench && MYPYPATH=../src ../$(BIN)/mypy --config-file ../pyproject.toml --strict *.py

bench: $(STAMP)  ## every benchmark, each printing ratios against a baseline of the same run
	$(BIN)/python bench/serving.py
	$(BIN)/python bench/gateway.py
	$(BIN)/python bench/jobs.py
	$(BIN)/python bench/lake.py
	$(BIN)/python bench/async_inference.py

proto: $(STAMP)  ## regenerate the OIP gRPC stubs from proto/ (a test checks they are current)
	PATH=$(CURDIR)/$(BIN):$$PATH bash scripts/gen_proto.sh

format: $(STAMP)
	$(BIN)/ruff check --fix src tests bench
	$(BIN)/ruff format src tests bench

clean:  ## stop the embedded bus of ./.aimesh and remove the venv and the home
	-$(BIN)/aimesh bus stop
	rm -rf $(VENV) .aimesh
