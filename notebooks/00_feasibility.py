# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 00 · Feasibility: three ways to make an English text-to-image model draw Korean prompts
#
# The seed weighed three options. This notebook measures all three on the same prompts, in one run:
#
# | option | how | cost |
# |---|---|---|
# | (a) encoder swap | distil a Korean student from the English text encoder, swap it into the unchanged pipeline | a student's training (notebook 02) |
# | (b) translate, then generate | a local Korean→English MT model, then the English pipeline (today's service without the network hop) | a translator per request |
# | (c) train from scratch | a new text encoder and UNet on Korean captions | the whole generator's training again |
#
# For (c) we train the mini world's model from scratch on Korean captions for one epoch, measure throughput and loss
# beside the English run at the same step, extrapolate to the steps the English generator needed — and stop.

# %% tags=["parameters"]
params_file = "params/mini.yaml"
overrides = {}  # e.g. {"metrics_dir": "/tmp/metrics"}: what the tests change

# %%
import json
import time
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import koreanize_matplotlib  # noqa: F401
from IPython.display import display

from koclip_lib import bench, evaluate, plan, translate
from koclip_lib.common import load_params, log_yscale, write_json
from koclip_lib.pipeline import load_korean_pipeline

params = {**load_params(params_file), **overrides}
root = Path(params["root"])
feasibility = params["feasibility"]
started = time.time()
inputs = plan.profile_inputs(params)
paths = inputs.generator_paths()
students = plan.students(params)
translator_dir = plan.translator(params)
student_dir = students[feasibility.get("student", "unet")]
print(f"generator, students and translator ready in {time.time() - started:.0f} s (0 s when cached)")

# %% [markdown]
# ## Quality: the same Korean prompts through (a) and (b)
# Attribute accuracy (mini-world classifier) on held-out and seen colour–shape pairs; the English pipeline on the
# English prompts of the same scenes is the reference, the English pipeline on the raw Korean prompts is the problem.
# A profile without a judge (the hub profiles) shows the seconds per image of each option here, and its images.

# %%
prompts = inputs.eval_prompts()
quality, _ = evaluate.sd_sweep(
    {"sd": {"path": paths["sd"], "stand_in": False}},
    {"(a) encoder swap": ("student", student_dir), "(b) translate, then generate": ("translator", translator_dir),
     "reference: English prompt": ("teacher", None), "problem: raw Korean prompt": ("raw", None)},
    [tuple(p) for p in params["sweep"]["prompts"]], seed=params["sweep"]["seed"],
    classifier=evaluate.load_judge(paths["classifier"]),
    prompt_files={"held-out": (prompts["ko_heldout"], prompts["en_heldout"]), "seen": (prompts["ko_seen"], prompts["en_seen"])},
    steps=params["evaluate"]["steps"], guidance_scale=params["evaluate"]["guidance_scale"])
quality = quality.droplevel("version")
quality.round(3)

# %% [markdown]
# ## Speed: text conditioning and whole images, measured one prompt at a time in this run
# Text conditioning is everything between the user's Korean prompt and the states the UNet reads: the student's
# encode for (a); the translator's generate plus the English encoder's encode for (b).

# %%
student_pipe = load_korean_pipeline(sd=paths["sd"], text_encoder=student_dir)
english_pipe = evaluate.load_pipeline(paths["sd"])
translator = translate.Translator.from_pretrained(translator_dir)
korean = [r.prompt for r in evaluate.read_prompt_tsv(prompts["ko_heldout"])[: feasibility["latency_prompts"]]]
cond_a = bench.text_conditioning_seconds(bench.pipeline_encoder(student_pipe), korean)
cond_b = bench.text_conditioning_seconds(bench.translate_then_encode(translator, english_pipe), korean)
steps, scale = params["evaluate"]["steps"], params["evaluate"]["guidance_scale"]
image_a = bench.seconds_per_image(student_pipe, korean[0], steps, scale)
image_b = bench.seconds_per_image(english_pipe, korean[0], steps, scale, prepare=lambda p: translator.translate([p])[0])
speed = pd.DataFrame({
    "text conditioning, ms/prompt": {"(a) encoder swap": 1000 * cond_a, "(b) translate, then generate": 1000 * cond_b},
    "image end to end, s (batch 1)": {"(a) encoder swap": image_a, "(b) translate, then generate": image_b},
    "weights in memory, MB": {"(a) encoder swap": bench.weights_mb(student_pipe.text_encoder, student_pipe.unet, student_pipe.vae),
                              "(b) translate, then generate": bench.weights_mb(translator.model, english_pipe.text_encoder,
                                                                              english_pipe.unet, english_pipe.vae)}})
print(f"text conditioning: translate-then-encode takes {cond_b / cond_a:.1f}x the student's time")
speed.round(4)

# %% [markdown]
# ## (c) Train from scratch: one epoch, measured, then extrapolated

# %%
# the mini world measures it; a hub profile's SD was trained elsewhere, so it has no probe
probe = inputs.from_scratch_probe() if hasattr(inputs, "from_scratch_probe") else None
if probe is not None:
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot(*zip(*probe["unet"]["english_loss_curve"]), label="English generator (trained to the end)", alpha=0.7)
    ax.plot(*zip(*probe["unet"]["loss_curve"]), label="Korean, from scratch (stopped)")
    ax.set_xlabel("UNet step")
    ax.set_ylabel("denoising loss")
    log_yscale(ax)
    ax.legend()
    Path(params["figures_dir"]).mkdir(parents=True, exist_ok=True)
    fig.savefig(Path(params["figures_dir"]) / "00_from_scratch.png", dpi=80, bbox_inches="tight")
    display(pd.DataFrame({part: {k: v for k, v in probe[part].items() if not k.endswith("curve")} for part in ("teacher", "unet")}).T)

# %% [markdown]
# ## The three options side by side

# %%
distill_seconds = sum(json.loads((students[o] / "metrics.json").read_text())["seconds"] for o in ("sequence", "unet"))
accuracy_columns = {"held-out colour": "held-out color", "held-out shape": "held-out shape", "seen colour": "seen color",
                    "seen shape": "seen shape"}  # absent without a judge
summary = pd.DataFrame({name: quality[column] for name, column in accuracy_columns.items() if column in quality},
                       index=quality.index).loc[["(a) encoder swap", "(b) translate, then generate"]]
summary = summary.join(speed)
training = {"(a) encoder swap": distill_seconds,
            "(b) translate, then generate": json.loads((translator_dir / "metrics.json").read_text())["train_seconds"]}
if probe is not None:
    summary.loc["(c) train from scratch"] = {
        **{column: None for column in summary.columns}, "image end to end, s (batch 1)": image_a,  # (a)'s generator size
        "weights in memory, MB": speed.loc["(a) encoder swap", "weights in memory, MB"]}
    training["(c) train from scratch"] = probe["estimated_seconds_to_quality"]
summary["training, s (one CPU thread)"] = training
summary.round(3)

# %% [markdown]
# Reading the table: (c) is stopped after one epoch, so it has no quality column; its training figure is the
# estimate from measured throughput (teacher and UNet steps the English generator needed, plus the VAE). In the mini
# world a from-scratch model is cheap because every model is tiny; at SD 1.5's scale the same extrapolation runs on
# the GPU throughput of the full profile and is what rules (c) out. Between (a) and (b), (a) needs no second model at
# request time.

# %%
metrics = {"quality": quality.to_dict(orient="index"), "speed": speed.to_dict(orient="index"),
           "text_conditioning_ratio_b_over_a": cond_b / cond_a, "summary": summary.to_dict(orient="index"),
           "student": str(student_dir)}
if probe is not None:
    metrics["from_scratch"] = ({k: v for k, v in probe.items() if k != "unet"}
                               | {"unet": {k: v for k, v in probe["unet"].items() if not k.endswith("curve")}})
write_json(Path(params["metrics_dir"]) / "00_feasibility.json", metrics);

# %% [markdown]
# ## The record
# What the committed run of this notebook measured (`make all` on the mini profile, a 2-core Intel Xeon;
# `outputs/notebooks/00_feasibility.ipynb`, `outputs/metrics/00_feasibility.json`), and what earlier runs tried on the way to
# the profile's settings.
#
# **Feasibility** (`00_feasibility`): the seed's three options on the same prompts, in one run.
#
# | option | held-out colour / shape | seen colour / shape | text conditioning, ms/prompt | image, s (batch 1) | weights, MB | training, s |
# |---|---|---|---|---|---|---|
# | (a) encoder swap (unet student) | 96.5% / 82.5% | 99.5% / 98.0% | 5.2 | 0.23 | 7.7 | 1,338 (sequence + unet students) |
# | (b) translate, then generate (tiny Marian) | 92.0% / 88.0% | 99.0% / 97.5% | 28.9 | 0.28 | 8.8 | 68 (translator) |
# | (c) train from scratch on Korean | stopped after one epoch | | | 0.23 | 7.7 | 1,943 (estimate) |
#
# Text conditioning through the translator takes 5.6× the student's time (decoding token by token vs one encoder
# pass); in the mini world the UNet dominates the whole image, so end to end they are within 20%. The student beats
# the translator on held-out colour (96.5% vs 92.0%), the translator is ahead on held-out shape (88.0% vs 82.5%): its
# English is the canonical template the generator learnt best. (c) was trained one epoch on Korean captions (teacher
# 47 steps, UNet 188 steps; its UNet loss 0.337 vs 0.301 for the English run at the same step), then extrapolated to
# the 600 + 4,000 steps the English generator needed, plus the VAE: 1,943 s, against 1,338 s for the two students of
# (a). Both were timed with other training beside them (the probe's UNet went at 3.7 steps/s in this run, 1.6 in the
# previous record, whose estimate for 2,500 steps was 2,413 s), so read the ratio, not the seconds: in the mini world a
# text-to-image model from scratch costs the same order as distilling a student, because every model is tiny; at SD
# 1.5's scale the same extrapolation is what rules (c) out.
