"""Whether a trained model depends on the CPU's instruction set, and which kernel settings make it not: a UNet trained
for a few steps from one seed, once per (kernel setting, CPU), each in its own process on one thread.

    .venv/bin/python scripts/kernel_stability.py [--unet outputs/mini/sd/unet] [--steps 10]

The CPUs are this one and an AVX2-only CPU (AMD EPYC before Zen 4, Intel before Skylake-SP), the latter emulated by
capping the instruction sets of ATen (`ATEN_CPU_CAPABILITY`), MKL (`MKL_ENABLE_INSTRUCTIONS`) and oneDNN
(`ONEDNN_MAX_CPU_ISA`). A setting is stable when its weights hash the same on both. Emulation covers the instruction
sets only: on another vendor MKL also picks other code paths, which `MKL_CBWR=COMPATIBLE` is meant to fix; run the
script on both machines and compare the hashes (an Intel Xeon and an AMD EPYC still trained other bytes under the
stable setting: outputs/bench/kernel-stability-*.json). Prints a table and writes
outputs/bench/kernel-stability-<cpu>.json.
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

SETTINGS = {
    "default": {},
    # MKL's reproducible SSE2 branch on Intel and other vendors alike, ATen's AVX2 kernels whatever the CPU offers
    # beyond them, and convolutions through ATen + MKL instead of oneDNN, whose kernels are chosen by the CPU (the child
    # turns oneDNN off where KOCLIP_MKLDNN is 0: torch has no environment variable for it)
    "stable kernels": {"MKL_CBWR": "COMPATIBLE", "ATEN_CPU_CAPABILITY": "avx2", "KOCLIP_MKLDNN": "0"},
}
CPUS = {
    "this CPU": {},
    "an AVX2-only CPU (emulated)": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
                                    "ONEDNN_MAX_CPU_ISA": "AVX2"},
}


def train(unet_dir: str, steps: int, mkldnn: bool) -> dict:
    """In the child process: `steps` AdamW steps of a freshly initialised UNet (the config of `unet_dir`)."""
    import torch
    from diffusers import UNet2DConditionModel

    torch.set_num_threads(1)
    torch.backends.mkldnn.enabled = mkldnn
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(unet_dir))
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    size, channels, width = unet.config.sample_size, unet.config.in_channels, unet.config.cross_attention_dim
    started = time.perf_counter()
    for _ in range(steps):
        x = torch.randn(16, channels, size, size, generator=gen)
        text = torch.randn(16, 77, width, generator=gen)
        t = torch.randint(0, 1000, (16,), generator=gen)
        loss = (unet(x, t, text).sample - x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    weights = b"".join(p.detach().numpy().tobytes() for p in unet.parameters())
    return {"capability": torch.backends.cpu.get_cpu_capability(), "loss": loss.item(),
            "weights_sha256": hashlib.sha256(weights).hexdigest()[:16], "seconds": round(time.perf_counter() - started, 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--unet", default=str(REPO / "outputs/mini/sd/unet"), help="a diffusers UNet folder (its config)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--out", default=str(REPO / "outputs/bench"))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not (Path(args.unet) / "config.json").is_file():
        ap.exit(2, f"kernel_stability: error: no UNet config at {args.unet}/config.json (run --build, or pass --unet)\n")
    if args.child:
        print(json.dumps(train(args.unet, args.steps, os.environ.get("KOCLIP_MKLDNN", "1") != "0")))
        return 0

    sys.path.insert(0, str(REPO))
    import torch

    from koclip_lib.bench import environment
    from koclip_lib.realtext import slug
    from koclip_lib.run import KERNEL_ENV

    rows = []
    for setting, overrides in SETTINGS.items():
        for cpu, caps in CPUS.items():
            env = {**os.environ, **KERNEL_ENV, **caps, **overrides}
            out = subprocess.run([sys.executable, __file__, "--child", "--unet", args.unet, "--steps", str(args.steps)],
                                 env=env, capture_output=True, text=True, check=True).stdout
            rows.append({"setting": setting, "cpu": cpu, **json.loads(out.strip().splitlines()[-1])})
    hashes = {setting: {r["weights_sha256"] for r in rows if r["setting"] == setting} for setting in SETTINGS}
    for r in rows:
        r["same weights on both CPUs"] = len(hashes[r["setting"]]) == 1
    print(f"{'setting':16s} {'CPU':28s} {'ATen':8s} {'weights sha256':18s} {'same':5s} {'seconds':>7s}")
    for r in rows:
        print(f"{r['setting']:16s} {r['cpu']:28s} {r['capability']:8s} {r['weights_sha256']:18s} "
              f"{str(r['same weights on both CPUs']):5s} {r['seconds']:7.2f}")
    machine = environment(torch.device("cpu"))
    out_file = Path(args.out) / f"kernel-stability-{slug(machine['device_name'])}.json"
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(json.dumps({"environment": machine, "steps": args.steps, "settings": SETTINGS, "cpus": CPUS,
                                    "rows": rows}, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
