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
# # 04 · Korean style LoRAs: a trigger word switches a style on
#
# The seed trained UNet LoRAs on ~2,000 images of a Korean style (ink-wash `백묘법`, hanbok), captioned them with
# BLIP, translated the captions to Korean, and switched the style on with a trigger word: "…, 백묘법". It also found
# that LoRAs trained on English captions kept working after CLIP was swapped for the Korean encoder.
#
# Here (`koclip_lib.lora`): a captioned image-folder dataset (mini: the renderer draws ink-wash images and captions
# what they show; full: BLIP + a translator), a UNet-only peft LoRA trained behind the frozen Korean student with
# DreamBooth-style prior preservation (without its trigger, the LoRA'd UNet must give the base UNet's prediction),
# files in diffusers' and kohya/A1111's layouts, and a registry by name. Then the numbers: how often the classifier
# calls an image ink-wash with and without the trigger, and whether colour and shape survive.
#
# As SD 1.5 draws ink painting when an English prompt asks for it, the mini generator's UNet draws ink-wash for
# English captions that name it (notebook 01b). The Korean student was distilled on plain captions only and reads
# 백묘법 as three unknown tokens: the LoRA has to tie that word to the rendering the UNet already has.

# %% tags=["parameters"]
params_file = "params/mini.yaml"
overrides = {}  # e.g. {"metrics_dir": "/tmp/metrics"}: what the tests change

# %%
import json
import time
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import display

from koclip_lib import evaluate, generator, lora, miniworld
from koclip_lib.common import load_params, write_json
from koclip_lib.pipeline import load_korean_pipeline

params = {**load_params(params_file), **overrides}
root = Path(params["root"])
section = params["lora"]
started = time.time()
registry_file = lora.ensure_loras(params, root)
registry = lora.LoraRegistry.from_file(registry_file)
print(f"LoRAs ready in {time.time() - started:.0f} s (0 s when cached)")
cards = {name: json.loads((Path(e["path"]).parent / "lora.json").read_text(encoding="utf-8")) for name, e in registry.entries.items()}
pd.DataFrame({n: {"trigger": c["trigger"], "trained behind": c["text_encoder"], "rank / alpha": f"{c['rank']} / {c['alpha']:g}",
                  "images": c["images"], "steps": c["steps"], "train s": round(c["seconds"])} for n, c in cards.items()}).T

# %% [markdown]
# ## The dataset
# An image folder with `metadata.jsonl` (`file_name`, `text`, `caption_ko`, `caption_en`): the layout
# `datasets.load_dataset("imagefolder")` and diffusers' `train_text_to_image_lora.py` read. `text` is the caption the
# UNet trains on, trigger included; `caption_ko` / `caption_en` are the captions without it (prior preservation reads
# them). In `full`, `lora.caption_image_folder(images, out, trigger, hf_captioner(), hf_translator())` writes the same
# layout from BLIP captions translated to Korean.

# %%
dataset = lora.load_image_dataset(Path(registry.get("ink")["path"]).parent / "data")
evaluate.image_grid(dataset["image"][:8], dataset["text"][:8], cols=8)

# %% [markdown]
# ## Training
# The style loss (the LoRA'd UNet on the ink images with triggered captions) and the preservation loss (on the base
# pipeline's own images for the untriggered captions, against the base UNet's prediction).

# %%
fig, axes = plt.subplots(1, len(cards), figsize=(5 * len(cards), 3), squeeze=False)
for ax, (name, card) in zip(axes[0], cards.items()):
    history = json.loads((Path(registry.get(name)["path"]).parent / "train" / "train_log.json").read_text())["history"]
    for key in ("style", "prior"):
        points = [(h["step"], h[key]) for h in history if key in h]
        if points:
            ax.plot(*zip(*points), label=key)
    ax.set_title(f"{name} (trigger: {card['trigger']})")
    ax.set_xlabel("step")
    ax.legend()
plt.tight_layout()

# %% [markdown]
# ## Style rate and content, on Korean prompts
# Held-out and seen colour–shape pairs (`n_prompts` of each), one image per prompt, same seeds in every row. The style
# rate is the share of images the attribute classifier calls ink-wash. Rows: the English pipeline asked for ink-wash
# in English (no LoRA: what the base UNet draws); the Korean pipeline without LoRA; with
# the `ink` LoRA without and with the trigger; the seed's English LoRA (`ink-en`, trained on English captions behind
# the English teacher) on the English pipeline with English prompts (as trained), then behind the Korean student on
# Korean prompts, with no trigger, with the Korean trigger and with its own English trigger words.

# %%
paths = generator.ensure_generator(params, root)
prompt_files = miniworld.ensure_eval_prompts(params, root)
classifier = miniworld.load_classifier(paths["classifier"])
from koclip_lib.distill import ensure_students  # noqa: E402

pipes = {"korean": load_korean_pipeline(sd=paths["sd"], text_encoder=ensure_students(params, root)[section.get("student", "unet")]),
         "english": evaluate.load_pipeline(paths["sd"])}
en_trigger = registry.get("ink-en")["trigger"]
cases = [
    lora.StyleCase("English pipeline, English ink-wash caption, no LoRA", "english", "en_ink"),
    lora.StyleCase("Korean pipeline, no LoRA", "korean"),
    lora.StyleCase("+ ink, no trigger", "korean", loras={"ink": 1.0}),
    lora.StyleCase("+ ink, trigger 백묘법", "korean", loras={"ink": 1.0}, trigger=True),
    lora.StyleCase("+ ink at 0.75, trigger 백묘법", "korean", loras={"ink": 0.75}, trigger=True),
    lora.StyleCase("+ ink at 0.6, trigger 백묘법", "korean", loras={"ink": 0.6}, trigger=True),
    lora.StyleCase("English pipeline + ink-en, English prompt + trigger", "english", "en", {"ink-en": 1.0}, trigger=True),
    lora.StyleCase("Korean pipeline + ink-en, no trigger", "korean", loras={"ink-en": 1.0}),
    lora.StyleCase("Korean pipeline + ink-en, trigger 백묘법", "korean", loras={"ink-en": 1.0}, trigger=True, trigger_text="백묘법"),
    lora.StyleCase(f"Korean pipeline + ink-en, trigger '{en_trigger}'", "korean", loras={"ink-en": 1.0}, trigger=True),
]
started = time.time()
evaluated = lora.evaluate_cases(pipes, classifier, prompt_files, registry, cases, n_prompts=section["evaluate"]["n_prompts"],
                                steps=params["evaluate"]["steps"], guidance_scale=params["evaluate"]["guidance_scale"])
table = lora.style_table(evaluated)
print(f"{len(cases)} rows in {time.time() - started:.0f} s")
table.style.format("{:.1%}")

# %% [markdown]
# How much colour can an ink-wash image keep? Two references besides the table's first row (the base UNet asked for
# ink-wash in English): *real* ink-wash scenes after the mini VAE's encode and decode (what any generator decoding
# through it can show), read by the judge (trained on such round-trips as well as on renders, notebook 01) and by a
# fresh colour probe trained on round-trips alone.

# %%
from diffusers import AutoencoderKL  # noqa: E402

vae = AutoencoderKL.from_pretrained(paths["vae"])
world = miniworld.WorldConfig.from_params(params.get("world"))
ceiling = pd.DataFrame({style: evaluate.vae_round_trip_accuracy(vae, classifier, world, style) for style in ("plain", "ink")}).T
ceiling["colour probe trained on round-trips"] = {"ink": evaluate.vae_round_trip_probe(vae, world, "ink")}
ceiling.style.format("{:.1%}", na_rep="")

# %% [markdown]
# Which colours the ink-wash images lose, per colour the prompt asks for (held-out and seen prompts together, the
# table's images), and what the judge reads instead:

# %%
by_colour = lora.attribute_breakdown(evaluated, "color", [case.label for case in cases[:4]])
by_colour

# %% [markdown]
# ## Grids: trigger off / on, LoRA weight 0 → 1
# One seed (1147446245) throughout; held-out colour–shape pairs. Each pair of rows is one LoRA weight, without and with
# `백묘법`.

# %%
grid_prompts = [p for p, _ in params["sweep"]["prompts"]]
lora.trigger_grid(pipes["korean"], registry, "ink", grid_prompts, weights=(0.0, 0.25, 0.5, 0.75, 1.0),
                  num_inference_steps=params["evaluate"]["steps"], guidance_scale=params["evaluate"]["guidance_scale"])

# %% [markdown]
# ## The files
# `pytorch_lora_weights.safetensors` loads with plain diffusers (`pipe.load_lora_weights(folder)`), the rank and alpha
# in its metadata; `ink.kohya.safetensors` has kohya-ss / A1111 keys (`lora_unet_…`, `.alpha`, `ss_*` metadata) and
# diffusers converts it back when loading it. Both give the same image; a corrupt file or one for another UNet is
# refused before the pipeline is touched.

# %%
files = lora.compare_file_layouts(pipes["korean"], registry, "ink", grid_prompts[0])
pd.DataFrame([files])

# %%
metrics = {"loras": {n: {k: c[k] for k in ("trigger", "text_encoder", "rank", "alpha", "images", "steps", "seconds")}
                     for n, c in cards.items()},
           "table": json.loads(table.to_json(orient="index")), "vae_ceiling": json.loads(ceiling.to_json(orient="index")),
           "colour_breakdown": json.loads(by_colour.to_json(orient="index")),
           "files": files, "n_prompts": section["evaluate"]["n_prompts"]}
write_json(Path(params["metrics_dir"]) / "04_lora.json", metrics)
figures = Path(params["figures_dir"])
figures.mkdir(parents=True, exist_ok=True)
lora.trigger_grid(pipes["korean"], registry, "ink", grid_prompts, num_inference_steps=params["evaluate"]["steps"],
                  guidance_scale=params["evaluate"]["guidance_scale"]).save(figures / "04_ink_trigger.png")
print(json.dumps(metrics["table"], ensure_ascii=False, indent=1)[:1500])
