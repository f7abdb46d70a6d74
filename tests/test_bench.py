"""The optimisation benchmark (koclip_lib.bench) on tiny modules the tests build: the record's contract (every axis,
reasons for what was not measured, ratios to the same run's baseline, the schedule's UNet steps), the rule that
stacks the winners, and the full profile's random-weights path scaled down so it runs on a CPU in seconds. The mini
profile's bench inputs come from the mini world (`koclip_lib.miniworld.feasibility`), which bench never imports."""

import json
import subprocess
import sys

import pytest
import torch

from koclip_lib import bench, plan
from koclip_lib import miniworld as mw
from koclip_lib.common import write_json

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny_inputs(tiny_parts, tiny_student, tmp_path_factory):
    """The mini profile's inputs on the tiny pipeline + untrained student, an untrained judge and one prompt."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("bench")
    (root / "clf").mkdir()
    torch.manual_seed(0)
    save_file(mw.AttributeClassifier(8).state_dict(), str(root / "clf" / "classifier.safetensors"))
    write_json(root / "clf" / "classifier.json", {"width": 8, "image_size": 32})
    prompts = mw.write_prompt_tsv(root / "ko.tsv", mw.sample_scenes(2, 0, mw.WorldConfig()), "ko", 0)
    params = {"profile": "mini", "root": str(root), "seed": 0, "evaluate": {"guidance_scale": 3.0},
              "distill": {"loop": {"batch_size": 8}}, "inputs_from": "koclip_lib.miniworld"}
    paths = {"pipeline": tiny_parts / "sd", "student": tiny_student, "prompts": prompts, "classifier": root / "clf",
             "translator": None, "english": tiny_parts / "sd", "teacher": tiny_parts / "teacher"}
    return plan.profile_inputs(params).bench_inputs(n_prompts=1, paths=paths)  # what bench.main calls for mini


@pytest.fixture(scope="module")
def mini_record(tiny_inputs):
    return bench.run_benchmark(tiny_inputs, CPU, quick=True, train_steps=1, text_prompts=2)


def _rows(record):
    return {r["name"]: r for r in record["rows"]}


def test_every_axis_is_recorded_and_nothing_failed(mini_record):
    assert {r["axis"] for r in mini_record["rows"]} == set(bench.AXES)
    failed = [(r["name"], r["reason"]) for r in mini_record["rows"] if r["status"] == "failed"]
    assert not failed
    json.loads(json.dumps(mini_record, default=float))  # the record is what the command writes
    table = bench.markdown(mini_record)
    assert all(f"| {r['name']} | {r['axis']} |" in table for r in mini_record["rows"])


def test_what_was_not_measured_says_why(mini_record):
    rows = _rows(mini_record)
    assert rows["fp16"]["status"] == "skipped" and "CPU" in rows["fp16"]["reason"]
    assert rows["torch.compile(UNet)"]["status"] == "skipped" and "--quick" in rows["torch.compile(UNet)"]["reason"]
    assert rows["bf16"]["status"] == "skipped" and "--quick" in rows["bf16"]["reason"]
    assert rows["tiny VAE decoder"]["status"] == "not available"  # mini has no trained tiny decoder: no invented number
    assert "DPM-Solver++ at 8 steps" in rows["LCM 4, guidance 1"]["reason"]
    for r in mini_record["rows"]:
        assert (r["status"] == "measured") == ("reason" not in r)
        assert r["status"] == "measured" or len(r["reason"]) > 20
    assert mini_record["text_conditioning"]["translator"].startswith("not available")


def test_every_speed_is_a_ratio_to_this_runs_baseline(mini_record):
    rows = [r for r in mini_record["rows"] if r["status"] == "measured"]
    baselines = {r["phase"]: r for r in rows if r["axis"] == "baseline"}
    assert sorted(baselines) == [1, 2] and rows[0] is baselines[1] and mini_record["interleaved"]
    assert all(r["phase"] == 2 for r in rows if r["axis"] == "optimised")
    for r in rows:
        base = baselines[r["phase"]]  # the baseline timed in the same phase as the row
        assert r["speedup_p50"] == pytest.approx(base["p50_s_per_image"] / r["p50_s_per_image"])
        assert r["images_per_s_ratio"] == pytest.approx(r["images_per_s"] / base["images_per_s"])
        assert r["p90_s_per_image"] >= r["p50_s_per_image"] > 0 and r["peak_mb"] > 0
        assert 0 <= r["quality"]["attribute_accuracy"] <= 1 and r["quality"]["images"] == 1
    optimised = [r for r in rows if r["axis"] == "optimised"]
    assert optimised and all(mini_record["summary"][r["name"]]["speedup_p50"] == r["speedup_p50"] for r in optimised)


def test_unet_steps_follow_the_schedule(mini_record):
    steps = {name: r["unet_steps_per_image"] for name, r in _rows(mini_record).items() if r["status"] == "measured"}
    assert steps["DPM-Solver++ 20"] == 20 and steps["DPM-Solver++ 25"] == 25 and steps["DPM-Solver++ 8 (few-step)"] == 8
    assert steps["DDIM 50"] == 50
    assert steps["baseline"] == 51  # PLMS: 50 steps, its first timestep evaluated twice
    assert steps["batch 4"] == steps["prompt-embedding cache"] == steps["baseline"]  # one evaluation serves the whole batch


def _row(name, axis, speedup, accuracy_delta=None, **changes):
    setting = bench.Setting(**changes)
    quality = {} if accuracy_delta is None else {"accuracy_delta_vs_baseline": accuracy_delta}
    return {"name": name, "axis": axis, "status": "measured", "setting": setting, "speedup_p50": speedup,
            "images_per_s": speedup, "images_per_s_ratio": speedup, "quality": quality}


def test_winners_are_stacked_only_when_faster_and_as_good():
    judged = [_row("baseline", "baseline", 1.0, 0.0), _row("bf16", "dtype", 1.5, 0.0, dtype="bf16"),
              _row("sdpa", "attention", 1.01, 0.0, attention="sdpa"),
              _row("DPM 20", "scheduler", 2.5, -0.02, scheduler="dpm++", steps=20),
              _row("DPM 8", "scheduler", 6.0, -0.20, scheduler="dpm++", steps=8),  # faster, but loses accuracy
              _row("batch 8", "batch", 1.0, 0.0, batch=8)]
    judged[-1]["images_per_s"] = 3.0
    stacked, why, batch = bench.pick_winners(judged, tolerance=0.05)
    assert (stacked.dtype, stacked.attention, stacked.scheduler, stacked.steps) == ("bf16", "classic", "dpm++", 20)
    assert batch == 8 and why["attention"].startswith("baseline kept")
    # random weights: no quality to judge, so a few-step schedule is never taken on speed alone
    unjudged = [_row("baseline", "baseline", 1.0), _row("DPM 20", "scheduler", 2.5, scheduler="dpm++", steps=20),
                _row("DPM 8", "scheduler", 6.0, scheduler="dpm++", steps=8),
                _row("LCM 4", "scheduler", 20.0, scheduler="lcm", steps=4, guidance=1.0)]
    stacked, _, batch = bench.pick_winners(unjudged, tolerance=0.05)
    assert (stacked.scheduler, stacked.steps, stacked.guidance, batch) == ("dpm++", 20, None, 1)


def test_full_random_weights_path_scaled_down(tmp_path):
    """`--profile full --random-weights` end to end through main(), every width and depth scaled by 0.05 at 64x64."""
    record = bench.main(["--profile", "full", "--random-weights", "--scale", "0.05", "--resolution", "64", "--quick",
                         "--prompts", "1", "--train-steps", "1", "--sequential", "--out", str(tmp_path)])
    written = json.loads((tmp_path / "full-cpu-scale0.05-quick.json").read_text())
    assert written["random_weights"] and not written["interleaved"] and {r["axis"] for r in written["rows"]} == set(bench.AXES)
    assert (tmp_path / "full-cpu-scale0.05-quick.md").read_text().startswith("## koclip benchmark")
    rows = _rows(record)
    assert not [r["name"] for r in record["rows"] if r["status"] == "failed"]
    assert rows["tiny VAE decoder"]["status"] == "measured"
    assert rows["LCM 4, guidance 1"]["unet_steps_per_image"] == 4
    # the quality proxy compares the same seed's image: unchanged by the cache, changed by another schedule
    assert rows["baseline"]["quality"]["pixel_mad_vs_baseline"] == 0
    assert rows["prompt-embedding cache"]["quality"]["pixel_mad_vs_baseline"] < 1e-5
    assert rows["DPM-Solver++ 20"]["quality"]["pixel_mad_vs_baseline"] > 1e-3
    assert all(r["setting"]["steps"] >= 20 for r in written["rows"] if r["axis"] == "optimised")
    tc = record["text_conditioning"]
    assert tc["decode_tokens"] == 20 and tc["ratio_generate_to_student"] == pytest.approx(tc["translator_generate_s"] / tc["student_encode_s"])
    training = {t["what"].split(" ")[0]: t for t in record["training"]}
    assert training["distillation"]["samples_per_s"] > 0 and training["distillation"]["batch"] == 256
    assert training["LoRA"]["image_size"] == 64 and training["LoRA"]["latent_size"] == 8 and training["LoRA"]["lora_parameters"] > 0


def test_a_failing_configuration_is_recorded_and_the_others_still_measured(tiny_inputs):
    entries = [{"name": "baseline", "axis": "baseline", "setting": bench.Setting(steps=2), "skip": None},
               {"name": "broken", "axis": "scheduler", "setting": bench.Setting(scheduler="nope"), "skip": None},
               {"name": "DPM 2", "axis": "scheduler", "setting": bench.Setting(scheduler="dpm++", steps=2), "skip": None}]
    rows, baseline_images = bench.run_phase(tiny_inputs, entries, CPU)
    assert [r["status"] for r in rows] == ["measured", "failed", "measured"]
    assert "unknown scheduler 'nope'" in rows[1]["reason"]
    assert baseline_images.shape == (1, 3, 32, 32) and rows[2]["unet_steps_per_image"] == 2


def test_bench_does_not_import_the_mini_world():
    """bench measures any profile's pipeline: the mini world's inputs reach it through `plan.profile_inputs`."""
    code = ("import sys, koclip_lib.bench; "
            "print(sorted(m for m in sys.modules if m.startswith('koclip_lib.miniworld') or m == 'koclip_lib.generator'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
