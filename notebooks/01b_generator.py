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
# # 01b · The mini world's English text-to-image model
#
# The real project starts from OpenAI's CLIP (English) and Stable Diffusion 1.5, which was trained on CLIP's
# frozen text hidden states. The mini world gets the same two things, trained from scratch on its own data and
# built from the same library classes:
#
# * **teacher** — a tiny `transformers.CLIPModel` (text + vision towers) trained contrastively on rendered shapes and
#   their English captions, with an English-only byte-level BPE tokenizer and CLIP's 77-position context;
# * **generator** — a `diffusers.StableDiffusionPipeline` of a tiny `AutoencoderKL`, a tiny `UNet2DConditionModel`
#   trained on the frozen teacher's `last_hidden_state` (10% empty prompts, for classifier-free guidance) of plain
#   and ink-wash scenes, and the teacher's `CLIPTextModel` + tokenizer, saved to `outputs/mini/sd/` with
#   `save_pretrained`.
#
# Everything is cached under `outputs/mini/` by config: re-running does not retrain unless the params changed.

# %% tags=["parameters"]
params_file = "params/mini.yaml"
overrides = {}  # e.g. {"metrics_dir": "/tmp/metrics"}: what the tests change

# %%
import json
import os
import time
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import koreanize_matplotlib  # noqa: F401
from IPython.display import display

from koclip_lib import distill, evaluate, plan
from koclip_lib.common import load_params, log_yscale, write_json

params = {**load_params(params_file), **overrides}
root = Path(params["root"])
metrics = {}

# %%
started = time.time()
inputs = plan.profile_inputs(params)
paths = inputs.generator_paths()  # the mini world trains them; a hub profile names a checkpoint trained elsewhere
trained_here = getattr(inputs, "world", None) is not None
print(f"models ready in {time.time() - started:.0f} s (0 s when cached):", {k: str(v) for k, v in paths.items()})

# %% [markdown]
# ## The teacher
# Korean falls apart into byte tokens in the teacher's tokenizer, as it does in real CLIP: this is why an English
# generator cannot read Korean.

# %%
_, tokenizer = distill.load_teacher(paths["teacher"])
pd.DataFrame([{"text": t, "tokens": len(ids), "first tokens": " ".join(tokenizer.convert_ids_to_tokens(ids)[:10])}
              for t in ["a red star on the left", "왼쪽에 빨간 별이 있다"] for ids in [tokenizer(t).input_ids]])

# %% [markdown]
# Zero-shot accuracy: each rendered image against the 40 prompts "a {colour} {shape}" (where this profile trained the
# teacher; a hub checkpoint's teacher was trained elsewhere).

# %%
if trained_here:
    teacher_metrics = json.loads((paths["teacher"] / "metrics.json").read_text())
    metrics["teacher_zero_shot"] = teacher_metrics["zero_shot"]
    display(pd.DataFrame(teacher_metrics["zero_shot"]).T.rename_axis("colour–shape pairs"))

# %% [markdown]
# ## Training curves

# %%
if trained_here:
    curves = {"teacher CLIP (contrastive)": teacher_metrics["loss_curve"],
              "VAE (reconstruction)": json.loads((paths["vae"] / "metrics.json").read_text())["loss_curve"],
              "UNet (denoising)": json.loads((paths["sd"] / "train_metrics.json").read_text())["loss_curve"]}
    fig, axes = plt.subplots(1, 3, figsize=(13, 3))
    for ax, (name, curve) in zip(axes, curves.items()):
        steps, losses = zip(*curve)
        ax.plot(steps, losses)
        ax.set_title(name)
        ax.set_xlabel("step")
        log_yscale(ax)
    Path(params["figures_dir"]).mkdir(parents=True, exist_ok=True)
    fig.savefig(Path(params["figures_dir"]) / "01b_training_curves.png", dpi=80, bbox_inches="tight")

# %% [markdown]
# ## Does the generator follow English prompts?
# `koclip_lib.evaluate` generates one image per prompt (fixed seeds) and lets the attribute classifier read it.
# The same scenes are captioned in English and in Korean; held-out colour–shape pairs were never in training.
# The last two rows are **the problem this project exists for**: the same English-only pipeline given Korean.

# %%
pipe = evaluate.load_pipeline(paths["sd"])
classifier = evaluate.load_judge(paths["classifier"])  # None without a judge: the tables count images, the grids show them
prompt_files = inputs.eval_prompts()
eval_kwargs = {"steps": params["evaluate"]["steps"], "guidance_scale": params["evaluate"]["guidance_scale"]}
table, images = evaluate.evaluate_prompt_files(
    pipe, classifier, {"English, seen": prompt_files["en_seen"], "English, held-out": prompt_files["en_heldout"],
                       "Korean, seen": prompt_files["ko_seen"], "Korean, held-out": prompt_files["ko_heldout"]}, **eval_kwargs)
metrics["generator"] = table.to_dict(orient="index")
table.round(3)

# %% [markdown]
# The UNet learned a second style too (`unet.styles` in the profile): English captions that ask for it ("an ink wash
# painting of …") get ink-wash, in the colour and shape asked for, as SD 1.5 draws ink painting when a prompt says
# so. "style acc" is the share the classifier reads as ink-wash. The Korean corpus has plain captions only, so the
# students never learn a Korean word for the style: notebook 04 binds one (백묘법) with a LoRA.

# %%
if "en_ink_heldout" in prompt_files:  # the mini world's captions that ask for its second style
    styled, styled_images = evaluate.evaluate_prompt_files(
        pipe, classifier, {"English ink-wash caption, seen": prompt_files["en_ink_seen"],
                           "English ink-wash caption, held-out": prompt_files["en_ink_heldout"]}, **eval_kwargs)
    metrics["generator_ink_captions"] = styled.to_dict(orient="index")
    display(styled.round(3))
    display(evaluate.image_grid(*[part[:16] for part in styled_images["English ink-wash caption, held-out"]], cols=8))

# %% [markdown]
# Classifier-free guidance on the held-out English prompts: colour is best between 3 and 5, at 7.5 colour and shape
# fall again, at 1 it follows the prompt least. The profile's `evaluate.guidance_scale` (3) comes from this sweep.

# %%
if classifier is not None:
    sweep = evaluate.guidance_sweep(pipe, classifier, prompt_files["en_heldout"], scales=(1.0, 2.0, 3.0, 5.0, 7.5),
                                    steps=params["evaluate"]["steps"])
    metrics["guidance_sweep_en_heldout"] = sweep.to_dict(orient="index")
    display(sweep.round(3))

# %%
evaluate.image_grid(images["English, held-out"][0][:16], images["English, held-out"][1][:16], cols=8)

# %%
evaluate.image_grid(images["Korean, held-out"][0][:16], images["Korean, held-out"][1][:16], cols=8)

# %% [markdown]
# The command-line form of the same check (its last line is the JSON result):
#
#     python -m koclip_lib.evaluate --pipeline outputs/mini/sd --prompts outputs/mini/prompts/en_heldout.tsv

# %%
cli_result = evaluate.main(["--pipeline", os.fspath(paths["sd"]), "--prompts", str(prompt_files["en_heldout"]),
                            "--classifier", str(paths["classifier"] or "none"), "--limit", "64", "--steps", str(eval_kwargs["steps"]),
                            "--guidance", str(eval_kwargs["guidance_scale"]),
                            "--save-grid", str(Path(params["figures_dir"]) / "01b_english_heldout.png")])

# %%
write_json(Path(params["metrics_dir"]) / "01b_generator.json", metrics)

# %% [markdown]
# ## The record
# What the committed run of this notebook measured (`make all` on the mini profile, a 2-core Intel Xeon;
# `outputs/notebooks/01b_generator.ipynb`, `outputs/metrics/01b_generator.json`), and what earlier runs tried on the way to
# the profile's settings.
#
# **English generator** (`01b_generator`): teacher zero-shot colour 100% / shape 71.7% (seen pairs), 99.9% / 55.1%
# (held-out pairs).
#
# | prompts → tiny SD with the English teacher | colour | shape | position | drawn ink-wash |
# |---|---|---|---|---|
# | English, seen colour–shape pairs | 98.5% | 99.5% | 100% | 0% |
# | English, held-out pairs | 94.0% | 90.5% | 100% | 0% |
# | English ink-wash captions ("an ink wash painting of …"), seen pairs | 93.0% | 98.5% | 100% | 100% |
# | English ink-wash captions, held-out pairs | 96.5% | 86.5% | 100% | 100% |
# | Korean, seen pairs (the problem) | 9.5% | 14.0% | 30.7% | 98.5% |
# | Korean, held-out pairs (the problem) | 10.0% | 11.0% | 28.7% | 97.5% |
#
# The UNet learns plain and ink-wash scenes, the style named in the caption (`unet.styles`), as SD 1.5 draws ink
# painting when a prompt asks for it; the Korean corpus, and so the students, have plain captions only. Given Korean,
# which it reads as byte tokens, the English pipeline draws mostly ink-wash. Generalisation to unseen colour–shape pairs
# varies from one training run to the next far more than seen pairs do. The UNet now trains 4,000 steps
# (`unet.loop.steps`); the 2,500-step UNet of the previous record, with the same VAE and judge, reached 83.0% / 86.5%
# on held-out pairs (seen pairs 99.0% / 91.0%). Earlier 2,500-step runs of the same seeded job, all with the 700-step
# VAE and read by the judges of their time, reached 85.0% / 82.5%, 86.5% / 73.0% when its kernels trained on two
# threads and 77.5% / 76.0% on one; a UNet of plain scenes only, 80.0% / 78.0%. The target (colour ≥ 90%,
# shape ≥ 75%) is now met for both (94.0% / 90.5%).
#
# The UNet's settings (`unet` in `params/mini.yaml`), 200 prompts, held-out / seen: 4,000 steps gave English colour
# 94.0% / 98.5%, shape 90.5% / 99.5%, ink-wash captions drawn ink-wash 100% at colour 96.5% / 93.0%; 2,500 steps
# 83.0% / 99.0%, shape 86.5% / 91.0%, ink-wash colour 94.0% / 87.0%. With a plain-only UNet, the Korean ink LoRA of
# notebook 04 kept 40.5% / 44.5% colour with its trigger: ink-wash was a new domain for it. Classifier-free guidance
# on held-out English prompts: colour 75.5% at 1, 94.0% at 3, 96.5% at 5, 93.0% at 7.5; shape 87.0%, 90.5%, 89.5%,
# 86.5% (`evaluate.guidance_scale`: 3).
