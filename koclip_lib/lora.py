"""Korean style LoRAs: captioned datasets, LoRA training (the UNet's, and the text encoder's that teaches it the
trigger) and its evaluation. Using a trained LoRA (the registry by name, the file formats, `apply_loras`) is
`koclip_lib.adapters`, re-exported here.

    ds = render_style_dataset("outputs/mini/loras/ink/data", world, style="ink", n=2000, trigger="백묘법")  # mini
    ds = caption_image_folder("photos/", "data/", trigger="백묘법", captioner=hf_captioner(), translator=hf_translator())  # full
    train_lora("outputs/mini/loras/ink", pipe, ds, LoraTrainConfig(rank=8, trigger="백묘법"))
    registry = LoraRegistry.from_file("outputs/mini/loras/registry.json")
    apply_loras(pipe, {"ink": 1.0}, registry)          # load (once) and weight; several at once mix
    pipe("왼쪽에 빨간 별이 있다, 백묘법")
    apply_loras(pipe, {}, registry)                    # off again, without reloading the pipeline

Why the style lives in the UNet: the text encoder is what we swap (CLIP -> the Korean student), so a style learned in
the UNet keeps working behind either encoder, which is how the seed's English LoRAs kept working after the swap. The
trigger word, though, is a word of the text encoder's language: `text_encoder_target_modules` teaches it there
(`train_text_trigger`), so that "…, 백묘법" says to the UNet what ", ink wash style" says in English and nothing else
the encoder says changes.

Files: `pytorch_lora_weights.safetensors` is diffusers' layout (`pipe.load_lora_weights(folder)` reads it) with the
LoRA's rank and alpha in its metadata; `<name>.kohya.safetensors` is the kohya-ss / A1111 layout (`lora_unet_...`
keys, `.alpha` tensors, `ss_*` metadata), written with diffusers' own `convert_state_dict_to_kohya`, which diffusers
converts back when it loads one. A taught trigger adds `learned_embeds.safetensors` (its token's row, diffusers'
textual-inversion layout) and `text_encoder_lora.safetensors` (the text encoder's LoRA, peft's keys), which
`apply_loras` loads with the UNet's.

Prior preservation: trained on styled images only, a LoRA draws the style with or without its trigger word. As in
DreamBooth, the base pipeline first draws one image per caption *without* the trigger (the class images); each step
then also asks the LoRA'd UNet to give the frozen base UNet's own prediction on those noisy images for the untriggered
captions (and, now and then, for the empty prompt, classifier-free guidance's unconditional input).
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .adapters import (LORA_NAME, SD15_LICENSE, TEXT_ENCODER_LORA_NAME, TRIGGER_EMBEDDING_NAME, TRIGGER_POSITIONS,  # noqa: F401
                       WEIGHT_NAME, LoraError, LoraFileError, LoraRegistry, UnknownLoraError, a1111_sidecar,
                       add_text_encoder_adapter, add_trigger, apply_loras, export_kohya, load_lora, loaded_adapters,
                       parse_lora_spec, prompts_with_trigger, read_lora_file, read_text_encoder_lora, unload_loras)
from .cards import licence_of, write_lora_card
from .common import is_main_process, wait_for_everyone, write_json
from .plan import ModelRef
from .train import Batch, LoopConfig, remove_checkpoints, step_generator, train_loop

# ---------------------------------------------------------------------------------------------------------------
# Captions and datasets: an image folder + metadata.jsonl, the layout diffusers' training scripts read
# ---------------------------------------------------------------------------------------------------------------
def write_image_dataset(out_dir: str | Path, images: Sequence[Image.Image], records: Sequence[dict]) -> Path:
    """`out_dir/train/00000.png ...` + `out_dir/train/metadata.jsonl` ({"file_name", "text", ...} per line):
    what `datasets.load_dataset("imagefolder", data_dir=out_dir)` and diffusers' `train_text_to_image_lora.py`
    (`--train_data_dir`, `--caption_column text`) read."""
    train = Path(out_dir) / "train"
    train.mkdir(parents=True, exist_ok=True)
    with open(train / "metadata.jsonl", "w", encoding="utf-8") as meta:
        for i, (image, record) in enumerate(zip(images, records)):
            name = f"{i:05d}.png"
            image.save(train / name)
            meta.write(json.dumps({"file_name": name, **record}, ensure_ascii=False) + "\n")
    return Path(out_dir)


def hf_captioner(model: str = "Salesforce/blip-image-captioning-base", device: str | None = None,
                 max_new_tokens: int = 30) -> Callable[[list[Image.Image]], list[str]]:
    """An English image captioner (BLIP by default) from transformers: images -> captions."""
    from transformers import AutoProcessor, BlipForConditionalGeneration

    from .common import pick_device

    dev = pick_device(device)
    ref = ModelRef.of(model)
    processor = AutoProcessor.from_pretrained(ref.path, **ref.kwargs)
    net = BlipForConditionalGeneration.from_pretrained(ref.path, **ref.kwargs).to(dev).eval()

    @torch.no_grad()
    def caption(images: list[Image.Image]) -> list[str]:
        inputs = processor(images=[im.convert("RGB") for im in images], return_tensors="pt").to(dev)
        out = net.generate(**inputs, max_new_tokens=max_new_tokens)
        return [t.strip() for t in processor.batch_decode(out, skip_special_tokens=True)]

    return caption


def hf_translator(model: str = "Helsinki-NLP/opus-mt-tc-big-en-ko", device: str | None = None) -> Callable[[list[str]], list[str]]:
    """English -> Korean with a Marian checkpoint (the project's `Translator`, here in the other direction)."""
    from .translate import Translator

    return Translator.from_pretrained(model, device).translate  # a folder, hub id or plan.ModelRef


def caption_image_folder(image_dir: str | Path, out_dir: str | Path, trigger: str, captioner: Callable,
                         translator: Callable, position: str = "end", batch_size: int = 16,
                         resolution: int | None = None) -> Path:
    """full's captioning, as the seed did it: an English caption per image (BLIP), translated to Korean, the trigger
    word added; images copied (resized to `resolution` when given) into an image-folder dataset."""
    from tqdm.auto import tqdm

    paths = sorted(p for p in Path(image_dir).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
    if not paths:
        raise FileNotFoundError(f"{image_dir}: no .png/.jpg/.jpeg/.webp images")
    images, records = [], []
    for start in tqdm(range(0, len(paths), batch_size), desc="captioning"):
        batch = [Image.open(p).convert("RGB") for p in paths[start:start + batch_size]]
        if resolution:
            batch = [im.resize((resolution, resolution), Image.BICUBIC) for im in batch]
        english = captioner(batch)
        korean = translator(english)
        images += batch
        records += [{"text": add_trigger(ko, trigger, position), "caption_ko": ko, "caption_en": en, "source": p.name}
                    for ko, en, p in zip(korean, english, paths[start:start + batch_size])]
    return write_image_dataset(out_dir, images, records)


def load_image_dataset(data_dir: str | Path):
    """The captioned dataset as a 🤗 `datasets.Dataset` (columns `image`, `text`, ...)."""
    from datasets import load_dataset

    return load_dataset("imagefolder", data_dir=str(data_dir), split="train")


# ---------------------------------------------------------------------------------------------------------------
# Training: peft LoRA on the UNet's attention projections; text encoder and VAE frozen
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class LoraTrainConfig:
    rank: int = 8
    alpha: float = 8.0
    target_modules: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    trigger: str = "백묘법"
    caption_column: str = "text"          # the captions the UNet is trained on (trigger included)
    plain_column: str = "caption_ko"      # the same captions without the trigger, for prior preservation
    preservation_weight: float = 1.0      # 0: a plain style LoRA that is on whether or not the prompt has the trigger
    empty_prob: float = 0.1               # share of the preservation captions replaced by the empty prompt
    # untriggered captions per image for preservation: its own and `preservation_views - 1` paraphrases (`paraphrase`),
    # each with its class image, so that no sentence shape or unfamiliar word, only the trigger, turns the style on
    preservation_views: int = 1
    # a column whose words those paraphrases may also take (e.g. `caption_en`: "빨간 별 star"), so that words of that
    # language in a sentence, which the text encoder reads unlike the caption's own, keep the base's image as well.
    # None: words of the `plain_column` captions only
    preservation_words_column: str | None = None
    # class images for the first `prior_images` images' captions only (x `preservation_views`), each step's
    # preservation rows drawn among them: more training images without the base pipeline drawing a class image for
    # each. None: every image's
    prior_images: int | None = None
    # the trigger as one token of its own, a new row of the text encoder's embeddings saved beside the LoRA
    # (TRIGGER_EMBEDDING_NAME) and loaded with it; otherwise a word the tokenizer does not know reads as the pieces
    # it splits into (`<unk>` for a tokenizer without byte fallback), which unfamiliar words in any prompt share
    trigger_token: bool = False
    # learn that embedding row beside the LoRA (textual inversion through the frozen text encoder and UNet), from the
    # random start, at the loop's learning rate; False keeps the random row
    learn_trigger_token: bool = False
    # hold the learnt row at its start's norm (the embeddings' mean), learning only its direction
    trigger_token_fixed_norm: bool = False
    # where the training captions put the trigger, drawn per caption (from `plain_column`); None: `caption_column` as is
    trigger_positions: list[str] | None = None
    # triggered captions per image: its own and `trigger_views - 1` paraphrases (`paraphrase`) with the trigger put in
    # (at a position of `trigger_positions`, else the end): the style follows the trigger in any sentence, and with
    # `preservation_views` the same kinds of sentences without the trigger keep the base's image
    trigger_views: int = 1
    # the style named in English as the base checkpoint knows it, a template for the `caption_en` column (e.g.
    # "{}, ink wash style"): the base UNet's prediction for it, read through the base's own text encoder, is a second
    # target for the triggered captions, weighted `style_prompt_weight` (distillation through the frozen UNet): the
    # LoRA learns the base's own rendering of the style, colours as the caption names them. None: images alone
    style_prompt_en: str | None = None
    style_prompt_weight: float = 1.0
    # with a learnt trigger row: the text encoder's states for each triggered caption are also pulled toward the base
    # text encoder's states for `style_prompt_en` (the space the student was distilled into), weighted so: the row
    # learns to say the style in the words the base UNet already draws, colours kept, rather than to be a signal only
    # the LoRA reads, which the caption's own words attend to as well. 0: the row learns through the UNet alone
    trigger_states_weight: float = 0.0
    # with a learnt trigger row: the frozen base UNet (the LoRA off) reading each triggered caption is also pulled
    # toward its own prediction for the same caption without the trigger, weighted so: the row becomes a signal the
    # LoRA reads and the base does not, rather than a word that by itself moves the base's reading of the caption's
    # colours (scripts/lora_colour_probe.py, the LoRA at weight 0). 0: the row may say anything to the base
    trigger_base_weight: float = 0.0
    # Gaussian noise of this standard deviation added to the text states the trained UNet reads, triggered and
    # preservation captions alike (the preserved target reads the same noisy states): the LoRA's answer then holds for
    # states near the training captions', as sentences never trained on give. 0: the states as encoded
    states_noise: float = 0.0
    # the trigger taught to the text encoder, before the UNet's LoRA trains (`train_text_trigger`): a LoRA on these
    # modules of the text encoder and, with `trigger_token`, the trigger's row, so that a triggered caption reads as
    # the caption without the trigger plus what `style_prompt_en` adds in the base checkpoint's own text encoder,
    # and every untriggered caption reads as before. The base UNet then draws the style as it draws it for the
    # English words, colours as the caption names them. None: the text encoder is not adapted
    text_encoder_target_modules: list[str] | None = None
    text_encoder_rank: int = 16
    text_loop: dict = field(default_factory=lambda: {"steps": 400, "lr": 1e-3, "batch_size": 64, "warmup_steps": 20})
    prior_steps: int = 20                 # how the base pipeline draws the class images
    prior_guidance: float = 7.5
    resolution: int | None = None         # None: the UNet's own (sample_size x the VAE's scale factor)
    val_fraction: float = 0.05
    gradient_checkpointing: bool = False
    validation_prompts: list[str] = field(default_factory=list)  # drawn every `loop.validate_every` steps
    validation_seed: int = 1147446245
    loop: dict = field(default_factory=lambda: {"steps": 500, "lr": 1e-3, "batch_size": 32, "warmup_steps": 20})
    seed: int = 0

    @classmethod
    def from_params(cls, params: dict | None) -> "LoraTrainConfig":
        return cls(**{k: v for k, v in (params or {}).items() if k in cls.__dataclass_fields__})


def paraphrase(caption: str, rng: random.Random, words: Sequence[str], avoid: str = "", keep_words: bool = False) -> str:
    """A variant of `caption`: a word dropped or moved, words of other captions (`words`) and made-up words (random
    syllables of the caption's script, none of `avoid`'s) put in, and a comma after a word (the separator the trigger
    comes with: "…, 백묘법"). `keep_words`: no word dropped and no other caption's word put in, so the variant still
    names exactly what the caption's image shows (a triggered view trained on that image)."""
    parts = caption.split()
    korean = any("가" <= ch <= "힣" for ch in caption)

    def made_up() -> str:
        while True:
            word = "".join(chr(rng.randint(0xAC00, 0xD7A3)) if korean else rng.choice("abcdefghijklmnopqrstuvwxyz")
                           for _ in range(rng.randint(1, 3) * (1 if korean else 3)))
            if not set(word) & set(avoid):
                return word

    if len(parts) > 2 and rng.random() < 0.5 and not keep_words:
        parts.pop(rng.randrange(len(parts)))
    if len(parts) > 1 and rng.random() < 0.5:
        parts.insert(rng.randrange(len(parts) + 1), parts.pop(rng.randrange(len(parts))))
    for _ in range(rng.randint(1, 3)):
        parts.insert(rng.randrange(len(parts) + 1),
                     made_up() if rng.random() < 0.6 or not words or keep_words else rng.choice(words))
    if rng.random() < 0.5:
        comma = rng.randrange(len(parts) - 1)
        parts[comma] += ","
    return " ".join(parts)


def preservation_captions(captions: Sequence[str], views: int, rng: random.Random, words: Sequence[str],
                          avoid: str = "") -> list[str]:
    """The untriggered captions prior preservation trains on: the captions, then `views - 1` rounds of their
    paraphrases (`paraphrase`, which may put in words of `words`); view k of caption i is row k * len(captions) + i."""
    return list(captions) + [paraphrase(c, rng, words, avoid=avoid) for _ in range(views - 1) for c in captions]


def drop_trigger(caption: str, trigger: str, separator: str = ", ") -> str:
    """The caption without its trigger word: `add_trigger` undone, or the word taken out wherever else it stands."""
    if caption.startswith(trigger + separator):
        return caption[len(trigger + separator):]
    if caption.endswith(separator + trigger):
        return caption[:-len(separator + trigger)]
    return " ".join(caption.replace(trigger, " ").split())


def add_trigger_token(pipe, trigger: str, seed: int) -> torch.Tensor | None:
    """Make `trigger` one new token of `pipe`'s tokenizer (diffusers' `load_textual_inversion`), its embedding a random
    vector of the embeddings' mean norm: distinct from every word the text encoder knows and from `<unk>`. None when
    the tokenizer already has the whole word as one token (the text encoder knows it)."""
    if trigger in pipe.tokenizer.get_vocab():
        return None
    table = pipe.text_encoder.get_input_embeddings().weight
    vector = torch.randn(table.shape[1], generator=torch.Generator().manual_seed(seed))
    vector = vector / vector.norm() * table.detach().float().norm(dim=1).mean().cpu()
    pipe.load_textual_inversion({trigger: vector.to(table.dtype)}, token=trigger)
    return vector


class TriggerEmbedding(torch.nn.Module):
    """The trigger token's embedding row as a trained module (what `learn_trigger_token` learns): its forward returns
    the row, so a data-parallel wrapper sees it used every step."""

    def __init__(self, vector: torch.Tensor, norm: float | None = None):
        super().__init__()
        self.vector = torch.nn.Parameter(vector.clone())
        self.norm = norm  # None: the row's norm is learnt too

    def forward(self) -> torch.Tensor:
        return self.vector if self.norm is None else self.vector * (self.norm / self.vector.norm())


def _states_with_token(pipe, texts: Sequence[str], token_id: int, vector: torch.Tensor, encoder=None) -> torch.Tensor:
    """The text states of one-window captions with the trigger token's row replaced by `vector`, gradients flowing to
    it: the pipeline's tokenizer and text encoder (or `encoder`, the same one wrapped for training) as `encode_prompt`
    runs them (padded to the tokenizer's length; the student masks the padding itself, CLIP reads it as SD does)."""
    embeddings = pipe.text_encoder.get_input_embeddings()

    def swap(module, args, out):
        return torch.where((args[0] == token_id).unsqueeze(-1), vector.to(out.dtype), out)

    handle = embeddings.register_forward_hook(swap)
    try:
        enc = pipe.tokenizer(list(texts), padding="max_length", max_length=pipe.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt")
        return (encoder or pipe.text_encoder)(enc.input_ids.to(pipe.device)).last_hidden_state
    finally:
        handle.remove()


@torch.no_grad()
def _unconditional_states(pipe) -> torch.Tensor:
    """The pipeline's unconditional input (classifier-free guidance's negative, the empty prompt), on the CPU."""
    return pipe.encode_prompt("-", pipe.device, 1, True, negative_prompt="")[1].cpu()


@torch.no_grad()
def _text_states(pipe, texts: Sequence[str], empty: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """The states the UNet reads for each caption, computed by the pipeline's own `encode_prompt` (the student's
    windows for a Korean pipeline, CLIP's 77 states for an English one): one code path for both encoders. A caption
    longer than one window gives several; shorter ones are padded with `empty` windows, as the pipeline pads a batch."""
    out = [pipe.encode_prompt(list(texts[i:i + batch_size]), pipe.device, 1, False)[0].cpu()
           for i in range(0, len(texts), batch_size)]
    longest = max(o.shape[1] for o in out)
    return torch.cat([_pad_windows(o, empty, longest) for o in out])


def _pad_windows(states: torch.Tensor, empty: torch.Tensor, length: int) -> torch.Tensor:
    """(N, L, D) states padded to `length` positions with copies of the empty prompt's window `empty` (W, D)."""
    missing = (length - states.shape[1]) // empty.shape[0]
    return torch.cat([states, empty.repeat(missing, 1).expand(len(states), -1, -1)], dim=1) if missing else states


@torch.no_grad()
def _class_latents(pipe, captions: Sequence[str], steps: int, guidance: float, seed: int,
                   batch_size: int | None = None) -> torch.Tensor:
    """DreamBooth's class images, kept as latents: what the base pipeline draws for each untriggered caption, in
    batches that fit the device (64 at 32x32, 4 at 512x512)."""
    from tqdm.auto import tqdm

    side = pipe.unet.config.sample_size * pipe.vae_scale_factor
    batch_size = batch_size or max(1, min(64, 2**20 // (side * side)))
    out = []
    for start in tqdm(range(0, len(captions), batch_size), desc="class images", mininterval=5):
        chunk = list(captions[start:start + batch_size])
        gens = [torch.Generator().manual_seed(seed * 1_000_003 + start + i) for i in range(len(chunk))]
        out.append(pipe(chunk, num_inference_steps=steps, guidance_scale=guidance, generator=gens,
                        output_type="latent").images.cpu())
    return torch.cat(out)  # "latent" output: already scaled, as the UNet reads latents


def _noise_scheduler(pipe):
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(pipe.scheduler.config)  # the checkpoint's training schedule and prediction type


def train_text_trigger(out_dir: str | Path, pipe, cfg: LoraTrainConfig, triggered: Sequence[str],
                       style_shift: torch.Tensor, untriggered: Sequence[str], vector: torch.Tensor, name: str) -> dict:
    """Teach `pipe`'s text encoder the trigger (`cfg.text_encoder_target_modules`): a peft LoRA on those modules, left
    in the encoder as the adapter `name`, and the trigger token's row, started from `vector` and learnt beside it when
    `cfg.learn_trigger_token`, then written into the embeddings. Triggered caption i (of `triggered`) is pulled to the
    encoder's own states for it without the trigger plus `style_shift[i % len(style_shift)]`: what `cfg.style_prompt_en`
    adds to the base checkpoint's states for its image's English caption. Each of `untriggered` is held at its own
    states. Text states only: no UNet runs. Returns the loop's record."""
    from peft import LoraConfig

    encoder = pipe.text_encoder
    if getattr(encoder, "peft_config", None):
        raise LoraError(f"the text encoder already has adapters ({', '.join(encoder.peft_config)}); unload them first")
    token_id = pipe.tokenizer.convert_tokens_to_ids(cfg.trigger)
    vector = vector.to(pipe.device, encoder.dtype)
    with torch.no_grad():
        window = _states_with_token(pipe, list(triggered[:1]), token_id, vector).shape[1]
        empty = _unconditional_states(pipe)[0]
        own = _text_states(pipe, [drop_trigger(c, cfg.trigger) for c in triggered], empty)[:, :window]
        said_target = own + style_shift[torch.arange(len(triggered)) % len(style_shift), :window]
        kept_target = _text_states(pipe, list(untriggered), empty)[:, :window]
    encoder.requires_grad_(False)
    torch.manual_seed(cfg.seed)  # the LoRA's initial weights
    config = LoraConfig(r=cfg.text_encoder_rank, lora_alpha=cfg.text_encoder_rank, init_lora_weights="gaussian",
                        target_modules=list(cfg.text_encoder_target_modules))
    add_text_encoder_adapter(encoder, name, config)
    params = [p for n, p in encoder.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    models = [encoder]
    if cfg.learn_trigger_token:
        models.append(TriggerEmbedding(vector).to(pipe.device))
        params.append(models[1].vector)

    def loss_fn(batch: Batch):
        gen = step_generator(cfg.seed, batch.step)
        said_rows = batch.take(torch.randint(len(triggered), (batch.size,), generator=gen))
        kept_rows = batch.take(torch.randint(len(untriggered), (batch.size,), generator=gen))
        row = batch.models[1]() if len(batch.models) > 1 else vector
        texts = [triggered[i] for i in said_rows.tolist()] + [untriggered[i] for i in kept_rows.tolist()]
        states = _states_with_token(pipe, texts, token_id, row, batch.models[0]).float()
        said = F.mse_loss(states[:len(said_rows)], said_target[said_rows].to(states.device))
        kept = F.mse_loss(states[len(said_rows):], kept_target[kept_rows].to(states.device))
        return {"loss": said + kept, "said": said.detach(), "kept": kept.detach()}

    log = train_loop(models, loss_fn, LoopConfig.from_params(cfg.text_loop, seed=cfg.seed), out_dir,
                     desc=f"LoRA {name}: text encoder", params=params)
    learnt = models[1]().detach() if len(models) > 1 else vector
    encoder.get_input_embeddings().weight.data[token_id] = learnt.to(encoder.dtype)
    encoder.requires_grad_(False)
    return {**log, "trigger_row": learnt.float().cpu()}


def _save_text_encoder_lora(encoder, name: str, path: Path) -> None:
    """The text encoder's LoRA `name` as `adapters.read_text_encoder_lora` reads it: peft's keys, the encoder's class,
    rank, alpha and target modules in the metadata."""
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    config = encoder.peft_config[name]
    state = get_peft_model_state_dict(encoder, adapter_name=name)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path),
              metadata={"format": "pt", "text_encoder": type(encoder).__name__, "r": str(config.r),
                        "lora_alpha": str(config.lora_alpha), "target_modules": json.dumps(sorted(config.target_modules))})


def _remove_text_lora(encoder) -> None:
    """The text encoder as it was before `train_text_trigger` (its LoRA layers taken out)."""
    from diffusers.utils.peft_utils import recurse_remove_peft_layers

    recurse_remove_peft_layers(encoder)
    del encoder.peft_config
    encoder._hf_peft_config_loaded = None


def train_lora(out_dir: str | Path, pipe, data_dir: str | Path, cfg: LoraTrainConfig, name: str = "lora",
               description: str = "", stop_after: int | None = None, license: str = SD15_LICENSE,
               base_model: str | None = None, base_pipe=None) -> dict:
    """Train a LoRA on `pipe.unet` for the captioned images in `data_dir`; save it to `out_dir` in both file
    layouts with a `lora.json` record, A1111's `.json` beside the kohya file and a `README.md` model card (licence
    `license`, SD 1.5's by default; `base_model` default: where `pipe` was loaded from); leave `pipe` as it was.
    Resumes from `out_dir/train/checkpoints` when interrupted (`stop_after` interrupts on purpose, for tests).
    `base_pipe`: the base checkpoint's own pipeline, whose text encoder reads `cfg.style_prompt_en` (needed only then).
    Returns the training record. (Not LoraTrainConfig fields: the card changes no weights, so no cache key.)"""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from .latents import encode_images, load_pixels

    out_dir = Path(out_dir)
    loop = LoopConfig.from_params(cfg.loop, seed=cfg.seed)
    unet = pipe.unet
    if getattr(unet, "peft_config", None) and name in unet.peft_config:
        raise LoraError(f"the pipeline already has an adapter named {name!r}; unload it first")
    if cfg.prior_images is not None and cfg.prior_images < 1:
        raise LoraError(f"prior_images={cfg.prior_images}: class images for at least one image, or None for every image's")
    dataset = load_image_dataset(data_dir)
    preserved = (cfg.plain_column,) + ((cfg.preservation_words_column,) if cfg.preservation_words_column else ())
    for column in (cfg.caption_column,) + (preserved if cfg.preservation_weight else ()):
        if column not in dataset.column_names:
            raise LoraError(f"{data_dir}: no caption column {column!r}; it has {', '.join(dataset.column_names)}")
    resolution = cfg.resolution or unet.config.sample_size * pipe.vae_scale_factor
    latents = encode_images(pipe.vae, load_pixels(dataset["image"], resolution))
    rng = random.Random(cfg.seed)
    needs_plain = cfg.preservation_weight or cfg.trigger_positions or cfg.trigger_views > 1 or cfg.text_encoder_target_modules
    plain_source = list(dataset[cfg.plain_column]) if needs_plain else []
    words = sorted({w for c in plain_source for w in c.split()})  # what a paraphrase may take from other captions
    if cfg.trigger_positions:
        captions = [add_trigger(c, cfg.trigger, rng.choice(cfg.trigger_positions)) for c in plain_source]
    else:
        captions = list(dataset[cfg.caption_column])
    if cfg.trigger_views > 1:
        # view k of image i is row k * len(latents) + i: its caption, then its paraphrases with the trigger
        captions += [add_trigger(paraphrase(c, rng, words, avoid=cfg.trigger, keep_words=True), cfg.trigger,
                                 rng.choice(cfg.trigger_positions or ["end"]))
                     for _ in range(cfg.trigger_views - 1) for c in plain_source]
    if cfg.text_encoder_target_modules:  # checked before anything changes the pipeline
        if not cfg.trigger_token or not cfg.style_prompt_en or base_pipe is None or "caption_en" not in dataset.column_names:
            raise LoraError("text_encoder_target_modules teaches the text encoder a new trigger token that says what "
                            "style_prompt_en adds in English: it needs trigger_token, style_prompt_en, the base "
                            "pipeline and a caption_en column")
        if cfg.trigger_states_weight or cfg.trigger_base_weight:
            raise LoraError("trigger_states_weight and trigger_base_weight shape the trigger row while the UNet trains; "
                            "with text_encoder_target_modules the text encoder's training learns it")
    token = add_trigger_token(pipe, cfg.trigger, cfg.seed) if cfg.trigger_token else None
    text_log = None
    style_states = None
    if cfg.style_prompt_en:
        if base_pipe is None or "caption_en" not in dataset.column_names:
            raise LoraError(f"style_prompt_en needs the base pipeline and a caption_en column ({data_dir} has "
                            f"{', '.join(dataset.column_names)})")
        base_empty = _unconditional_states(base_pipe)[0]
        style_states = _text_states(base_pipe, [cfg.style_prompt_en.format(c) for c in dataset["caption_en"]], base_empty)
    if cfg.text_encoder_target_modules:
        if token is None:
            raise LoraError(f"the tokenizer already knows {cfg.trigger!r}: text_encoder_target_modules needs a new token")
        english_states = _text_states(base_pipe, list(dataset["caption_en"]), base_empty)
        window = min(style_states.shape[1], english_states.shape[1])
        plain_views = preservation_captions(plain_source, max(cfg.preservation_views, 1), rng, words, avoid=cfg.trigger)
        text_log = train_text_trigger(out_dir / "text", pipe, cfg, captions,
                                      style_states[:, :window] - english_states[:, :window], plain_views, token, name)
        token = text_log.pop("trigger_row")  # the UNet trains behind the taught encoder, the row as learnt
    empty = _unconditional_states(pipe)
    states = _text_states(pipe, captions, empty[0])
    if cfg.trigger_states_weight and not (cfg.learn_trigger_token and style_states is not None):
        raise LoraError("trigger_states_weight pulls a learnt trigger row toward the style named in English: it needs "
                        "trigger_token and learn_trigger_token, and style_prompt_en")
    if cfg.trigger_base_weight and not (token is not None and cfg.learn_trigger_token):
        raise LoraError("trigger_base_weight keeps a learnt trigger row out of the base UNet's reading: it needs "
                        "trigger_token and learn_trigger_token")
    # each triggered caption without its trigger: what the base UNet should read the triggered one as
    untriggered = _text_states(pipe, [drop_trigger(c, cfg.trigger) for c in captions], empty[0]) \
        if cfg.trigger_base_weight else None
    plain = prior = None
    if cfg.preservation_weight:
        prior_source = plain_source[:cfg.prior_images]
        n_prior = len(prior_source)
        column = cfg.preservation_words_column
        plain_words = sorted(set(words) | {w for c in dataset[column] for w in c.split()}) if column else words
        plain_captions = preservation_captions(prior_source, cfg.preservation_views, rng, plain_words,
                                               avoid=cfg.trigger)
        plain = _text_states(pipe, plain_captions, empty[0])
        prior = _class_latents(pipe, plain_captions, cfg.prior_steps, cfg.prior_guidance, cfg.seed)
    n_val = max(1, int(len(latents) * cfg.val_fraction))
    train_idx, val_idx = torch.arange(n_val, len(latents)), torch.arange(n_val)
    scheduler = _noise_scheduler(pipe)

    # the adapter: peft LoRA on the attention projections, the rest of the UNet frozen
    unet.requires_grad_(False)
    torch.manual_seed(cfg.seed)  # the LoRA's initial weights
    lora_config = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, init_lora_weights="gaussian", target_modules=cfg.target_modules)
    unet.add_adapter(lora_config, adapter_name=name)
    unet.set_adapter(name)
    lora_params = [p for n_, p in unet.named_parameters() if "lora_" in n_]
    for p in lora_params:
        p.requires_grad_(True)
    models = [unet]
    if token is not None and cfg.learn_trigger_token and text_log is None:
        token_id = pipe.tokenizer.convert_tokens_to_ids(cfg.trigger)
        norm = float(token.norm()) if cfg.trigger_token_fixed_norm else None  # add_trigger_token's: the mean norm
        models.append(TriggerEmbedding(token.to(pipe.text_encoder.dtype), norm).to(pipe.device))
        lora_params.append(models[1].vector)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()

    # `idx` is the step's whole batch and everything drawn per row is drawn for all of it; `batch` takes this
    # process's rows and runs the trained forward through the prepared (DDP-wrapped) UNet
    def noisy(idx, gen, batch, source=latents):
        x0 = batch.take(source[idx]).to(unet.device)
        noise = batch.take(torch.randn((len(idx), *source.shape[1:]), generator=gen)).to(unet.device)
        t = batch.take(torch.randint(0, scheduler.config.num_train_timesteps, (len(idx),), generator=gen)).to(unet.device)
        target = noise if scheduler.config.prediction_type == "epsilon" else scheduler.get_velocity(x0, noise, t)
        return scheduler.add_noise(x0, noise, t), t, target

    def base_reading(x_t, t, states):  # the frozen UNet, the LoRA being trained switched off
        unet.disable_adapters()
        try:
            return unet(x_t, t, encoder_hidden_states=states.to(unet.device, unet.dtype)).sample.float()
        finally:
            unet.enable_adapters()

    base_prediction = torch.no_grad()(base_reading)  # as a target

    def losses(idx, gen, batch: Batch):
        trained = batch.models[0]
        x_t, t, target = noisy(idx, gen, batch)
        rows = idx  # the caption view of each image
        if cfg.trigger_views > 1:
            rows = idx + len(latents) * torch.randint(cfg.trigger_views, (len(idx),), generator=gen)
        if len(batch.models) > 1:  # the learned trigger row: this step's captions encoded through it
            cond = _states_with_token(pipe, [captions[i] for i in batch.take(rows).tolist()], token_id, batch.models[1]())
            said = cond.float()
            cond = cond.to(unet.dtype)
        else:
            cond = batch.take(states[rows]).to(unet.device, unet.dtype)
        if cfg.states_noise:
            cond = cond + batch.take(cfg.states_noise * torch.randn((len(idx), *cond.shape[1:]), generator=gen)).to(cond)
        predicted = trained(x_t, t, encoder_hidden_states=cond).sample.float()
        style = F.mse_loss(predicted, target)
        out = {"loss": style, "style": style.detach()}
        if cfg.trigger_base_weight:  # the row through the base UNet alone: as if the caption had no trigger
            heard = base_reading(x_t, t, cond)  # gradients flow to the row
            unheard = F.mse_loss(heard, base_prediction(x_t, t, batch.take(untriggered[rows])))
            out["loss"] = out["loss"] + cfg.trigger_base_weight * unheard
            out["trigger_base"] = unheard.detach()
        named = batch.take(style_states[idx]) if style_states is not None else None  # the style named in English
        if cfg.trigger_states_weight:  # the first window: the triggered captions are one window each
            worded = F.mse_loss(said, named[:, :said.shape[1]].to(said.device, said.dtype))
            out["loss"] = out["loss"] + cfg.trigger_states_weight * worded
            out["trigger_states"] = worded.detach()
        if named is not None:  # the base UNet's own rendering of the style named in English
            follow = F.mse_loss(predicted, base_prediction(x_t, t, named))
            out["loss"] = out["loss"] + cfg.style_prompt_weight * follow
            out["style_prompt"] = follow.detach()
        if cfg.preservation_weight:
            idx = idx % n_prior  # past the first `prior_images`, images share the earlier ones' class images
            if cfg.preservation_views > 1:
                idx = idx + n_prior * torch.randint(cfg.preservation_views, (len(idx),), generator=gen)
            x_t, t, _ = noisy(idx, gen, batch, prior)
            keep = plain[idx].clone()
            keep[torch.rand(len(idx), generator=gen) < cfg.empty_prob] = _pad_windows(empty, empty[0], keep.shape[1])[0]
            if cfg.states_noise:
                keep = keep + cfg.states_noise * torch.randn(keep.shape, generator=gen)
            keep = batch.take(keep).to(unet.device, unet.dtype)
            kept = F.mse_loss(trained(x_t, t, encoder_hidden_states=keep).sample.float(), base_prediction(x_t, t, keep))
            out["loss"] = out["loss"] + cfg.preservation_weight * kept
            out["prior"] = kept.detach()
        return out

    def loss_fn(batch: Batch):
        gen = step_generator(cfg.seed, batch.step)
        return losses(train_idx[torch.randint(len(train_idx), (batch.size,), generator=gen)], gen, batch)

    def validate():
        # the same noise every time
        value = float(losses(val_idx, step_generator(cfg.seed + 1, 0), Batch.whole(len(val_idx), models))["loss"])
        if len(models) > 1:  # the pipeline draws the validation grid with the row as learnt so far
            pipe.text_encoder.get_input_embeddings().weight.data[token_id] = models[1]().detach()
        if cfg.validation_prompts and is_main_process():  # validations run every `validate_every` steps and at the last; earlier ones' files stay
            step = min((len(list((out_dir / "validation").glob("step-*.png"))) + 1) * loop.validate_every, loop.steps)
            _validation_grid(pipe, cfg, out_dir / "validation" / f"step-{step}.png")
        return value

    log = train_loop(models, loss_fn, loop, out_dir / "train", desc=f"LoRA {name}", params=lora_params,
                     validate=validate if loop.validate_every else None, stop_after=stop_after)
    if len(models) > 1:
        token = models[1]().detach().float().cpu()
    if token is not None:
        pipe.unload_textual_inversion(cfg.trigger)
    if (stop_after is not None and log["steps"] < loop.steps) or not is_main_process():  # the main process saves
        unet.delete_adapters(name)
        unet.requires_grad_(False)
        if text_log is not None:
            _remove_text_lora(pipe.text_encoder)
        return log
    if token is not None:
        from safetensors.torch import save_file

        save_file({cfg.trigger: token.contiguous()}, str(out_dir / TRIGGER_EMBEDDING_NAME))
    if text_log is not None:
        _save_text_encoder_lora(pipe.text_encoder, name, out_dir / TEXT_ENCODER_LORA_NAME)
        _remove_text_lora(pipe.text_encoder)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet, adapter_name=name))
    metadata = {"r": cfg.rank, "lora_alpha": cfg.alpha, "target_modules": list(cfg.target_modules)}
    StableDiffusionPipeline.save_lora_weights(out_dir, unet_lora_layers=layers, weight_name=WEIGHT_NAME,
                                              unet_lora_adapter_metadata=metadata)
    unet.delete_adapters(name)
    unet.requires_grad_(False)
    if cfg.gradient_checkpointing:
        unet.disable_gradient_checkpointing()
    kohya = export_kohya(out_dir / WEIGHT_NAME, out_dir / f"{name}.kohya.safetensors", cfg.rank, cfg.alpha, trigger=cfg.trigger,
                         name=name, resolution=resolution, description=description, license=license,
                         prediction_type=scheduler.config.prediction_type)
    source = str(pipe.name_or_path)  # a Path when the pipeline was loaded from one
    base_model = base_model or source
    card = {"name": name, "trigger": cfg.trigger, "description": description, "file": WEIGHT_NAME, "kohya_file": kohya.name,
            "a1111_file": a1111_sidecar(kohya).name,
            "trigger_embedding_file": TRIGGER_EMBEDDING_NAME if token is not None else None,
            "text_encoder_file": TEXT_ENCODER_LORA_NAME if text_log is not None else None,
            "text_encoder_steps": text_log["steps"] if text_log is not None else 0, "base_model": base_model, "license": license,
            "rank": cfg.rank, "alpha": cfg.alpha, "target_modules": list(cfg.target_modules), "resolution": resolution,
            "images": len(latents), "class_images": 0 if prior is None else len(prior),
            "text_encoder": type(pipe.text_encoder).__name__, "steps": log["steps"], "seconds": log["seconds"],
            "config": asdict(cfg)}
    write_json(out_dir / "lora.json", card)
    # the card's snippet loads what `pipe` was loaded from; a saved Korean pipeline's student is its own subfolder
    korean = card["text_encoder"] == "KoreanTextEncoder"
    student = str(pipe.text_encoder.name_or_path) if korean else None
    if student and Path(student).parent == Path(source):
        student = None
    write_lora_card(out_dir, card, base_model=base_model, pipeline=source, text_encoder=student, korean=korean,
                    license=license, example_prompt=captions[0], best_val=log.get("best_val"))
    remove_checkpoints(out_dir / "train")
    remove_checkpoints(out_dir / "text")
    return {**log, "card": card}


@torch.no_grad()
def _validation_grid(pipe, cfg: LoraTrainConfig, path: Path) -> None:
    from .evaluate import image_grid

    images = pipe(list(cfg.validation_prompts), num_inference_steps=20, output_type="pil",
                  generator=[torch.Generator().manual_seed(cfg.validation_seed) for _ in cfg.validation_prompts]).images
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(images, cfg.validation_prompts, cols=len(images)).save(path)


# ---------------------------------------------------------------------------------------------------------------
# The main job's entry point: each LoRA of the profile trained once, cached by config; a registry of all of them
# ---------------------------------------------------------------------------------------------------------------
def adapter_config(section: dict, adapter: dict) -> LoraTrainConfig:
    """The training settings of one entry of `lora.adapters`: the section's `defaults`, under the adapter's own."""
    return LoraTrainConfig.from_params({**section.get("defaults", {}), **adapter})


def artifact_key(cfg: LoraTrainConfig, adapter: dict, data: dict, base: dict, student: dict | None) -> dict:
    """What a trained LoRA depends on: its base checkpoint, its text encoder, its entry, what its images and captions
    come from (`data`), and `cfg`, the training settings in effect (`adapter_config`; not the raw defaults: a default
    the adapter overrides retrains nothing)."""
    return {"base": base, "student": student, "adapter": adapter, "config": asdict(cfg), "data": data}


def ensure_loras(section: dict, root: str | Path, *, sd, student=None, make_dataset: Callable, dataset_key: Callable,
                 names: Sequence[str] | None = None, device: str | None = None, licenses: dict | None = None) -> Path:
    """Train (or reuse) every LoRA in the profile's `lora.adapters` (or those in `names`); returns the registry file.

    Inputs, as the profile's plan resolves them: `sd`, the base checkpoint (a folder or `plan.ModelRef`); `student`,
    the Korean student folder (needed by adapters with `text_encoder: student`, which train behind the Korean
    pipeline on Korean captions with the Korean trigger; `teacher` ones train behind the English pipeline: the seed's
    English LoRA); `make_dataset(adapter, out_dir, resolution, device)`, which writes an adapter's captioned image
    folder, and `dataset_key(adapter)`, what that folder depends on. Training runs on `device` (default: the GPU
    when there is one), class images included. `licenses` (the profile's, id -> licence) give each card the base
    checkpoint's licence; a base the profile does not name is the project's own (the mini generator)."""
    from .common import cached_artifact, pick_device
    from .evaluate import load_pipeline
    from .pipeline import load_korean_pipeline

    root = Path(root)
    device = str(pick_device(device))
    sd = ModelRef.of(sd)
    registry = LoraRegistry()
    for adapter in section.get("adapters", []):
        name = adapter["name"]
        if names is not None and name not in names:
            continue
        cfg = adapter_config(section, adapter)
        encoder = adapter.get("text_encoder", "student")
        if encoder == "student" and student is None:
            raise LoraError(f"LoRA {name!r} trains behind the Korean student, but no student was given")
        student_key = ModelRef.of(student).key if encoder == "student" else None
        key = artifact_key(cfg, adapter, dataset_key(adapter), sd.key, student_key)

        def build(d, adapter=adapter, cfg=cfg, encoder=encoder):
            # one process captions the images and writes the folder; under a launcher the others then read it
            data = make_dataset(adapter, d / "data", cfg.resolution, device) if is_main_process() else None
            wait_for_everyone()
            data = data or d / "data"
            if encoder == "student":
                pipe = load_korean_pipeline(sd=sd, text_encoder=student, device=device)
            else:
                pipe = load_pipeline(sd, device=device)
            base = sd.name or sd.path
            base_pipe = (pipe if encoder != "student" else _base_text_pipeline(sd, pipe)) if cfg.style_prompt_en else None
            train_lora(d, pipe, data, cfg, name=adapter["name"], description=adapter.get("description", ""),
                       license=licence_of(base, licenses), base_model=base, base_pipe=base_pipe)

        folder = cached_artifact(root / "loras" / name, key, build, every_process=True)
        registry.add(name, folder / WEIGHT_NAME, trigger=cfg.trigger, description=adapter.get("description", ""),
                     trigger_position=adapter.get("trigger_position", "end"), style=adapter.get("style"),
                     text_encoder=encoder)
    if names is not None:  # a partial build (a build lane) leaves the registry to the full one
        return root / "loras" / "registry.json"
    return registry.save(root / "loras" / "registry.json")


def _base_text_pipeline(sd, pipe):
    """The base checkpoint's pipeline with its own text encoder and tokenizer, sharing `pipe`'s UNet and VAE (only
    its text encoder is read, by `style_prompt_en`): a Korean pipeline's base without a second UNet in memory."""
    from diffusers import StableDiffusionPipeline

    from .plan import checkpoint

    path, kwargs = checkpoint(sd)
    base = StableDiffusionPipeline.from_pretrained(path, unet=pipe.unet, vae=pipe.vae, safety_checker=None,
                                                   feature_extractor=None, requires_safety_checker=False, **kwargs)
    return base.to(pipe.device)


# ---------------------------------------------------------------------------------------------------------------
# Measurements (notebook 04): style rate with and without the trigger, content kept, grids
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class StyleCase:
    """One row of the LoRA table: which pipeline, which prompt language, which LoRAs at what weight, trigger or not."""
    label: str
    pipeline: str                      # a key of the `pipes` given to `evaluate_cases`
    language: str = "ko"               # prompt files {language}_heldout / _seen: ko, en or en_ink (ink-wash asked)
    loras: dict = field(default_factory=dict)
    trigger: bool = False              # add the LoRAs' trigger words (or `trigger_text`) to every prompt
    trigger_text: str | None = None    # another trigger than the LoRA's own (the English LoRA behind the student)


def _case_rows(case: StyleCase, prompt_files: dict, registry: LoraRegistry, split: str, n_prompts: int):
    """The first `n_prompts` prompts of one split ("held-out" or "seen") in the case's language, triggered if it says so."""
    from .evaluate import read_prompt_tsv

    return _as_asked(case, read_prompt_tsv(prompt_files[f"{case.language}_{split.replace('-', '')}"])[:n_prompts], registry)


def _as_asked(case: StyleCase, rows, registry: LoraRegistry):
    """The rows as the case asks: with its LoRAs' triggers (or its own `trigger_text`) added when it says so."""
    from .evaluate import PromptRow, with_triggers

    if case.trigger and case.trigger_text:
        return [PromptRow(add_trigger(r.prompt, case.trigger_text), r.attributes, r.line) for r in rows]
    if case.trigger:
        return with_triggers(rows, [registry.get(n) for n in case.loras])
    return rows


def evaluate_cases(pipes: dict, classifier, prompt_files: dict, registry: LoraRegistry, cases: Sequence[StyleCase],
                   n_prompts: int = 200, **generate_kwargs) -> dict[str, dict]:
    """Generate and score every case on each prompt split (held-out, seen colour-shape pairs), same seeds in every
    cell, each case's LoRAs switched off again after it: {label: {split: (result, rows, predicted attributes)}}, what
    `style_table` and `attribute_breakdown` summarise."""
    from .evaluate import evaluate_rows

    evaluated = {}
    for case in cases:
        pipe = pipes[case.pipeline]
        apply_loras(pipe, case.loras, registry)
        evaluated[case.label] = {}
        for split in ("held-out", "seen"):
            result, images, rows = evaluate_rows(pipe, _case_rows(case, prompt_files, registry, split, n_prompts),
                                                 classifier, **generate_kwargs)
            evaluated[case.label][split] = (result, rows, classifier.predict(images))
        apply_loras(pipe, {}, registry)
    return evaluated


def style_table(evaluated: dict, style: str = "ink"):
    """Per case (`evaluate_cases`) and split: the share of images the classifier calls `style` (the style rate), and
    colour / shape accuracy. Returns a DataFrame."""
    import pandas as pd

    records = []
    for label, splits in evaluated.items():
        row = {"case": label}
        for split, (result, _, _) in splits.items():
            row.update({f"{split} style rate": result["style_share"][style], f"{split} color": result["accuracy"]["color"],
                        f"{split} shape": result["accuracy"]["shape"]})
        records.append(row)
    return pd.DataFrame(records).set_index("case")


def attribute_breakdown(evaluated: dict, attribute: str = "color", labels: Sequence[str] | None = None,
                        misreads: int = 0):
    """Where an attribute goes wrong: for each value the prompts ask for (all splits together), each case's accuracy
    and what the classifier reads most often; the cases `labels` of `evaluate_cases` (default: all). `misreads`: the
    `misreads` most common wrong reads with their counts instead ("yellow 14, orange 1"). Returns a DataFrame, one
    row per asked-for value."""
    from collections import Counter, defaultdict

    import pandas as pd

    table = {"prompts": {}}
    for label in labels or list(evaluated):
        read = defaultdict(list)
        for _, rows, predicted in evaluated[label].values():
            for row, value in zip(rows, predicted[attribute]):
                read[row.attributes[attribute]].append(value)
        table["prompts"] = {asked: len(values) for asked, values in read.items()}
        table[label] = {asked: sum(v == asked for v in values) / len(values) for asked, values in read.items()}
        if misreads:
            table[f"{label}: read instead"] = {
                asked: ", ".join(f"{v} {n}" for v, n in Counter(v for v in values if v != asked).most_common(misreads))
                for asked, values in read.items()}
        else:
            table[f"{label}: read as"] = {asked: Counter(values).most_common(1)[0][0] for asked, values in read.items()}
    return pd.DataFrame(table).sort_index()


def evaluate_frames(pipes: dict, classifier, frame_file: str | Path, registry: LoraRegistry, cases: Sequence[StyleCase],
                    style: str = "ink", **generate_kwargs):
    """The evaluation held out by phrasing: every case on every prompt of `frame_file` (a prompt TSV with `frame`,
    `family` and `pairs` columns: prompts in sentence frames no training caption used), same seeds in every case.
    Returns a DataFrame, one row per (case, frame, pairs): images, the share the judge calls `style`, colour and
    shape accuracy; `frame_summary` condenses it."""
    import pandas as pd

    from .evaluate import evaluate_rows, read_prompt_tsv

    rows = read_prompt_tsv(frame_file, columns=("frame", "family", "pairs"))
    groups = [(r.columns["frame"], r.columns["family"], r.columns["pairs"]) for r in rows]
    records = []
    for case in cases:
        pipe = pipes[case.pipeline]
        apply_loras(pipe, case.loras, registry)
        _, images, _ = evaluate_rows(pipe, _as_asked(case, rows, registry), classifier, **generate_kwargs)
        apply_loras(pipe, {}, registry)
        read = classifier.predict(images)
        table = pd.DataFrame({"group": groups, "style": [v == style for v in read["style"]],
                              "color": [v == r.attributes["color"] for v, r in zip(read["color"], rows)],
                              "shape": [v == r.attributes["shape"] for v, r in zip(read["shape"], rows)]})
        for (frame, family, pairs), g in table.groupby("group", sort=False):
            records.append({"case": case.label, "frame": frame, "family": family, "pairs": pairs, "images": len(g),
                            f"{style} rate": g["style"].mean(), "color": g["color"].mean(), "shape": g["shape"].mean()})
    return pd.DataFrame(records)


def frame_rates(frames, style: str = "ink"):
    """`evaluate_frames` per (family, frame, case), both kinds of pairs together (weighted by their images): the style
    rate and colour. Returns a DataFrame."""
    rate = f"{style} rate"
    sums = frames.assign(**{rate: frames[rate] * frames["images"], "color": frames["color"] * frames["images"]}) \
        .groupby(["family", "frame", "case"], sort=False)[[rate, "color", "images"]].sum()
    return sums[[rate, "color"]].div(sums["images"], axis=0)


def frame_summary(frames, style: str = "ink"):
    """Per case of `evaluate_frames`: the style rate and colour on held-out and on seen pairs over all frames, and the
    frame with the highest style rate (both kinds of pairs together) and its rate. Returns a DataFrame."""
    import pandas as pd

    rate = f"{style} rate"
    per_frame = frame_rates(frames, style)[rate].droplevel("family")
    records = []
    for case, g in frames.groupby("case", sort=False):
        row = {"case": case}
        for pairs, p in g.groupby("pairs", sort=False):
            row |= {f"{pairs} {rate}": p[rate].mean(), f"{pairs} color": p["color"].mean(), f"{pairs} shape": p["shape"].mean()}
        rates = per_frame.xs(case, level="case")
        row |= {f"worst frame {rate}": rates.max(), "worst frame": rates.idxmax()}
        records.append(row)
    return pd.DataFrame(records).set_index("case")


@torch.no_grad()
def trigger_grid(pipe, registry: LoraRegistry, name: str, prompts: Sequence[str], weights: Sequence[float] = (0.0, 1.0),
                 seed: int = 1147446245, **call_kwargs):
    """An image grid: one row per (weight, trigger off/on), one column per prompt, one seed throughout."""
    from .evaluate import image_grid

    entry = registry.get(name)
    images, labels = [], []
    for weight in weights:
        apply_loras(pipe, {name: weight}, registry)
        for trigger in (False, True):
            texts = prompts_with_trigger(prompts, entry) if trigger else list(prompts)
            out = pipe(texts, generator=[torch.Generator().manual_seed(seed) for _ in texts], output_type="pil",
                       **call_kwargs).images
            images += out
            labels += [f"{name}:{weight:g} · {t}" for t in texts]
    apply_loras(pipe, {}, registry)
    return image_grid(images, labels, cols=len(prompts))


@torch.no_grad()
def compare_file_layouts(pipe, registry: LoraRegistry, name: str, prompt: str, seed: int = 1147446245, **call_kwargs) -> dict:
    """Draw `prompt` with the LoRA loaded from its diffusers file and from its kohya file: how far each is from the
    base image, and from each other (0 when the kohya export converts back exactly)."""
    from safetensors import safe_open

    folder = Path(registry.get(name)["path"]).parent
    kohya = folder / json.loads((folder / "lora.json").read_text(encoding="utf-8"))["kohya_file"]

    def draw():
        return pipe(prompt, generator=torch.Generator().manual_seed(seed), output_type="np", **call_kwargs).images[0]

    unload_loras(pipe)
    base = draw()
    drawn = {}
    for layout, path in (("diffusers", folder / WEIGHT_NAME), ("kohya", kohya)):
        read_lora_file(path, pipe.unet)
        pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=f"probe_{layout}")
        drawn[layout] = draw()
        pipe.delete_adapters(f"probe_{layout}")
    with safe_open(str(kohya), "pt") as f:
        keys, meta = list(f.keys()), f.metadata()
    return {"diffusers vs base, mean |Δ|": float(np.abs(drawn["diffusers"] - base).mean()),
            "kohya vs diffusers, max |Δ|": float(np.abs(drawn["kohya"] - drawn["diffusers"]).max()),
            "kohya tensors": len(keys), "ss_network_dim": meta.get("ss_network_dim"),
            "ss_network_alpha": meta.get("ss_network_alpha")}
