"""A Stable Diffusion pipeline that reads Korean: any SD 1.x checkpoint with the distilled student as text encoder.

    pipe = load_korean_pipeline(sd="outputs/mini/sd", text_encoder="outputs/mini/student")
    image = pipe("왼쪽에 빨간 별이 있다", negative_prompt="파란색", generator=torch.Generator().manual_seed(1147446245)).images[0]
    pipe.save_pretrained("outputs/mini/korean_sd")              # one folder: UNet, VAE, scheduler, student, tokenizer
    pipe = KoreanStableDiffusionPipeline.from_pretrained("outputs/mini/korean_sd")   # or load_korean_pipeline(sd=that folder)

Compatibility is checked from the configs before anything is swapped, so an SD 2.x / SDXL / SD 3 checkpoint fails
with a message that names both numbers and the fix, never with a shape error from inside the UNet.

Prompt policy (`KoreanStableDiffusionPipeline.encode_prompt`):
* Korean, English and mixed prompts all go through the student (its tokenizer was trained on both sides).
* A prompt longer than the student's window (`tokenizer.model_max_length` tokens with the two special tokens) is
  split into windows; each window becomes the 77 states SD expects and the windows are concatenated along the
  sequence (the UNet's cross-attention reads any length), the common long-prompt approach of A1111/compel. Shorter
  prompts in the same batch, and the negative prompt, are padded with empty-prompt windows; cross-attention reads
  those too, so a padded prompt's image differs a little from its image alone (the service batches only prompts of
  equal window count). `long_prompts="truncate"` keeps the first window instead and warns how many tokens were cut.
  Beyond `max_windows` windows the prompt is refused.
* The empty prompt is the unconditional input of classifier-free guidance (the default negative prompt); as the
  prompt itself it is refused with a clear error rather than silently drawing an unconditional image.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from diffusers import DiffusionPipeline, StableDiffusionPipeline

from .distill import KoreanTextEncoder, KoreanTextEncoderConfig, load_student
from .plan import checkpoint

LONG_PROMPT_POLICIES = ("chunk", "truncate")
CUSTOM_PIPELINE_FILE = "pipeline.py"


class IncompatibleCheckpointError(ValueError):
    """The SD checkpoint cannot take this text encoder; the message says why and what to do."""


class PromptError(ValueError):
    """A prompt the pipeline will not draw (empty, or longer than the policy allows); the message says which and why."""


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


class KoreanStableDiffusionPipeline(StableDiffusionPipeline):
    """`StableDiffusionPipeline` whose text encoder is a `KoreanTextEncoder`; only prompt encoding differs (see the
    module's prompt policy). `save_pretrained` / `from_pretrained` work as for any diffusers pipeline: the student's
    class is recorded in model_index.json as `koclip_lib.distill.KoreanTextEncoder`, and the folder holds a
    `pipeline.py` naming this class, so diffusers' custom-pipeline loading opens it too:
    `DiffusionPipeline.from_pretrained(folder, custom_pipeline="pipeline", trust_remote_code=True)`."""

    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler, safety_checker=None, feature_extractor=None,
                 image_encoder=None, requires_safety_checker: bool = False, long_prompts: str = "chunk", max_windows: int = 4):
        if long_prompts not in LONG_PROMPT_POLICIES:
            raise ValueError(f"long_prompts must be one of {LONG_PROMPT_POLICIES}, not {long_prompts!r}")
        super().__init__(vae, text_encoder, tokenizer, unet, scheduler, safety_checker, feature_extractor, image_encoder,
                         requires_safety_checker=requires_safety_checker)
        self.register_to_config(long_prompts=long_prompts, max_windows=max_windows)

    def save_pretrained(self, save_directory, *args, **kwargs):
        super().save_pretrained(save_directory, *args, **kwargs)
        (Path(save_directory) / CUSTOM_PIPELINE_FILE).write_text(
            "# diffusers' custom-pipeline entry: DiffusionPipeline.from_pretrained(folder, custom_pipeline=\"pipeline\",\n"
            "# trust_remote_code=True) loads the class this file names (it needs `pip install koclip`)\n"
            "from koclip_lib.pipeline import KoreanStableDiffusionPipeline  # noqa: F401\n", encoding="utf-8")

    def prompt_windows(self, prompt: str, allow_empty: bool = False) -> list[str]:
        """The windows of `prompt` after the long-prompt policy: whole words, each window at most as many tokens as
        the student reads (its tokenizer's `model_max_length` less its special tokens)."""
        if not isinstance(prompt, str):
            raise PromptError(f"a prompt must be a string, not {type(prompt).__name__}")
        if not prompt.strip():
            if allow_empty:
                return [""]
            raise PromptError("empty prompt: the empty prompt is the unconditional input of classifier-free guidance "
                              "(the default negative prompt); describe the image to draw")
        size = self.tokenizer.model_max_length - self.tokenizer.num_special_tokens_to_add()
        words = prompt.split()
        counts = [len(ids) for ids in self.tokenizer(words, add_special_tokens=False).input_ids]
        windows, current, used = [], [], 0
        for word, count in zip(words, counts):
            if current and used + count > size:
                windows.append(" ".join(current))
                current, used = [], 0
            current.append(word)
            used += count
        windows.append(" ".join(current))
        if len(windows) > 1 and self.config.long_prompts == "truncate":
            kept = len(windows[0].split())
            warnings.warn(f"prompt has {sum(counts)} tokens, the text encoder reads {size}: the last {len(words) - kept} "
                          f"of {len(words)} words ({sum(counts[kept:])} tokens) were cut; long_prompts='chunk' keeps them",
                          stacklevel=3)
            windows = windows[:1]
        if len(windows) > self.config.max_windows:
            raise PromptError(f"prompt too long: {sum(counts)} tokens need {len(windows)} windows of {size}; at most "
                              f"{self.config.max_windows} are read (max_windows)")
        return windows

    @torch.no_grad()
    def _encode_windows(self, per_prompt: list[list[str]], n_windows: int, device) -> torch.Tensor:
        """(batch, n_windows * 77, width): each prompt's windows encoded, concatenated, padded with empty windows."""
        flat = [text for windows in per_prompt for text in windows + [""] * (n_windows - len(windows))]
        enc = self.tokenizer(flat, padding="longest", truncation=True, max_length=self.tokenizer.model_max_length,
                             return_tensors="pt")
        states = self.text_encoder(enc.input_ids.to(device), attention_mask=enc.attention_mask.to(device)).last_hidden_state
        return states.reshape(len(per_prompt), n_windows * states.shape[1], states.shape[2])

    def encode_prompt(self, prompt, device, num_images_per_prompt, do_classifier_free_guidance, negative_prompt=None,
                      prompt_embeds=None, negative_prompt_embeds=None, lora_scale=None, clip_skip=None):
        if clip_skip:
            raise ValueError("clip_skip is not supported: the Korean student is trained on the teacher's final states only")
        # lora_scale scales text-encoder LoRAs; the student has none (UNet LoRAs are scaled inside the UNet)
        if prompt_embeds is None:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            windows = [self.prompt_windows(p) for p in prompts]
        else:
            prompts, windows = [None] * prompt_embeds.shape[0], None
        if do_classifier_free_guidance and negative_prompt_embeds is None:
            negatives = negative_prompt if isinstance(negative_prompt, list) else [negative_prompt or ""] * len(prompts)
            if len(negatives) != len(prompts):
                raise ValueError(f"{len(negatives)} negative prompts for {len(prompts)} prompts")
            neg_windows = [self.prompt_windows(n, allow_empty=True) for n in negatives]
        else:
            neg_windows = None
        n = max([len(w) for w in (windows or []) + (neg_windows or [])] or [1])
        positions = self.text_encoder.config.num_positions
        if prompt_embeds is not None:  # given embeddings set the length; negatives are padded to it
            n = max(n, prompt_embeds.shape[1] // positions)
        if prompt_embeds is None:
            prompt_embeds = self._encode_windows(windows, n, device)
        if neg_windows is not None:
            negative_prompt_embeds = self._encode_windows(neg_windows, n, device)
        dtype = self.unet.dtype
        prompt_embeds = prompt_embeds.to(device=device, dtype=dtype).repeat_interleave(num_images_per_prompt, dim=0)
        if negative_prompt_embeds is not None:
            negative_prompt_embeds = negative_prompt_embeds.to(device=device, dtype=dtype).repeat_interleave(num_images_per_prompt, dim=0)
        return prompt_embeds, negative_prompt_embeds


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
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(pick_device(device), dtype) if dtype is not None else pipe.to(pick_device(device))


__all__ = ["IncompatibleCheckpointError", "KoreanStableDiffusionPipeline", "KoreanTextEncoder", "PromptError",
           "check_compatibility", "is_korean_pipeline", "load_korean_pipeline"]
