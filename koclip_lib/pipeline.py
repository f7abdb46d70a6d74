"""A Stable Diffusion pipeline that reads Korean: any SD 1.x checkpoint with the distilled student as text encoder.

    pipe = load_korean_pipeline(sd="outputs/mini/sd", text_encoder="outputs/mini/student")
    image = pipe("왼쪽에 빨간 별이 있다", negative_prompt="파란색", generator=torch.Generator().manual_seed(1147446245)).images[0]
    pipe.save_pretrained("outputs/mini/korean_sd")              # one folder: UNet, VAE, scheduler, student, tokenizer
    pipe = KoreanStableDiffusionPipeline.from_pretrained("outputs/mini/korean_sd")   # or load_korean_pipeline(sd=that folder)

Compatibility is checked from the configs before anything is swapped, so an SD 2.x / SDXL / SD 3 checkpoint fails
with a message that names both numbers and the fix, never with a shape error from inside the UNet.

The pipeline class and its prompt policy (Korean, English and mixed prompts; long prompts in 77-state windows; the
empty prompt refused) are `koclip_lib.pipeline_korean_sd`, a file that imports no koclip code, so a saved folder
carries it as its `pipeline.py`.
"""

from __future__ import annotations

import torch
from diffusers import DiffusionPipeline

from .distill import KoreanTextEncoder, KoreanTextEncoderConfig, load_student
# the pipeline class lives in a self-contained file that saved folders carry as their pipeline.py
from .pipeline_korean_sd import LONG_PROMPT_POLICIES, KoreanStableDiffusionPipeline, PromptError  # noqa: F401
from .plan import checkpoint


class IncompatibleCheckpointError(ValueError):
    """The SD checkpoint cannot take this text encoder; the message says why and what to do."""


def pipeline_index(sd) -> dict:
    path, kwargs = checkpoint(sd)
    return dict(DiffusionPipeline.load_config(path, **kwargs))  # model_index.json: which components, which classes


def _unet_config(sd) -> dict:
    from diffusers import UNet2DConditionModel

    path, kwargs = checkpoint(sd)
    return dict(UNet2DConditionModel.load_config(path, subfolder="unet", **kwargs))


def check_compatibility(sd, student_config: KoreanTextEncoderConfig) -> None:
    """Raise IncompatibleCheckpointError unless `sd` is an SD 1.x-style checkpoint whose UNet reads states of the
    student's width and length."""
    index = pipeline_index(sd)
    name = index.get("_class_name", "?")
    width = student_config.teacher_width
    if "transformer" in index or "text_encoder_3" in index or "StableDiffusion3" in name:
        raise IncompatibleCheckpointError(
            f"{sd} is a {name} (SD 3: an MMDiT transformer reading CLIP-L + CLIP-G (2048, padded to 4096) and T5-XXL "
            f"states); this student outputs {width}-wide CLIP-L-style states for a UNet. Use an SD 1.x checkpoint "
            "(SD 1.5, dreamshaper-7), or distil students for all three SD 3 encoders.")
    if "text_encoder_2" in index or "XL" in name:
        raise IncompatibleCheckpointError(
            f"{sd} is {name} (SDXL: two text encoders, 768 + 1280 = 2048 per token, plus a pooled 1280 vector for the "
            f"UNet's added embedding); this student outputs {width} per token and no SDXL pooled vector. Use an SD 1.x "
            "checkpoint, or distil a second student from OpenCLIP bigG and feed both.")
    if "unet" not in index:
        raise IncompatibleCheckpointError(f"{sd} ({name}) has no UNet: not a Stable Diffusion 1.x checkpoint")
    unet = _unet_config(sd)
    cross = unet.get("cross_attention_dim")
    cross = cross[0] if isinstance(cross, (list, tuple)) else cross
    if cross != width:
        hint = " (SD 2.x: OpenCLIP ViT-H, 1024)" if cross == 1024 else ""
        raise IncompatibleCheckpointError(
            f"{sd}: its UNet cross-attends to text states of width {cross}{hint}, but this student outputs width {width} "
            f"(distilled from {student_config.teacher or 'a ' + str(width) + '-wide teacher'}). Distil a student from "
            f"that checkpoint's own text encoder, or use a checkpoint whose UNet reads {width}-wide states (SD 1.x).")
    if unet.get("addition_embed_type") == "text_time":
        raise IncompatibleCheckpointError(f"{sd}: its UNet needs SDXL's pooled text + time ids, which this student does not give")


def is_korean_pipeline(folder) -> bool:
    """True for a folder written by `KoreanStableDiffusionPipeline.save_pretrained`."""
    try:
        return pipeline_index(folder).get("_class_name") == KoreanStableDiffusionPipeline.__name__
    except (OSError, ValueError):
        return False


def has_safety_checker(sd) -> bool:
    """Whether the checkpoint ships a safety checker (SD 1.5 does; the mini generator does not)."""
    entry = pipeline_index(sd).get("safety_checker")
    return bool(entry and entry[0])


def load_korean_pipeline(sd, text_encoder=None, dtype: torch.dtype | None = None, device: str | None = None,
                         check: bool = True, safety_checker: bool = True, **pipeline_kwargs) -> KoreanStableDiffusionPipeline:
    """`sd` (folder, hub id or `plan.ModelRef` of an SD 1.x checkpoint) with its text encoder and tokenizer replaced
    by the student in `text_encoder`; or, with `text_encoder=None`, a folder saved from a Korean pipeline as it is.
    The checkpoint's safety checker is kept when it has one; `safety_checker=False` turns it off (a research run on
    synthetic images; `pipe.safety_checker is None` then says so). `pipeline_kwargs`: `long_prompts`, `max_windows`."""
    from .common import pick_device

    path, kwargs = checkpoint(sd)
    if dtype is not None:
        kwargs["torch_dtype"] = dtype
    if not (safety_checker and has_safety_checker(sd)):
        kwargs.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    if text_encoder is None:
        if not is_korean_pipeline(sd):
            raise IncompatibleCheckpointError(f"{sd} is not a saved Korean pipeline: pass text_encoder=<student folder>")
        pipe = KoreanStableDiffusionPipeline.from_pretrained(path, **kwargs, **pipeline_kwargs)
    else:
        student_config = KoreanTextEncoderConfig.from_pretrained(text_encoder)
        if check:
            check_compatibility(sd, student_config)
        student, tokenizer = load_student(text_encoder)
        pipe = KoreanStableDiffusionPipeline.from_pretrained(path, text_encoder=student, tokenizer=tokenizer, **kwargs,
                                                             **pipeline_kwargs)
    return pipe.to(pick_device(device), dtype) if dtype is not None else pipe.to(pick_device(device))


__all__ = ["IncompatibleCheckpointError", "KoreanStableDiffusionPipeline", "KoreanTextEncoder", "PromptError",
           "check_compatibility", "is_korean_pipeline", "load_korean_pipeline"]
