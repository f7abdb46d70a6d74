"""The mini world's English text-to-image model, built like the real one from the same library classes.

Real world: OpenAI CLIP (English, byte-level BPE, 77 positions) + Stable Diffusion 1.5 trained on CLIP's frozen
`last_hidden_state`. Mini world: a tiny `CLIPModel` trained contrastively on rendered shapes and English captions,
a tiny `AutoencoderKL`, and a tiny `UNet2DConditionModel` trained on the frozen teacher text states, assembled into
a `diffusers.StableDiffusionPipeline` that `from_pretrained` loads like any SD 1.x checkpoint.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (AutoencoderKL, DDPMScheduler, DPMSolverMultistepScheduler, StableDiffusionPipeline,
                       UNet2DConditionModel)
from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig, PreTrainedTokenizerFast

from . import world as mw
from ..distill import clip_like_tokenizer, prompt_states
from ..latents import encode_images
from ..common import artifact_hash, cached_artifact, seed_everything, write_json
from ..train import Batch, LoopConfig, remove_checkpoints, step_generator, train_loop

MAX_LENGTH = 77  # CLIP's context length: SD 1.x cross-attends to exactly 77 positions


# ---------------------------------------------------------------------------------------------------------------
# Tokenizer: byte-level BPE trained on English captions only, so Korean falls apart into byte tokens as in CLIP.
# ---------------------------------------------------------------------------------------------------------------
def train_english_tokenizer(texts, vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """The teacher's English-only byte-level BPE (CLIP's special tokens, 77 positions)."""
    return clip_like_tokenizer(texts, vocab_size, MAX_LENGTH)


def tokenize(tokenizer, texts: list[str], device="cpu", padding: str = "max_length") -> dict:
    """SD's way: pad every prompt to 77 positions, truncate longer ones.

    padding="longest" gives the same states at the real tokens (the text tower is causal, padding comes last)
    at a fraction of the cost: what contrastive training uses.
    """
    enc = tokenizer(list(texts), padding=padding, max_length=MAX_LENGTH, truncation=True, return_tensors="pt")
    return {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}


# ---------------------------------------------------------------------------------------------------------------
# Teacher: a tiny CLIP, trained contrastively on (image, English caption).
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class TeacherConfig:
    vocab_size: int = 512
    width: int = 64
    layers: int = 2
    heads: int = 4
    vision_layers: int = 2
    patch: int = 4
    projection_dim: int = 64
    n_images: int = 6000
    loop: dict = field(default_factory=lambda: {"steps": 600, "lr": 2e-3, "batch_size": 128, "warmup_steps": 50})
    seed: int = 0


def build_teacher(cfg: TeacherConfig, tokenizer, image_size: int) -> CLIPModel:
    text = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=cfg.width, intermediate_size=cfg.width * 4,
                          num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, max_position_embeddings=MAX_LENGTH,
                          projection_dim=cfg.projection_dim, bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    vision = CLIPVisionConfig(hidden_size=cfg.width, intermediate_size=cfg.width * 4, num_hidden_layers=cfg.vision_layers,
                              num_attention_heads=cfg.heads, image_size=image_size, patch_size=cfg.patch,
                              projection_dim=cfg.projection_dim)
    return CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=cfg.projection_dim))


def _caption_batch(scenes, caption, seed: int, world) -> list[str]:
    rng = random.Random(seed)
    return [caption(s, rng, world) for s in scenes]


def train_teacher(out_dir: str | Path, world: mw.WorldConfig, cfg: TeacherConfig, caption=mw.caption_en,
                  stop_after: int | None = None) -> dict:
    """Train tokenizer + CLIP on seen combinations in both styles; save both with save_pretrained.
    `caption` writes the texts (English: the teacher; Korean: the train-from-scratch option of notebook 00)."""
    out_dir = Path(out_dir)
    scenes = mw.sample_scenes(cfg.n_images, cfg.seed, world, split="seen", styles=list(mw.STYLES))
    rng = random.Random(cfg.seed)
    tokenizer = train_english_tokenizer([caption(s, rng, world) for s in scenes for _ in range(3)], cfg.vocab_size)
    seed_everything(cfg.seed)  # initial weights depend on the config alone, not on what ran before in the process
    model = build_teacher(cfg, tokenizer, world.image_size)
    images = mw.render_batch(scenes, cfg.seed, world.image_size)
    loop = LoopConfig.from_params(cfg.loop, seed=cfg.seed)

    def loss_fn(batch: Batch):
        gen = step_generator(cfg.seed, batch.step)
        idx = torch.randint(len(scenes), (batch.size,), generator=gen)
        texts = batch.take(_caption_batch([scenes[i] for i in idx], caption, cfg.seed * 7919 + batch.step, world))
        idx = batch.take(idx)
        out = batch.models[0](**tokenize(tokenizer, texts, model.device, padding="longest"),
                              pixel_values=images[idx].to(model.device), return_loss=True)
        return out.loss

    log = train_loop([model], loss_fn, loop, out_dir, desc="teacher CLIP", stop_after=stop_after)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    metrics = {"zero_shot": teacher_zero_shot(model, tokenizer, world), "steps": log["steps"], "seconds": log["seconds"],
               "loss_curve": [(h["step"], h["loss"]) for h in log["history"] if "loss" in h]}
    write_json(out_dir / "metrics.json", metrics)
    remove_checkpoints(out_dir)
    return metrics


@torch.no_grad()
def teacher_zero_shot(model: CLIPModel, tokenizer, world: mw.WorldConfig, n: int = 1000, seed: int = 4242) -> dict:
    """Zero-shot colour and shape accuracy: each image against prompts "a {color} {shape}" for all 40 pairs."""
    model.eval()
    combos = [(c, s) for c in mw.COLORS for s in mw.SHAPES]
    text = model.get_text_features(**tokenize(tokenizer, [f"a {c} {s}" for c, s in combos]))
    text = F.normalize(text if torch.is_tensor(text) else text.pooler_output, dim=-1)
    result = {}
    for split in ("seen", "heldout"):
        scenes = mw.sample_scenes(n, seed, world, split=split, styles=["plain"])
        image = model.get_image_features(pixel_values=mw.render_batch(scenes, seed, world.image_size))
        image = F.normalize(image if torch.is_tensor(image) else image.pooler_output, dim=-1)
        best = (image @ text.T).argmax(-1).tolist()
        result[split] = {
            "color": float(np.mean([combos[b][0] == s.color for b, s in zip(best, scenes)])),
            "shape": float(np.mean([combos[b][1] == s.shape for b, s in zip(best, scenes)])),
        }
    return result


# ---------------------------------------------------------------------------------------------------------------
# Generator: tiny VAE and UNet with SD 1.x's interfaces (4 latent channels, cross-attention on 77 text states).
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class VAEConfig:
    block_out_channels: list[int] = field(default_factory=lambda: [16, 32, 64])  # 3 levels: 32x32 image -> 8x8 latents
    latent_channels: int = 4
    kl_weight: float = 1e-6
    n_images: int = 6000
    loop: dict = field(default_factory=lambda: {"steps": 500, "lr": 2e-3, "batch_size": 64, "warmup_steps": 25})
    seed: int = 0


@dataclass
class UNetConfig:
    block_out_channels: list[int] = field(default_factory=lambda: [32, 64])
    layers_per_block: int = 1
    attention_head_dim: int = 8
    # "text": the UNet also pools the 77 text states into its time embedding (diffusers' TextTimeEmbedding), a
    # global path that a small UNet learns far faster than cross-attention alone; it reads the same states
    addition_embed_type: str | None = "text"
    n_images: int = 12000
    uncond_prob: float = 0.1  # empty-prompt dropout: what classifier-free guidance needs
    # v-prediction (as SD 2.x): with epsilon prediction the loss barely depends on the prompt at high noise, where
    # colour, shape and place are decided, so a small UNet learns to follow text far more slowly
    prediction_type: str = "v_prediction"
    # the styles it learns to draw, each named by its caption ("an ink wash painting of ..."), as SD 1.5 knows ink
    # painting before any LoRA: a style LoRA then ties a new word to a rendering the UNet has, in every colour
    styles: list[str] = field(default_factory=lambda: ["plain"])
    loop: dict = field(default_factory=lambda: {"steps": 2000, "lr": 1e-3, "batch_size": 64, "warmup_steps": 100})
    seed: int = 0


def build_vae(cfg: VAEConfig, image_size: int) -> AutoencoderKL:
    n = len(cfg.block_out_channels)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
                         up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=tuple(cfg.block_out_channels),
                         layers_per_block=1, latent_channels=cfg.latent_channels, norm_num_groups=8,
                         sample_size=image_size, mid_block_add_attention=False)


def train_vae(out_dir: str | Path, world: mw.WorldConfig, cfg: VAEConfig) -> dict:
    """Reconstruction (L1 + MSE) + a small KL term; sets `scaling_factor` so latents have unit variance, like SD."""
    out_dir = Path(out_dir)
    seed_everything(cfg.seed)
    vae = build_vae(cfg, world.image_size)
    scenes = mw.sample_scenes(cfg.n_images, cfg.seed + 1, world, split="all", styles=list(mw.STYLES))
    images = mw.render_batch(scenes, cfg.seed + 1, world.image_size)
    loop = LoopConfig.from_params(cfg.loop, seed=cfg.seed)

    def loss_fn(batch: Batch):
        if batch.models[0] is not vae:  # encode and decode bypass a DDP wrapper's forward: no gradient would be shared
            raise RuntimeError("the mini world's VAE trains in one process, not under a launcher")
        gen = step_generator(cfg.seed, batch.step)
        x = images[batch.take(torch.randint(len(images), (batch.size,), generator=gen))].to(vae.device)
        posterior = vae.encode(x).latent_dist
        noise = batch.take(torch.randn((batch.size, *posterior.mean.shape[1:]), generator=gen))
        z = posterior.mean + posterior.std * noise.to(vae.device)
        recon = vae.decode(z).sample
        # shapes cover a small part of the image: weight pixels by how far they are from the image's mean colour,
        # or the decoder learns the background long before it learns the colour of the shape
        weight = 1 + 5 * (x - x.mean(dim=(2, 3), keepdim=True)).abs().mean(1, keepdim=True)
        rec = (weight * ((recon - x).abs() + (recon - x).pow(2))).mean() / weight.mean()
        kl = posterior.kl().mean()
        return {"loss": rec + cfg.kl_weight * kl, "recon": rec.detach(), "kl": kl.detach()}

    log = train_loop([vae], loss_fn, loop, out_dir, desc="VAE")
    with torch.no_grad():
        latents = vae.encode(images[:1024]).latent_dist.mean
        recon = vae.decode(latents).sample
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    vae.save_pretrained(out_dir)
    metrics = {"recon_mse": float(F.mse_loss(recon, images[:1024])), "scaling_factor": vae.config.scaling_factor,
               "seconds": log["seconds"], "loss_curve": [(h["step"], h["loss"]) for h in log["history"] if "loss" in h]}
    write_json(out_dir / "metrics.json", metrics)
    remove_checkpoints(out_dir)
    return metrics


def build_unet(cfg: UNetConfig, latent_size: int, cross_attention_dim: int) -> UNet2DConditionModel:
    n = len(cfg.block_out_channels)
    return UNet2DConditionModel(
        sample_size=latent_size, in_channels=4, out_channels=4, block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block, cross_attention_dim=cross_attention_dim,
        attention_head_dim=cfg.attention_head_dim, norm_num_groups=16, addition_embed_type=cfg.addition_embed_type,
        addition_embed_type_num_heads=cfg.attention_head_dim // 2 or 1,
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1))


def noise_scheduler(prediction_type: str = "epsilon") -> DDPMScheduler:
    """SD 1.x's training schedule (scaled-linear betas, 1000 steps)."""
    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         prediction_type=prediction_type, clip_sample=False, steps_offset=1)


def train_unet(out_dir: str | Path, world: mw.WorldConfig, cfg: UNetConfig, teacher_dir: str | Path, vae_dir: str | Path,
               caption=mw.caption_en, stop_after: int | None = None, init_unet: str | Path | None = None) -> dict:
    """Denoising loss on cached latents, conditioned on the frozen teacher's `last_hidden_state` of fresh captions
    (`caption` writes them: English for the generator, Korean for the train-from-scratch option of notebook 00).
    `init_unet` fine-tunes that UNet instead of training a new one."""
    from transformers import AutoTokenizer, CLIPTextModel

    out_dir = Path(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    text_encoder = CLIPTextModel.from_pretrained(teacher_dir).eval().requires_grad_(False)
    vae = AutoencoderKL.from_pretrained(vae_dir).eval()
    scenes = mw.sample_scenes(cfg.n_images, cfg.seed + 2, world, split="seen", styles=cfg.styles)
    latents = encode_images(vae, mw.render_batch(scenes, cfg.seed + 2, world.image_size))
    seed_everything(cfg.seed)
    unet = (UNet2DConditionModel.from_pretrained(init_unet) if init_unet is not None
            else build_unet(cfg, latents.shape[-1], text_encoder.config.hidden_size))
    scheduler = noise_scheduler(cfg.prediction_type)
    loop = LoopConfig.from_params(cfg.loop, seed=cfg.seed)

    def loss_fn(batch: Batch):
        gen = step_generator(cfg.seed, batch.step)
        idx = torch.randint(len(scenes), (batch.size,), generator=gen)
        texts = _caption_batch([scenes[i] for i in idx], caption, cfg.seed * 7919 + batch.step, world)
        drop = torch.rand(len(texts), generator=gen) < cfg.uncond_prob
        texts = batch.take(["" if d else t for t, d in zip(texts, drop.tolist())])
        text_encoder.to(unet.device)  # frozen parts follow the UNet onto the accelerator's device
        with torch.no_grad():
            cond = prompt_states(text_encoder, tokenizer, texts).last_hidden_state
        x0 = latents[batch.take(idx)].to(unet.device)
        noise = batch.take(torch.randn((batch.size, *latents.shape[1:]), generator=gen)).to(unet.device)
        t = batch.take(torch.randint(0, scheduler.config.num_train_timesteps, (batch.size,), generator=gen)).to(unet.device)
        pred = batch.models[0](scheduler.add_noise(x0, noise, t), t, encoder_hidden_states=cond).sample
        target = noise if cfg.prediction_type == "epsilon" else scheduler.get_velocity(x0, noise, t)
        return F.mse_loss(pred, target)

    log = train_loop([unet], loss_fn, loop, out_dir / "train", desc="UNet", stop_after=stop_after)
    unet.save_pretrained(out_dir / "unet")
    scheduler.save_pretrained(out_dir / "scheduler")
    remove_checkpoints(out_dir / "train")
    return {"seconds": log["seconds"], "steps": log["steps"],
            "loss_curve": [(h["step"], h["loss"]) for h in log["history"] if "loss" in h]}


def assemble_pipeline(teacher_dir: str | Path, vae_dir: str | Path, unet_dir: str | Path,
                      prediction_type: str = "epsilon") -> StableDiffusionPipeline:
    """A standard SD pipeline: no safety checker (synthetic shapes), DPM-Solver++ as the sampler."""
    from transformers import AutoTokenizer, CLIPTextModel

    return StableDiffusionPipeline(
        vae=AutoencoderKL.from_pretrained(vae_dir), text_encoder=CLIPTextModel.from_pretrained(teacher_dir),
        tokenizer=AutoTokenizer.from_pretrained(teacher_dir), unet=UNet2DConditionModel.from_pretrained(unet_dir),
        scheduler=DPMSolverMultistepScheduler.from_config(noise_scheduler(prediction_type).config, algorithm_type="dpmsolver++"),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)


# The layouts of the checkpoints a 768-wide student cannot drive, as diffusers writes them (model_index.json with the
# pipeline's components and the denoiser's config): what `pipeline.check_compatibility` reads before loading weights.
STAND_INS = {
    "sd2": ("StableDiffusionPipeline", "unet", "UNet2DConditionModel",
            {"cross_attention_dim": 1024, "attention_head_dim": [5, 10, 20, 20], "use_linear_projection": True}),
    "sdxl": ("StableDiffusionXLPipeline", "unet", "UNet2DConditionModel",
             {"cross_attention_dim": 2048, "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
              "projection_class_embeddings_input_dim": 2816}),
    "sd3": ("StableDiffusion3Pipeline", "transformer", "SD3Transformer2DModel",
            {"joint_attention_dim": 4096, "pooled_projection_dim": 2048, "caption_projection_dim": 1536}),
}
_STAND_IN_COMPONENTS = {
    "StableDiffusionPipeline": {"text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"]},
    "StableDiffusionXLPipeline": {"text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
                                  "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
                                  "tokenizer_2": ["transformers", "CLIPTokenizer"]},
    "StableDiffusion3Pipeline": {"text_encoder": ["transformers", "CLIPTextModelWithProjection"],
                                 "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
                                 "text_encoder_3": ["transformers", "T5EncoderModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
                                 "tokenizer_2": ["transformers", "CLIPTokenizer"], "tokenizer_3": ["transformers", "T5TokenizerFast"]},
}


def save_stand_in_checkpoint(kind: str, out_dir: str | Path) -> Path:
    """A config-only stand-in of an SD 2.x / SDXL / SD 3 checkpoint (no weights; the model hub is out of reach here):
    model_index.json and the denoiser's text-conditioning settings, copied from the real models' configs."""
    import diffusers

    pipeline_class, denoiser, denoiser_class, text_config = STAND_INS[kind]
    out_dir = Path(out_dir)
    write_json(out_dir / denoiser / "config.json", {"_class_name": denoiser_class, **text_config})
    index = {"_class_name": pipeline_class, "_diffusers_version": diffusers.__version__,
             denoiser: ["diffusers", denoiser_class], "vae": ["diffusers", "AutoencoderKL"],
             "scheduler": ["diffusers", "EulerDiscreteScheduler"], **_STAND_IN_COMPONENTS[pipeline_class]}
    write_json(out_dir / "model_index.json", index)
    return out_dir


# ---------------------------------------------------------------------------------------------------------------
# The main job's entry point: everything cached under outputs/mini/ by config.
# ---------------------------------------------------------------------------------------------------------------
def _train_sd(d: Path, world: mw.WorldConfig, u_cfg: UNetConfig, paths: dict, init_unet=None, **record) -> None:
    """Train (or fine-tune) the UNet into `d` and save the whole SD pipeline there with its training record."""
    metrics = train_unet(d, world, u_cfg, paths["teacher"], paths["vae"], init_unet=init_unet)
    assemble_pipeline(paths["teacher"], paths["vae"], d / "unet", u_cfg.prediction_type).save_pretrained(d)
    write_json(d / "train_metrics.json", {**metrics, **record})


def generator_keys(params: dict) -> dict[str, dict]:
    """The cache key of each generator part (teacher, vae, sd), computed from the profile alone: what depends on a part
    can name it before it is built (`distill.ensure_students` keys its students by the SD they are checked on)."""
    world_key = params.get("world") or {}
    t_cfg = TeacherConfig(**params.get("teacher", {}))
    v_cfg = VAEConfig(**params.get("vae", {}))
    u_cfg = UNetConfig(**params.get("unet", {}))
    return {"teacher": {"world": world_key, "teacher": t_cfg.__dict__}, "vae": {"world": world_key, "vae": v_cfg.__dict__},
            "sd": {"world": world_key, "unet": u_cfg.__dict__, "teacher": t_cfg.__dict__, "vae": v_cfg.__dict__}}


def ensure_teacher(params: dict, root: str | Path = "outputs/mini") -> Path:
    """Train (or reuse) the teacher CLIP alone (what the pooled and sequence students need) into `root/teacher`."""
    world = mw.WorldConfig.from_params(params.get("world"))
    t_cfg = TeacherConfig(**params.get("teacher", {}))
    return cached_artifact(Path(root) / "teacher", generator_keys(params)["teacher"], lambda d: train_teacher(d, world, t_cfg))


def ensure_vae(params: dict, root: str | Path = "outputs/mini") -> Path:
    """Train (or reuse) the VAE alone into `root/vae` (the attribute classifier learns from its round-trips too)."""
    world = mw.WorldConfig.from_params(params.get("world"))
    v_cfg = VAEConfig(**params.get("vae", {}))
    return cached_artifact(Path(root) / "vae", generator_keys(params)["vae"], lambda d: train_vae(d, world, v_cfg))


def ensure_generator(params: dict, root: str | Path = "outputs/mini") -> dict[str, Path]:
    """Train (or reuse) teacher, VAE, classifier and UNet; save the SD pipeline to `root/sd`. Returns their folders."""
    root = Path(root)
    world = mw.WorldConfig.from_params(params.get("world"))
    u_cfg = UNetConfig(**params.get("unet", {}))
    paths = {"teacher": ensure_teacher(params, root), "vae": ensure_vae(params, root)}
    paths["sd"] = cached_artifact(root / "sd", generator_keys(params)["sd"], lambda d: _train_sd(d, world, u_cfg, paths))
    paths["classifier"] = mw.ensure_classifier(params, root)  # after the UNet, which does not need it (build lanes)
    return paths


def ensure_finetuned_sd(params: dict, root: str | Path, name: str, style: str, loop: dict) -> Path:
    """Another SD 1.x checkpoint for the version sweep, made the way community checkpoints are made (dreamshaper-7
    is a fine-tune of SD 1.5): the generator's UNet trained further on `style` images; same text encoder, VAE and
    interface, so a student distilled for the base checkpoint plugs into it unchanged."""
    root = Path(root)
    paths = ensure_generator(params, root)
    world = mw.WorldConfig.from_params(params.get("world"))
    u_cfg = UNetConfig(**{**params.get("unet", {}), "loop": loop, "styles": [style]})
    base = artifact_hash(paths["sd"])

    return cached_artifact(root / name, {"base": base, "style": style, "loop": loop, "world": params.get("world")},
                           lambda d: _train_sd(d, world, u_cfg, paths, init_unet=paths["sd"] / "unet",
                                               base=str(paths["sd"]), style=style))


def resolve_sd_versions(params: dict, root: str | Path = "outputs/mini") -> dict[str, dict]:
    """The profile's `sweep.versions` as {name: {"path": folder or hub id, "stand_in": bool}}. An entry is a hub id or
    folder (`path`), the mini generator (`path: sd`), a fine-tune of it (`finetune: {style, loop}`) or a config-only
    stand-in of an architecture the student cannot drive (`stand_in: sd2 | sdxl | sd3`)."""
    root = Path(root)
    out = {}
    for entry in params.get("sweep", {}).get("versions", []):
        name = entry["name"]
        if "stand_in" in entry:
            out[name] = {"path": save_stand_in_checkpoint(entry["stand_in"], root / "stand_ins" / entry["stand_in"]), "stand_in": True}
        elif "finetune" in entry:
            ft = entry["finetune"]
            out[name] = {"path": ensure_finetuned_sd(params, root, entry.get("folder", name), ft["style"], ft["loop"]),
                         "stand_in": False}
        elif entry["path"] == "sd":
            out[name] = {"path": ensure_generator(params, root)["sd"], "stand_in": False}
        else:
            out[name] = {"path": entry["path"], "stand_in": False}
    return out
