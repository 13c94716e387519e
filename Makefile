# flowerbed: every entry point a user or CI needs. Each target installs what it uses.
SHELL := /bin/bash
PY := .venv/bin/python
STACK ?= dev

.PHONY: venv test test-fast federate toolchain up preview destroy images bench clean

venv:
	@tools/ensure-venv

# The whole suite. Engine tests need the Pulumi CLI and plugins, so the toolchain comes first.
test: venv toolchain
	$(PY) -m pytest

# Everything but the real Pulumi engine (no Go build needed).
test-fast: venv
	$(PY) -m pytest -m "not engine"

# APP=DIR runs any Flower App directory instead of training/; ARGS passes more options.
federate: venv
	$(PY) -m federate $(if $(APP),--app $(APP)) $(ARGS)

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

clean:
	rm -rf out .pytest_cache
