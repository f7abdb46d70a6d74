# The two set-up commands of README.md.
#   make all   install into .venv/ and run the main job: every notebook on the mini profile, executed copies in outputs/
#   make test  install into .venv/ and run the tests (unit tests + every notebook, on the mini profile)
PARAMS ?= params/mini.yaml
PY := .venv/bin/python

.PHONY: all test setup notebooks sync
all: setup
	$(PY) -m koclip_lib.run --params $(PARAMS)

test: setup
	$(PY) -m pytest

setup:
	bash scripts/setup.sh

# Run one notebook: make notebooks ONLY=01
notebooks: setup
	$(PY) -m koclip_lib.run --params $(PARAMS) $(if $(ONLY),--only $(ONLY))

# Regenerate the .ipynb of each notebook from its jupytext .py (the .py is the reviewed source)
sync:
	.venv/bin/jupytext --sync notebooks/*.py
