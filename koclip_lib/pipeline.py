"""A Stable Diffusion pipeline that reads Korean: any SD 1.x checkpoint with the distilled student as text encoder.

    pipe = load_korean_pipeline(sd="outputs/mini/sd", text_encoder="outputs/mini/student")
    image = pipe("왼쪽에 빨간 별이 있다", generator=torch.Generator().manual_seed(1147446245)).images[0]

Compatibility is checked from the configs before anything is swapped, so an SD 2.x / SDXL / SD 3 checkpoint fails
with a message that names both numbers and the fix, never with a shape error from inside the UNet.
"""

from __future__ import annotations

import torch
from diffusers import DiffusionPipeline, StableDiffusionPipeline

from .distill import KoreanTextEncoder, KoreanTextEncoderConfig, load_student


class IncompatibleCheckpointError(ValueError):
    """The SD checkpoint cannot take this text encoder; the message says why and what to do."""


def _pipeline_index(sd) -> dict:
    return dict(DiffusionPipeline.load_config(sd))  # model_index.json: which components, which classes


def _unet_config(sd) -> dict:
    from diffusers import UNet2DConditionModel

    return dict(UNet2DConditionModel.load_config(sd, subfolder="unet"))


def check_compatibility(sd, student_config: KoreanTextEncoderConfig) -> None:
    """Raise IncompatibleCheckpointError unless `sd` is an SD 1.x-style checkpoint whose UNet reads states of the
    student's width and length."""
    index = _pipeline_index(sd)
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


def load_korean_pipeline(sd, text_encoder, dtype: torch.dtype | None = None, device: str | None = None,
                         check: bool = True) -> StableDiffusionPipeline:
    """`sd` (folder or hub id of an SD 1.x checkpoint) with its text encoder and tokenizer replaced by the student."""
    from .common import pick_device

    student_config = KoreanTextEncoderConfig.from_pretrained(text_encoder)
    if check:
        check_compatibility(sd, student_config)
    student, tokenizer = load_student(text_encoder)
    kwargs = {"torch_dtype": dtype} if dtype is not None else {}
    pipe = StableDiffusionPipeline.from_pretrained(sd, text_encoder=student, tokenizer=tokenizer, safety_checker=None,
                                                   requires_safety_checker=False, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(pick_device(device), dtype) if dtype is not None else pipe.to(pick_device(device))


__all__ = ["IncompatibleCheckpointError", "KoreanTextEncoder", "check_compatibility", "load_korean_pipeline"]
