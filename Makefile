# SAME on Triton. `make demo` and `make test` are the two quick-start commands.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install repository demo serve test test-unit lint clean

install: $(STAMP)

# torch is installed first and pinned: 2.13.0 is the CPU wheel this machine keeps on disk;
# letting a resolver choose would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# Train the victim and SAME's reconstructor, export ONNX, calibrate, write model_repository/.
repository: $(STAMP)
	$(PY) -m same_defense.export.build

# Build if needed, serve, send benign and attack-like queries, write reports/demo.json.
demo: $(STAMP)
	$(PY) -m same_defense.demo

# The embedded Triton server in the foreground (Ctrl-C stops it).
serve: $(STAMP)
	$(VENV)/bin/same-serve

test: $(STAMP)
	$(PY) -m pytest -q

test-unit: $(STAMP)
	$(PY) -m pytest -q -m "not server"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf artifacts .triton logs reports
