"""The GPU speed study's guards and its script: a row that gives NaN or another result is refused and never
stacked; `DRY_RUN=1 bash scripts/device_bench.sh` runs every step at toy size on the CPU."""
import json
import os
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from koclip_lib import bench, bench_full
from koclip_lib.bench import Setting

REPO = Path(__file__).resolve().parent.parent


def _strict_json(path: Path) -> dict:
    def no_nan(name):
        raise AssertionError(f"{path.name} holds {name}")
    return json.loads(path.read_text(encoding="utf-8"), parse_constant=no_nan)


def test_guard_refuses_non_finite_and_changed_results_and_passes_reordered_sums():
    gen = torch.Generator().manual_seed(0)
    reference = {"unet": torch.randn(2, 4, 8, 8, generator=gen), "latents": torch.randn(1, 4, 8, 8, generator=gen)}
    same = {k: v + 1e-4 * torch.randn(v.shape, generator=gen) for k, v in reference.items()}
    assert bench_full.judge(same, reference, other_dtype=False)["passed"]
    nan = {**same, "unet": same["unet"].clone().index_fill_(0, torch.tensor([0]), float("nan"))}
    verdict = bench_full.judge(nan, reference, other_dtype=False)
    assert not verdict["passed"] and "not finite" in verdict["reason"]
    changed = {**same, "latents": reference["latents"] * 1.5}
    verdict = bench_full.judge(changed, reference, other_dtype=False)
    assert not verdict["passed"] and "latents" in verdict["reason"]
    # bf16 against fp16 gets the wider tolerance, and only that
    slightly = {k: v * 1.02 for k, v in reference.items()}
    assert not bench_full.judge(slightly, reference, other_dtype=False)["passed"]
    assert bench_full.judge(slightly, reference, other_dtype=True)["passed"]


def test_stack_takes_only_guarded_faster_rows_one_per_axis():
    base = bench_full.practical(torch.device("cpu"))

    def row(name, setting, speedup, passed, kind=bench_full.SAME):
        return bench_full.Row(name, kind, setting, record={"status": "measured", "speedup_vs_practical": speedup,
                                                            "p50_s_per_image": 1 / speedup, "guard": {"passed": passed}})

    rows = [row("channels_last", replace(base, channels_last=True), 5.0, False),        # fastest, but refused
            row("fused", replace(base, fused_qkv=True), 1.5, True),
            row("compile a", replace(base, compile=True, compile_mode="default"), 2.0, True),
            row("compile b", replace(base, compile=True, compile_mode="max-autotune"), 3.0, True),
            row("slow cache", replace(base, cache=True), 1.0, True),                     # not faster
            row("few steps", replace(base, steps=8), 9.0, True, kind=bench_full.CHANGES)]  # changes the result
    stacked, why = bench_full.stack(rows, base, min_gain=1.03)
    assert stacked == replace(base, fused_qkv=True, compile=True, compile_mode="max-autotune")
    assert set(why) == {"fused_qkv", "compile"}


@pytest.fixture(scope="module")
def toy_inputs():
    from koclip_lib.bench_inputs import full_random_inputs
    from koclip_lib.common import load_params

    return full_random_inputs(load_params(REPO / "params" / "full.yaml"), 2, 0.05, 64)


def test_a_row_giving_nan_or_another_result_is_refused_and_not_stacked(toy_inputs, tmp_path, monkeypatch):
    """Two faults planted through `configure`: channels_last's UNet returns NaN, fused QKV's a scaled output. With
    no speed threshold every row that passes is stacked, so only the guard keeps them out."""
    real_configure = bench.configure

    def faulty(pipe, setting, *args, **kwargs):
        pipe = real_configure(pipe, setting, *args, **kwargs)
        if setting.channels_last or setting.fused_qkv:
            factor = float("nan") if setting.channels_last else 1.5

            def broken(_module, _inputs, out):  # the UNet's output, NaN or scaled (pipelines ask for a tuple)
                return (out[0] * factor, *out[1:]) if isinstance(out, tuple) else out.__class__(sample=out.sample * factor)

            pipe.unet.register_forward_hook(broken)
        return pipe

    monkeypatch.setattr(bench, "configure", faulty)  # what every row's pipeline is built with
    monkeypatch.setattr(bench_full, "configure", faulty)
    monkeypatch.setattr(bench_full, "technique_rows", lambda inputs, device, *flags: (
        [bench_full.Row(name, bench_full.SAME, s) for name, s in
         (("channels_last", replace(bench_full.practical(device), channels_last=True)),
          ("fused QKV projections", replace(bench_full.practical(device), fused_qkv=True)),
          ("prompt-embedding cache", replace(bench_full.practical(device), cache=True)))], []))
    record = bench_full.run(toy_inputs, torch.device("cpu"), tmp_path, "faults", budget_s=600, batches=(1,), train_steps=0,
                            min_gain=0.0, log=lambda _line: None)
    rows = {r["name"]: r for r in _strict_json(tmp_path / "faults.json")["rows"]}
    assert rows["channels_last"]["status"] == "failed" and "not finite" in rows["channels_last"]["reason"]
    fused = rows["fused QKV projections"]
    assert fused["status"] == "measured" and not fused["guard"]["passed"] and "changed result" in fused["guard"]["reason"]
    assert rows["prompt-embedding cache"]["guard"]["passed"]
    stacked = next(r for r in rows.values() if r["kind"] == "stacked")
    assert stacked["setting"]["cache"] and not stacked["setting"]["channels_last"] and not stacked["setting"]["fused_qkv"]
    assert stacked["guard"]["passed"] and stacked["same_as"] == "prompt-embedding cache"  # one axis: that row's figures
    assert set(record["summary"]["refused_by_guard"]) == {"fused QKV projections"}
    assert "REFUSED" in (tmp_path / "faults.md").read_text(encoding="utf-8")


def test_a_spent_budget_still_measures_both_baselines(toy_inputs, tmp_path):
    """Every ratio is to the baselines: a budget spent before they start skips the technique rows, never them."""
    bench_full.run(toy_inputs, torch.device("cpu"), tmp_path, "spent", budget_s=0.0, batches=(1,), train_steps=0,
                   compile_rows=False, log=lambda _line: None)
    rows = _strict_json(tmp_path / "spent.json")["rows"]
    assert [r["status"] for r in rows[:2]] == ["measured", "measured"], rows[:2]
    others = [r for r in rows[2:] if r["kind"] != "stacked"]
    assert others and all(r["status"] in ("skipped", "not available") for r in others), others
    assert any("time budget" in r["reason"] for r in others), others


def test_device_bench_script_dry_run_on_the_cpu(tmp_path):
    # the script's own budget (90 s) is what a quiet CPU needs; a loaded CI machine gets the time to run every row
    env = {**os.environ, "DRY_RUN": "1", "OUT": str(tmp_path), "BUDGET_S": "600"}
    proc = subprocess.run(["bash", "scripts/device_bench.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "smoke: ok" in (tmp_path / "device_bench.log").read_text(encoding="utf-8")
    record = _strict_json(tmp_path / "dryrun-cpu.json")
    rows = record["rows"]
    assert [r["name"].split(":")[0] for r in rows[:2]] == ["seed baseline", "practical baseline"]
    measured = [r for r in rows if r["status"] == "measured"]
    assert len(measured) >= 5, [(r["name"], r["status"], r.get("reason")) for r in rows]
    for r in rows:
        assert r["status"] in ("measured", "skipped", "not available", "failed"), r
    # every change the stacked row makes is a row that passed its guard
    passed = {json.dumps(r["changes"], sort_keys=True) for r in rows if r.get("guard", {}).get("passed")}
    stacked = [r for r in rows if r["kind"] == "stacked"]
    for r in stacked:
        if r["status"] != "measured":  # a busy machine: the time budget skipped it
            assert r["status"] == "skipped" and "time budget" in r["reason"], r
            continue
        assert r["guard"]["passed"]
        base = {k: v for k, v in rows[1]["setting"].items()}
        for key, value in r["setting"].items():
            if value != base[key]:
                assert any(json.loads(c).get(key) == value for c in passed), (key, value)
    assert record["text_conditioning"]["student_encode_s"] > 0
    assert record["throughput"] and record["summary"]["targets"]
    assert (tmp_path / "dryrun-cpu.md").read_text(encoding="utf-8").startswith("# Full-size speed")
