"""What the mini world brings to the cost measurements of `koclip_lib.bench`.

* `from_scratch_probe` / `ensure_from_scratch_probe` — option (c) of notebook 00 (feasibility): train the mini
  world's text-to-image model from scratch on *Korean* captions for a measured while, then extrapolate to the steps
  the English generator needed, and stop (`MiniWorldInputs.from_scratch_probe` calls it);
* `mini_inputs` — the mini profile's `bench.BenchInputs` for the optimisation study (notebook 05,
  `python -m koclip_lib.bench --profile mini`): the saved Korean pipeline, held-out Korean prompts scored by the
  attribute classifier, the tiny translator and the English pipeline it feeds, and the teacher
  (`MiniWorldInputs.bench_inputs` calls it);
* `world_pairs` — (Korean, English) captions of fresh scenes: the training text of the throughput measurements.

`koclip_lib.bench` itself knows nothing of the mini world: a profile's inputs hand it their `BenchInputs`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..bench_inputs import BenchInputs, bench_distill_config, spread
from ..train import LoopConfig
from . import generator as g
from . import world as mw


def from_scratch_probe(params: dict, root: str | Path, out_dir: str | Path, epochs: float = 1.0) -> dict:
    """Option (c) of the feasibility study: train the mini world's text-to-image model from scratch on *Korean*
    captions (a Korean tokenizer + CLIP, then a UNet on its text states, same sizes and data as the English
    generator), for `epochs` epochs of each, measuring seconds per step and the loss. Then extrapolate to the steps
    the English generator needed to reach its quality, and stop. The VAE reads no text: the probe reuses it, and
    the estimate adds its measured training time.

    Returns measured steps/s and losses beside the English run's at the same step, and the time-to-quality estimate.
    """
    root, out_dir = Path(root), Path(out_dir)
    paths = g.ensure_generator(params, root)
    world = mw.WorldConfig.from_params(params.get("world"))
    t_cfg, u_cfg = g.TeacherConfig(**params.get("teacher", {})), g.UNetConfig(**params.get("unet", {}))
    t_steps = max(1, round(epochs * t_cfg.n_images / LoopConfig.from_params(t_cfg.loop).batch_size))
    u_steps = max(1, round(epochs * u_cfg.n_images / LoopConfig.from_params(u_cfg.loop).batch_size))
    teacher_metrics = g.train_teacher(out_dir / "teacher", world, t_cfg, caption=mw.caption_ko, stop_after=t_steps)
    unet_metrics = g.train_unet(out_dir / "sd", world, u_cfg, out_dir / "teacher", paths["vae"], caption=mw.caption_ko,
                                stop_after=u_steps)

    english_teacher = json.loads((paths["teacher"] / "metrics.json").read_text())
    english_unet = json.loads((paths["sd"] / "train_metrics.json").read_text())
    vae_seconds = json.loads((paths["vae"] / "metrics.json").read_text())["seconds"]

    def loss_at(curve, step):  # the logged loss nearest to `step`
        return min(curve, key=lambda point: abs(point[0] - step))[1]

    # training-loop seconds only (as logged for the English run too): data rendering and caching are not counted
    t_rate, u_rate = teacher_metrics["steps"] / teacher_metrics["seconds"], unet_metrics["steps"] / unet_metrics["seconds"]
    estimate = english_teacher["steps"] / t_rate + vae_seconds + english_unet["steps"] / u_rate
    return {
        "teacher": {"steps": teacher_metrics["steps"], "steps_per_s": t_rate, "loss": loss_at(teacher_metrics["loss_curve"], t_steps),
                    "english_loss_same_step": loss_at(english_teacher["loss_curve"], t_steps),
                    "steps_to_quality": english_teacher["steps"]},
        "unet": {"steps": unet_metrics["steps"], "steps_per_s": u_rate, "loss": loss_at(unet_metrics["loss_curve"], u_steps),
                 "english_loss_same_step": loss_at(english_unet["loss_curve"], u_steps),
                 "steps_to_quality": english_unet["steps"],
                 "loss_curve": unet_metrics["loss_curve"],
                 "english_loss_curve": english_unet["loss_curve"]},
        "vae_seconds_reused": vae_seconds,
        "measured_seconds": teacher_metrics["seconds"] + unet_metrics["seconds"],
        "estimated_seconds_to_quality": estimate,
    }


def ensure_from_scratch_probe(params: dict, root: str | Path, epochs: float = 1.0) -> dict:
    """`from_scratch_probe`, cached under root/from_scratch by the generator it is compared with."""
    from ..common import artifact_hash, cached_artifact, write_json

    root = Path(root)
    paths = g.ensure_generator(params, root)
    key = {"sd": artifact_hash(paths["sd"]), "epochs": epochs,
           "teacher": params.get("teacher"), "unet": params.get("unet")}
    folder = cached_artifact(root / "from_scratch", key,
                             lambda d: write_json(d / "probe.json", from_scratch_probe(params, root, d, epochs)))
    return json.loads((folder / "probe.json").read_text())


def world_pairs(params: dict, n: int, seed: int = 0) -> list[tuple[str, str]]:
    """(Korean, English) captions of fresh mini-world scenes: training text for the throughput measurements."""
    import random

    world = mw.WorldConfig.from_params(params.get("world"))
    rng = random.Random(seed)
    return [mw.caption_pair(s, rng, world) for s in mw.sample_scenes(n, seed, world, split="seen")]


def mini_inputs(params: dict, n_prompts: int = 40, paths: dict | None = None) -> BenchInputs:
    """The mini profile: the saved Korean pipeline (root/korean_sd), held-out Korean prompts scored by the attribute
    classifier, the tiny translator and the English pipeline it feeds, and the teacher the student was distilled
    from. `paths` overrides any of: pipeline, student (a student folder to swap into `pipeline`), prompts,
    classifier, translator (None: not measured), english, teacher."""
    from ..distill import load_teacher
    from ..evaluate import load_pipeline, read_prompt_tsv, score
    from ..translate import Translator

    root = Path(params.get("root", "outputs/mini"))
    paths = {"pipeline": root / "korean_sd", "student": None, "prompts": root / "prompts" / "ko_heldout.tsv",
             "classifier": root / "classifier", "translator": root / "translator", "english": root / "sd",
             "teacher": root / "teacher", **(paths or {})}
    if not Path(paths["pipeline"], "model_index.json").exists():
        raise FileNotFoundError(f"{paths['pipeline']}: no saved Korean pipeline; `make all` builds it (notebook 02)")
    pipe = load_pipeline(paths["pipeline"], paths["student"], device="cpu")
    rows = spread(read_prompt_tsv(paths["prompts"]), n_prompts)
    classifier = mw.load_classifier(paths["classifier"])

    def quality(images, baseline=None):
        scored = score(classifier, images * 2 - 1, rows)["accuracy"]
        out = {k: scored[k] for k in ("color", "shape") if k in scored}
        out["attribute_accuracy"] = float(np.mean(list(out.values())))
        out["images"] = len(images)
        return out

    translator = Translator.from_pretrained(paths["translator"]) if paths["translator"] and Path(paths["translator"]).exists() else None
    evaluate_cfg = params.get("evaluate") or {}
    return BenchInputs(
        profile=params.get("profile", "mini"), pipe=pipe, prompts=[r.prompt for r in rows],
        seeds=[int(params.get("seed", 0)) + 1000 * i for i in range(len(rows))],
        guidance=float(evaluate_cfg.get("guidance_scale", 3.0)), quality=quality,
        quality_kind=f"attribute accuracy (colour, shape) of the mini-world classifier on {len(rows)} held-out Korean prompts",
        resolution=pipe.unet.config.sample_size * pipe.vae_scale_factor,
        tiny_vae_missing=("not available: no tiny decoder (TAESD) has been trained for the mini VAE's latent space; a "
                          "random one would time a decoder that draws nothing, so no number is given"),
        lcm_missing=("not available: LCMScheduler needs an LCM-distilled UNet or an LCM-LoRA, and none exists for the "
                     "mini UNet; the few-step option measured here is DPM-Solver++ at 8 steps on the unchanged UNet"),
        translator=translator, translator_missing="" if translator else f"not available: no translator at {paths['translator']}",
        english_pipe=load_pipeline(paths["english"], device="cpu") if paths["english"] else None,
        teacher=load_teacher(paths["teacher"]) if paths["teacher"] else None,
        pairs=world_pairs(params, 512), distill_config=bench_distill_config(params),
        distill_batch=int(((params.get("distill") or {}).get("loop") or {}).get("batch_size", 128)), lora_batch=32)
