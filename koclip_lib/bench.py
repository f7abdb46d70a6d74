"""Measured costs: text-conditioning latency, seconds per image, weights in memory, and training throughput.

Every speed figure is measured in the same process as the figure it is compared with, and reported as a ratio
to it, so a busy or a faster machine changes the numbers but not the comparison. Notebook 00 (feasibility) uses:

* `text_conditioning_seconds` — prompt -> the 77 states the UNet reads: the student's encode vs the translator's
  generate + the teacher's encode (the seed's option ③ without the network hop);
* `seconds_per_image` — end to end at batch 1, as a service draws one request;
* `weights_mb` — what each option keeps in memory;
* `from_scratch_probe` — option (c): train a Korean text-to-image model from scratch for a measured while, then
  extrapolate to the steps the English generator needed, and stop.

The optimisation study (issue 7) is the command line:

    python -m koclip_lib.bench [--profile mini|full] [--params params/mini.yaml] [--random-weights] [--quick]
        [--out outputs/bench]

It runs a matrix of configurations of the Korean pipeline on the current device, each one change from an
unoptimised baseline (dtype, attention processor, channels_last, scheduler and steps, torch.compile of the UNet,
VAE decoder, batch size, prompt-embedding cache), then the winners stacked; measures text conditioning (student vs
translator) and training throughput (distillation, LoRA); prints a markdown table and writes it with the JSON to
outputs/bench/<profile>-<device>.{json,md}. `--profile full --random-weights` builds SD 1.5-sized modules from
their configs, so the full-size timing runs on a GPU without the model hub.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

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


# ---------------------------------------------------------------------------------------------------------------
# The optimisation study: one configuration of the image pipeline, and how it is applied.
# ---------------------------------------------------------------------------------------------------------------
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


@dataclass(frozen=True)
class Setting:
    """One configuration of the image pipeline. The defaults are the baseline: what a user gets with no tuning on
    SD 1.5 — fp32, diffusers' classic attention processor (`AttnProcessor`, an explicit matmul + softmax; diffusers
    picks SDPA by itself on torch 2, so the baseline sets the classic one to measure what SDPA gains), contiguous
    memory, SD 1.5's shipped scheduler (PNDM) at the pipeline's default 50 steps, no compile, the full VAE decoder,
    batch 1, and the prompt encoded on every call."""

    dtype: str = "fp32"            # fp32 | fp16 | bf16 (every module of the pipeline)
    attention: str = "classic"     # classic (AttnProcessor) | sdpa (AttnProcessor2_0: torch's scaled_dot_product_attention)
    channels_last: bool = False    # UNet and VAE in channels_last memory format
    scheduler: str = "pndm"        # pndm | ddim | dpm++ | lcm
    steps: int = 50
    guidance: float | None = None  # None: the profile's classifier-free guidance scale
    compile: bool = False          # torch.compile of the UNet
    vae: str = "full"              # full | tiny (AutoencoderTiny, TAESD's architecture, as the decoder)
    batch: int = 1
    cache: bool = False            # prompt embeddings encoded once beforehand (a cache hit) vs on every call

    def changes(self, other: "Setting") -> dict:
        """The fields where this setting differs from `other`."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != getattr(other, f.name)}


def make_scheduler(name: str, config):
    """A scheduler of kind `name` on the pipeline's own noise schedule and prediction type. PNDM and DDIM as SD 1.5
    configures them (PLMS only, no Runge-Kutta warm-up; alpha at t=0 not forced to one)."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, LCMScheduler, PNDMScheduler

    if name == "pndm":
        return PNDMScheduler.from_config(config, skip_prk_steps=True, set_alpha_to_one=False)
    if name == "ddim":
        return DDIMScheduler.from_config(config, set_alpha_to_one=False, clip_sample=False)
    if name == "dpm++":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2)
    if name == "lcm":
        return LCMScheduler.from_config(config)
    raise ValueError(f"unknown scheduler {name!r}")


def set_attention(module, kind: str) -> None:
    """Every attention layer of a diffusers model to the classic processor or to SDPA (no-op without attention)."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    if getattr(module, "attn_processors", None):
        module.set_attn_processor(AttnProcessor() if kind == "classic" else AttnProcessor2_0())


def fresh_pipeline(pipe):
    """A pipeline of deep copies of `pipe`'s modules: every configuration starts from the same fp32 weights (a bf16
    or compiled copy cannot be turned back into the baseline exactly). The tokenizer is shared: it has no state."""
    parts = {k: copy.deepcopy(v) if isinstance(v, torch.nn.Module) else v for k, v in pipe.components.items()}
    parts["scheduler"] = copy.deepcopy(pipe.scheduler)
    fresh = type(pipe)(**parts)
    fresh.set_progress_bar_config(disable=True)
    return fresh


def configure(pipe, setting: Setting, device: torch.device, tiny_vae=None, compile_mode: str | None = None):
    """Apply `setting` to a fresh pipeline, in place; returns it."""
    if setting.vae == "tiny":
        pipe.vae = copy.deepcopy(tiny_vae)  # vae_scale_factor stays: TAESD upsamples 8x like SD's VAE
    pipe.to(device=device, dtype=DTYPES[setting.dtype])
    set_attention(pipe.unet, setting.attention)
    set_attention(pipe.vae, setting.attention)
    if setting.channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    pipe.scheduler = make_scheduler(setting.scheduler, pipe.scheduler.config)
    if setting.compile:
        pipe.unet.compile(mode=compile_mode)  # in place: the pipeline still sees a UNet2DConditionModel
    return pipe


def dtype_unsupported(dtype: str, device: torch.device) -> str | None:
    """Why `dtype` is not benchmarked on `device`, or None."""
    if device.type == "cpu" and dtype == "fp16":
        return ("fp16 on CPU: PyTorch's CPU half-precision kernels are slow reference paths (CPUs compute in fp32 or "
                "bf16), so a figure would measure the fallback, not fp16")
    if device.type == "cuda" and dtype == "bf16" and not torch.cuda.is_bf16_supported():
        return f"bf16: {torch.cuda.get_device_name(device)} has no bf16 support"
    return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Peak memory of the code in the `with` block: torch.cuda.max_memory_allocated on a GPU; on CPU the process's
    peak resident set (VmHWM), reset at entry through /proc/self/clear_refs (Linux), else ru_maxrss since start.
    On CPU `work_mb` is the peak above the resident set at entry: what the block itself allocated."""

    def __init__(self, device: torch.device):
        self.device, self.mb, self.kind, self.work_mb, self._start = device, None, None, None, None

    @staticmethod
    def _status_mb(field_name: str) -> float:
        status = Path("/proc/self/status").read_text()
        return int(re.search(rf"{field_name}:\s+(\d+) kB", status).group(1)) / 1024

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.kind = "torch.cuda.max_memory_allocated"
            return self
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.kind = "process peak RSS (VmHWM, reset per call)"
            self._start = self._status_mb("VmRSS")
        except OSError:
            self.kind = "process peak RSS since start (ru_maxrss)"
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif self._start is not None:
            self.mb = self._status_mb("VmHWM")
            self.work_mb = max(0.0, self.mb - self._start)
        else:
            import resource

            self.mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return False


# ---------------------------------------------------------------------------------------------------------------
# What a profile brings to the benchmark: the pristine pipeline, prompts, a quality proxy, and the parts that
# text conditioning and training throughput are measured on.
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class BenchInputs:
    profile: str
    pipe: object                       # the Korean pipeline, fp32 on CPU: every configuration copies it
    prompts: list[str]
    guidance: float
    quality: Callable                  # (images in [0, 1], the baseline's images or None) -> dict
    quality_kind: str
    seeds: list[int] = field(default_factory=list)
    random_weights: bool = False
    resolution: int = 32
    tiny_vae: object = None            # an AutoencoderTiny, or None with `tiny_vae_missing` saying why
    tiny_vae_missing: str = ""
    lcm_missing: str = ""              # why the LCM row is not measured ("" : measured, timing only)
    translator: object = None          # koclip_lib.translate.Translator, or None
    translator_missing: str = ""
    english_pipe: object = None        # the English pipeline the translator feeds (its text encoder is the teacher)
    decode_tokens: int | None = None   # random weights: every translation decodes exactly this many tokens
    teacher: tuple | None = None       # (CLIP text model, tokenizer) for distillation
    pairs: list[tuple[str, str]] = field(default_factory=list)  # (Korean, English) training pairs
    distill_config: object = None      # koclip_lib.distill.DistillConfig
    distill_batch: int = 128
    lora_batch: int = 32
    notes: list[str] = field(default_factory=list)

    def __post_init__(self):
        if not self.seeds:
            self.seeds = list(range(len(self.prompts)))


def _spread(items: Sequence, n: int) -> list:
    """n items evenly spaced over the list (prompt files are written in scene order)."""
    n = min(n, len(items))
    return [items[i * len(items) // n] for i in range(n)]


def _distill_config(params: dict):
    from .distill import DistillConfig

    known = {f.name for f in fields(DistillConfig)}
    settings = {k: v for k, v in (params.get("distill") or {}).items() if k in known and k not in ("objective",)}
    return DistillConfig(**{**settings, "objective": "sequence"})


def world_pairs(params: dict, n: int, seed: int = 0) -> list[tuple[str, str]]:
    """(Korean, English) captions of fresh mini-world scenes: training text for the throughput measurements."""
    import random

    from . import miniworld as mw

    world = mw.WorldConfig.from_params(params.get("world"))
    rng = random.Random(seed)
    return [mw.caption_pair(s, rng, world) for s in mw.sample_scenes(n, seed, world, split="seen")]


def mini_inputs(params: dict, n_prompts: int = 40, paths: dict | None = None) -> BenchInputs:
    """The mini profile: the saved Korean pipeline (root/korean_sd), held-out Korean prompts scored by the attribute
    classifier, the tiny translator and the English pipeline it feeds, and the teacher the student was distilled
    from. `paths` overrides any of: pipeline, student (a student folder to swap into `pipeline`), prompts,
    classifier, translator (None: not measured), english, teacher."""
    from .distill import load_teacher
    from .evaluate import load_pipeline, read_prompt_tsv, score
    from .miniworld import load_classifier
    from .translate import Translator

    root = Path(params.get("root", "outputs/mini"))
    paths = {"pipeline": root / "korean_sd", "student": None, "prompts": root / "prompts" / "ko_heldout.tsv",
             "classifier": root / "classifier", "translator": root / "translator", "english": root / "sd",
             "teacher": root / "teacher", **(paths or {})}
    if not Path(paths["pipeline"], "model_index.json").exists():
        raise FileNotFoundError(f"{paths['pipeline']}: no saved Korean pipeline; `make all` builds it (notebook 02)")
    pipe = load_pipeline(paths["pipeline"], paths["student"], device="cpu")
    rows = _spread(read_prompt_tsv(paths["prompts"]), n_prompts)
    classifier = load_classifier(paths["classifier"])

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
        pairs=world_pairs(params, 512), distill_config=_distill_config(params),
        distill_batch=int(((params.get("distill") or {}).get("loop") or {}).get("batch_size", 128)), lora_batch=32)


# SD 1.5's module configs (runwayml/stable-diffusion-v1-5), CLIP ViT-L/14's text tower, klue/roberta-small (the full
# profile's student backbone) and Helsinki-NLP/opus-mt-ko-en (the full profile's translator): built at random when
# the hub is out of reach, since timing depends on the shapes, not the weights.
SD15_UNET = dict(in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, attention_head_dim=8, norm_num_groups=32)
SD15_VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                latent_channels=4, norm_num_groups=32, scaling_factor=0.18215)
CLIP_L_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                   max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)
KLUE_ROBERTA_SMALL = dict(vocab_size=32000, hidden_size=768, num_hidden_layers=6, num_attention_heads=12,
                          intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1)
OPUS_MT_KO_EN = dict(vocab_size=65001, d_model=512, encoder_layers=6, decoder_layers=6, encoder_attention_heads=8,
                     decoder_attention_heads=8, encoder_ffn_dim=2048, decoder_ffn_dim=2048, max_position_embeddings=512,
                     activation_function="swish", scale_embedding=True)
TAESD = dict(encoder_block_out_channels=(64, 64, 64, 64), decoder_block_out_channels=(64, 64, 64, 64))

# Korean prompts for the full profile (the seed's fixed prompt first), with English references for training text
FULL_PROMPTS = [
    ("의자에 앉은 한 마리의 핑크 고양이", "a pink cat sitting on a chair"),
    ("해질녘 바닷가를 걷는 강아지", "a dog walking on the beach at sunset"),
    ("눈 덮인 산 아래의 작은 오두막", "a small cabin under a snowy mountain"),
    ("비 오는 밤 서울의 네온사인 거리", "a neon-lit street in Seoul on a rainy night"),
    ("한복을 입은 소녀의 수채화 초상화", "a watercolour portrait of a girl wearing hanbok"),
    ("벚꽃이 핀 궁궐의 정원", "a palace garden with cherry blossoms in bloom"),
    ("나무 탁자 위의 김치찌개 한 그릇", "a bowl of kimchi stew on a wooden table"),
    ("우주를 떠다니는 고래, 디지털 아트", "a whale floating in space, digital art"),
]


def _scaled(n: int, scale: float, multiple: int) -> int:
    """`n * scale` rounded to a multiple (at least one multiple): widths stay divisible by heads and norm groups."""
    return n if scale == 1 else max(multiple, int(round(n * scale / multiple)) * multiple)


def _depth(n: int, scale: float) -> int:
    return n if scale == 1 else max(1, int(round(n * scale)))


def sd15_random_parts(scale: float = 1.0, resolution: int = 512, seed: int = 0, decode_tokens: int = 20) -> dict:
    """SD 1.5-sized modules from their configs with random weights: UNet, VAE, a tiny decoder (TAESD's
    architecture), CLIP ViT-L/14's text model (the teacher), a Korean student around a klue/roberta-small-sized
    RoBERTa, and an opus-mt-ko-en-sized Marian translator, with tokenizers trained on a few sentences (ids are
    all the models need). `scale` < 1 shrinks every width and depth and `resolution` the image (tests: the same
    code path in seconds on a CPU)."""
    from diffusers import AutoencoderKL, AutoencoderTiny, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, GenerationConfig, MarianConfig, MarianMTModel, RobertaConfig

    from . import generator as g
    from .distill import KoreanTextEncoder, train_student_tokenizer
    from .translate import train_marian_tokenizer

    torch.manual_seed(seed)
    groups = 32 if scale == 1 else 8
    texts = [t for pair in FULL_PROMPTS for t in pair] * 4
    unet = UNet2DConditionModel(**{**SD15_UNET, "norm_num_groups": groups, "layers_per_block": _depth(2, scale),
                                   "block_out_channels": tuple(_scaled(c, scale, groups) for c in SD15_UNET["block_out_channels"])},
                                sample_size=resolution // 8, cross_attention_dim=_scaled(768, scale, 12))
    vae = AutoencoderKL(**{**SD15_VAE, "norm_num_groups": groups, "layers_per_block": _depth(2, scale),
                           "block_out_channels": tuple(_scaled(c, scale, groups) for c in SD15_VAE["block_out_channels"])},
                        sample_size=resolution)
    tiny_vae = AutoencoderTiny(**{k: tuple(_scaled(c, scale, 8) for c in v) for k, v in TAESD.items()})
    teacher_tok = g.train_english_tokenizer(texts, vocab_size=400)
    clip = CLIPTextModel(CLIPTextConfig(**{**CLIP_L_TEXT, "hidden_size": _scaled(768, scale, 12),
                                           "intermediate_size": 4 * _scaled(768, scale, 12),
                                           "num_hidden_layers": _depth(12, scale), "projection_dim": _scaled(768, scale, 12)},
                                        bos_token_id=teacher_tok.bos_token_id, eos_token_id=teacher_tok.eos_token_id,
                                        pad_token_id=teacher_tok.pad_token_id))
    student_tok = train_student_tokenizer(texts, vocab_size=300, max_length=128)
    backbone = RobertaConfig(**{**KLUE_ROBERTA_SMALL, "hidden_size": _scaled(768, scale, 12),
                                "intermediate_size": 4 * _scaled(768, scale, 12), "num_hidden_layers": _depth(6, scale)},
                             pad_token_id=student_tok.pad_token_id, bos_token_id=student_tok.bos_token_id,
                             eos_token_id=student_tok.eos_token_id)
    student = KoreanTextEncoder.from_backbone(backbone, clip.config.hidden_size, head_layers=_depth(2, scale), head_heads=12,
                                              teacher="random CLIP ViT-L/14 text config")
    with tempfile.TemporaryDirectory(prefix="bench_marian_") as folder:  # the tokenizer reads its files once, at init
        marian_tok = train_marian_tokenizer(texts, folder, vocab_size=200)
    pad, eos = marian_tok.pad_token_id, marian_tok.eos_token_id
    marian = MarianMTModel(MarianConfig(**{**OPUS_MT_KO_EN, "d_model": _scaled(512, scale, 8),
                                           "encoder_ffn_dim": 4 * _scaled(512, scale, 8), "decoder_ffn_dim": 4 * _scaled(512, scale, 8),
                                           "encoder_layers": _depth(6, scale), "decoder_layers": _depth(6, scale)},
                                        pad_token_id=pad, eos_token_id=eos, decoder_start_token_id=pad, bos_token_id=None))
    # random weights rarely emit the end token: fix the length at a typical English prompt's so the time is a prompt's
    marian.generation_config = GenerationConfig(decoder_start_token_id=pad, eos_token_id=eos, pad_token_id=pad, num_beams=1,
                                                min_new_tokens=decode_tokens)
    return {"unet": unet.eval(), "vae": vae.eval(), "tiny_vae": tiny_vae.eval(), "teacher": clip.eval(), "teacher_tok": teacher_tok,
            "student": student.eval(), "student_tok": student_tok, "translator": marian.eval(), "translator_tok": marian_tok}


class FoldingTokenizer:
    """The random translator's tokenizer: random weights emit ids from opus-mt-ko-en's 65,001-entry vocabulary, more
    than the stand-in's sentencepiece pieces, so decoding folds them into its range (decoding costs microseconds; the
    output projection over the full vocabulary, which dominates each generated token, is kept)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)

    def __call__(self, *args, **kwargs):
        return self.tokenizer(*args, **kwargs)

    def batch_decode(self, ids, **kwargs):
        return self.tokenizer.batch_decode(ids % len(self.tokenizer), **kwargs)


def full_random_inputs(params: dict, n_prompts: int = 8, scale: float = 1.0, resolution: int = 512,
                       decode_tokens: int = 20) -> BenchInputs:
    """The full profile with SD 1.5-sized random modules (`sd15_random_parts`): the Korean pipeline (student +
    UNet + VAE, PNDM as SD 1.5 ships), the English pipeline the translator would feed, and the quality proxy of
    random weights: the mean absolute pixel difference from the baseline's image for the same seed."""
    from diffusers import StableDiffusionPipeline

    from . import generator as g
    from .pipeline import KoreanStableDiffusionPipeline
    from .translate import Translator

    parts = sd15_random_parts(scale, resolution, int(params.get("seed", 0)) % 2**31, decode_tokens)
    scheduler = make_scheduler("pndm", g.noise_scheduler("epsilon").config)
    pipe = KoreanStableDiffusionPipeline(parts["vae"], parts["student"], parts["student_tok"], parts["unet"], scheduler)
    english = StableDiffusionPipeline(parts["vae"], parts["teacher"], parts["teacher_tok"], parts["unet"], scheduler,
                                      safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    for p in (pipe, english):
        p.set_progress_bar_config(disable=True)
    prompts = [ko for ko, _ in FULL_PROMPTS]
    prompts = (prompts * (n_prompts // len(prompts) + 1))[:n_prompts]
    loop = (params.get("distill") or {}).get("loop") or {}
    note = ("random weights: SD 1.5-sized modules built from their configs" +
            (f", every width and depth scaled by {scale}" if scale != 1 else "") +
            f", {resolution}x{resolution} images; quality is pixel difference from the baseline, not image quality; "
            "the LCM row is timing only (an LCM-LoRA fused into the UNet costs the same per step; its images need one)")
    return BenchInputs(
        profile=params.get("profile", "full"), pipe=pipe, prompts=prompts,
        seeds=[int(params.get("seed", 0)) + i for i in range(n_prompts)],
        guidance=float((params.get("evaluate") or {}).get("guidance_scale", 7.5)),
        quality=pixel_difference, quality_kind="mean absolute pixel difference (0-1) from the baseline's image, same seed",
        random_weights=True, resolution=resolution, tiny_vae=parts["tiny_vae"],
        translator=Translator(parts["translator"], FoldingTokenizer(parts["translator_tok"]), device="cpu"), english_pipe=english,
        decode_tokens=decode_tokens, teacher=(parts["teacher"], parts["teacher_tok"]),
        pairs=FULL_PROMPTS * 32, distill_config=_distill_config(params),
        distill_batch=int(loop.get("batch_size", 256)), lora_batch=16, notes=[note])


def full_inputs(params: dict, n_prompts: int = 8) -> BenchInputs:
    """The full profile with real weights: params' SD checkpoint with the trained student (root/student), the
    translator and the teacher, all from the hub or local copies. A tiny decoder is used when `madebyollin/taesd`
    loads. The quality proxy stays the pixel difference from the baseline (a CLIP score needs a CLIP image tower)."""
    from diffusers import AutoencoderTiny

    from .distill import load_teacher
    from .evaluate import load_pipeline
    from .pipeline import load_korean_pipeline
    from .translate import Translator

    root = Path(params.get("root", "outputs/full"))
    pipe = load_korean_pipeline(sd=params["sd"], text_encoder=root / "student", device="cpu")
    try:
        tiny, missing = AutoencoderTiny.from_pretrained("madebyollin/taesd").eval(), ""
    except (OSError, ValueError) as err:
        tiny, missing = None, f"not available: madebyollin/taesd did not load ({type(err).__name__})"
    prompts = [ko for ko, _ in FULL_PROMPTS]
    prompts = (prompts * (n_prompts // len(prompts) + 1))[:n_prompts]
    loop = (params.get("distill") or {}).get("loop") or {}
    return BenchInputs(
        profile=params.get("profile", "full"), pipe=pipe, prompts=prompts,
        seeds=[int(params.get("seed", 0)) + i for i in range(n_prompts)],
        guidance=float((params.get("evaluate") or {}).get("guidance_scale", 7.5)), quality=pixel_difference,
        quality_kind="mean absolute pixel difference (0-1) from the baseline's image, same seed", resolution=512,
        tiny_vae=tiny, tiny_vae_missing=missing,
        lcm_missing="not available: needs an LCM-LoRA or LCM-distilled UNet for this checkpoint",
        translator=Translator.from_pretrained(params["translator"]["pretrained"]), english_pipe=load_pipeline(params["sd"], device="cpu"),
        teacher=load_teacher(params["distill"]["teacher"]), pairs=FULL_PROMPTS * 32, distill_config=_distill_config(params),
        distill_batch=int(loop.get("batch_size", 256)), lora_batch=16)


def pixel_difference(images: torch.Tensor, baseline: torch.Tensor | None = None) -> dict:
    """Mean absolute pixel difference (images in [0, 1]) from the baseline's image of the same seed."""
    mad = 0.0 if baseline is None else float((images.float() - baseline.float()).abs().mean())
    return {"pixel_mad_vs_baseline": mad, "images": len(images)}


# ---------------------------------------------------------------------------------------------------------------
# The matrix: rows, measurement, ratios, and the stacked winners.
# ---------------------------------------------------------------------------------------------------------------
AXES = ("baseline", "dtype", "attention", "memory format", "scheduler", "compile", "vae decode", "batch",
        "prompt cache", "optimised")
STACKED_AXES = ("dtype", "attention", "memory format", "scheduler", "compile", "vae decode", "prompt cache")


def matrix(inputs: BenchInputs, device: torch.device, quick: bool = False, compile_unet: bool = True) -> list[dict]:
    """The one-factor rows: each a change of one axis from the baseline, or a skipped entry that says why."""
    base = Setting()
    rows = [("baseline", "baseline", base, None)]
    for dtype in ("fp16", "bf16"):
        rows.append((dtype, "dtype", replace(base, dtype=dtype), dtype_unsupported(dtype, device)))
    rows.append(("SDPA attention", "attention", replace(base, attention="sdpa"), None))
    rows.append(("channels_last", "memory format", replace(base, channels_last=True), None))
    rows.append(("DDIM 50", "scheduler", replace(base, scheduler="ddim"), None))
    for steps in (25, 20):
        rows.append((f"DPM-Solver++ {steps}", "scheduler", replace(base, scheduler="dpm++", steps=steps), None))
    rows.append(("DPM-Solver++ 8 (few-step)", "scheduler", replace(base, scheduler="dpm++", steps=8), None))
    rows.append(("LCM 4, guidance 1", "scheduler", replace(base, scheduler="lcm", steps=4, guidance=1.0), inputs.lcm_missing or None))
    compile_skip = None
    if not compile_unet:
        compile_skip = "skipped: --no-compile"
    elif quick and device.type == "cpu":
        compile_skip = "skipped: --quick on CPU (compiling the UNet takes about a minute)"
    rows.append(("torch.compile(UNet)", "compile", replace(base, compile=True), compile_skip))
    rows.append(("tiny VAE decoder", "vae decode", replace(base, vae="tiny"),
                 None if inputs.tiny_vae is not None else inputs.tiny_vae_missing or "not available: no tiny decoder"))
    for batch in (4, 8):
        rows.append((f"batch {batch}", "batch", replace(base, batch=batch), None))
    rows.append(("prompt-embedding cache", "prompt cache", replace(base, cache=True), None))
    return [{"name": name, "axis": axis, "setting": setting, "skip": skip} for name, axis, setting, skip in rows]


class Runner:
    """One configuration, ready to time: a fresh pipeline with `setting` applied, the prompts split into calls of
    `setting.batch` (one seed per prompt, one generator per image, so the batch size never changes an image), and
    what its timed calls measured. The rows of a phase can then be timed one after the other or interleaved."""

    def __init__(self, inputs: BenchInputs, setting: Setting, device: torch.device, compile_mode: str | None = None):
        self.inputs, self.setting, self.device = inputs, setting, device
        self.pipe = configure(fresh_pipeline(inputs.pipe), setting, device, inputs.tiny_vae, compile_mode)
        self.guidance = inputs.guidance if setting.guidance is None else setting.guidance
        self.cfg = self.guidance > 1
        n = len(inputs.prompts)
        self.chunks = [list(range(s, min(s + setting.batch, n))) for s in range(0, n, setting.batch)]
        with torch.no_grad():  # a cache hit: the states of an earlier request, no text encoder in the timed call
            self.cache = [self.pipe.encode_prompt(p, device, 1, self.cfg) for p in inputs.prompts] if setting.cache else None
        self.steps = 0
        self.per_image, self.call_seconds, self.images, self.peak_mb, self.work_mb = [], [], [], 0.0, None
        self.first_call = self.memory_kind = None

    def _count(self, _pipe, _i, _t, tensors):  # once per denoising step: one UNet evaluation, every image of the batch in it
        self.steps += 1
        return tensors

    @torch.no_grad()
    def _call(self, idx: list[int]) -> torch.Tensor:
        kwargs = dict(num_inference_steps=self.setting.steps, guidance_scale=self.guidance, output_type="pt",
                      callback_on_step_end=self._count,
                      generator=[torch.Generator().manual_seed(int(self.inputs.seeds[i])) for i in idx])
        if self.cache is not None:
            kwargs["prompt_embeds"] = torch.cat([self.cache[i][0] for i in idx])
            kwargs["negative_prompt_embeds"] = torch.cat([self.cache[i][1] for i in idx]) if self.cfg else None
        else:
            kwargs["prompt"] = [self.inputs.prompts[i] for i in idx]
        return self.pipe(**kwargs).images

    def _timed_call(self, idx: list[int]) -> tuple[float, torch.Tensor]:
        with PeakMemory(self.device) as memory:
            _sync(self.device)
            started = time.perf_counter()
            out = self._call(idx)
            _sync(self.device)
            seconds = time.perf_counter() - started
        self.peak_mb, self.memory_kind = max(self.peak_mb, memory.mb), memory.kind
        if memory.work_mb is not None:
            self.work_mb = max(self.work_mb or 0.0, memory.work_mb)
        return seconds, out

    def warm_up(self) -> None:
        """One untimed call (it pays for compiling, allocation and caches); its seconds are kept as `first_call`."""
        self.first_call, _ = self._timed_call(self.chunks[0])
        self.steps = 0

    def timed(self, k: int, keep: bool) -> None:
        """Time call `k` (the k-th chunk of prompts); `keep` its images for the quality proxy."""
        seconds, out = self._timed_call(self.chunks[k])
        self.per_image.append(seconds / len(self.chunks[k]))
        self.call_seconds.append((len(self.chunks[k]), seconds))
        if keep:
            self.images.append(out.float().cpu())

    def result(self, baseline_images: torch.Tensor | None) -> tuple[dict, torch.Tensor]:
        images = torch.cat(self.images)
        timed, total = sum(n for n, _ in self.call_seconds), sum(s for _, s in self.call_seconds)
        row = {"status": "measured", "p50_s_per_image": float(np.percentile(self.per_image, 50)),
               "p90_s_per_image": float(np.percentile(self.per_image, 90)), "images_per_s": timed / total,
               "peak_mb": self.peak_mb, "peak_memory_kind": self.memory_kind, "peak_above_call_start_mb": self.work_mb,
               "unet_steps_per_image": self.steps / len(self.call_seconds), "first_call_s": self.first_call,
               "calls": len(self.call_seconds), "images_timed": timed, "guidance": self.guidance,
               "quality": self.inputs.quality(images, baseline_images)}
        if self.setting.compile:  # the warm-up compiled the graph: its excess over a steady call of the same size
            same = [s for n, s in self.call_seconds if n == len(self.chunks[0])]
            row["compile_s"] = max(0.0, self.first_call - float(np.median(same)))
        return row, images

    def close(self) -> None:
        del self.pipe, self.cache
        _release(self.device)


def measure_setting(inputs: BenchInputs, setting: Setting, device: torch.device, repeats: int = 1,
                    baseline_images: torch.Tensor | None = None, compile_mode: str | None = None) -> tuple[dict, torch.Tensor]:
    """One configuration on its own: warm-up, then every prompt `repeats` times. Returns the row's figures and the
    first pass's images (in [0, 1])."""
    runner = Runner(inputs, setting, device, compile_mode)
    runner.warm_up()
    for rep in range(repeats):
        for k in range(len(runner.chunks)):
            runner.timed(k, keep=rep == 0)
    out = runner.result(baseline_images)
    runner.close()
    if setting.compile:
        _release(device, compiled=True)
    return out


def _release(device: torch.device, compiled: bool = False) -> None:
    if compiled:
        torch._dynamo.reset()  # the next compiled rows start from an empty cache (no recompile limit carried over)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def add_ratios(rows: list[dict]) -> None:
    """Every measured row's speed as a ratio to the baseline timed in the same phase of the same run (p50 and p90
    seconds per image, images/s), and its attribute accuracy beside that baseline's."""
    for r in rows:
        if r["status"] != "measured":
            continue
        base = next(b for b in rows if b["axis"] == "baseline" and b["phase"] == r["phase"])
        r["speedup_p50"] = base["p50_s_per_image"] / r["p50_s_per_image"]
        r["speedup_p90"] = base["p90_s_per_image"] / r["p90_s_per_image"]
        r["images_per_s_ratio"] = r["images_per_s"] / base["images_per_s"]
        if "attribute_accuracy" in r["quality"]:
            r["quality"]["accuracy_delta_vs_baseline"] = r["quality"]["attribute_accuracy"] - base["quality"]["attribute_accuracy"]


def quality_holds(row: dict, tolerance: float) -> bool | None:
    """True when the row keeps the baseline's quality (attribute accuracy within `tolerance`), None when the proxy
    cannot tell (random weights: pixel difference measures change, not quality)."""
    delta = row["quality"].get("accuracy_delta_vs_baseline")
    return None if delta is None else delta >= -tolerance


def pick_winners(rows: list[dict], tolerance: float, min_gain: float = 1.05) -> tuple[Setting, dict, int]:
    """The baseline with each axis's fastest row stacked, where it is at least `min_gain` faster (p50) and keeps
    quality. Where quality cannot be judged (random weights) a schedule of fewer than 20 steps, or one without
    classifier-free guidance, is not taken: only a measured quality could justify it. Returns the stacked
    setting, the reason per axis, and the batch with the most images/s."""
    base = next(r for r in rows if r["axis"] == "baseline")["setting"]
    stacked, why = base, {}
    for axis in STACKED_AXES:
        candidates = []
        for r in rows:
            if r["axis"] != axis or r["status"] != "measured":
                continue
            ok = quality_holds(r, tolerance)
            if ok is False:
                continue
            if ok is None and axis == "scheduler" and (r["setting"].steps < 20 or r["setting"].guidance is not None):
                continue
            candidates.append(r)
        best = max(candidates, key=lambda r: r["speedup_p50"], default=None)
        if best is not None and best["speedup_p50"] >= min_gain:
            stacked = replace(stacked, **best["setting"].changes(base))
            why[axis] = f"{best['name']} ({best['speedup_p50']:.2f}x)"
        else:
            why[axis] = "baseline kept (no measured option at least %.2fx faster with quality held)" % min_gain
    batches = [r for r in rows if r["status"] == "measured" and r["axis"] in ("baseline", "batch")]
    best_batch = max(batches, key=lambda r: r["images_per_s"])
    batch = best_batch["setting"].batch if best_batch["images_per_s"] >= min_gain * batches[0]["images_per_s"] else 1
    why["batch"] = f"batch {batch} ({best_batch['images_per_s_ratio']:.2f}x images/s)" if batch > 1 else "batch 1 kept"
    return stacked, why, batch


def run_phase(inputs: BenchInputs, entries: list[dict], device: torch.device, repeats: int = 1, interleave: bool = True,
              compile_mode: str | None = None, baseline_images: torch.Tensor | None = None,
              phase: int = 1) -> tuple[list[dict], torch.Tensor | None]:
    """Measure `entries` (the first is the phase's baseline). Interleaved (the default on a CPU), every configuration
    is prepared and warmed up first, then the prompts are timed round-robin across them, so a machine that other
    work slows down or frees up mid-run slows every row alike and the ratios stay fair; else one row after another
    (a dedicated GPU), each freed before the next is built. Returns the rows and the images quality is compared
    with (`baseline_images`, else the phase's baseline's)."""
    base = Setting()
    rows = [{"name": e["name"], "axis": e["axis"], "setting": e["setting"], "changes": e["setting"].changes(base),
             "phase": phase} for e in entries]
    runners = {}
    for i, entry in enumerate(tqdm(entries, desc=f"bench: phase {phase}", mininterval=5)):
        if entry["skip"]:
            status = "not available" if entry["skip"].startswith("not available") else "skipped"
            rows[i].update(status=status, reason=entry["skip"])
            continue
        runner = None
        try:
            runner = Runner(inputs, entry["setting"], device, compile_mode)
            runner.warm_up()
            if not interleave:
                for rep in range(repeats):
                    for k in range(len(runner.chunks)):
                        runner.timed(k, keep=rep == 0)
                baseline_images = _finish(rows[i], runner, baseline_images)
            else:
                runners[i] = runner
        except Exception as err:  # one configuration failing (a compiler missing, memory) must not lose the others
            rows[i].update(status="failed", reason=f"{type(err).__name__}: {err}"[:500])
            if runner is not None and hasattr(runner, "pipe"):
                runner.close()
            _release(device, compiled=True)
    if interleave:
        for rep in range(repeats):
            for p in tqdm(range(len(inputs.prompts)), desc=f"bench: phase {phase}, interleaved", mininterval=5):
                for i, runner in list(runners.items()):
                    if p % runner.setting.batch:
                        continue
                    try:
                        runner.timed(p // runner.setting.batch, keep=rep == 0)
                    except Exception as err:
                        rows[i].update(status="failed", reason=f"{type(err).__name__}: {err}"[:500])
                        runners.pop(i).close()
        for i, runner in runners.items():
            baseline_images = _finish(rows[i], runner, baseline_images)
    _release(device, compiled=True)
    return rows, baseline_images


def _finish(row: dict, runner: Runner, baseline_images):
    """Fill `row` from the runner and free it; returns the baseline's images (the first row's, if not given)."""
    figures, images = runner.result(baseline_images)
    row.update(figures)
    runner.close()
    return images if baseline_images is None else baseline_images


def run_matrix(inputs: BenchInputs, device: torch.device, quick: bool = False, repeats: int = 1, tolerance: float = 0.05,
               compile_unet: bool = True, compile_mode: str | None = None, min_gain: float = 1.05,
               interleave: bool | None = None) -> tuple[list[dict], dict]:
    """Phase 1: the baseline and every one-factor row. Phase 2: the baseline again, timed with the winners stacked
    at batch 1 and at the best batch size (each phase's ratios are to its own baseline; the two baselines show how
    far the machine drifted between them). Quality is always compared with phase 1's baseline images."""
    interleave = device.type == "cpu" if interleave is None else interleave
    base = Setting()
    rows, baseline_images = run_phase(inputs, matrix(inputs, device, quick, compile_unet), device, repeats, interleave,
                                      compile_mode)
    add_ratios(rows)
    stacked, why, batch = pick_winners(rows, tolerance, min_gain)
    second = [{"name": "baseline, again (timed with the optimised rows)", "axis": "baseline", "setting": base, "skip": None},
              {"name": "optimised, batch 1", "axis": "optimised", "setting": replace(stacked, batch=1), "skip": None}]
    if batch > 1:
        second.append({"name": f"optimised, batch {batch}", "axis": "optimised", "setting": replace(stacked, batch=batch),
                       "skip": None})
    at_20 = replace(stacked, scheduler="dpm++", steps=20, guidance=None, batch=1)
    if at_20 != second[1]["setting"]:  # the reference point (20 steps, guidance, batch 1): the stack without few-step
        second.append({"name": "optimised at DPM-Solver++ 20, batch 1", "axis": "optimised", "setting": at_20, "skip": None})
        why["at 20 steps"] = "the same stack with DPM-Solver++ 20 (the issue's reference point) in place of the chosen schedule"
    rows += run_phase(inputs, second, device, repeats, interleave, compile_mode, baseline_images, phase=2)[0]
    add_ratios(rows)
    for r in rows:
        if r["status"] == "measured":
            r["quality_held"] = quality_holds(r, tolerance)
    return rows, why


# ---------------------------------------------------------------------------------------------------------------
# Text conditioning and training throughput.
# ---------------------------------------------------------------------------------------------------------------
def _synced(fn: Callable, device: torch.device) -> Callable:
    def call(prompt):
        out = fn(prompt)
        _sync(device)
        return out
    return call


def text_conditioning(inputs: BenchInputs, device: torch.device, n_prompts: int = 20) -> dict:
    """Seconds per prompt, one prompt at a time: the student's encode (the Korean pipeline's `encode_prompt`) vs
    the translator's generate alone and generate + the English pipeline's encode; ratios to the student."""
    prompts = _spread(inputs.prompts, n_prompts) if len(inputs.prompts) >= n_prompts else inputs.prompts
    pipe = fresh_pipeline(inputs.pipe).to(device)
    out = {"prompts": len(prompts), "student_encode_s": text_conditioning_seconds(_synced(pipeline_encoder(pipe), device), prompts)}
    if inputs.translator is None:
        out["translator"] = inputs.translator_missing or "not available"
    else:
        translator = inputs.translator
        translator.model.to(device)
        translator.device = device
        kwargs = {"max_new_tokens": inputs.decode_tokens} if inputs.decode_tokens else {}
        generate = _synced(lambda p: translator.translate([p], **kwargs), device)
        out["translator_generate_s"] = text_conditioning_seconds(generate, prompts)
        out["ratio_generate_to_student"] = out["translator_generate_s"] / out["student_encode_s"]
        if inputs.english_pipe is not None:
            english = inputs.english_pipe.to(device)
            encode = pipeline_encoder(english)
            both = _synced(lambda p: encode(translator.translate([p], **kwargs)[0]), device)
            out["translate_then_encode_s"] = text_conditioning_seconds(both, prompts)
            out["ratio_translate_then_encode_to_student"] = out["translate_then_encode_s"] / out["student_encode_s"]
            english.to("cpu")
        if inputs.decode_tokens:
            out["decode_tokens"] = inputs.decode_tokens
        translator.model.to("cpu")
        translator.device = torch.device("cpu")
    del pipe
    _release(device)
    return out


def _timed_steps(step: Callable[[int], None], steps: int, warmup: int, device: torch.device) -> float:
    """Seconds per step over `steps` steps after `warmup` untimed ones."""
    for i in range(warmup):
        step(i)
    _sync(device)
    started = time.perf_counter()
    for i in range(warmup, warmup + steps):
        step(i)
    _sync(device)
    return (time.perf_counter() - started) / steps


def distill_throughput(student, student_tok, teacher, teacher_tok, pairs, cfg, batch_size: int, steps: int,
                       device: torch.device, bf16: bool = False, warmup: int = 1) -> dict:
    """Distillation samples/s: a (Korean, English) pair per sample through the `sequence` objective — the frozen
    teacher's forward on the English (online, no cached targets), the student's forward on both sides, the
    backward and an AdamW step on the student."""
    from .distill import Distiller

    student = copy.deepcopy(student).to(device).train()
    distiller = Distiller(cfg, student, student_tok, copy.deepcopy(teacher), teacher_tok).to(device)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-5)
    gen = torch.Generator().manual_seed(0)

    def step(i):
        batch = [pairs[(i * batch_size + k) % len(pairs)] for k in range(batch_size)]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = distiller.loss(cfg.objective, [ko for ko, _ in batch], [en for _, en in batch], gen)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    with PeakMemory(device) as memory:
        seconds = _timed_steps(step, steps, warmup, device)
    return {"what": "distillation (student fwd+bwd, online teacher fwd)", "objective": cfg.objective,
            "precision": "bf16 autocast" if bf16 else "fp32", "batch": batch_size, "steps": steps,
            "seconds_per_step": seconds, "samples_per_s": batch_size / seconds, "peak_mb": memory.mb}


def lora_throughput(unet, text_width: int, batch_size: int, steps: int, device: torch.device, bf16: bool = False,
                    warmup: int = 1, n_latents: int = 256, prediction_type: str = "epsilon") -> dict:
    """LoRA training images/s: a rank-4 LoRA on the UNet's attention projections (peft, `unet.add_adapter`), the
    rest frozen; cached latents (encoded once, as LoRA scripts do) and fixed text states, so the step is the
    UNet's forward + backward + AdamW on the LoRA weights, at the UNet's own latent size."""
    from peft import LoraConfig

    from .generator import noise_scheduler

    unet = copy.deepcopy(unet).to(device)
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=LORA_TARGETS))
    unet.train()
    trainable = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    size = unet.config.sample_size
    latents = torch.randn(n_latents, unet.config.in_channels, size, size, generator=gen).to(device)
    states = torch.randn(batch_size, 77, text_width, generator=gen).to(device)
    scheduler = noise_scheduler(prediction_type)

    def step(i):
        idx = torch.randint(n_latents, (batch_size,), generator=gen).to(device)
        x0 = latents[idx]
        noise = torch.randn(x0.shape, generator=gen).to(device)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), generator=gen).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            pred = unet(scheduler.add_noise(x0, noise, t), t, encoder_hidden_states=states).sample
        target = noise if prediction_type == "epsilon" else scheduler.get_velocity(x0, noise, t)
        loss = torch.nn.functional.mse_loss(pred.float(), target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    with PeakMemory(device) as memory:
        seconds = _timed_steps(step, steps, warmup, device)
    n_lora = sum(p.numel() for p in trainable)
    return {"what": "LoRA training (r=4 on to_q/to_k/to_v/to_out.0, cached latents)", "precision": "bf16 autocast" if bf16 else "fp32",
            "batch": batch_size, "steps": steps, "latent_size": size, "lora_parameters": n_lora, "seconds_per_step": seconds, "images_per_s": batch_size / seconds, "peak_mb": memory.mb}


def training_throughput(inputs: BenchInputs, device: torch.device, steps: int, warmup: int = 1) -> list[dict]:
    """Distillation samples/s and LoRA images/s at the profile's resolution; on a GPU also under bf16 autocast."""
    precisions = [False, True] if device.type == "cuda" and torch.cuda.is_bf16_supported() else [False]
    pipe = inputs.pipe
    out = []
    for bf16 in precisions:
        if inputs.teacher is not None:
            out.append(distill_throughput(pipe.text_encoder, pipe.tokenizer, inputs.teacher[0], inputs.teacher[1], inputs.pairs,
                                          inputs.distill_config, inputs.distill_batch, steps, device, bf16, warmup))
            _release(device)  # the copies trained above are gone with the call's frame
        row = lora_throughput(pipe.unet, pipe.unet.config.cross_attention_dim, inputs.lora_batch, steps, device, bf16, warmup,
                              prediction_type=pipe.scheduler.config.get("prediction_type", "epsilon"))
        row["image_size"] = inputs.resolution
        out.append(row)
        _release(device)
    return out


# ---------------------------------------------------------------------------------------------------------------
# The whole run, its record and its table.
# ---------------------------------------------------------------------------------------------------------------
def device_name(device: torch.device) -> str:
    """'cpu' or the GPU's name as a file-name slug ('nvidia-h100-80gb-hbm3')."""
    if device.type != "cuda":
        return device.type
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")


def environment(device: torch.device) -> dict:
    import diffusers
    import peft
    import transformers

    cpu = platform.processor()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    env = {"device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu,
           "torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__,
           "peft": peft.__version__, "python": platform.python_version(), "threads": torch.get_num_threads(),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "cpu_count": os.cpu_count(),
           "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if hasattr(os, "getloadavg"):
        env["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    env["inductor_cache_dir"] = os.environ.get("TORCHINDUCTOR_CACHE_DIR")  # main: a fresh one unless --warm-compile-cache
    if device.type == "cuda":
        env["cuda"] = torch.version.cuda
        env["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
    return env


def run_benchmark(inputs: BenchInputs, device: torch.device, quick: bool = False, repeats: int = 1,
                  tolerance: float = 0.05, compile_unet: bool = True, compile_mode: str | None = None,
                  train_steps: int = 5, text_prompts: int = 20, min_gain: float = 1.05, interleave: bool | None = None) -> dict:
    """Everything the command measures, as one JSON-able record."""
    started = time.perf_counter()
    interleave = device.type == "cpu" if interleave is None else interleave
    record = {"profile": inputs.profile, "random_weights": inputs.random_weights, "quick": quick, "environment": environment(device),
              "resolution": inputs.resolution, "prompts": len(inputs.prompts), "repeats": repeats, "guidance": inputs.guidance,
              "quality_proxy": inputs.quality_kind, "quality_tolerance": tolerance, "min_gain": min_gain,
              "interleaved": interleave, "baseline": asdict(Setting()), "notes": list(inputs.notes)}
    rows, why = run_matrix(inputs, device, quick, repeats, tolerance, compile_unet, compile_mode, min_gain, interleave)
    record["rows"] = [{**r, "setting": asdict(r["setting"])} for r in rows]
    record["optimised_from"] = why
    record["text_conditioning"] = text_conditioning(inputs, device, text_prompts)
    record["training"] = training_throughput(inputs, device, train_steps)
    record["summary"] = summarise(rows)
    record["seconds"] = time.perf_counter() - started
    if hasattr(os, "getloadavg"):
        record["environment"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return record


def summarise(rows: list[dict]) -> dict:
    """The headline: the optimised rows against the baseline, with quality beside them."""
    base, *again = [r for r in rows if r["axis"] == "baseline" and r["status"] == "measured"]
    out = {"baseline_p50_s_per_image": base["p50_s_per_image"], "baseline_images_per_s": base["images_per_s"]}
    if again:  # phase 2's baseline over phase 1's: > 1, the machine got slower between the phases
        out["baseline_drift_p50"] = again[-1]["p50_s_per_image"] / base["p50_s_per_image"]
    for r in rows:
        if r["axis"] == "optimised" and r["status"] == "measured":
            out[r["name"]] = {"p50_s_per_image": r["p50_s_per_image"], "speedup_p50": r["speedup_p50"],
                              "images_per_s": r["images_per_s"], "images_per_s_ratio": r["images_per_s_ratio"],
                              "quality": r["quality"], "quality_held": r.get("quality_held"), "changes": r["changes"]}
    return out


def _quality_text(q: dict | None) -> str:
    if not q:
        return ""
    if "attribute_accuracy" in q:
        return f"colour {100 * q.get('color', float('nan')):.1f}% · shape {100 * q.get('shape', float('nan')):.1f}%"
    return f"MAD {q['pixel_mad_vs_baseline']:.4f}"


def _row_line(r: dict) -> str:
    if r["status"] != "measured":
        return f"| {r['name']} | {r['axis']} | {r['status']}: {r['reason'].split(': ', 1)[-1]} | | | | | | | | |"
    held = " ✗" if r.get("quality_held") is False else ""
    compiled = f"{r['compile_s']:.1f}" if "compile_s" in r else ""
    memory = f"{r['peak_mb']:.0f}"
    if r.get("peak_above_call_start_mb") is not None:  # CPU: the process's peak, and what the call itself added
        memory += f" (+{r['peak_above_call_start_mb']:.0f})"
    return (f"| {r['name']} | {r['axis']} | {r['p50_s_per_image']:.4f} | {r['p90_s_per_image']:.4f} | "
            f"{r['images_per_s']:.2f} | {r['speedup_p50']:.2f}× | {r['images_per_s_ratio']:.2f}× | {memory} | "
            f"{_quality_text(r['quality'])}{held} | {r['unet_steps_per_image']:g} | {compiled} |")


def _memory_kind(record: dict) -> str:
    kind = next((r["peak_memory_kind"] for r in record["rows"] if r.get("peak_memory_kind")), "")
    if kind.startswith("process"):
        return (f"{kind}, with every configuration of the phase loaded when interleaved; in brackets what the call "
                "itself added above the resident set at its start")
    return kind


def markdown(record: dict) -> str:
    """The record as the markdown table the command prints (and writes beside the JSON)."""
    env = record["environment"]
    base = record["baseline"]
    lines = [f"## koclip benchmark — profile `{record['profile']}`{' (random weights)' if record['random_weights'] else ''}"
             f"{' (--quick)' if record['quick'] else ''} on {env['device_name']} ({env['device']})", "",
             f"torch {env['torch']}, diffusers {env['diffusers']}, {env['threads']} thread(s), {env['date']}"
             + (f", load average at start {env['load_average_at_start']}" if env.get("load_average_at_start") else ""), "",
             f"{record['resolution']}×{record['resolution']} images, {record['prompts']} prompts × {record['repeats']} "
             f"repeat(s) per row, classifier-free guidance {record['guidance']}. Baseline: {base['dtype']}, "
             f"{base['attention']} attention (AttnProcessor), {base['scheduler'].upper()} {base['steps']} steps, "
             f"full VAE, batch {base['batch']}, prompt encoded every call. Every ratio is to a baseline timed in the "
             "same phase of this run: phase 1 is the baseline and one change of one axis per row, phase 2 the baseline "
             "again with the winners stacked (rows from the second baseline on)"
             + (", each phase's rows timed interleaved, prompt by prompt, so load from other work falls on all alike"
                if record.get("interleaved") else ", each row timed on its own") +
             f". Quality: {record['quality_proxy']}. Peak MB: {_memory_kind(record)}.", "",
             "| configuration | axis | p50 s/img | p90 s/img | images/s | speed-up (p50) | images/s ratio | peak MB "
             "| quality | UNet steps/img | compile s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [_row_line(r) for r in record["rows"]]
    lines += ["", "UNet steps/img: denoising steps per image (one UNet evaluation serves every image of a batch, both "
              "halves of classifier-free guidance in it). Compile s: the warm-up call's excess over a steady call, with "
              f"inductor's cache at {record['environment'].get('inductor_cache_dir')} (a fresh folder unless "
              "--warm-compile-cache); a UNet graph already compiled earlier in the run is reused, so it costs ~0."]
    judged = "attribute_accuracy" in record["rows"][0].get("quality", {})
    lines += ["", "Optimised = the winners stacked: " + "; ".join(f"{k}: {v}" for k, v in record["optimised_from"].items()) + ".",
              f"✗ marks a row whose attribute accuracy fell more than {100 * record['quality_tolerance']:.0f} points below "
              "the baseline's: it is not stacked." if judged else
              "The quality proxy (pixel difference) shows change, not quality: no row is judged by it."]
    tc = record["text_conditioning"]
    lines += ["", "**Text conditioning**, one prompt at a time (median of "
              f"{tc['prompts']} prompts): student encode {1000 * tc['student_encode_s']:.2f} ms"]
    if "translator_generate_s" in tc:
        lines[-1] += (f"; translator generate {1000 * tc['translator_generate_s']:.2f} ms "
                      f"(**{tc['ratio_generate_to_student']:.1f}×** the student)")
        if "translate_then_encode_s" in tc:
            lines[-1] += (f"; translate + English encode {1000 * tc['translate_then_encode_s']:.2f} ms "
                          f"({tc['ratio_translate_then_encode_to_student']:.1f}×)")
        if tc.get("decode_tokens"):
            lines[-1] += f"; random weights: every translation decodes {tc['decode_tokens']} tokens"
    else:
        lines[-1] += f"; translator {tc.get('translator')}"
    lines[-1] += "."
    lines += ["", "**Training throughput**", "", "| what | precision | batch | s/step | throughput | peak MB |", "|---|---|---|---|---|---|"]
    for t in record["training"]:
        rate = f"{t['samples_per_s']:.1f} samples/s" if "samples_per_s" in t else \
            f"{t['images_per_s']:.1f} images/s at {t['image_size']}×{t['image_size']}"
        lines.append(f"| {t['what']} | {t['precision']} | {t['batch']} | {t['seconds_per_step']:.3f} | {rate} | {t['peak_mb']:.0f} |")
    for note in record["notes"]:
        lines += ["", f"Note: {note}."]
    summary = record["summary"]
    if "baseline_drift_p50" in summary:
        lines += ["", f"Drift: phase 2's baseline took {summary['baseline_drift_p50']:.2f}× phase 1's p50 "
                  f"(load average {env.get('load_average_at_start')} at start, {env.get('load_average_at_end')} at the end)."]
    for name, s in summary.items():
        if isinstance(s, dict):
            lines += ["", f"**{name}**: {s['p50_s_per_image']:.4f} s/image p50, {s['speedup_p50']:.2f}× the p50 of the baseline timed with it, "
                      f"{s['images_per_s']:.2f} images/s ({s['images_per_s_ratio']:.2f}×); quality {_quality_text(s['quality'])}."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m koclip_lib.bench",
                                 description="Benchmark the Korean pipeline's configurations on this device (issue 7).")
    ap.add_argument("--profile", choices=["mini", "full"], help="default: the params file's, else mini")
    ap.add_argument("--params", help="profile file (default params/<profile>.yaml)")
    ap.add_argument("--random-weights", action="store_true", help="full: SD 1.5-sized modules with random weights (no hub)")
    ap.add_argument("--quick", action="store_true", help="a small subset for CI: few prompts, no compile on CPU, 2 training steps")
    ap.add_argument("--out", default="outputs/bench", help="folder for <profile>-<device>.json and .md")
    ap.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when present)")
    ap.add_argument("--prompts", type=int, help="prompts per configuration (default: mini 40, full 4; --quick 4)")
    ap.add_argument("--repeats", type=int, help="timed passes over the prompts (default 1)")
    ap.add_argument("--train-steps", type=int, help="timed training steps (default 5 on CPU, 10 on a GPU; --quick 2)")
    ap.add_argument("--scale", type=float, default=1.0, help="--random-weights: shrink every width and depth (tests)")
    ap.add_argument("--resolution", type=int, default=512, help="--random-weights: image size")
    ap.add_argument("--quality-tolerance", type=float, default=0.05, help="mini: accuracy a row may lose and still be 'equal'")
    ap.add_argument("--min-gain", type=float, default=1.05, help="a row is stacked into 'optimised' when at least this much faster")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile rows")
    ap.add_argument("--warm-compile-cache", action="store_true", help="keep inductor's on-disk cache (compile times as "
                    "a restarted server on this machine sees them); default: a fresh one, so compile times are cold")
    ap.add_argument("--sequential", action="store_true", help="time rows one after another (the default on a GPU) "
                    "instead of interleaved prompt by prompt (the default on a CPU: fair under load from other work)")
    ap.add_argument("--compile-mode", help="torch.compile mode (default: reduce-overhead on CUDA, default on CPU)")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: as OMP_NUM_THREADS / torch decide)")
    args = ap.parse_args(argv)

    from diffusers.utils import logging as diffusers_logging

    from .common import load_params, pick_device, write_json

    diffusers_logging.set_verbosity_error()  # one "cast with to()" warning per dtype row says nothing new
    fresh_cache = None if args.warm_compile_cache else tempfile.mkdtemp(prefix="bench_inductor_")
    if fresh_cache:  # cold compile times: a fresh inductor cache, not one warmed by earlier runs on this machine
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = fresh_cache
    if args.threads:
        torch.set_num_threads(args.threads)
    params_file = args.params or f"params/{args.profile or 'mini'}.yaml"
    params = load_params(params_file)
    profile = args.profile or params.get("profile", "mini")
    params["profile"] = profile
    device = pick_device(args.device)
    gpu = device.type == "cuda"
    n_prompts = args.prompts or (4 if args.quick or profile == "full" else 40)  # full: SD 1.5 at fp32 50 steps is seconds an image
    repeats = args.repeats or 1
    train_steps = args.train_steps or (2 if args.quick else 10 if gpu else 5)
    if profile == "mini":
        inputs = mini_inputs(params, n_prompts)
    elif args.random_weights:
        inputs = full_random_inputs(params, n_prompts, args.scale, args.resolution)
    else:
        inputs = full_inputs(params, n_prompts)
    compile_mode = args.compile_mode or ("reduce-overhead" if gpu else None)
    record = run_benchmark(inputs, device, args.quick, repeats, args.quality_tolerance, not args.no_compile, compile_mode,
                           train_steps, 4 if args.quick else 20, args.min_gain, False if args.sequential else None)
    record["command"] = " ".join(["python -m koclip_lib.bench", *(argv if argv is not None else sys.argv[1:])])
    record["params"] = str(params_file)
    stem = f"{profile}-{device_name(device)}" + (f"-scale{args.scale:g}" if args.scale != 1 else "") + ("-quick" if args.quick else "")
    out = Path(args.out)
    table = markdown(record)
    write_json(out / f"{stem}.json", record)
    (out / f"{stem}.md").write_text(table, encoding="utf-8")
    print(table)
    print(f"wrote {out / (stem + '.json')} and {out / (stem + '.md')}")
    if fresh_cache:
        import shutil

        shutil.rmtree(fresh_cache, ignore_errors=True)
    return record


if __name__ == "__main__":
    main(sys.argv[1:])
