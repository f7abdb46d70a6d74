"""Hub-layout stand-ins: tiny random-weight checkpoints in the exact folder layouts of the hub models the full profile
names, so the project's real `from_pretrained` code runs end to end in CI, where there is no model hub.

    python -m koclip_lib.standins --out outputs/standin/hub            # everything (well under a minute on 2 CPU cores)
    python -m koclip_lib.standins --out DIR --only sd15 roberta        # some of them
    python -m koclip_lib.standins --real-size --out outputs/full-shapes/hub   # the real models' sizes (about 10 GB)
    write_standins("outputs/standin/hub", seed=0)                       # the same from Python; returns what standins.json says

Every folder is written by the library's own classes and `save_pretrained`, under the hub id it stands in for
(DIR/stable-diffusion-v1-5/stable-diffusion-v1-5, DIR/klue/roberta-small, ...), so `params/standin.yaml` only maps
hub ids to folders. What is real and what is not:
* real: the CLIP BPE tokenizer (vocab.json/merges.txt derived from the BPE file the open-clip-torch wheel ships, so
  ids and token counts are CLIP's), every scheduler config, the special-token layouts of klue, opus-mt and BLIP, and
  the Korean-English sentences (Tatoeba, via manythings.org's kor.txt; CC-BY 2.0 FR, the attribution of every pair
  is kept in koclip_lib/data/tatoeba_ko_en.tsv and in the XLSX's second sheet).
* random: every weight (seeded: the same seed writes byte-identical safetensors), and the sizes (hidden 32-80
  instead of 768-2048), so outputs are noise. Widths keep the real checkpoints' relations: SD 2.x's text encoder is
  wider than SD 1.5's, SDXL's UNet reads two encoders' states concatenated plus a pooled vector. `--real-size`
  (`REAL`) writes SD 1.5 and dreamshaper (UNet, VAE, CLIP ViT-L/14 text encoder), klue/roberta-small, both opus-mt
  models and BLIP-base at their real shapes, still random, for a dry run of every stage at real memory and compute
  (`params/full-shapes.yaml`); SD 2.x and SDXL, which only ever raise the compatibility error, stay tiny.
* trained here: the klue-style WordPiece, opus-mt-style SentencePiece and BLIP-style WordPiece vocabularies, on the
  shipped sentences.
The mini world is not used (nothing outside it imports it).
"""

from __future__ import annotations

import argparse
import gzip
import importlib.resources
import importlib.util
import json
import os
import random
import shutil
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .cli import CliParser
from .common import write_json

TATOEBA_TSV = "data/tatoeba_ko_en.tsv"  # inside the package: en<TAB>ko<TAB>attribution, as manythings.org's kor.txt
TATOEBA_LICENCE = "CC-BY 2.0 (France), tatoeba.org; pairs via manythings.org/anki (kor.txt); attribution kept per pair"
AIHUB_HEADER = ["ID", "대분류", "소분류", "원문", "번역문"]  # AI Hub's parallel-corpus columns (koclip_lib.corpus reads them)

# SD 1.x/2.x's training noise schedule as their scheduler configs ship it.
SD_BETAS = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", trained_betas=None)
SD15_SCHEDULER = dict(SD_BETAS, skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False, clip_sample=False,
                      prediction_type="epsilon")
SD21_SCHEDULER = dict(SD_BETAS, skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False, clip_sample=False,
                      prediction_type="v_prediction")
DREAMSHAPER_SCHEDULER = dict(SD_BETAS, algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
                             lower_order_final=True, use_karras_sigmas=False, steps_offset=1, prediction_type="epsilon")
SDXL_SCHEDULER = dict(SD_BETAS, interpolation_type="linear", prediction_type="epsilon", sample_max_value=1.0,
                      set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1, timestep_spacing="leading",
                      use_karras_sigmas=False)
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]

# Tiny sizes. Latents are 16x16 and the VAE downsamples 8x as SD's does, so images are 128x128.
SAMPLE_SIZE = 16
SD15_TEXT_WIDTH = 32   # real: 768 (CLIP ViT-L/14)
SD21_TEXT_WIDTH = 48   # real: 1024 (OpenCLIP ViT-H/14)
SDXL_TEXT_WIDTHS = (32, 48)  # real: 768 + 1280 (CLIP ViT-L + OpenCLIP bigG), read concatenated by the UNet


@dataclass(frozen=True)
class Sizes:
    """The sizes of the models the full profile trains through: SD 1.5's (and dreamshaper's) text encoder, UNet and
    VAE, the Korean backbone, the two translators, the captioner."""
    name: str
    sample_size: int = SAMPLE_SIZE  # SD 1.x latents; images are 8x this
    text: dict = field(default_factory=lambda: dict(width=SD15_TEXT_WIDTH, layers=2, heads=4, intermediate=2 * SD15_TEXT_WIDTH))
    unet: dict = field(default_factory=lambda: dict(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8))
    vae: dict = field(default_factory=lambda: dict(block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=8))
    roberta: dict = field(default_factory=lambda: dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                       intermediate_size=64))
    marian: dict = field(default_factory=lambda: {"ko-en": dict(d_model=32, layers=1, heads=2, ffn_dim=64),
                                                  "en-ko": dict(d_model=32, layers=1, heads=2, ffn_dim=64)})
    blip: dict = field(default_factory=lambda: dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                    num_attention_heads=2, image_size=32, patch_size=8, projection_dim=32))


TINY = Sizes("tiny")
# The hub checkpoints' shapes: SD 1.5 (UNet 860 M parameters, VAE 84 M, CLIP ViT-L/14 text 123 M),
# klue/roberta-small (32,000 WordPiece ids), opus-mt-ko-en (Marian base) and opus-mt-tc-big-en-ko (Marian big),
# Salesforce/blip-image-captioning-base (ViT-B/16 at 384 + BERT-base decoder).
REAL = Sizes(
    "real", sample_size=64,
    text=dict(width=768, layers=12, heads=12, intermediate=3072),
    unet=dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, norm_num_groups=32),
    vae=dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32),
    roberta=dict(hidden_size=768, num_hidden_layers=6, num_attention_heads=12, intermediate_size=3072, vocab_size=32000),
    marian={"ko-en": dict(d_model=512, layers=6, heads=8, ffn_dim=2048),
            "en-ko": dict(d_model=1024, layers=6, heads=16, ffn_dim=4096)},
    blip=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, image_size=384,
              patch_size=16, projection_dim=512),
)


# ---------------------------------------------------------------------------------------------------------------
# Seeds: every model is built right after torch.manual_seed(a seed derived from the run's seed and the model's name),
# so a model's weights do not depend on what else was built, or in which order.
# ---------------------------------------------------------------------------------------------------------------
def _seed(seed: int, name: str) -> int:
    return seed * 1_000_003 + zlib.crc32(name.encode())


def _built(seed: int, name: str, build: Callable):
    torch.manual_seed(_seed(seed, name))
    return build().eval()


# ---------------------------------------------------------------------------------------------------------------
# The real CLIP tokenizer, from the BPE file the open-clip-torch wheel ships (found without importing open_clip,
# which needs torchvision), turned into vocab.json/merges.txt as OpenAI's and transformers' CLIP tokenizers do.
# ---------------------------------------------------------------------------------------------------------------
CLIP_BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"


def clip_bpe_path() -> Path:
    spec = importlib.util.find_spec("open_clip")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if (Path(folder) / CLIP_BPE_FILE).is_file():
            return Path(folder) / CLIP_BPE_FILE
    raise FileNotFoundError(f"open_clip/{CLIP_BPE_FILE} not found: install it with "
                            "`pip install --no-deps open-clip-torch` (scripts/setup.sh does)")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's byte -> printable character map (so BPE never sees whitespace or control bytes)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = printable[:], 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def clip_vocabulary() -> dict:
    """CLIP's BPE as openai/clip-vit-large-patch14 has it: {"vocab": 49,408 tokens -> ids, "merges": 48,894 pairs,
    "files": the vocab.json and merges.txt texts SD's tokenizer folders ship}."""
    lines = gzip.decompress(clip_bpe_path().read_bytes()).decode("utf-8").split("\n")
    merges = lines[1:49152 - 256 - 2 + 1]  # the first line is a version header
    byte_chars = list(_bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    assert len(vocab) == 49408, len(vocab)
    files = {"vocab.json": json.dumps(vocab, ensure_ascii=False), "merges.txt": "#version: 0.2\n" + "\n".join(merges) + "\n"}
    return {"vocab": vocab, "merges": [tuple(m.split()) for m in merges], "files": files}


def clip_tokenizer(clip: dict, pad_token: str):
    """CLIP's tokenizer as SD ships it: 77 positions; SD 1.5 pads with <|endoftext|>, OpenCLIP-based ones with "!"."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer(vocab=dict(clip["vocab"]), merges=list(clip["merges"]), model_max_length=77, pad_token=pad_token)


def _add_clip_vocab_files(tokenizer_dir: Path, clip: dict) -> None:
    """The hub's SD tokenizer folders hold vocab.json + merges.txt; transformers' save_pretrained writes only
    tokenizer.json (the same vocabulary), so add them: code that reads the classic files finds them too."""
    for name, text in clip["files"].items():
        (tokenizer_dir / name).write_text(text, encoding="utf-8")


# ---------------------------------------------------------------------------------------------------------------
# Sentences: the shipped Tatoeba pairs, and the AI Hub-style XLSX built from them.
# ---------------------------------------------------------------------------------------------------------------
def tatoeba_pairs() -> list[dict]:
    """The shipped pairs: [{"ko", "en", "attribution"}], in file order."""
    text = importlib.resources.files("koclip_lib").joinpath(TATOEBA_TSV).read_text(encoding="utf-8")
    pairs = []
    for line in text.splitlines():
        en, ko, attribution = line.split("\t")
        pairs.append({"ko": ko, "en": en, "attribution": attribution})
    return pairs


def long_pairs(pairs: list[dict], n: int = 4, per_row: int = 8) -> list[dict]:
    """`n` pairs made of `per_row` real sentences each (the longest ones, joined on both sides): English sides
    longer than CLIP's 77 tokens, which the corpus build's token limit should drop."""
    by_length = sorted(pairs, key=lambda p: len(p["en"]), reverse=True)
    longest = by_length[1:1 + n * per_row]  # the very longest is over the limit alone (its own row)
    groups = [longest[i::n] for i in range(n)]
    return [{"ko": " ".join(p["ko"] for p in g), "en": " ".join(p["en"] for p in g),
             "attribution": " | ".join(p["attribution"] for p in g)} for g in groups]


def write_aihub_xlsx(path: Path, pairs: list[dict]) -> dict:
    """AI Hub's layout: first sheet with header ID, 대분류, 소분류, 원문, 번역문; one row per pair, then the joined long
    pairs, then malformed rows (원문 empty, as when an export loses a cell) for the corpus build to skip and count.
    A second sheet keeps each row's attribution (CC-BY), out of the corpus reader's way (it reads the first sheet)."""
    import openpyxl

    long = long_pairs(pairs)
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = "ko-en"
    sheet.append(AIHUB_HEADER)
    credits = book.create_sheet("attribution")
    credits.append(["ID", "attribution"])
    rows = [(f"TATOEBA-{i:05d}", "일상생활", "대화", p) for i, p in enumerate(pairs, 1)]
    rows += [(f"LONG-{i:05d}", "일상생활", "긴 문단", p) for i, p in enumerate(long, 1)]
    for row_id, major, minor, p in rows:
        sheet.append([row_id, major, minor, p["ko"], p["en"]])
        credits.append([row_id, p["attribution"]])
    malformed = [p["en"] for p in pairs[100:103]]  # real English, no Korean: an export that lost a cell
    for i, en in enumerate(malformed, 1):
        sheet.append([f"BROKEN-{i:05d}", "일상생활", "대화", None, en])
    path.parent.mkdir(parents=True, exist_ok=True)
    book.save(path)
    return {"pairs": len(pairs), "long_pairs": len(long), "malformed_rows": len(malformed)}


# ---------------------------------------------------------------------------------------------------------------
# Stable Diffusion parts.
# ---------------------------------------------------------------------------------------------------------------
def clip_text_model(width: int, act: str, projection_dim: int, with_projection: bool = False, layers: int = 2,
                    heads: int = 4, intermediate: int | None = None):
    """CLIP's text transformer at `width`, with CLIP's 49,408 tokens and 77 positions. bos/eos/pad ids 0/2/1 are
    what the hub's SD text_encoder configs say (a legacy of the original CLIP config): with eos_token_id 2,
    transformers pools at the highest id in the row, which is <|endoftext|> (49407), as SD's encoders do."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, hidden_size=width,
                            intermediate_size=intermediate or 2 * width, num_hidden_layers=layers,
                            num_attention_heads=heads, hidden_act=act, projection_dim=projection_dim,
                            bos_token_id=0, eos_token_id=2, pad_token_id=1)
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)


def sd_unet(cross_attention_dim: int, sd2: bool = False, sizes: Sizes = TINY, **sdxl):
    """SD's UNet: at toy size 2 blocks (32, 64), at real size SD 1.5's 4 (320-1280); 4 latent channels, cross-attention
    in every block but the deepest. SD 2.x: linear projections in the transformers and upcast attention, as its config
    says; SDXL passes its added-embedding settings."""
    from diffusers import UNet2DConditionModel

    n = len(sizes.unet["block_out_channels"])
    if sdxl:  # SDXL: a plain block first, cross-attention deeper (its real order)
        blocks = dict(down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
    else:
        blocks = dict(down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
                      up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1))
    extra = dict(use_linear_projection=True, attention_head_dim=(2, 4)) if sd2 or sdxl else dict(attention_head_dim=8)
    if sd2:
        extra["upcast_attention"] = True
    return UNet2DConditionModel(sample_size=sizes.sample_size, in_channels=4, out_channels=4,
                                layers_per_block=sizes.unet["layers_per_block"],
                                block_out_channels=tuple(sizes.unet["block_out_channels"]),
                                norm_num_groups=sizes.unet["norm_num_groups"], cross_attention_dim=cross_attention_dim,
                                **blocks, **extra, **sdxl)


def sd_vae(scaling_factor: float = 0.18215, force_upcast: bool = True, sizes: Sizes = TINY):
    """SD's AutoencoderKL shape (4 blocks: 8x down, 4 latent channels), with 8-16 channels (tiny) or SD's 128-512."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=sizes.vae["layers_per_block"],
                         norm_num_groups=sizes.vae["norm_num_groups"],
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                         block_out_channels=tuple(sizes.vae["block_out_channels"]), sample_size=sizes.sample_size * 8,
                         scaling_factor=scaling_factor, force_upcast=force_upcast)


def safety_checker():
    """SD 1.5's StableDiffusionSafetyChecker (a CLIP vision tower + concept embeddings), tiny; it reads the 224 crops
    the feature extractor makes. Its concept thresholds start at 1, so random weights flag nothing."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig

    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=224, patch_size=32)
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    return StableDiffusionSafetyChecker(CLIPConfig(text_config=text, vision_config=vision, projection_dim=32))


def feature_extractor():
    """SD's feature_extractor: CLIP's image preprocessing (shortest side 224, 224 centre crop, OpenAI's mean/std)."""
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}, do_center_crop=True,
                              do_resize=True, resample=3, do_normalize=True, image_mean=CLIP_MEAN, image_std=CLIP_STD,
                              do_convert_rgb=True)


def _fix_feature_extractor_class(folder: Path) -> None:
    """Without torchvision, transformers hands out CLIPImageProcessorPil for CLIPImageProcessor, and diffusers records
    that class. The hub's model_index names CLIPImageProcessor (which loads the same files either way): name it."""
    index_path = folder / "model_index.json"
    index = json.loads(index_path.read_text(encoding="utf-8"))
    if index.get("feature_extractor", [None])[0] == "transformers":
        index["feature_extractor"] = ["transformers", "CLIPImageProcessor"]
        index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    config_path = folder / "feature_extractor" / "preprocessor_config.json"
    if config_path.exists():
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config["image_processor_type"] = "CLIPImageProcessor"
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _sd1_pipeline(seed: int, tokenizer, scheduler, name: str, with_safety_checker: bool = True, sizes: Sizes = TINY):
    from diffusers import StableDiffusionPipeline

    text = sizes.text
    return StableDiffusionPipeline(
        # a fine-tune keeps SD 1.5's VAE (same seed); UNet and text encoder differ
        vae=_built(seed, "sd15/vae", lambda: sd_vae(sizes=sizes)),
        text_encoder=_built(seed, f"{name}/text_encoder", lambda: clip_text_model(
            text["width"], "quick_gelu", text["width"], layers=text["layers"], heads=text["heads"],
            intermediate=text["intermediate"])),
        tokenizer=tokenizer,
        unet=_built(seed, f"{name}/unet", lambda: sd_unet(text["width"], sizes=sizes)),
        scheduler=scheduler,
        safety_checker=_built(seed, "sd15/safety_checker", safety_checker) if with_safety_checker else None,
        feature_extractor=feature_extractor(),
        requires_safety_checker=with_safety_checker,
    )


def write_sd15(folder: Path, seed: int, clip: dict, sizes: Sizes = TINY) -> None:
    """stable-diffusion-v1-5/stable-diffusion-v1-5: PNDM, safety checker, CLIP ViT-L-style text encoder."""
    from diffusers import PNDMScheduler

    tokenizer = clip_tokenizer(clip, "<|endoftext|>")
    pipe = _sd1_pipeline(seed, tokenizer, PNDMScheduler.from_config(SD15_SCHEDULER), "sd15", sizes=sizes)
    pipe.save_pretrained(folder)
    _finish_sd_folder(folder, clip, ["tokenizer"])


def write_dreamshaper(folder: Path, seed: int, clip: dict, sizes: Sizes = TINY) -> None:
    """Lykon/dreamshaper-7: an SD 1.5 fine-tune: SD 1.5's architecture and tokenizer, its own UNet and text encoder
    weights, DPM-Solver++ as its scheduler."""
    from diffusers import DPMSolverMultistepScheduler

    tokenizer = clip_tokenizer(clip, "<|endoftext|>")
    pipe = _sd1_pipeline(seed, tokenizer, DPMSolverMultistepScheduler.from_config(DREAMSHAPER_SCHEDULER), "dreamshaper",
                         sizes=sizes)
    pipe.save_pretrained(folder)
    _finish_sd_folder(folder, clip, ["tokenizer"])


def write_sd21(folder: Path, seed: int, clip: dict) -> None:
    """stabilityai/stable-diffusion-2-1: a wider (OpenCLIP-style, gelu) text encoder, linear-projection UNet, DDIM
    with v-prediction, "!" padding, and no safety checker (the hub's index has none)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=_built(seed, "sd21/vae", sd_vae),
        text_encoder=_built(seed, "sd21/text_encoder", lambda: clip_text_model(SD21_TEXT_WIDTH, "gelu", SD21_TEXT_WIDTH // 2)),
        tokenizer=clip_tokenizer(clip, "!"),
        unet=_built(seed, "sd21/unet", lambda: sd_unet(SD21_TEXT_WIDTH, sd2=True)),
        scheduler=DDIMScheduler.from_config(SD21_SCHEDULER),
        safety_checker=None, feature_extractor=feature_extractor(), requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    _finish_sd_folder(folder, clip, ["tokenizer"])


def write_sdxl(folder: Path, seed: int, clip: dict) -> None:
    """stabilityai/stable-diffusion-xl-base-1.0: two text encoders (the second with a projection: SDXL's pooled
    vector), a UNet with the text_time added embedding, Euler, and SDXL's VAE scaling factor."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    width_1, width_2 = SDXL_TEXT_WIDTHS
    time_embed_dim = 8  # real: 256; the UNet adds 6 size/crop ids of this width to the pooled vector
    pipe = StableDiffusionXLPipeline(
        vae=_built(seed, "sdxl/vae", lambda: sd_vae(scaling_factor=0.13025)),
        text_encoder=_built(seed, "sdxl/text_encoder", lambda: clip_text_model(width_1, "quick_gelu", width_1)),
        text_encoder_2=_built(seed, "sdxl/text_encoder_2", lambda: clip_text_model(width_2, "gelu", width_2, with_projection=True)),
        tokenizer=clip_tokenizer(clip, "<|endoftext|>"),
        tokenizer_2=clip_tokenizer(clip, "!"),
        unet=_built(seed, "sdxl/unet", lambda: sd_unet(
            width_1 + width_2, addition_embed_type="text_time", addition_time_embed_dim=time_embed_dim,
            projection_class_embeddings_input_dim=6 * time_embed_dim + width_2, transformer_layers_per_block=(1, 2))),
        scheduler=EulerDiscreteScheduler.from_config(SDXL_SCHEDULER),
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,  # the hub's index has no watermarker component; it would need invisible-watermark
    )
    pipe.save_pretrained(folder)
    _finish_sd_folder(folder, clip, ["tokenizer", "tokenizer_2"])


def _finish_sd_folder(folder: Path, clip: dict, tokenizer_dirs: list[str]) -> None:
    for name in tokenizer_dirs:
        _add_clip_vocab_files(folder / name, clip)
    _fix_feature_extractor_class(folder)


# ---------------------------------------------------------------------------------------------------------------
# Korean RoBERTa (klue/roberta-small's layout), Marian translators (opus-mt's), BLIP captioner.
# ---------------------------------------------------------------------------------------------------------------
def wordpiece_vocab(texts: list[str], specials: list[str], vocab_size: int, lowercase: bool) -> dict[str, int]:
    """A BERT WordPiece vocabulary trained with 🤗 tokenizers; `specials` take the first ids in their order. ASCII
    letters and digits are always in it, so English words split into pieces rather than [UNK]."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    # no accent stripping: it would decompose Hangul syllables into jamo (klue keeps them whole)
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=False, clean_text=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    alphabet = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789")
    if not lowercase:
        alphabet += [chr(c) for c in range(ord("A"), ord("Z") + 1)]
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials, initial_alphabet=alphabet,
                                        show_progress=False)
    tok.train_from_iterator(texts, trainer)
    vocab = tok.get_vocab()
    # the trainer keeps "##c" only for characters it saw inside a word often enough; BERT vocabularies have both forms
    # of every character, so a known character is never [UNK] wherever it stands in a word
    for char in sorted(t for t in vocab if len(t) == 1):
        vocab.setdefault("##" + char, len(vocab))
    return vocab


def write_roberta(folder: Path, seed: int, pairs: list[dict], sizes: Sizes = TINY) -> None:
    """klue/roberta-small: a RobertaModel whose tokenizer is BERT's WordPiece (klue's tokenizer_config says
    BertTokenizer) with [CLS]=0, [PAD]=1, [SEP]=2, [UNK]=3, [MASK]=4, cased, 512 positions."""
    from transformers import BertTokenizer, RobertaConfig, RobertaModel

    vocab = wordpiece_vocab([p["ko"] for p in pairs], ["[CLS]", "[PAD]", "[SEP]", "[UNK]", "[MASK]"], 2000, lowercase=False)
    tokenizer = BertTokenizer(vocab=vocab, do_lower_case=False, strip_accents=False, model_max_length=512)
    assert [tokenizer.convert_tokens_to_ids(t) for t in ("[CLS]", "[PAD]", "[SEP]", "[UNK]", "[MASK]")] == [0, 1, 2, 3, 4]
    # the real model's embedding table is klue's 32,000 ids; the ids past this vocabulary are never read
    config = RobertaConfig(**{"vocab_size": len(tokenizer), **sizes.roberta}, max_position_embeddings=514, type_vocab_size=1,
                           pad_token_id=1, bos_token_id=0, eos_token_id=2)
    model = _built(seed, "roberta", lambda: RobertaModel(config, add_pooling_layer=True))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    _write_vocab_txt(folder, tokenizer)


def _write_vocab_txt(folder: Path, tokenizer) -> None:
    """BERT-style folders on the hub ship vocab.txt beside tokenizer.json; save_pretrained writes only the latter."""
    vocab = tokenizer.get_vocab()
    (folder / "vocab.txt").write_text("\n".join(sorted(vocab, key=vocab.get)) + "\n", encoding="utf-8")


def write_marian(folder: Path, seed: int, pairs: list[dict], source_lang: str, target_lang: str, sizes: Sizes = TINY) -> None:
    """Helsinki-NLP/opus-mt-*: MarianMTModel + MarianTokenizer files (source.spm, target.spm, vocab.json,
    tokenizer_config.json, generation_config.json), through the project's own tokenizer and model builders."""
    from transformers import MarianTokenizer

    from .translate import TranslatorConfig, build_marian, train_marian_tokenizer

    texts = [p["ko"] for p in pairs] + [p["en"] for p in pairs]
    train_marian_tokenizer(texts, folder, vocab_size=800)
    # the trainer writes a ko -> en tokenizer; the same sentencepiece files serve either direction
    tokenizer = MarianTokenizer(str(folder / "source.spm"), str(folder / "target.spm"), str(folder / "vocab.json"),
                                source_lang=source_lang, target_lang=target_lang)
    tokenizer.save_pretrained(folder)
    cfg = TranslatorConfig(**sizes.marian[f"{source_lang}-{target_lang}"], max_length=512,
                           seed=_seed(seed, f"marian-{source_lang}-{target_lang}"))
    model = build_marian(cfg, tokenizer).eval()  # build_marian seeds torch with cfg.seed itself
    model.generation_config.max_length = 512  # as opus-mt's generation_config
    model.save_pretrained(folder)


def write_blip(folder: Path, seed: int, pairs: list[dict], sizes: Sizes = TINY) -> None:
    """Salesforce/blip-image-captioning-base: BlipForConditionalGeneration + BlipProcessor (BlipImageProcessor at
    32x32 (tiny) or 384, an uncased BERT WordPiece with BLIP's "[DEC]" bos and "[ENC]" tokens appended)."""
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    vocab = wordpiece_vocab([p["en"] for p in pairs], ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], 1000, lowercase=True)
    vocab.update({"[DEC]": len(vocab), "[ENC]": len(vocab) + 1})  # BLIP adds them after bert-base-uncased's vocabulary
    tokenizer = BertTokenizer(vocab=vocab, do_lower_case=True, bos_token="[DEC]", extra_special_tokens=["[ENC]"],
                              model_max_length=512)
    b = sizes.blip
    image_processor = BlipImageProcessor(size={"height": b["image_size"], "width": b["image_size"]}, do_resize=True,
                                         resample=3, do_normalize=True, image_mean=CLIP_MEAN, image_std=CLIP_STD,
                                         do_convert_rgb=True)
    processor = BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("[DEC]", "[PAD]", "[SEP]")}
    config = BlipConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=b["hidden_size"], intermediate_size=b["intermediate_size"],
                         num_hidden_layers=b["num_hidden_layers"], num_attention_heads=b["num_attention_heads"],
                         encoder_hidden_size=b["hidden_size"], max_position_embeddings=512,
                         bos_token_id=ids["[DEC]"], pad_token_id=ids["[PAD]"], sep_token_id=ids["[SEP]"], eos_token_id=ids["[SEP]"]),
        vision_config=dict(hidden_size=b["hidden_size"], intermediate_size=b["intermediate_size"],
                           num_hidden_layers=b["num_hidden_layers"], num_attention_heads=b["num_attention_heads"],
                           image_size=b["image_size"], patch_size=b["patch_size"]),
        projection_dim=b["projection_dim"])
    model = _built(seed, "blip", lambda: BlipForConditionalGeneration(config))
    # Random weights could end a caption at once, or fill it with special tokens, and an empty caption is refused by
    # the translator the LoRA stage sends it to next; BLIP's generate builds its own decoder settings, so the only
    # place to say "no special tokens" is the decoder's output bias. Captions are then max_new_tokens random words.
    with torch.no_grad():
        model.text_decoder.cls.predictions.bias[tokenizer.all_special_ids] = -100.0
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    _write_vocab_txt(folder, tokenizer)


def write_taesd(folder: Path, seed: int) -> None:
    """madebyollin/taesd: an AutoencoderTiny (TAESD's architecture: 4 latent channels, 8x down) with 8 channels per
    block instead of 64, the decoder the benchmark's "tiny VAE decoder" row swaps in."""
    from diffusers import AutoencoderTiny

    _built(seed, "taesd", lambda: AutoencoderTiny(
        encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
        num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1), latent_channels=4)).save_pretrained(folder)


# ---------------------------------------------------------------------------------------------------------------
# Image folder for LoRA training: grey brush strokes and circles on paper, like 백묘법 (ink line drawing).
# ---------------------------------------------------------------------------------------------------------------
def write_ink_images(folder: Path, seed: int, n: int = 12, size: int = 64) -> None:
    from PIL import Image, ImageDraw, ImageFilter

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        rng = random.Random(_seed(seed, f"ink-{i}"))
        paper = rng.randint(225, 245)
        image = Image.new("RGB", (size, size), (paper, paper, paper - 6))  # warm off-white
        draw = ImageDraw.Draw(image)
        for _ in range(rng.randint(3, 6)):  # strokes: polylines thinning along their length
            ink = rng.randint(20, 140)
            x, y = rng.uniform(0, size), rng.uniform(0, size)
            width = rng.randint(2, 6)
            for _ in range(rng.randint(4, 9)):
                nx, ny = x + rng.uniform(-14, 14), y + rng.uniform(-14, 14)
                draw.line([(x, y), (nx, ny)], fill=(ink, ink, ink), width=max(1, width))
                x, y, width = nx, ny, width - rng.choice((0, 0, 1))
        if rng.random() < 0.6:  # an ensō-like circle
            r, cx, cy, ink = rng.uniform(10, 24), rng.uniform(20, 44), rng.uniform(20, 44), rng.randint(30, 110)
            start = rng.uniform(0, 360)
            draw.arc([cx - r, cy - r, cx + r, cy + r], start, start + rng.uniform(250, 340), fill=(ink, ink, ink),
                     width=rng.randint(2, 4))
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 0.9)))  # wash: ink bleeding into the paper
        image.save(folder / f"baekmyo_{i:02d}.png", optimize=False)


# ---------------------------------------------------------------------------------------------------------------
# What is written where, and the entry points.
# ---------------------------------------------------------------------------------------------------------------
# key -> (folder under DIR = the hub id, what it stands in for). The folders mirror the hub ids.
STANDINS = {
    "sd15": ("stable-diffusion-v1-5/stable-diffusion-v1-5", "stable-diffusion-v1-5/stable-diffusion-v1-5"),
    "dreamshaper": ("Lykon/dreamshaper-7", "Lykon/dreamshaper-7"),
    "sd21": ("stabilityai/stable-diffusion-2-1", "stabilityai/stable-diffusion-2-1"),
    "sdxl": ("stabilityai/stable-diffusion-xl-base-1.0", "stabilityai/stable-diffusion-xl-base-1.0"),
    "roberta": ("klue/roberta-small", "klue/roberta-small"),
    "marian-ko-en": ("Helsinki-NLP/opus-mt-ko-en", "Helsinki-NLP/opus-mt-ko-en"),
    "marian-en-ko": ("Helsinki-NLP/opus-mt-tc-big-en-ko", "Helsinki-NLP/opus-mt-tc-big-en-ko"),
    "blip": ("Salesforce/blip-image-captioning-base", "Salesforce/blip-image-captioning-base"),
    "taesd": ("madebyollin/taesd", "madebyollin/taesd"),
    "aihub": ("aihub", "an AI Hub Korean-English parallel corpus (XLSX), with real Tatoeba sentences"),
    "images": ("images/baekmyo", "a folder of 백묘법 (ink line drawing) images for LoRA training"),
}


def _components(folder: Path) -> dict[str, str]:
    """Component -> class: from model_index.json for a pipeline, else from the configs saved in the folder."""
    index = folder / "model_index.json"
    if index.exists():
        return {k: v[1] for k, v in json.loads(index.read_text(encoding="utf-8")).items()
                if isinstance(v, list) and v[1] is not None}
    found = {}
    for name, key in (("config.json", "architectures"), ("tokenizer_config.json", "tokenizer_class"),
                      ("preprocessor_config.json", "image_processor_type"), ("processor_config.json", "processor_class")):
        if (folder / name).exists():
            value = json.loads((folder / name).read_text(encoding="utf-8")).get(key)
            if value:
                found[name.split("_config")[0].split(".")[0]] = value[0] if isinstance(value, list) else value
    if not found:  # data folders
        found = {"files": ", ".join(sorted(p.name for p in folder.iterdir()))}
    return found


def _replace_inside(out_dir: Path, target: Path, write: Callable[[Path], None]) -> None:
    """Write into a scratch folder under out_dir, then swap it in for `target`: a re-run rewrites cleanly and an
    interrupted one leaves the previous folder whole. Nothing outside out_dir is touched."""
    out_dir, target = out_dir.resolve(), target.resolve()
    if out_dir not in target.parents:
        raise ValueError(f"{target} is not inside {out_dir}")
    scratch = out_dir / f".standins-tmp-{os.getpid()}"
    if scratch.exists():
        shutil.rmtree(scratch)
    build, old = scratch / "new", scratch / "old"
    build.mkdir(parents=True)
    try:
        write(build)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            os.replace(target, old)
        os.replace(build, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def write_standins(out_dir, seed: int = 0, only: list[str] | None = None, sizes: Sizes = TINY) -> dict:
    """Write the stand-ins (all, or the keys in `only`) under out_dir and update out_dir/standins.json; returns
    that record: {key: {"path", "stands_in_for", "components", "seconds"}, ...} under "standins". `sizes`: TINY, or
    REAL (the real models' shapes; see `Sizes`)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    keys = list(STANDINS) if not only else list(only)
    unknown = set(keys) - set(STANDINS)
    if unknown:
        raise ValueError(f"unknown stand-ins {sorted(unknown)}; choose from {list(STANDINS)}")
    pairs = tatoeba_pairs()
    clip = clip_vocabulary() if {"sd15", "dreamshaper", "sd21", "sdxl"} & set(keys) else {}
    writers = {
        "sd15": lambda d: write_sd15(d, seed, clip, sizes),
        "dreamshaper": lambda d: write_dreamshaper(d, seed, clip, sizes),
        "sd21": lambda d: write_sd21(d, seed, clip),
        "sdxl": lambda d: write_sdxl(d, seed, clip),
        "roberta": lambda d: write_roberta(d, seed, pairs, sizes),
        "marian-ko-en": lambda d: write_marian(d, seed, pairs, "ko", "en", sizes),
        "marian-en-ko": lambda d: write_marian(d, seed, pairs, "en", "ko", sizes),
        "blip": lambda d: write_blip(d, seed, pairs, sizes),
        "taesd": lambda d: write_taesd(d, seed),
        "aihub": lambda d: write_aihub_xlsx(d / "ko-en.xlsx", pairs),
        "images": lambda d: write_ink_images(d, seed),
    }
    record_path = out_dir / "standins.json"
    record = json.loads(record_path.read_text(encoding="utf-8")) if record_path.exists() else {}
    if record.get("seed") != seed or record.get("sizes", TINY.name) != sizes.name:
        record = {}  # entries written with another seed or at other sizes are not this run's
    record.update(seed=seed, sizes=sizes.name, licence={"sentences": TATOEBA_LICENCE})
    entries = record.setdefault("standins", {})
    for key in keys:
        start = time.perf_counter()
        folder, hub_id = STANDINS[key]
        _replace_inside(out_dir, out_dir / folder, writers[key])
        entries[key] = {"path": folder, "stands_in_for": hub_id, "components": _components(out_dir / folder),
                        "seconds": round(time.perf_counter() - start, 2)}
    record["standins"] = {k: entries[k] for k in STANDINS if k in entries}  # a stable order
    write_json(record_path, record)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = CliParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder to write the stand-ins into (e.g. outputs/standin/hub)")
    parser.add_argument("--seed", type=int, default=0, help="weights seed (same seed: byte-identical safetensors)")
    parser.add_argument("--only", nargs="+", choices=list(STANDINS), help="write only these stand-ins")
    parser.add_argument("--real-size", action="store_true",
                        help="the real models' shapes (random weights; SD 2.x and SDXL stay tiny): params/full-shapes.yaml")
    args = parser.parse_args(argv)
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()  # e.g. "CLIPImageProcessor falls back to ...Pil" (no torchvision here)
    transformers_logging.disable_progress_bar()  # one "Writing model shards" bar per model
    start = time.perf_counter()
    try:
        record = write_standins(args.out, seed=args.seed, only=args.only, sizes=REAL if args.real_size else TINY)
    except FileNotFoundError as e:
        parser.exit(1, f"standins: {e}\n")
    for key, entry in record["standins"].items():
        if not args.only or key in args.only:
            print(f"{key:13s} {entry['seconds']:6.2f} s  {Path(args.out) / entry['path']}  ({entry['stands_in_for']})")
    print(f"wrote {len(args.only or STANDINS)} stand-ins to {args.out} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
