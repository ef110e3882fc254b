# The two commands of the README, and the set-up they share.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# A GPU job sets CONSTRAINTS=ci/constraints-gpu.txt EXTRAS=gpu,test and
# PARITY_ARGS=--keras-devices=gpu (see ci/workflows/parity.yml).
CONSTRAINTS ?= ci/constraints.txt
EXTRAS ?= all,onnx,test
PARITY_ARGS ?=
PIP_INSTALL := $(PY) -m pip install --quiet --disable-pip-version-check -c $(CONSTRAINTS)

.PHONY: parity test bench clean

parity: $(VENV)
	$(PY) -m pytest suites --keras-backends=all -n 2 $(PARITY_ARGS)

test: $(VENV)
	$(PY) -m pytest tests -ra

bench: $(VENV)
	$(PY) benchmarks/run.py

# The set-up alone: a virtual environment with the three backends (CPU builds) and the
# plugin installed editable. Re-run when pyproject.toml or the pins change.
$(VENV): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --upgrade pip
	$(PIP_INSTALL) -e '.[$(EXTRAS)]'
	touch $(VENV)

clean:
	rm -rf $(VENV) reports/*
