# tvmcomp: `make run` (set up + main job) and `make test` (set up + test suite).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup setup-arm run test clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# aarch64 cross toolchain + qemu-user-static (apt; root or sudo) and the aarch64 TVM runtime
# (from the aarch64 PyPI wheels, into build/aarch64/). The ARM / C++ deploy tests skip
# themselves when it is missing, so a failure here only warns.
ARM_READY := build/aarch64/.ready
$(ARM_READY): scripts/setup_arm.sh | $(STAMP)
	@scripts/setup_arm.sh && touch $@ || echo "warning: scripts/setup_arm.sh failed; ARM tests will be skipped" >&2

setup-arm: $(ARM_READY)

run: $(STAMP)
	$(VENV)/bin/tvmcomp run

test: $(STAMP) $(ARM_READY)
	$(PY) -m pytest -q

clean:
	rm -rf runs build .pytest_cache
