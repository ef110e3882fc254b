# The two commands of the README, and the set-up they share.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP_INSTALL := $(PY) -m pip install --quiet --disable-pip-version-check -c ci/constraints.txt

.PHONY: parity test bench clean

parity: $(VENV)
	$(PY) -m pytest suites --keras-backends=all

test: $(VENV)
	$(PY) -m pytest tests -ra

bench: $(VENV)
	$(PY) benchmarks/run.py

# The set-up alone: a virtual environment with the three backends (CPU builds) and the
# plugin installed editable. Re-run when pyproject.toml or the pins change.
$(VENV): pyproject.toml ci/constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --upgrade pip
	$(PIP_INSTALL) -e '.[all,onnx,test]'
	touch $(VENV)

clean:
	rm -rf $(VENV) reports/*
