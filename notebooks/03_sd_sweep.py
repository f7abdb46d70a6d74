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
# # 03 · The Korean student across SD versions
#
# One fixed seed (1147446245, the seed's), a fixed prompt set, and every pairing of an SD checkpoint with a text
# encoder: the checkpoint's own English encoder on the English prompt (the reference), the same on the Korean prompt
# (the problem), the translator's English (the seed's option ③), and the distilled students on the Korean prompt.
#
# SD 1.x checkpoints share one text interface (CLIP ViT-L/14, 77 × 768), so a student distilled once plugs into all
# of them: in `mini`, the generator of notebook 01b and a fine-tune of it on ink-wash images (as dreamshaper-7 is a
# fine-tune of SD 1.5); in `full`, SD 1.5 and dreamshaper-7. SD 2.x, SDXL and SD 3 read other text states: their
# cells show `load_korean_pipeline`'s compatibility error instead of crashing. Here the model hub is out of reach, so
# those three are config-only stand-ins (`generator.save_stand_in_checkpoint`): model_index.json and the denoiser's
# text-conditioning settings copied from the real models, which is all the check reads.

# %% tags=["parameters"]
params_file = "params/mini.yaml"
overrides = {}  # e.g. {"metrics_dir": "/tmp/metrics"}: what the tests change

# %%
import time
from pathlib import Path

import pandas as pd
from IPython.display import display

from koclip_lib import distill, evaluate, generator, miniworld, translate
from koclip_lib.common import load_params, write_json

params = {**load_params(params_file), **overrides}
root = Path(params["root"])
sweep = params["sweep"]
started = time.time()
versions = generator.resolve_sd_versions(params, root)
encoders = evaluate.sweep_encoders(sweep["encoders"], distill.ensure_students(params, root),
                                   translate.ensure_translator(params, root) if "translator" in sweep["encoders"] else None)
print(f"checkpoints and encoders ready in {time.time() - started:.0f} s (0 s when cached)")
pd.DataFrame({"checkpoint": {k: str(v["path"]) for k, v in versions.items()}})

# %% [markdown]
# ## The sweep
# Seconds per image at batch 1 on this machine, and (mini) colour/shape accuracy of the attribute classifier on
# `n_prompts` prompts of each evaluation file (held-out and seen colour–shape pairs), same seeds in every cell.

# %%
paths = generator.ensure_generator(params, root)
prompts = miniworld.ensure_eval_prompts(params, root)
files = {"held-out": (prompts["ko_heldout"], prompts["en_heldout"]), "seen": (prompts["ko_seen"], prompts["en_seen"])}
table, grids = evaluate.sd_sweep(versions, encoders, [tuple(p) for p in sweep["prompts"]], seed=sweep["seed"],
                                 classifier=miniworld.load_classifier(paths["classifier"]), prompt_files=files,
                                 limit=sweep["n_prompts"],
                                 steps=params["evaluate"]["steps"], guidance_scale=params["evaluate"]["guidance_scale"])
with pd.option_context("display.max_colwidth", 90):
    display(table.drop(columns="error").round(3).dropna(how="all"))

# %% [markdown]
# The incompatible checkpoints, with the message a user gets:

# %%
for (version, encoder), message in table["error"].dropna().items():
    if encoder.startswith("student"):
        print(f"{version} × {encoder}:\n    {message}\n")

# %% [markdown]
# ## Grids: the same seed, each prompt (columns) through each encoder (rows)

# %%
for version in versions:
    cells = [(encoder, grids[(version, encoder)]) for encoder in encoders if (version, encoder) in grids]
    if not cells:
        continue
    images = [im for _, (imgs, _) in cells for im in miniworld.to_pil(imgs)]
    labels = [f"{encoder[:14]}: {prompt}" for encoder, (_, prompts_) in cells for prompt in prompts_]
    print(version)
    grid = evaluate.image_grid(images, labels, cols=len(sweep["prompts"]), cell=112, label_height=28)
    Path(params["figures_dir"]).mkdir(parents=True, exist_ok=True)
    grid.save(Path(params["figures_dir"]) / f"03_sweep_{version}.png")
    display(grid)

# %% [markdown]
# ## The one-line pipeline, saved and scored from the command line
# The best student of notebook 02 (`outputs/mini/student`) swapped into the generator and saved with
# `save_pretrained` as one folder, then scored by the evaluate CLI exactly as a user would run it:
#
#     python -m koclip_lib.evaluate --pipeline outputs/mini/korean_sd --prompts outputs/mini/prompts/ko_heldout.tsv

# %%
from koclip_lib.pipeline import load_korean_pipeline

load_korean_pipeline(sd=paths["sd"], text_encoder=root / "student").save_pretrained(root / "korean_sd")
cli = evaluate.main(["--pipeline", str(root / "korean_sd"), "--prompts", str(prompts["ko_heldout"]),
                     "--classifier", str(paths["classifier"]), "--limit", str(sweep["n_prompts"]),
                     "--steps", str(params["evaluate"]["steps"]), "--guidance", str(params["evaluate"]["guidance_scale"])])

# %%
metrics = {"korean_sd_cli": {k: cli[k] for k in ("accuracy", "images", "seconds_per_image")}, "rows": {f"{v} | {e}": {k: val for k, val in row.items() if pd.notna(val)}
                    for (v, e), row in table.to_dict(orient="index").items()},
           "seed": sweep["seed"], "prompts": sweep["prompts"], "n_prompts": sweep["n_prompts"]}
write_json(Path(params["metrics_dir"]) / "03_sd_sweep.json", metrics);
