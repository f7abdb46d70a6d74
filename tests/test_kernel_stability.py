"""scripts/kernel_stability.py: the kernel settings under which training gives the same weights whatever instruction
sets the CPU offers."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_stable_kernels_train_the_same_weights_on_an_avx2_only_cpu(tmp_path):
    from diffusers import UNet2DConditionModel

    UNet2DConditionModel(sample_size=8, block_out_channels=(8, 16), layers_per_block=1, cross_attention_dim=16,
                         norm_num_groups=8, attention_head_dim=2,
                         down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                         up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")).save_config(tmp_path / "unet")
    out = subprocess.run([sys.executable, "scripts/kernel_stability.py", "--unet", str(tmp_path / "unet"), "--steps", "2",
                          "--out", str(tmp_path / "bench")], cwd=REPO, capture_output=True, text=True, check=True).stdout
    record = json.loads(next((tmp_path / "bench").glob("kernel-stability-*.json")).read_text(encoding="utf-8"))
    rows = {(r["setting"], r["cpu"]): r for r in record["rows"]}
    assert len(rows) == 4 and "stable kernels" in out
    stable = [r for (setting, _), r in rows.items() if setting == "stable kernels"]
    assert {r["capability"] for r in stable} == {"AVX2"}
    assert stable[0]["weights_sha256"] == stable[1]["weights_sha256"] and all(r["same weights on both CPUs"] for r in stable)
    # the emulated CPU really is another: ATen's kernels on it are AVX2 ones
    assert rows[("default", "an AVX2-only CPU (emulated)")]["capability"] == "AVX2"


def test_a_missing_unet_is_one_line_and_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "scripts/kernel_stability.py", "--unet", str(tmp_path / "none")], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "no UNet config" in proc.stderr
