# The two commands a new user needs: `make test` and `make demo`; each sets itself up.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp
# Build your own Detectron2 checkout into the venv instead of the registry's sources:
#   make setup DETECTRON2_SOURCE=/path/to/detectron2
DETECTRON2_SOURCE ?=
PYTEST_ARGS ?=

.PHONY: setup test test-all check lint clean

setup: $(STAMP)

# Re-runs only when the pins, the package metadata or the compat layer change.
$(STAMP): requirements.txt pyproject.toml $(wildcard detectron2_compat/*.py) $(if $(DETECTRON2_SOURCE),FORCE)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --requirement requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation --editable .
	$(PY) -m detectron2_compat.build $(if $(DETECTRON2_SOURCE),--source $(DETECTRON2_SOURCE))
	$(PY) -m mask_rcnn_ext.check
	@touch $(STAMP)

FORCE:

test: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: setup
	$(PY) -m pytest $(PYTEST_ARGS)

check: setup
	$(PY) -m mask_rcnn_ext.check

lint: setup
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache

.PHONY: demo
# The demo trains our heads on the synthetic data set; it arrives with the user-workflow milestone.
demo: setup
	@echo "make demo is not available yet: it arrives with train_net.py and the synthetic data set" >&2
	@echo "(see README, Status). 'make test' and 'make check' work now." >&2
	@exit 2
