"""Which colours a style LoRA loses with its trigger on notebook 04's sentence frames, and how that moves with the
trigger's strength: the trigger said once (as notebook 04 asks), said twice, and the LoRA at a lower weight and at
weight 0 (its learnt trigger row loaded all the same: what the row alone does). Per colour asked for: the judge's
colour accuracy and what it reads most often instead. The images are notebook 04's own (every frame prompt, its
seeds), then one kind of pairs kept.

    .venv/bin/python scripts/lora_colour_probe.py outputs/mini/loras/registry.json --out outputs/metrics/04_lora_colour_probe.json
    .venv/bin/python scripts/lora_colour_probe.py outputs/lora-trials/NAME/loras/registry.json --pairs held-out
"""
import argparse
import json
import sys
from pathlib import Path

import pandas as pd
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from koclip_lib import evaluate, lora, plan  # noqa: E402
from koclip_lib.common import load_params, write_json  # noqa: E402
from koclip_lib.pipeline import load_korean_pipeline  # noqa: E402

# (label, LoRA weight, times the trigger is said)
VARIANTS = [("no trigger", 1.0, 0), ("trigger", 1.0, 1), ("trigger twice", 1.0, 2), ("weight 0.7, trigger", 0.7, 1),
            ("weight 0, trigger", 0.0, 1)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("registry", help="a LoRA registry.json (notebook 04's or a trial's)")
    ap.add_argument("--lora", default="ink")
    ap.add_argument("--pairs", default="seen", choices=["seen", "held-out"])
    ap.add_argument("--params", default=str(REPO / "params/mini.yaml"))
    ap.add_argument("--out", help="also write the table here (JSON)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    params = load_params(args.params)
    inputs = plan.profile_inputs(params)
    paths = inputs.generator_paths()
    registry = lora.LoraRegistry.from_file(args.registry)
    entry = registry.get(args.lora)
    style = entry.get("style")
    student = plan.students(params)[params["lora"].get("student", "unet")]
    pipe = load_korean_pipeline(sd=paths["sd"], text_encoder=student)
    classifier = evaluate.load_judge(paths["classifier"])
    rows = evaluate.read_prompt_tsv(inputs.eval_prompts()["ko_frames"], columns=("pairs",))
    kept = [i for i, r in enumerate(rows) if r.columns["pairs"] == args.pairs]
    generate = {"steps": params["evaluate"]["steps"], "guidance_scale": params["evaluate"]["guidance_scale"]}
    evaluated, overall = {}, {}
    for label, weight, times in VARIANTS:
        asked = rows
        for _ in range(times):
            asked = evaluate.with_triggers(asked, [entry])
        lora.apply_loras(pipe, {args.lora: weight}, registry)
        _, images, _ = evaluate.evaluate_rows(pipe, asked, classifier, **generate)
        lora.apply_loras(pipe, {}, registry)
        read = classifier.predict(images)
        evaluated[label] = {args.pairs: (None, [rows[i] for i in kept], {"color": [read["color"][i] for i in kept]})}
        accuracy = sum(read["color"][i] == rows[i].attributes["color"] for i in kept) / len(kept)
        overall[label] = {"all": accuracy, f"{style} rate": sum(read["style"][i] == style for i in kept) / len(kept)}
    breakdown = lora.attribute_breakdown(evaluated, "color", misreads=2)
    table = {}
    for label, _, _ in VARIANTS:
        table[(label, "colour")] = {**breakdown[label].to_dict(), **overall[label]}
        table[(label, "read instead")] = breakdown[f"{label}: read instead"].to_dict()
    frame = pd.DataFrame(table)
    counts = breakdown["prompts"].to_dict()
    frame.insert(0, ("", "images"), pd.Series({**counts, "all": len(kept)}).map(str))  # none on the style's row
    print(f"{args.registry}: {args.lora} on the {args.pairs} pairs of the sentence frames")
    print(frame.to_string(float_format="{:.2f}".format, na_rep=""))
    if args.out:
        accuracy = frame.xs("colour", axis=1, level=1)
        write_json(args.out, {"registry": args.registry, "lora": args.lora, "pairs": args.pairs,
                              "images": {**counts, "all": len(kept)}, "colour": json.loads(accuracy.to_json()),
                              "read_instead": json.loads(frame.xs("read instead", axis=1, level=1).to_json())})
    return 0


if __name__ == "__main__":
    sys.exit(main())
