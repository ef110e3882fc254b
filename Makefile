# The two commands of the README, and the set-up they share.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The lock: every package `make .venv` installs, pinned (`make lock` writes it). A GPU job sets
# CONSTRAINTS=ci/constraints-gpu.txt EXTRAS=gpu,onnx,test PARITY_ARGS=--keras-devices=gpu
# (see ci/workflows/parity.yml).
CONSTRAINTS ?= ci/constraints.txt
# Keras 2 (tf-keras), installed without its `tensorflow` requirement (see the file).
KERAS2_PIN := ci/keras2.txt
EXTRAS ?= all,onnx,test
PARITY_ARGS ?=
PIP_INSTALL := $(PY) -m pip install --quiet --disable-pip-version-check -c $(CONSTRAINTS)
# torch's CPU build is not on PyPI (PyPI's torch is the CUDA build): where pip's own
# configuration does not find the locked build, it comes from PyTorch's index.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
# `make lock` runs pip-tools in a virtual environment of its own.
LOCK_TOOLS := .lock-tools
LOCK_ARGS ?=
PIP_COMPILE := CUSTOM_COMPILE_COMMAND="make lock" $(LOCK_TOOLS)/bin/pip-compile --quiet --strip-extras \
	--unsafe-package keras-parity --no-emit-index-url --no-emit-find-links $(LOCK_ARGS)

.PHONY: parity test bench env lock clean

parity: $(VENV)
	$(PY) -m pytest suites --keras-backends=all -n 2 $(PARITY_ARGS)

# Each test module runs the plugin once, in a module fixture: --dist loadfile keeps a module's
# tests on one xdist worker, so that run is not made twice.
test: $(VENV)
	$(PY) -m pytest tests -ra -n 2 --dist loadfile

bench: $(VENV)
	$(PY) benchmarks/run.py

# The set-up alone: a virtual environment holding exactly the lock's versions (checked at the
# end), with the plugin installed editable. Re-run when pyproject.toml or the lock change.
$(VENV): pyproject.toml $(CONSTRAINTS) $(KERAS2_PIN)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) pip setuptools
	$(PIP_INSTALL) --no-build-isolation -e '.[$(EXTRAS)]' || { \
		echo "make: retrying with PyTorch's index for the locked torch build ($(TORCH_INDEX))"; \
		$(PIP_INSTALL) --no-build-isolation --extra-index-url $(TORCH_INDEX) -e '.[$(EXTRAS)]'; }
	$(PIP_INSTALL) --no-deps -r $(KERAS2_PIN)
	$(PY) ci/check_lock.py $(CONSTRAINTS) $(KERAS2_PIN)
	touch $(VENV)

# A second environment for --keras-env: .venv-$(ENV), the lock with PACKAGES in place of what they
# name (keras-nightly replaces keras), e.g. make env ENV=k313 PACKAGES="keras==3.13.2".
env: $(VENV)
	@test -n "$(ENV)" || { echo 'make env: name it, e.g. make env ENV=k313 PACKAGES="keras==3.13.2"'; exit 2; }
	$(PY) ci/make_env.py "$(ENV)" $(CONSTRAINTS) "$(PACKAGES)"

# Regenerate both locks from pyproject.toml and the releases in ci/constraints*.in, after
# changing either. Pins that still resolve are kept; `make lock LOCK_ARGS=--upgrade` moves
# every package to its newest release.
lock: $(LOCK_TOOLS)
	$(PIP_COMPILE) --extra all --extra onnx --extra test -o ci/constraints.txt pyproject.toml ci/constraints.in
	$(PIP_COMPILE) --extra gpu --extra onnx --extra test -o ci/constraints-gpu.txt pyproject.toml ci/constraints-gpu.in

$(LOCK_TOOLS):
	$(PYTHON) -m venv $(LOCK_TOOLS)
	$(LOCK_TOOLS)/bin/python -m pip install --quiet --disable-pip-version-check pip==26.3 pip-tools==7.6.2

clean:
	rm -rf $(VENV) .venv-* $(LOCK_TOOLS) reports/*
