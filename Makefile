# flowerbed: every entry point a user or CI needs. Each target installs what it uses.
SHELL := /bin/bash
PY := .venv/bin/python
# The Pulumi program's environment (requirements/program.in; README.md, "Two Python environments").
PROGRAM_PY := .venv-program/bin/python
# Tests of the program (its components under mocks, the real engine) run in the program environment;
# every other test in the Flower environment.
PROGRAM_TESTS := tests/components tests/engine
# pytest with options $(1) in both environments; fails when either run fails.
pytest-both = $(PROGRAM_PY) -m pytest $(1) $(PROGRAM_TESTS); program=$$?; \
  $(PY) -m pytest $(1) $(addprefix --ignore=,$(PROGRAM_TESTS)); flower=$$?; exit $$((program || flower))
STACK ?= dev

.PHONY: venv venv-program test test-fast federate toolchain cluster-binaries cluster cluster-down up preview destroy consortium images data run bench bench-learning bench-program bench-rounds bench-pods clean bench-stragglers test-images restore-state

venv:
	@tools/ensure-venv

# Only the program's environment (no torch): enough for preview, up and destroy.
venv-program:
	@tools/ensure-venv program

# The whole suite. Engine tests need the Pulumi CLI and plugins, live and pods tests the control-plane
# and node binaries, the image and pods tests the images: all built (once, cached) first, side by
# side; then three pytest runs (tools/test-suites: two side by side, then the real nodes alone).
test: venv
	@$(MAKE) --no-print-directory -j3 toolchain cluster-binaries test-images
	@tools/test-suites

# The images as the tests and make cluster use them (buildah; reused when unchanged).
test-images:
	@BUILDER=buildah REGISTRY=localhost/flowerbed TAG=local tools/build-images

# Everything but the real Pulumi engine, the live control planes, the image builds and real nodes (no Go build).
test-fast: venv
	$(call pytest-both,-m "not engine and not live and not images and not pods")

# APP=DIR runs any Flower App directory instead of training/; ARGS passes more options.
federate: venv
	$(PY) -m federate $(if $(APP),--app $(APP)) $(ARGS)

toolchain:
	@tools/toolchain

# etcd, kube-apiserver/controller-manager/scheduler and kwok, built from Go modules once (cached).
cluster-binaries: venv
	@$(PY) -m tools.live.build

# Local Kubernetes control planes (etcd, kube-apiserver, controllers, kwok) for STACK's clusters.
cluster: venv toolchain
	@tools/cluster up $(STACK) $(if $(APP),--app $(abspath $(APP)))

cluster-down: venv toolchain
	@tools/cluster down $(STACK)

up: venv-program toolchain
	@tools/stack up $(STACK)

preview: venv-program toolchain
	@tools/stack preview $(STACK)

destroy: venv-program toolchain
	@tools/stack destroy $(STACK)

# A coordinator's hub stack and two hospitals' site stacks (examples/consortium), each in its own project
# copy and backend under out/consortium/, exchanging only public files; lists the private keys in each state.
consortium: venv-program toolchain
	@$(PROGRAM_PY) -m tools.engine.consortium

images:
	@tools/build-images

# Study data onto a site's study-data volume of a live stack, through the Kubernetes API (tools/ops/data.py).
data: venv-program toolchain
	@$(PROGRAM_PY) -m tools.ops.data $(STACK) $(if $(SITE),--site $(SITE)) $(if $(DATASET),--dataset $(DATASET)) \
	  $(if $(FROM),--from $(abspath $(FROM))) $(if $(REPLACE),--replace)

# Submit the training app (or APP=DIR) to a deployed stack, a line per round, results to out/<stack>/runs/ (tools/ops/run.py).
run: venv toolchain
	@$(PY) -m tools.ops.run $(STACK) $(if $(APP),--app $(abspath $(APP))) $(ARGS)

# Put a backup of the SuperLink's database back, e.g. to roll a Flower upgrade back (tools/ops/state.py).
restore-state: venv toolchain
	@$(PY) -m tools.ops.state $(STACK) $(if $(BACKUP),--backup $(BACKUP))

bench: venv
	PYTHONPATH=training $(PY) -m bench $(ARGS)

# NIID-Bench-shaped: rewrites the table in bench/README.md and bench/learning.png.
bench-learning: venv
	PYTHONPATH=training $(PY) -m bench learning $(ARGS)

# The program under mocks and real-engine previews at 10, 100 and 1,000 sites (bench/README.md).
bench-program: venv-program toolchain
	$(PROGRAM_PY) -m bench.program $(ARGS)

# Seconds per round: the local federation vs Flower's simulation runtime (Ray, in its own environment,
# built here on first use) and vs the polling floor (bench/README.md).
bench-rounds: venv
	@tools/ensure-venv bench-simulation
	$(PY) -m bench.rounds $(ARGS)

# The federation in real pods (make cluster STACK=pods) vs make federate, the same run config (bench/README.md).
bench-pods: venv toolchain cluster-binaries
	$(PY) -m bench.pods $(ARGS)

# One slow site (k = 1, 4, 16): sync FedAvg waiting for all, with a round timeout, and FedBuff.
bench-stragglers: venv
	PYTHONPATH=training $(PY) -m bench stragglers $(ARGS)

clean:
	rm -rf out .pytest_cache
