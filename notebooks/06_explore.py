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
# # 06 · Explorer: one Korean prompt, every way of reading it, side by side
#
# Type a Korean prompt, press **generate**, and the same seed is drawn through the three routes the earlier notebooks
# measured, on the profile's SD 1.x checkpoint:
#
# | route | what reads the Korean |
# |---|---|
# | `teacher · Korean prompt (raw)` | the English pipeline's CLIP, as it is (the problem: notebook 01b) |
# | `translator + teacher` | the profile's Korean→English translator, then the English pipeline (the seed's option ③, notebook 00) |
# | `student · unet` | the distilled Korean student swapped in for CLIP (`load_korean_pipeline`, notebooks 02–03) |
#
# The widgets: prompt, negative prompt (each route reads it as it reads the prompt: translated for the translator
# route), seed (the seed's 1147446245), steps, a style LoRA from the profile's registry with its weight (notebook 04)
# and whether to add its trigger word. The three routes share one UNet, so the LoRA acts on all of them; its Korean
# trigger (`백묘법`) means something only to the student. An empty prompt shows the pipeline's message instead of images.
#
# The logic is `koclip_lib.explore` (`build_explorer(params)` → `Explorer`); `tests/test_explore.py` drives its
# callback from Python. Run this notebook in Jupyter for live widgets; the cells after the explorer set its widgets
# from Python and press the button, so the executed copy shows the grids without a kernel.

# %% tags=["parameters"]
params_file = "params/mini.yaml"
overrides = {}  # e.g. {"metrics_dir": "/tmp/metrics"}: what the tests change

# %%
import time
from pathlib import Path

from IPython.display import HTML, display

from koclip_lib import explore
from koclip_lib.common import load_params, write_json

params = {**load_params(params_file), **overrides}
started = time.time()
explorer = explore.build_explorer(params)
print(f"{len(explorer.routes)} routes and {len(explorer.registry.entries)} LoRA(s) ready in {time.time() - started:.0f} s "
      f"(models built or found cached)")
explorer

# %% [markdown]
# ## Driven from Python
# The widgets are plain attributes: set them and click the button (`explorer.button.click()` runs its callback,
# `explorer.generate()`). The profile's fixed prompt at the seed's seed, no LoRA; under the grid, what each route's
# pipeline read (the translator's English) and its seconds.

# %%
explorer.seed.value = params["sweep"]["seed"]
explorer.lora.value = explore.NO_LORA
explorer.button.click()
display(explorer.figure(), HTML(explorer.status.value))
plain = {"settings": explorer.settings(), "read": dict(explorer.prompts), "seconds": dict(explorer.seconds)}

# %% [markdown]
# ## The style LoRA, its trigger added
# The profile's first LoRA at weight 1 with its trigger word (`백묘법` in `…, 백묘법`): the student reads the trigger the
# LoRA was trained on; the English routes get the same UNet, and the Korean word as CLIP or the translator reads it.

# %%
styled = None
if explorer.registry.entries:
    explorer.lora.value = sorted(explorer.registry.entries)[0]
    explorer.lora_weight.value = 1.0
    explorer.add_trigger.value = True
    explorer.button.click()
    display(explorer.figure(), HTML(explorer.status.value))
    styled = {"settings": explorer.settings(), "read": dict(explorer.prompts), "seconds": dict(explorer.seconds)}

# %% [markdown]
# An empty prompt: the message the page shows, and the grid above is kept.

# %%
kept = dict(explorer.images)
explorer.prompt.value = ""
explorer.button.click()
display(HTML(explorer.status.value))
assert explorer.images == kept
explorer.prompt.value = explore.defaults(params)["prompt"]

# %%
figures = Path(params["figures_dir"])
figures.mkdir(parents=True, exist_ok=True)
explorer.figure().save(figures / "06_explore.png")
write_json(Path(params["metrics_dir"]) / "06_explore.json",
           {"routes": list(explorer.routes), "loras": sorted(explorer.registry.entries), "plain": plain, "lora": styled})
