#!/usr/bin/env bash
# The one command to run on a GPU machine with no network: the full-size speed study (koclip_lib.bench_full).
#   bash scripts/device_bench.sh [ARGS...]       # on the GPU: installs the carried wheels, a 20-second smoke test,
#                                                #   then the benchmark under a time budget; results in $OUT
#                                                #   (ARGS go to koclip_lib.bench_full, e.g. --prompts 4)
#   DRY_RUN=1 bash scripts/device_bench.sh       # the same steps at toy size on the CPU (CI runs this; under 2 minutes)
# Wheels: `make wheelhouse` fills .whl/ here (git-ignored) with what the GPU image lacks; carry it with the tree.
# Output: $OUT/full-<gpu>.{json,md}, rewritten after every row (a run cut short keeps what it measured), and
# $OUT/device_bench.log. BUDGET_S (default 330 s) bounds the benchmark, so smoke test + install + benchmark stay
# under 7 minutes and a rerun fits in the session's 15 minutes of GPU time.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/bench}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
exec > >(tee "$OUT/device_bench.log") 2>&1
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
started=$(date +%s)
echo "device_bench: $(date -u +%FT%TZ), python $($PYTHON -c 'import sys; print(sys.version.split()[0])'), dry run: ${DRY_RUN:-0}"

if [ "${DRY_RUN:-0}" != 1 ] && [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  # the project's code travels as the tree; its missing dependencies as wheels, installed beside the image's packages
  $PYTHON -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi

if [ "${DRY_RUN:-0}" = 1 ]; then
  DEVICE=cpu
  ARGS=(--device cpu --scale 0.05 --resolution 64 --prompts 2 --batches 1,2 --no-compile --train-steps 1 --stem dryrun-cpu "$@")
  BUDGET_S=${BUDGET_S:-90}
else
  DEVICE=cuda
  ARGS=("$@")
  BUDGET_S=${BUDGET_S:-330}
fi

# smoke test (20 s at most): the device works and computes finite numbers, and the project imports
timeout 60 $PYTHON - "$DEVICE" <<'EOF'
import sys, time
import torch
device = torch.device(sys.argv[1])
if device.type == "cuda":
    assert torch.cuda.is_available(), "no CUDA device visible"
    print("smoke:", torch.cuda.get_device_name(0), "torch", torch.__version__, "cuda", torch.version.cuda)
started = time.perf_counter()
x = torch.randn(2048, 2048, device=device, dtype=torch.bfloat16 if device.type == "cuda" else torch.float32)
for _ in range(10):
    y = x @ x
if device.type == "cuda":
    torch.cuda.synchronize()
assert torch.isfinite(y).all(), "matmul produced non-finite numbers"
import diffusers, transformers, koclip_lib.bench_full  # noqa: E401,F401
print(f"smoke: ok in {time.perf_counter() - started:.1f} s; diffusers {diffusers.__version__}, transformers {transformers.__version__}")
EOF

$PYTHON -m koclip_lib.bench_full --out "$OUT" --budget-s "$BUDGET_S" "${ARGS[@]}"
echo "device_bench: done in $(( $(date +%s) - started )) s"
