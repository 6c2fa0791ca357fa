# SAME on Triton. `make demo` and `make test` are the two quick-start commands.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: help install system-deps repository demo serve test test-unit lint clean loadtest under-attack bench evaluate soak cluster deploy docs variants gpu-check
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# List the targets with the first line of the comment above each.
help:
	@awk '/^# / { if (!doc) doc = substr($$0, 3); next } \
	  /^[a-z][a-z-]*:/ { split($$0, t, ":"); if (doc) printf "  %-12s %s\n", t[1], doc } \
	  { doc = "" }' $(MAKEFILE_LIST)

# Create .venv and install the project with its dev tools (torch pinned to the CPU wheel).
install: $(STAMP)

# torch is installed first and pinned: 2.13.0 is the CPU wheel this machine keeps on disk;
# letting a resolver choose would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml harness/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[dev]" -e harness
	touch $(STAMP)

# apt-get install redis-server and nginx-light when missing (the tests start their own).
# redis-server holds account state shared by several gateways;
# nginx (the gRPC load balancer of the two-replica cluster; nginx-light has grpc_pass).
system-deps:
	@command -v redis-server >/dev/null || { echo "installing redis-server (apt-get)"; \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q redis-server; }
	@command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || { echo "installing nginx (apt-get)"; \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q nginx-light; }

# Train the victim and SAME's reconstructor, export ONNX, calibrate, write model_repository/.
# --force: `make repository` means to (re)build it; a bare same-build refuses to replace one.
repository: $(STAMP)
	$(PY) -m same_defense.export.build --force

# Build if needed, serve, send benign and attack-like queries, write reports/demo.json.
demo: $(STAMP)
	$(PY) -m same_harness.demo

# Triton on loopback behind the public gateway (gRPC 8001, HTTP 8000); Ctrl-C stops it.
serve: $(STAMP)
	$(VENV)/bin/same-serve

# Locust load test of `same` against the bare `victim`: reports/loadtest/.
# Build if needed, serve, run Locust headless against `same` and the bare `victim`
# (60 s each, same user mix); reports/loadtest/{summary.json,comparison.png,*.csv,*.html}.
# Options: make loadtest LOADTEST_ARGS="--run-time 2m --users 40" (see --help).
loadtest: $(STAMP)
	$(PY) -m same_harness.load.loadtest $(LOADTEST_ARGS)

# Honest users alone, beside attackers, alone again (Locust, protected endpoint): reports/under_attack.json.
# Build if needed; three Locust runs of 45 s on one server (gateway + Triton): honest p50/p99
# with and without attackers in one run. UNDER_ATTACK_ARGS="--run-time 2m" etc.
under-attack: $(STAMP)
	$(PY) -m same_harness.load.under_attack $(UNDER_ATTACK_ARGS)

# 11-minute soak of the protected endpoint under benign and attacker load: reports/soak.json.
# Build if needed; 11 min of Locust (benign + attacker users) against the protected endpoint
# (gateway + Triton), sampling server/stub memory; reports/soak.json. SOAK_ARGS="..." as above.
soak: $(STAMP)
	$(PY) -m same_harness.load.soak $(SOAK_ARGS)

# Closed-loop throughput and latency of `same` against `victim`: reports/bench.json.
# Build if needed; closed-loop benchmark (batch 1/8/64 x concurrency 1/4/16) of `same`,
# `victim` (as many instances as the reconstructor: equal footing), through the gateway and
# in-process; batch-1 added latency and gateway CPU per request; reports/bench.json.
# BENCH_ARGS="..." as above.
bench: $(STAMP)
	$(PY) -m same_harness.bench.run $(BENCH_ARGS)

# Reconstructor variants, CPU cost, per-query AUROC and the account test's detection delay:
# reports/variants.{json,md}. Candidates: onnxruntime optimisations, int8, MAE presets, the
# cnn3-small shadow, repeat trainings with other seeds; one table. Builds the missing ones
# first (14 builds, 20 s to 4 min each on 2 cores: about 30 minutes in all, then about 8 to
# measure). VARIANTS_ARGS="--baseline cpu" judges against the former default.
variants: $(STAMP)
	$(PY) -m same_harness.bench.variants --build $(VARIANTS_ARGS)

# The GPU path end to end on an NVIDIA machine: reports/gpu.json (untested here: no GPU).
# Needs `pip install -e ".[gpu]"` and a CUDA build of torch 2.13.0. Paper preset trained with --device cuda, CUDA/CPU parity, `make bench` on KIND_GPU, a short
# `make evaluate`; reports/gpu.json. Stops with the reason where there is no CUDA.
gpu-check: $(STAMP)
	$(PY) -m same_harness.bench.gpu_check $(GPU_CHECK_ARGS)

# Attacks x defenses, account-level and shadow-recipe evaluations: reports/evaluation.* etc.
# Every extraction attack (4,000 queries each) against every defense, probabilities and labels
# only; reports/evaluation.{json,md} + plots; 17-20 min on 2 shared cores. Then the
# account-level defense against adaptive thieves (one image per request, 1 to 400 accounts,
# linked or not, dilution) and its cost to 10,000 honest and shifted customers, about 50 min:
# reports/accounts.{json,md} + plots; and the shadow recipes' per-query AUROC:
# reports/recipes.json; and how far a look-alike clone moves with its training run alone
# (same answers, four seeds, about 8 min): reports/clone_spread.{json,md}.
# EVALUATE_ARGS="--quick" / ACCOUNTS_ARGS="--quick" for smoke runs.
evaluate: $(STAMP)
	$(PY) -m same_harness.evaluation.run $(EVALUATE_ARGS)
	$(PY) -m same_harness.evaluation.accounts $(ACCOUNTS_ARGS)
	$(PY) -m same_harness.evaluation.recipes
	$(PY) -m same_harness.evaluation.clone_spread

# Two Tritons and two gateways behind nginx, distributed Locust, faults: reports/cluster.json.
# Build if needed; on loopback: Redis, 2 Tritons, 2 gateway processes, nginx in front of each
# tier; distributed Locust (master + 2 workers) against it and against 1 Triton + 1 gateway;
# kills a Triton and a gateway under load, freezes Redis; reports/cluster.json.
cluster: $(STAMP) system-deps
	$(PY) -m same_harness.cluster.run $(CLUSTER_ARGS)

# Render the Kubernetes manifests (deploy/k8s/*.yaml) from the serving settings.
deploy: $(STAMP)
	$(VENV)/bin/same-deploy

# docs/results.md and the README's headline table, from reports/*.json (run the targets first).
docs: $(STAMP)
	$(PY) -m same_harness.docs

# The whole test suite: real tritonserver, redis-server and nginx (installed if missing).
test: $(STAMP) system-deps
	$(PY) -m pytest -q

# The tests that start no server.
test-unit: $(STAMP)
	$(PY) -m pytest -q -m "not server"

# ruff check (lint rules in pyproject.toml) and ruff format --check; pre-commit runs the same.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Remove build artifacts, logs, reports and the prepared Triton backends.
clean:
	rm -rf artifacts .triton logs reports
