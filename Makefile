# The two set-up commands of README.md.
#   make all   install into .venv/, train the models (two lanes side by side) and run the main job: every notebook on
#              the mini profile, executed copies in outputs/
#   make test  install into .venv/, train the models the same way, and run the tests (unit tests + every notebook)
PARAMS ?= params/mini.yaml
PY := .venv/bin/python

.PHONY: all test setup notebooks sync
all: setup
	$(PY) -m koclip_lib.run --params $(PARAMS) --build --jobs 2
	$(PY) -m koclip_lib.run --params $(PARAMS)

test: setup
	$(PY) -m koclip_lib.run --params $(PARAMS) --build --jobs 2
	$(PY) -m pytest

setup:
	bash scripts/setup.sh

# Run one notebook: make notebooks ONLY=01
notebooks: setup
	$(PY) -m koclip_lib.run --params $(PARAMS) $(if $(ONLY),--only $(ONLY))

# Regenerate the .ipynb of each notebook from its jupytext .py (the .py is the reviewed source)
sync:
	.venv/bin/jupytext --sync notebooks/*.py
