"""The mini world: coloured shapes with Korean and English captions, small enough that every model trains on a
2-core CPU. It is one way of producing a profile's inputs (a teacher, an SD checkpoint, a corpus, captioned image
folders, and a judge that reads what was drawn): the mini profile names it with `inputs_from: koclip_lib.miniworld`,
and `profile_inputs(params)` builds them. Nothing outside this package imports it.

- `world`: scenes, rendering, captions, AI Hub CSV and prompt files, the attribute classifier (the judge);
- `generator`: the tiny CLIP teacher, VAE and UNet trained on the world (a standard diffusers SD pipeline);
- `inputs`: the mini profile's inputs as the stages read them.
"""

from .world import *  # noqa: F401,F403  (the world's names: WorldConfig, Scene, caption_en, render_batch, ...)
from .world import STYLES, WorldConfig, caption_pair  # noqa: F401
from .inputs import MiniWorldInputs, SceneLatents, profile_inputs, render_style_dataset  # noqa: F401
