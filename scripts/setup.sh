#!/usr/bin/env bash
# Create .venv/ in the repository root and install koclip with everything the notebooks and tests need.
# torch comes first, so the project's `torch>=2.3` is already met and pip pulls no CUDA build behind our back.
# Without an NVIDIA GPU: TORCH_SPEC (default torch==2.13.0, which this workplace's pip takes from a CPU wheel on
# local disk; on other machines PyPI's Linux wheel of that version is a CUDA build, so set TORCH_INDEX_URL to
# PyTorch's CPU wheel index there). With a GPU: the default build. Re-running is cheap: installed packages stay.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip install --disable-pip-version-check -q)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    "${PIP[@]}" "torch>=2.3"
  else
    "${PIP[@]}" ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} "${TORCH_SPEC:-torch==2.13.0}"
  fi
fi
"${PIP[@]}" -e ".[dev]"
# CLIP's real BPE vocabulary for koclip_lib.standins ships in the open-clip-torch wheel; --no-deps because its
# torchvision dependency would replace the CPU torch installed above (standins reads the file, never imports open_clip)
"${PIP[@]}" --no-deps open-clip-torch
# Debian's chromium: the real browser tests/test_web_page.py drives (through Playwright, which downloads no browser)
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  { apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; }; } \
    || echo "setup: chromium could not be installed; tests/test_web_page.py's browser test will be skipped" >&2
fi
.venv/bin/python -c "import torch, diffusers, transformers, peft; print('koclip env ready: torch', torch.__version__, '| diffusers', diffusers.__version__, '| transformers', transformers.__version__, '| peft', peft.__version__)"
