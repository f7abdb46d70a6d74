"""Measured costs: text-conditioning latency, seconds per image, weights in memory, and training throughput.

Every speed figure is measured in the same process as the figure it is compared with, and reported as a ratio
to it, so a busy or a faster machine changes the numbers but not the comparison. Notebook 00 (feasibility) uses:

* `text_conditioning_seconds` — prompt -> the 77 states the UNet reads: the student's encode vs the translator's
  generate + the teacher's encode (the seed's option ③ without the network hop);
* `seconds_per_image` — end to end at batch 1, as a service draws one request;
* `weights_mb` — what each option keeps in memory;
* `from_scratch_probe` — option (c): train a Korean text-to-image model from scratch for a measured while, then
  extrapolate to the steps the English generator needed, and stop.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .train import LoopConfig


def _timed(fn: Callable[[], object], repeats: int = 1) -> float:
    """Median wall-clock seconds of `fn()` over `repeats` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


@torch.no_grad()
def text_conditioning_seconds(encode: Callable[[str], torch.Tensor], prompts: Sequence[str]) -> float:
    """Median seconds per prompt for `encode(prompt)` (one prompt at a time, as requests arrive)."""
    encode(prompts[0])  # warm-up
    times = []
    for prompt in prompts:
        start = time.perf_counter()
        encode(prompt)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def pipeline_encoder(pipe) -> Callable[[str], torch.Tensor]:
    """prompt -> the states the pipeline's UNet reads, through the pipeline's own `encode_prompt`."""
    return lambda prompt: pipe.encode_prompt(prompt, pipe.device, 1, False)[0]


def translate_then_encode(translator, pipe) -> Callable[[str], torch.Tensor]:
    """Korean prompt -> English (the translator) -> the English pipeline's states."""
    encode = pipeline_encoder(pipe)
    return lambda prompt: encode(translator.translate([prompt])[0])


@torch.no_grad()
def seconds_per_image(pipe, prompt: str, steps: int, guidance_scale: float, repeats: int = 3, prepare=None) -> float:
    """Median end-to-end seconds for one image at batch 1 (`prepare` turns the user's prompt into the pipeline's,
    e.g. a translator: its time is part of the image's)."""
    def one():
        text = prepare(prompt) if prepare else prompt
        pipe(text, num_inference_steps=steps, guidance_scale=guidance_scale, output_type="pt",
             generator=torch.Generator().manual_seed(0))
    return _timed(one, repeats)


def weights_mb(*modules: torch.nn.Module) -> float:
    """Megabytes of parameters and buffers of the given modules."""
    total = 0
    for m in modules:
        total += sum(t.numel() * t.element_size() for t in list(m.parameters()) + list(m.buffers()))
    return total / 2**20


def from_scratch_probe(params: dict, root: str | Path, out_dir: str | Path, epochs: float = 1.0) -> dict:
    """Option (c) of the feasibility study: train the mini world's text-to-image model from scratch on *Korean*
    captions (a Korean tokenizer + CLIP, then a UNet on its text states, same sizes and data as the English
    generator), for `epochs` epochs of each, measuring seconds per step and the loss. Then extrapolate to the steps
    the English generator needed to reach its quality, and stop. The VAE reads no text: the probe reuses it, and
    the estimate adds its measured training time.

    Returns measured steps/s and losses beside the English run's at the same step, and the time-to-quality estimate.
    """
    from . import generator as g
    from . import miniworld as mw

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
    from . import generator as g
    from .common import cached_artifact, write_json

    root = Path(root)
    paths = g.ensure_generator(params, root)
    key = {"sd": json.loads((paths["sd"] / "artifact.json").read_text())["config_hash"], "epochs": epochs,
           "teacher": params.get("teacher"), "unet": params.get("unet")}
    folder = cached_artifact(root / "from_scratch", key,
                             lambda d: write_json(d / "probe.json", from_scratch_probe(params, root, d, epochs)))
    return json.loads((folder / "probe.json").read_text())
