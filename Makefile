# The two set-up commands of README.md.
#   make all   install into .venv/, train the models (two lanes side by side) and run the main job: every notebook on
#              the mini profile, executed copies in outputs/
#   make test  install into .venv/, train the models the same way, and run the tests (unit tests + every notebook) in
#              two pytest workers
PARAMS ?= params/mini.yaml
# pytest workers (pytest-xdist), one torch thread each, as the build lanes
TEST_JOBS ?= 2
PY := .venv/bin/python

.PHONY: all test setup notebooks sync
all: setup
	$(PY) -m koclip_lib.run --params $(PARAMS) --build --jobs 2
	$(PY) -m koclip_lib.run --params $(PARAMS)

test: setup
	$(PY) -m koclip_lib.run --params $(PARAMS) --build --jobs 2
	$(PY) -m pytest -n $(TEST_JOBS) --dist loadgroup

setup:
	bash scripts/setup.sh

# Run one notebook: make notebooks ONLY=01
notebooks: setup
	$(PY) -m koclip_lib.run --params $(PARAMS) $(if $(ONLY),--only $(ONLY))

# Regenerate the .ipynb of each notebook from its jupytext .py (the .py is the reviewed source)
sync:
	.venv/bin/jupytext --sync notebooks/*.py
