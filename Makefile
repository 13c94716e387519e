# flowerbed: every entry point a user or CI needs. Each target installs what it uses.
SHELL := /bin/bash
PY := .venv/bin/python
STACK ?= dev

.PHONY: venv test test-fast federate toolchain up preview destroy images bench bench-learning clean

venv:
	@tools/ensure-venv

# The whole suite. Engine tests need the Pulumi CLI and plugins, so the toolchain comes first.
test: venv toolchain
	$(PY) -m pytest

# Everything but the real Pulumi engine (no Go build needed).
test-fast: venv
	$(PY) -m pytest -m "not engine"

federate: venv
	$(PY) -m federate

toolchain:
	@tools/toolchain

up: venv toolchain
	@tools/stack up $(STACK)

preview: venv toolchain
	@tools/stack preview $(STACK)

destroy: venv toolchain
	@tools/stack destroy $(STACK)

images:
	@tools/build-images

bench: venv
	PYTHONPATH=training $(PY) -m bench $(ARGS)

# NIID-Bench-shaped: rewrites the table in bench/README.md and bench/learning.png.
bench-learning: venv
	PYTHONPATH=training $(PY) -m bench learning $(ARGS)

clean:
	rm -rf out .pytest_cache
