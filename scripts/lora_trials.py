"""LoRA training recipes for the Korean style LoRA, each trained from the profile's own inputs and scored as notebook
04 scores the profile's LoRA: on the held-out and seen colour-shape pairs (the corpus's phrasing) and on the held-out
sentence frames (phrasing no training caption used). The trials behind `lora.defaults` in params/mini.yaml.

    .venv/bin/python scripts/lora_trials.py NAME [key=value ...]   # after `run --build` (reuses its models)
    .venv/bin/python scripts/lora_trials.py learned-token-views3-positions-commas-p3 trigger_token=true \
        learn_trigger_token=true preservation_views=3 'trigger_positions=[start, end]' preservation_weight=3

`key=value` (YAML values) override the `ink` adapter's settings (`baseline`, with none, is the profile's LoRA). Prints
the trial's summary and adds it to outputs/metrics/04_lora_trials.json (one entry per NAME, settings beside numbers).
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from koclip_lib import evaluate, lora, plan  # noqa: E402
from koclip_lib.bench import environment  # noqa: E402
from koclip_lib.common import load_params, write_json  # noqa: E402
from koclip_lib.pipeline import load_korean_pipeline  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("name")
    ap.add_argument("settings", nargs="*", help="key=value overrides of the ink adapter (YAML values)")
    ap.add_argument("--params", default=str(REPO / "params/mini.yaml"))
    ap.add_argument("--out", default=str(REPO / "outputs/lora-trials"), help="where each trial's LoRA is trained")
    ap.add_argument("--record", default=str(REPO / "outputs/metrics/04_lora_trials.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    params = load_params(args.params)
    section = params["lora"]
    adapter = dict(next(a for a in section["adapters"] if a["name"] == "ink"))
    for setting in args.settings:
        key, _, value = setting.partition("=")
        adapter[key] = yaml.safe_load(value)
    inputs = plan.profile_inputs(params)
    paths = inputs.generator_paths()
    student = plan.students(params)[section.get("student", "unet")]
    started = time.time()
    registry_file = lora.ensure_loras({**section, "adapters": [adapter]}, Path(args.out) / args.name, sd=inputs.sd(),
                                      student=student, make_dataset=inputs.lora_dataset,
                                      dataset_key=inputs.lora_dataset_key, licenses=params.get("licenses"))
    trained_s = time.time() - started
    registry = lora.LoraRegistry.from_file(registry_file)
    prompt_files = inputs.eval_prompts()
    classifier = evaluate.load_judge(paths["classifier"])
    pipes = {"korean": load_korean_pipeline(sd=paths["sd"], text_encoder=student)}
    cases = [lora.StyleCase("Korean pipeline, no LoRA", "korean"),
             lora.StyleCase("+ ink, no trigger", "korean", loras={"ink": 1.0}),
             lora.StyleCase("+ ink, trigger", "korean", loras={"ink": 1.0}, trigger=True)]
    generate = {"steps": params["evaluate"]["steps"], "guidance_scale": params["evaluate"]["guidance_scale"]}
    table = lora.style_table(lora.evaluate_cases(pipes, classifier, prompt_files, registry, cases,
                                                 n_prompts=section["evaluate"]["n_prompts"], **generate))
    frames = lora.evaluate_frames(pipes, classifier, prompt_files["ko_frames"], registry, cases, **generate)
    summary = lora.frame_summary(frames)
    print(table.to_string(float_format="{:.3f}".format))
    print(summary.to_string(float_format="{:.3f}".format))
    rates = lora.frame_rates(frames).droplevel("family")
    off = rates.xs("+ ink, no trigger", level="case")["ink rate"]
    on = rates.xs("+ ink, trigger", level="case")
    print(off.sort_values(ascending=False).head(5).to_string(float_format="{:.3f}".format))
    record_file = Path(args.record)
    record = json.loads(record_file.read_text(encoding="utf-8")) if record_file.exists() else {}
    record[args.name] = {"settings": {k: v for k, v in adapter.items() if k not in ("description",)},
                         "cpu": environment(torch.device("cpu"))["device_name"],  # each build of the mini world its own
                         "train_seconds": round(trained_s), "pairs": json.loads(table.to_json(orient="index")),
                         "frames": json.loads(summary.to_json(orient="index")),
                         "untriggered_by_frame": json.loads(off.to_json()),
                         "triggered_by_frame": json.loads(on.to_json(orient="index"))}
    write_json(record_file, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
