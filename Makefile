# One command per habit; CI calls these verbatim (.ci/run).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# The exact dependency set (pyproject's extras all + dev, Python 3.11, Linux x86_64, with
# hashes) that install, run, test and CI use; `make lock` re-resolves it.
LOCK   := requirements.lock
LATEST := .venv-latest
# The resolver `make lock` runs, from a throwaway venv (never .venv, never a dependency).
UV     := uv>=0.5,<1

.PHONY: install lock run test test-latest lint fuzz format proto bench clean

# A new lock rebuilds the venv from nothing: what is installed is exactly the lock.
$(STAMP): $(LOCK) pyproject.toml
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes --no-deps -r $(LOCK)
	$(BIN)/pip install --quiet --no-deps -e .
	$(BIN)/pip check
	touch $(STAMP)

install: $(STAMP)  ## create .venv: the locked dependencies, then aimesh itself (editable)

lock:  ## re-resolve requirements.lock to the newest releases pyproject's ranges allow
	tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	$(PYTHON) -m venv "$$tmp" && "$$tmp/bin/pip" install --quiet '$(UV)' && \
	"$$tmp/bin/uv" pip compile pyproject.toml --extra all --extra dev --upgrade \
		--python-version 3.11 --python-platform x86_64-unknown-linux-gnu \
		--generate-hashes --custom-compile-command 'make lock' --quiet -o $(LOCK)

run: $(STAMP)  ## the demo on the embedded defaults (bus, registry, the fraud model)
	$(BIN)/aimesh demo

test: $(STAMP)  ## the whole test suite, on the locked dependencies (a module per worker, at most 4 at once)
	$(BIN)/pytest --numprocesses=auto --maxprocesses=4 --dist=loadfile

test-latest:  ## the suite on the newest releases the ranges allow, in .venv-latest (drift, on purpose)
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/pip install --quiet --upgrade pip
	$(LATEST)/bin/pip install --quiet --upgrade -e '.[all,dev]'
	$(LATEST)/bin/pip list --format=freeze > $(LATEST)/installed.txt
	$(LATEST)/bin/pytest

lint: $(STAMP)  ## ruff and mypy --strict (the package, then the benchmarks)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	cd bench && MYPYPATH=../src ../$(BIN)/mypy --config-file ../pyproject.toml --strict *.py

fuzz: $(STAMP)  ## schemathesis against every service's OpenAPI document on a real stack (a few minutes)
	$(BIN)/python tests/fuzz/run.py

bench: $(STAMP)  ## every benchmark, each printing ratios against a baseline of the same run
	$(BIN)/python bench/serving.py
	$(BIN)/python bench/gateway.py
	$(BIN)/python bench/jobs.py
	$(BIN)/python bench/lake.py
	$(BIN)/python bench/async_inference.py
	$(BIN)/python bench/stack.py
	$(BIN)/python bench/resilience.py

proto: $(STAMP)  ## regenerate the OIP gRPC stubs from proto/ (a test checks they are current)
	PATH=$(CURDIR)/$(BIN):$$PATH bash scripts/gen_proto.sh

format: $(STAMP)
	$(BIN)/ruff check --fix src tests bench
	$(BIN)/ruff format src tests bench

clean:  ## stop the embedded bus of ./.aimesh and remove the venvs and the home
	-$(BIN)/aimesh bus stop
	rm -rf $(VENV) $(LATEST) .aimesh
