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
# # 02 · A Korean text encoder by distillation
#
# A Korean student learns to produce, from Korean, what the frozen English teacher produces from the English
# translation — so the unchanged generator understands Korean. Three objectives (`koclip_lib.distill`):
#
# | objective | what is matched | why |
# |---|---|---|
# | `pooled` | the pooled vector: MSE(student(ko), teacher(en)) + MSE(student(en), teacher(en)) | the seed's loss, exactly |
# | `sequence` | all 77 hidden states through a learned-query resampler, + the pooled term, + empty prompt → teacher's empty prompt | SD cross-attends to the whole 77 × width sequence |
# | `unet` | the frozen UNet's noise prediction given student(ko) vs teacher(en), same latent and timestep (from `sequence`) | optimises exactly what the generator consumes |
#
# Validation loss is measured every 200 steps on the corpus's validation split; training stops early when it stops
# improving and keeps the best weights. Held-out colour–shape pairs are in neither the corpus nor the generator's data.

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

from koclip_lib import distill, evaluate, plan
from koclip_lib.common import load_params, log_yscale, write_json
from koclip_lib.pipeline import load_korean_pipeline

params = {**load_params(params_file), **overrides}
root = Path(params["root"])
metrics = {}

# %%
started = time.time()
inputs = plan.profile_inputs(params)
paths = inputs.generator_paths()
students = plan.students(params)
print(f"students ready in {time.time() - started:.0f} s (0 s when cached):", {k: str(v) for k, v in students.items()})

# %% [markdown]
# ## Training curves (training loss and validation loss)

# %%
fig, axes = plt.subplots(1, len(students), figsize=(4.5 * len(students), 3))
for ax, (objective, folder) in zip(axes, students.items()):
    log = json.loads((folder / "train" / "train_log.json").read_text())
    train = [(h["step"], h["loss"]) for h in log["history"] if "loss" in h]
    val = [(h["step"], h["val_loss"]) for h in log["history"] if "val_loss" in h]
    ax.plot(*zip(*train), label="train")
    ax.plot(*zip(*val), "o-", label="validation")
    ax.set_title(f"{objective} ({log['steps']} steps{', early stop' if log['stopped_early'] else ''})")
    log_yscale(ax)
    ax.legend()
Path(params["figures_dir"]).mkdir(parents=True, exist_ok=True)
fig.savefig(Path(params["figures_dir"]) / "02_distill_curves.png", dpi=80, bbox_inches="tight")

# %% [markdown]
# ## Embedding level, on the corpus's held-out test pairs
# Token-sequence cosine and MSE to teacher(English) over all 77 positions, and Korean→English retrieval in the
# teacher's pooled space (candidates: the distinct English sentences). The first row is the problem: the teacher
# itself reading Korean.

# %%
teacher, teacher_tok = distill.load_teacher(paths["teacher"])
teacher.eval()
test_pairs = distill.load_pairs(inputs.corpus(), "test")[:1000]
rows = {"teacher reading Korean (no distillation)": distill.embedding_metrics(teacher, teacher_tok, teacher, teacher_tok, test_pairs)}
for objective, folder in students.items():
    rows[f"student · {objective}"] = json.loads((folder / "metrics.json").read_text())["embedding_test"]
embedding_table = pd.DataFrame(rows).T[["seq_cosine", "seq_mse", "R@1", "R@5", "pairs", "candidates"]]
metrics["embedding"] = embedding_table.to_dict(orient="index")
embedding_table.round(3)

# %% [markdown]
# ## Image level: the generator with each encoder
# The English pipeline on English prompts is the reference; the same pipeline on the Korean captions of the same
# scenes is the problem; each student replaces the text encoder (`load_korean_pipeline`) and reads Korean.

# %%
classifier = evaluate.load_judge(paths["classifier"])  # None where the profile has no judge: images, no accuracies
prompts = inputs.eval_prompts()
eval_kwargs = {"steps": params["evaluate"]["steps"], "guidance_scale": params["evaluate"]["guidance_scale"]}
english_pipe = evaluate.load_pipeline(paths["sd"])
tables, grids = {}, {}
tables["teacher · English prompts"], _ = evaluate.evaluate_prompt_files(
    english_pipe, classifier, {"seen": prompts["en_seen"], "held-out": prompts["en_heldout"]}, **eval_kwargs)
tables["teacher · Korean prompts (the problem)"], grids["raw"] = evaluate.evaluate_prompt_files(
    english_pipe, classifier, {"seen": prompts["ko_seen"], "held-out": prompts["ko_heldout"]}, **eval_kwargs)
for objective, folder in students.items():
    pipe = load_korean_pipeline(sd=paths["sd"], text_encoder=folder)
    tables[f"student · {objective} · Korean prompts"], grids[objective] = evaluate.evaluate_prompt_files(
        pipe, classifier, {"seen": prompts["ko_seen"], "held-out": prompts["ko_heldout"]}, **eval_kwargs)
image_table = pd.concat(tables, names=["encoder", "pairs"])
metrics["image"] = {f"{a} | {b}": row for (a, b), row in image_table.to_dict(orient="index").items()}
image_table.round(3)

# %% [markdown]
# The target: the best student's Korean-prompt accuracy on held-out pairs is at least 90% of the teacher's
# English-prompt accuracy, for colour and for shape. The best of the two ratios picks the student the Korean pipeline
# uses (`distill.select_best` copies it to `<root>/student`); a profile without a judge picks by the token-sequence
# cosine of the embedding table above.

# %%
if classifier is not None:
    reference = tables["teacher · English prompts"].loc["held-out"]
    ratios = {objective: {attr: tables[f"student · {objective} · Korean prompts"].loc["held-out", f"{attr} acc"] / reference[f"{attr} acc"]
                          for attr in ("color", "shape")} for objective in students}
    metrics["ratio_to_teacher_heldout"] = ratios
    scores = pd.DataFrame(ratios).T.min(axis=1).to_dict()  # the worse of colour and shape
else:  # no judge: the student whose token sequences are closest to the teacher's on the corpus's test pairs
    scores = {objective: row["seq_cosine"] for objective, row in
              ((k.removeprefix("student · "), v) for k, v in metrics["embedding"].items() if k.startswith("student"))}
best = max(scores, key=scores.get)
best_dir = distill.select_best(students, scores, root)
metrics["best_objective"] = best
print(f"best objective: {best} -> {best_dir}")
pd.DataFrame(ratios).T.round(3) if classifier is not None else pd.Series(scores, name="seq_cosine").round(3)

# %%
imgs, labels = grids[best]["held-out"]
evaluate.image_grid(imgs[:16], labels[:16], cols=8)

# %%
imgs, labels = grids["raw"]["held-out"]
evaluate.image_grid(imgs[:16], labels[:16], cols=8)

# %% [markdown]
# The same check from the command line, with the student swapped in by `--text-encoder`:
#
#     python -m koclip_lib.evaluate --pipeline outputs/mini/sd --text-encoder outputs/mini/student --prompts outputs/mini/prompts/ko_heldout.tsv

# %%
write_json(Path(params["metrics_dir"]) / "02_distill.json", metrics)

# %% [markdown]
# ## The record
# What the committed run of this notebook measured (`make all` on the mini profile, a 2-core Intel Xeon;
# `outputs/notebooks/02_distill.ipynb`, `outputs/metrics/02_distill.json`), and what earlier runs tried on the way to
# the profile's settings.
#
# **Korean student** (`02_distill`): held-out corpus pairs (1,000 Korean sentences, 846 distinct English candidates).
#
# | encoder | 77-state cosine to teacher(en) | R@1 | R@5 | Korean prompts, seen: colour / shape | held-out: colour / shape |
# |---|---|---|---|---|---|
# | teacher reading Korean (no distillation) | 0.478 | 0.1% | 0.6% | 9.5% / 14.0% | 10.0% / 11.0% |
# | student · pooled (the seed's loss) | −0.047 | 23.9% | 87.5% | 11.5% / 32.5% | 29.5% / 9.0% |
# | student · sequence (77 states + pooled + empty prompt) | 0.979 | 23.9% | 87.2% | 78.5% / 67.5% | 79.5% / 63.0% |
# | student · unet (through the frozen UNet) | 0.977 | 24.2% | 87.6% | **99.5% / 98.0%** | **96.5% / 82.5%** |
# | *reference: teacher on the English prompts* | | | | *98.5% / 99.5%* | *94.0% / 90.5%* |
#
# Pooled-only distillation retrieves as well as the others but leaves the 77 states SD reads unconstrained, so its images
# mostly miss (11.5% / 32.5% on seen pairs) — the seed's method does not carry over to SD. Matching the whole sequence, then the UNet's own noise
# prediction, gives a Korean pipeline as good as the English one on seen pairs. On held-out pairs the unet student
# reaches 102.7% of the teacher's colour accuracy and 91.2% of its shape accuracy (target: 90% for both; the previous
# record, with the 2,500-step UNet: 104% and 101%). What got it there, each step
# measured on held-out shape with the same sequence student as the start (earlier runs with the 700-step VAE, read by
# an earlier judge): the unet stage on captions of each latent's own scene (Korean and English of the same image,
# instead of random corpus captions on random latents) at 400 steps, 64.5%; 1,200 steps, 67.5%; the UNet's prediction
# weighted 10× the sequence anchor (`unet_sequence_weight: 0.1`) at lr 4e-4, 72.0%. Drawing only high-noise timesteps (400–1000) did not help (67.0%).
