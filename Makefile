# The two set-up commands of README.md.
#   make all   install into .venv/, train the models (two lanes side by side) and run the main job: every notebook on
#              the mini profile, executed copies in outputs/; then check every claim of the README against the metrics
#              (python -m koclip_lib.targets: exits 1 naming a missed claim)
#   make test  install into .venv/, write the hub-layout stand-ins and build the stand-in profile's models (the full
#              profile's plan at toy sizes), then run the tests (unit tests, every notebook executed on the stand-in
#              profile) in two pytest workers
#   make wheelhouse  fill .whl/ with the wheels the GPU machine's image lacks (Python 3.12, x86-64), for
#              scripts/device_bench.sh to install there with no network
#   make full-shapes  a dry run of every full-profile build stage at the real models' sizes (random weights, 2 steps at
#              batch 1): seconds and peak memory per stage to outputs/bench/full-shapes-<device>.json (not in CI)
PARAMS ?= params/mini.yaml
# what the tests run every notebook on: params/full.yaml's plan on the stand-ins of `python -m koclip_lib.standins`
STANDIN := params/standin.yaml
# pytest workers (pytest-xdist), one torch thread each, as the build lanes
TEST_JOBS ?= 2
PY := .venv/bin/python

.PHONY: all test setup notebooks sync full-shapes wheelhouse device-bench-dry-run
all: setup
	$(PY) -m koclip_lib.run --params $(PARAMS) --build --jobs 2
	$(PY) -m koclip_lib.run --params $(PARAMS)
	$(PY) -m koclip_lib.targets

test: setup
	$(PY) -m koclip_lib.standins --out outputs/standin/hub
	$(PY) -m koclip_lib.run --params $(STANDIN) --build --jobs 1
	$(PY) -m pytest -n $(TEST_JOBS) --dist loadgroup

full-shapes: setup
	$(PY) -m koclip_lib.standins --real-size --out outputs/full-shapes/hub
	$(PY) -m koclip_lib.run --params params/full-shapes.yaml --build --record

setup:
	bash scripts/setup.sh

# Run one notebook: make notebooks ONLY=01
notebooks: setup
	$(PY) -m koclip_lib.run --params $(PARAMS) $(if $(ONLY),--only $(ONLY))

# Regenerate the .ipynb of each notebook from its jupytext .py (the .py is the reviewed source)
sync:
	.venv/bin/jupytext --sync notebooks/*.py

# What the GPU image (Python 3.12; torch, transformers, peft, accelerate, no network) lacks for scripts/device_bench.sh:
# the versions installed here, as wheels for its platform
WHEEL_PKGS := diffusers importlib-metadata ctranslate2 DeepCache tomesd
wheelhouse: setup
	rm -rf .whl && mkdir -p .whl
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
	  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d .whl \
	  $$(for p in $(WHEEL_PKGS); do echo "$$p==$$($(PY) -c "import importlib.metadata as m; print(m.version('$$p'))")"; done)
	ls -la .whl

# The GPU script at toy size on this CPU (what CI runs through tests/test_bench_full.py)
device-bench-dry-run: setup
	DRY_RUN=1 OUT=outputs/bench/dry-run bash scripts/device_bench.sh
