"""What a profile brings to `koclip_lib.bench`: the pristine Korean pipeline, prompts, a quality proxy, and the parts
text conditioning and training throughput are measured on (`BenchInputs`).

* `full_inputs` — a hub profile's own checkpoint, student, translator and teacher (through its `models:` map);
* `full_random_inputs` — SD 1.5-sized modules built from their configs with random weights, so the full-size timing
  runs on a GPU without the model hub (`--random-weights`; `scale` shrinks them for the tests);
* a profile whose inputs have `bench_inputs(n_prompts)` (the mini world's) makes its own.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field, fields
from typing import Callable, Sequence

import torch

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
    unet_stage_batch: int = 32         # the unet stage's batch (distill.unet_loop)
    lora_batch: int = 32
    notes: list[str] = field(default_factory=list)

    def __post_init__(self):
        if not self.seeds:
            self.seeds = list(range(len(self.prompts)))


def spread(items: Sequence, n: int) -> list:
    """n items evenly spaced over the list (prompt files are written in scene order)."""
    n = min(n, len(items))
    return [items[i * len(items) // n] for i in range(n)]


def bench_distill_config(params: dict):
    from .distill import DistillConfig

    known = {f.name for f in fields(DistillConfig)}
    settings = {k: v for k, v in (params.get("distill") or {}).items() if k in known and k not in ("objective",)}
    return DistillConfig(**{**settings, "objective": "sequence"})


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


# SD 1.x's training noise schedule (scaled-linear betas, 1000 steps), as its scheduler config ships it: what the
# random-weights pipeline samples on and LoRA training adds noise with.
SD15_NOISE_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                           clip_sample=False, steps_offset=1)


def sd15_noise_scheduler(prediction_type: str = "epsilon"):
    """A DDPMScheduler on SD 1.x's training schedule with the given prediction type."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(**SD15_NOISE_SCHEDULE, prediction_type=prediction_type)


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

    from .distill import KoreanTextEncoder, clip_like_tokenizer, train_student_tokenizer
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
    teacher_tok = clip_like_tokenizer(texts, vocab_size=400)
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

    from .bench import make_scheduler
    from .pipeline import KoreanStableDiffusionPipeline
    from .translate import Translator

    parts = sd15_random_parts(scale, resolution, int(params.get("seed", 0)) % 2**31, decode_tokens)
    scheduler = make_scheduler("pndm", sd15_noise_scheduler("epsilon").config)
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
        pairs=FULL_PROMPTS * 32, distill_config=bench_distill_config(params),
        distill_batch=int(loop.get("batch_size", 256)), lora_batch=16, notes=[note],
        unet_stage_batch=int(((params.get("distill") or {}).get("unet_loop") or {}).get("batch_size", 32)))


def full_inputs(params: dict, n_prompts: int = 8) -> BenchInputs:
    """A hub profile with real weights: its SD checkpoint with the chosen student (root/student), its translator and
    its teacher, each resolved through the profile's `models:` map (`plan.HubInputs`). A tiny decoder is used when
    `madebyollin/taesd` loads. The quality proxy stays the pixel difference from the baseline (a CLIP score needs a
    CLIP image tower)."""
    from diffusers import AutoencoderTiny, StableDiffusionPipeline

    from . import plan
    from .distill import load_teacher
    from .pipeline import load_korean_pipeline
    from .translate import Translator

    hub = plan.HubInputs(params)
    pipe = load_korean_pipeline(sd=hub.sd(), text_encoder=hub.root / "student", device="cpu")
    # the English pipeline the translator feeds: the Korean pipeline's UNet and VAE with the checkpoint's own text
    # encoder (the teacher too, unless the profile names another), so SD's weights are loaded once
    own_encoder = hub.sd().sibling("text_encoder")
    english_text = load_teacher(own_encoder)
    teacher = english_text if hub.teacher() == own_encoder else load_teacher(hub.teacher())
    english = StableDiffusionPipeline(pipe.vae, *english_text, pipe.unet, pipe.scheduler, safety_checker=None,
                                      feature_extractor=None, requires_safety_checker=False)
    english.set_progress_bar_config(disable=True)
    taesd = hub.model("madebyollin/taesd")
    try:
        tiny, missing = AutoencoderTiny.from_pretrained(taesd.path, **taesd.kwargs).eval(), ""
    except (OSError, ValueError) as err:
        tiny, missing = None, f"not available: {taesd} did not load ({type(err).__name__})"
    prompts = [ko for ko, _ in FULL_PROMPTS]
    prompts = (prompts * (n_prompts // len(prompts) + 1))[:n_prompts]
    loop = (params.get("distill") or {}).get("loop") or {}
    return BenchInputs(
        profile=params.get("profile", "full"), pipe=pipe, prompts=prompts,
        seeds=[int(params.get("seed", 0)) + i for i in range(n_prompts)],
        guidance=float((params.get("evaluate") or {}).get("guidance_scale", 7.5)), quality=pixel_difference,
        quality_kind="mean absolute pixel difference (0-1) from the baseline's image, same seed",
        resolution=pipe.unet.config.sample_size * pipe.vae_scale_factor, tiny_vae=tiny, tiny_vae_missing=missing,
        lcm_missing="not available: needs an LCM-LoRA or LCM-distilled UNet for this checkpoint",
        translator=Translator.from_pretrained(plan.translator(params)), english_pipe=english,
        teacher=teacher, pairs=FULL_PROMPTS * 32, distill_config=bench_distill_config(params),
        distill_batch=int(loop.get("batch_size", 256)), lora_batch=16)


def pixel_difference(images: torch.Tensor, baseline: torch.Tensor | None = None) -> dict:
    """Mean absolute pixel difference (images in [0, 1]) from the baseline's image of the same seed."""
    mad = 0.0 if baseline is None else float((images.float() - baseline.float()).abs().mean())
    return {"pixel_mad_vs_baseline": mad, "images": len(images)}
