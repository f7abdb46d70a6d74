"""`KoreanStableDiffusionPipeline`: Stable Diffusion 1.x with the Korean student as its text encoder.

This file imports only torch and diffusers: a saved pipeline folder carries it as `pipeline.py`, so diffusers opens
the folder as a community pipeline where koclip is not installed:

    pipe = DiffusionPipeline.from_pretrained("outputs/mini/korean_sd", custom_pipeline="pipeline", trust_remote_code=True)

Loading, compatibility checks and the rest are `koclip_lib.pipeline`.

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

import json
import shutil
import warnings
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline

LONG_PROMPT_POLICIES = ("chunk", "truncate")
CUSTOM_PIPELINE_FILE = "pipeline.py"


class PromptError(ValueError):
    """A prompt the pipeline will not draw (empty, or longer than the policy allows); the message says which and why."""


class KoreanStableDiffusionPipeline(StableDiffusionPipeline):
    """`StableDiffusionPipeline` whose text encoder is the Korean student; only prompt encoding differs (see the
    module's prompt policy). `save_pretrained` writes a folder that diffusers opens as it opens a community pipeline:
    this file as `pipeline.py`, the student's own modeling file in `text_encoder/` (recorded in model_index.json as a
    custom component)."""

    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler, safety_checker=None, feature_extractor=None,
                 image_encoder=None, requires_safety_checker: bool = False, long_prompts: str = "chunk", max_windows: int = 4):
        if long_prompts not in LONG_PROMPT_POLICIES:
            raise ValueError(f"long_prompts must be one of {LONG_PROMPT_POLICIES}, not {long_prompts!r}")
        super().__init__(vae, text_encoder, tokenizer, unet, scheduler, safety_checker, feature_extractor, image_encoder,
                         requires_safety_checker=requires_safety_checker)
        self.register_to_config(long_prompts=long_prompts, max_windows=max_windows)

    def save_pretrained(self, save_directory, *args, **kwargs):
        super().save_pretrained(save_directory, *args, **kwargs)
        folder = Path(save_directory)
        shutil.copyfile(__file__, folder / CUSTOM_PIPELINE_FILE)
        # the student's folder carries its modeling file (transformers' register_for_auto_class): name that file as the
        # component's library, diffusers' custom-component form, so loading needs this file and no installed package
        encoder_module = type(self.text_encoder).__module__.rsplit(".", 1)[-1]
        if (folder / "text_encoder" / f"{encoder_module}.py").is_file():
            index_file = folder / "model_index.json"
            index = json.loads(index_file.read_text(encoding="utf-8"))
            index["text_encoder"] = [encoder_module, type(self.text_encoder).__name__]
            index_file.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """As diffusers' `from_pretrained`; a student not passed in comes through transformers' `AutoModel`, which
        takes the installed class where koclip is imported and the folder's own file with `trust_remote_code=True`."""
        text_encoder = kwargs.pop("text_encoder", None)
        encoder_dir = Path(str(pretrained_model_name_or_path)) / "text_encoder"
        if text_encoder is None and (encoder_dir / "config.json").is_file():
            from transformers import AutoModel

            dtype = {"dtype": kwargs["torch_dtype"]} if kwargs.get("torch_dtype") is not None else {}
            text_encoder = AutoModel.from_pretrained(encoder_dir, trust_remote_code=kwargs.get("trust_remote_code"),
                                                     **dtype).eval()
        # diffusers checks a passed component against the library model_index.json names, which for the student is
        # its folder's own file: load without it, then register it
        pipe = super().from_pretrained(pretrained_model_name_or_path, text_encoder=None, **kwargs)
        pipe.register_modules(text_encoder=text_encoder)
        return pipe

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
