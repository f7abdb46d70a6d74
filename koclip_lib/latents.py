"""Where the unet stage of the distillation gets its images: latents paired with (Korean, English) captions.

The unet objective matches the frozen UNet's noise prediction given the student's states for the Korean caption to
its prediction given the teacher's states for the English one, on a latent of what the caption says. A latent source
gives those latents (encoded once by the SD's VAE) and the captions of a batch of them:

- `ImageFolderLatents`: a 🤗 image folder (`metadata.jsonl` with `caption_ko` and `caption_en`, as
  `lora.caption_image_folder` writes one), resized and centre-cropped as diffusers' training scripts do;
- `GeneratedLatents`: no images at hand; the English pipeline draws one latent per English sentence of the corpus,
  cached on disk in chunks, so the student is matched on what SD itself draws for that sentence.

Any object with `key`, `prepare(sd, vae)` and `captions(idx, empty, gen)` serves (the mini world's scenes are one).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

# images encoded per VAE call: the memory of a VAE encode grows with the pixels, so the batch shrinks with them
# (512 at 32x32, 8 at 512x512)
VAE_PIXELS_PER_BATCH = 2**21


def vae_batch_size(height: int, width: int, most: int = 512) -> int:
    return max(1, min(most, VAE_PIXELS_PER_BATCH // (height * width)))


@torch.no_grad()
def encode_images(vae, images: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """Images in [-1, 1] -> scaled latents (the posterior mean; cached once, like SD fine-tuning scripts do), in
    batches that fit the device, on the VAE's device and dtype; returned on the CPU in float32."""
    batch_size = batch_size or vae_batch_size(*images.shape[-2:])
    out = [vae.encode(images[i:i + batch_size].to(vae.device, vae.dtype)).latent_dist.mean.float().cpu()
           for i in range(0, len(images), batch_size)]
    return torch.cat(out) * vae.config.scaling_factor


def load_pixels(images: Sequence[Image.Image], resolution: int) -> torch.Tensor:
    """PIL images -> [-1, 1] tensors at `resolution`: shorter side resized (bicubic), then centre-cropped, as
    diffusers' train_text_to_image.py / train_dreambooth_lora.py prepare their images."""
    out = []
    for im in images:
        im = im.convert("RGB")
        scale = resolution / min(im.size)
        im = im.resize((max(resolution, round(im.width * scale)), max(resolution, round(im.height * scale))), Image.BICUBIC)
        left, top = (im.width - resolution) // 2, (im.height - resolution) // 2
        out.append(np.asarray(im.crop((left, top, left + resolution, top + resolution))))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def vae_resolution(sd_unet_config: dict, vae) -> int:
    """The image side a UNet was trained at: its latent sample size times the VAE's downsampling."""
    return sd_unet_config["sample_size"] * 2 ** (len(vae.config.block_out_channels) - 1)


class FixedCaptions:
    """Captions fixed per latent: `pairs[i]` describes latent i."""

    pairs: list[tuple[str, str]]

    def __len__(self) -> int:
        return len(self.pairs)

    def captions(self, idx: Sequence[int], empty: Sequence[bool], gen: torch.Generator) -> tuple[list[str], list[str]]:
        chosen = [("", "") if e else self.pairs[i] for i, e in zip(idx, empty)]
        return [k for k, _ in chosen], [e for _, e in chosen]


class ImageFolderLatents(FixedCaptions):
    """An image folder with Korean and English captions (`caption_ko`, `caption_en`), encoded by the SD's VAE."""

    def __init__(self, image_dir: str | Path, resolution: int | None = None, ko_column: str = "caption_ko",
                 en_column: str = "caption_en"):
        self.image_dir, self.resolution = Path(image_dir), resolution
        self.ko_column, self.en_column = ko_column, en_column
        if not (self.image_dir / "metadata.jsonl").exists():
            raise FileNotFoundError(f"{self.image_dir}: no metadata.jsonl with {ko_column}/{en_column} captions "
                                    "(caption the images first, e.g. with lora.caption_image_folder)")

    @property
    def key(self) -> dict:
        files = sorted((p.name, p.stat().st_size) for p in self.image_dir.iterdir())
        return {"source": "image_dir", "image_dir": str(self.image_dir), "files": files, "resolution": self.resolution}

    def prepare(self, sd, vae, unet_config: dict) -> torch.Tensor:
        from datasets import load_dataset

        ds = load_dataset("imagefolder", data_dir=str(self.image_dir), split="train")
        missing = [c for c in (self.ko_column, self.en_column) if c not in ds.column_names]
        if missing:
            raise ValueError(f"{self.image_dir}: metadata.jsonl has no {missing} column; it has {ds.column_names}")
        self.pairs = list(zip(ds[self.ko_column], ds[self.en_column]))
        return encode_images(vae, load_pixels(ds["image"], self.resolution or vae_resolution(unet_config, vae)))


class GeneratedLatents(FixedCaptions):
    """Latents the English pipeline draws for the corpus's first `n` distinct English sentences (train split),
    cached in `root/<key>/chunk-NNNNN.pt` files of `batch_size` latents: an interrupted run keeps its chunks."""

    def __init__(self, corpus_dir: str | Path, n: int = 256, steps: int = 20, guidance_scale: float = 7.5,
                 batch_size: int = 8, seed: int = 0, root: str | Path = "latents"):
        self.corpus_dir, self.n, self.steps, self.guidance_scale = Path(corpus_dir), n, steps, guidance_scale
        self.batch_size, self.seed, self.root = batch_size, seed, Path(root)

    @property
    def key(self) -> dict:
        from .common import artifact_hash

        return {"source": "generated", "corpus": artifact_hash(self.corpus_dir), "n": self.n, "steps": self.steps,
                "guidance_scale": self.guidance_scale, "seed": self.seed}

    def prepare(self, sd, vae, unet_config: dict) -> torch.Tensor:
        from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

        from .common import config_hash, distributed, pick_device, wait_for_everyone
        from .corpus import load_corpus
        from .plan import checkpoint

        ds = load_corpus(self.corpus_dir, "train")
        seen, self.pairs = set(), []
        for ko, en in zip(ds["ko"], ds["en"]):
            if en not in seen and len(self.pairs) < self.n:
                seen.add(en)
                self.pairs.append((ko, en))
        folder = self.root / config_hash({**self.key, "sd": str(sd)})
        folder.mkdir(parents=True, exist_ok=True)
        pipe = None
        starts = range(0, len(self.pairs), self.batch_size)
        paths = [folder / f"chunk-{start // self.batch_size:05d}.pt" for start in starts]
        # under a launcher each process draws every N-th chunk (each chunk's seeds are its own: the same latents
        # whatever the number of processes), then all read all of them
        state = distributed()
        rank, processes = (state.process_index, state.num_processes) if state is not None else (0, 1)
        chunks = tqdm(list(enumerate(zip(starts, paths))), desc="unet-stage latents", unit="chunk", disable=None)
        for i, (start, path) in chunks:
            if i % processes == rank and not path.exists():
                if pipe is None:
                    device = pick_device()
                    sd_path, sd_kwargs = checkpoint(sd)
                    pipe = StableDiffusionPipeline.from_pretrained(
                        sd_path, **sd_kwargs, safety_checker=None, requires_safety_checker=False,
                        torch_dtype=torch.float16 if device.type == "cuda" else torch.float32).to(device)
                    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
                    pipe.set_progress_bar_config(disable=True)
                english = [en for _, en in self.pairs[start:start + self.batch_size]]
                gens = [torch.Generator().manual_seed(self.seed * 1_000_003 + start + i) for i in range(len(english))]
                latents = pipe(english, num_inference_steps=self.steps, guidance_scale=self.guidance_scale,
                               generator=gens, output_type="latent").images.float().cpu()
                tmp = path.with_suffix(".tmp")
                torch.save(latents, tmp)
                tmp.replace(path)
        wait_for_everyone()
        # "latent" output is already scaled, as the UNet reads latents
        return torch.cat([torch.load(path, weights_only=True) for path in paths])
