#!/usr/bin/env bash
# Create .venv/ in the repository root and install koclip with everything the notebooks and tests need.
# torch comes first: on a machine without an NVIDIA GPU the CPU build is installed (a plain `torch` requirement
# would pull a multi-GB CUDA build); with a GPU, the default build. Re-running is cheap: installed packages stay.
#   TORCH_SPEC        pip requirement for torch on a CPU-only machine (default: torch==2.13.0)
#   TORCH_INDEX_URL   extra index to take it from (e.g. PyTorch's CPU wheel index, where the machine reaches it)
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
.venv/bin/python -c "import torch, diffusers, transformers, peft; print('koclip env ready: torch', torch.__version__, '| diffusers', diffusers.__version__, '| transformers', transformers.__version__, '| peft', peft.__version__)"
