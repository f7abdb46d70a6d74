# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
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

from koclip_lib import distill, evaluate, generator, miniworld
from koclip_lib.common import load_params, log_yscale, write_json
from koclip_lib.pipeline import load_korean_pipeline

params = {**load_params(params_file), **overrides}
root = Path(params["root"])
metrics = {}

# %%
started = time.time()
paths = generator.ensure_generator(params, root)
students = distill.ensure_students(params, root)
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
from transformers import AutoTokenizer, CLIPTextModel

teacher = CLIPTextModel.from_pretrained(paths["teacher"]).eval()
teacher_tok = AutoTokenizer.from_pretrained(paths["teacher"])
test_pairs = distill.load_pairs(miniworld.ensure_world_corpus(params, root), "test")[:1000]
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
from diffusers import StableDiffusionPipeline

classifier = miniworld.load_classifier(paths["classifier"])
prompts = miniworld.ensure_eval_prompts(params, root)
eval_kwargs = {"steps": params["evaluate"]["steps"], "guidance_scale": params["evaluate"]["guidance_scale"]}
english_pipe = StableDiffusionPipeline.from_pretrained(paths["sd"])
english_pipe.set_progress_bar_config(disable=True)
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
# English-prompt accuracy, for colour and for shape.

# %%
reference = tables["teacher · English prompts"].loc["held-out"]
ratios = {objective: {attr: tables[f"student · {objective} · Korean prompts"].loc["held-out", f"{attr} acc"] / reference[f"{attr} acc"]
                      for attr in ("color", "shape")} for objective in students}
ratio_table = pd.DataFrame(ratios).T
best = ratio_table.min(axis=1).idxmax()
best_dir = distill.select_best(students, ratio_table.min(axis=1).to_dict(), root)
metrics["ratio_to_teacher_heldout"] = ratios
metrics["best_objective"] = best
print(f"best objective: {best} -> {best_dir}")
ratio_table.round(3)

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
