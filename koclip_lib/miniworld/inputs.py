"""The mini profile's inputs, as `plan.profile_inputs` hands them to the stages: the same methods as
`plan.HubInputs`, each building (or reusing) what the mini world makes in place of a hub checkpoint or a file."""

from __future__ import annotations

import random
from pathlib import Path

import torch

from ..adapters import add_trigger
from ..lora import write_image_dataset
from ..plan import ModelRef
from . import generator
from . import world as mw


class SceneLatents:
    """The unet stage's latents: `n` rendered scenes of seen colour-shape pairs (held-out pairs stay out), encoded by
    the SD's VAE; each batch captions its scenes afresh (Korean and English), so the student is matched on many
    phrasings of each image."""

    def __init__(self, world_params: dict | None, n: int = 4000, seed: int = 0):
        self.world_params, self.n, self.seed = world_params, n, seed
        self.world = None
        self.scenes = None

    @property
    def key(self) -> dict:
        return {"source": "mini-world scenes", "heldout": mw.WorldConfig.from_params(self.world_params).heldout,
                "n": self.n, "seed": self.seed}

    def __len__(self) -> int:
        return self.n

    def prepare(self, sd, vae, unet_config: dict) -> torch.Tensor:
        self.world = mw.WorldConfig(image_size=vae.config.sample_size,
                                    heldout=mw.WorldConfig.from_params(self.world_params).heldout)
        self.scenes = mw.sample_scenes(self.n, self.seed + 3, self.world, split="seen")
        return generator.encode_images(vae, mw.render_batch(self.scenes, self.seed + 3, self.world.image_size))

    def captions(self, idx, empty, gen: torch.Generator) -> tuple[list[str], list[str]]:
        rng = random.Random(int(torch.randint(2**31, (1,), generator=gen)))
        pairs = [("", "") if e else mw.caption_pair(self.scenes[i], rng, self.world) for i, e in zip(idx, empty)]
        return [k for k, _ in pairs], [e for _, e in pairs]


def render_style_dataset(out_dir: str | Path, world: mw.WorldConfig, style: str, n: int, trigger: str,
                         language: str = "ko", position: str = "end", seed: int = 0) -> Path:
    """mini's captioner is the renderer: `n` images of seen colour-shape pairs drawn in `style`, each captioned with
    what it shows (Korean and English, written from the scene, without style words, as a captioner describes
    content) and `text` = the caption in `language` with the trigger word added."""
    scenes = mw.sample_scenes(n, seed, world, split="seen", styles=[style])
    images = mw.to_pil(mw.render_batch(scenes, seed, world.image_size))
    rng = random.Random(seed)
    records = []
    for scene in scenes:
        plain = mw.Scene(scene.color, scene.shape, scene.position)  # the content; the style is the trigger's job
        ko, en = mw.caption_pair(plain, rng, world)
        records.append({"text": add_trigger(ko if language == "ko" else en, trigger, position),
                        "caption_ko": ko, "caption_en": en, "style": style})
    return write_image_dataset(out_dir, images, records)



class MiniWorldInputs:
    """What the mini world makes for each stage (see `plan.HubInputs` for the same methods on hub checkpoints)."""

    def __init__(self, params: dict):
        self.params = params
        self.root = Path(params["root"])
        self.world = mw.WorldConfig.from_params(params.get("world"))

    def teacher(self) -> ModelRef:
        return ModelRef(str(generator.ensure_teacher(self.params, self.root)))

    def vae(self) -> Path:
        return generator.ensure_vae(self.params, self.root)

    def generator_paths(self) -> dict[str, Path]:
        """teacher, vae, sd and classifier folders."""
        return generator.ensure_generator(self.params, self.root)

    def sd(self) -> ModelRef:
        return ModelRef(str(generator.ensure_generator(self.params, self.root)["sd"]))

    def backbone(self) -> ModelRef | None:
        return None  # a tiny RoBERTa built at random from distill.backbone_config

    def corpus(self) -> Path:
        return mw.ensure_world_corpus(self.params, self.root)

    def corpus_name(self) -> str:
        return f"mini-world corpus ({self.params.get('corpus', {}).get('n_pairs', 30000)} synthetic caption pairs as an AI Hub CSV)"

    def latent_source(self) -> SceneLatents:
        return SceneLatents(self.params.get("world"), seed=self.params.get("seed", 0))

    def translator(self) -> ModelRef | None:
        return None  # trained from scratch on the corpus

    def lora_dataset(self, adapter: dict, out_dir: Path, resolution: int | None, device=None) -> Path:
        """mini's captioner is the renderer: images drawn in the adapter's style, captioned with what they show."""
        from ..lora import adapter_config

        cfg = adapter_config(self.params.get("lora", {}), adapter)
        return render_style_dataset(out_dir, self.world, adapter["style"], adapter.get("n_images", 2000), cfg.trigger,
                                    language=adapter.get("caption_language", "ko"),
                                    position=adapter.get("trigger_position", "end"), seed=cfg.seed)

    def lora_dataset_key(self, adapter: dict) -> dict:
        return {"world": self.params.get("world")}

    def sweep_versions(self) -> dict[str, dict]:
        return generator.resolve_sd_versions(self.params, self.root)

    def judge(self) -> Path:
        return mw.ensure_classifier(self.params, self.root)

    def from_scratch_probe(self) -> dict:
        """Option (c) of notebook 00: a Korean-from-scratch generator trained a measured sliver, then extrapolated."""
        from .feasibility import ensure_from_scratch_probe

        return ensure_from_scratch_probe(self.params, self.root,
                                         epochs=self.params.get("feasibility", {}).get("from_scratch_epochs", 1))

    def bench_inputs(self, n_prompts: int = 40, paths: dict | None = None):
        """What `python -m koclip_lib.bench` measures on this profile (`feasibility.mini_inputs`): the saved Korean
        pipeline, its judge, held-out prompts, the translator and the English pipeline it feeds."""
        from .feasibility import mini_inputs

        return mini_inputs(self.params, n_prompts, paths)

    def eval_prompts(self) -> dict[str, Path]:
        return mw.ensure_eval_prompts(self.params, self.root)


def profile_inputs(params: dict) -> MiniWorldInputs:
    return MiniWorldInputs(params)
