"""Score a text-to-image pipeline on a prompt file with the mini-world attribute classifier.

    python -m koclip_lib.evaluate --pipeline outputs/mini/sd --prompts prompts.tsv [--text-encoder DIR]
        [--translate DIR] [--lora ink:1.0 [--trigger]] [--seeds N] [--save-grid grid.png]

The prompt file is a TSV with a header: `prompt`, `color`, `shape` and optionally `position`, `style`
(English attribute names of the mini-world vocabulary; an empty cell is not scored). The last line printed is
one JSON object: accuracy per attribute, the share of images in each style (`style_share`: with an ink LoRA,
`style_share.ink` is its style rate), images generated, seconds per image.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from tqdm.auto import tqdm

from .cli import CliParser, existing_path



def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(N, 3, H, W) in [-1, 1] -> PIL images."""
    arr = ((images.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]


def load_judge(folder: str | Path | None):
    """An attribute judge (what scores generated images) from its folder. Its `judge.json` names the function that
    loads it (`"loader": "module:function"`), as diffusers' model_index.json names classes: this module scores with
    any judge that has `attributes` ({name: values}) and `predict(images) -> {name: [value per image]}`. A profile
    with no judge (None) gets None: images are generated and shown, not scored."""
    import importlib

    if folder is None:
        return None
    spec = json.loads((Path(folder) / "judge.json").read_text(encoding="utf-8"))
    module, _, function = spec["loader"].partition(":")
    return getattr(importlib.import_module(module), function)(folder)


REQUIRED_COLUMNS = ("prompt", "color", "shape")
OPTIONAL_COLUMNS = ("position", "style")
ATTRIBUTE_COLUMNS = REQUIRED_COLUMNS[1:] + OPTIONAL_COLUMNS


class PromptFileError(ValueError):
    """A prompt TSV that cannot be scored; the message names the file and line."""


@dataclass
class PromptRow:
    prompt: str
    attributes: dict[str, str]  # attribute -> expected English value; absent attributes are not scored
    line: int
    columns: dict[str, str] = field(default_factory=dict)  # every column of its line (a frame file's frame, family, ...)


def read_prompt_tsv(path: str | Path, known: dict[str, Sequence[str]] | None = None,
                    columns: Sequence[str] = ()) -> list[PromptRow]:
    """Rows of a prompt TSV; with `known` (a judge's `attributes`, {name: values}), a value the judge cannot read is an
    error naming the file and line. A file with only a `prompt` column is a plain prompt list (what a profile without
    a judge generates from); with attribute columns, colour and shape are required, and so are `columns` (a frame
    file's `frame`, `family`, `pairs`)."""
    path = Path(path)
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, None)
        if header is None:
            raise PromptFileError(f"{path}: empty file, expected a header with columns {', '.join(REQUIRED_COLUMNS)}")
        header = [h.strip() for h in header]
        plain = "prompt" in header and not any(c in header for c in ATTRIBUTE_COLUMNS)
        if plain and known is not None:
            raise PromptFileError(f"{path}:1: a plain prompt list (no {', '.join(REQUIRED_COLUMNS[1:])} columns): "
                                  "nothing for the judge to score")
        missing = [c for c in (("prompt",) if plain else REQUIRED_COLUMNS) + tuple(columns) if c not in header]
        if missing:
            raise PromptFileError(f"{path}:1: missing column(s) {', '.join(missing)}; the header has {', '.join(header)}")
        rows = []
        for line_no, fields in enumerate(reader, start=2):
            if not any(f.strip() for f in fields):
                continue
            if len(fields) != len(header):
                raise PromptFileError(f"{path}:{line_no}: {len(fields)} fields, the header has {len(header)}")
            record = dict(zip(header, (f.strip() for f in fields)))
            if not record["prompt"]:
                raise PromptFileError(f"{path}:{line_no}: empty prompt")
            attributes = {}
            for name in () if plain else ATTRIBUTE_COLUMNS:
                value = record.get(name, "")
                if not value:
                    if name in REQUIRED_COLUMNS:
                        raise PromptFileError(f"{path}:{line_no}: empty {name}")
                    continue
                if known is not None and value not in known.get(name, [value]):
                    raise PromptFileError(f"{path}:{line_no}: unknown {name} {value!r}; known: {', '.join(known[name])}")
                attributes[name] = value
            rows.append(PromptRow(record["prompt"], attributes, line_no, record))
    if not rows:
        raise PromptFileError(f"{path}: no prompts after the header")
    return rows


@torch.no_grad()
def generate(pipe, prompts: Sequence[str], seeds: Sequence[int], steps: int = 20, guidance_scale: float = 3.0,
             batch_size: int = 64, negative_prompt: str | None = None, **call_kwargs) -> tuple[torch.Tensor, float]:
    """Images (N, 3, H, W) in [-1, 1] for each (prompt, seed) pair, one generator per image so the batch size
    never changes an image; returns them with the wall-clock seconds per image. One progress bar over the images
    (tqdm; off where the output is not a terminal or notebook); the pipeline's own per-step bar is paused meanwhile."""
    images = []
    started = time.perf_counter()
    saved = dict(getattr(pipe, "_progress_bar_config", {}))
    pipe.set_progress_bar_config(**{**saved, "disable": True})
    try:
        with tqdm(total=len(prompts), unit="image", desc="generate", disable=None) as bar:
            for start in range(0, len(prompts), batch_size):
                chunk = list(prompts[start:start + batch_size])
                gens = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds[start:start + batch_size]]
                out = pipe(chunk, num_inference_steps=steps, guidance_scale=guidance_scale, generator=gens,
                           output_type="pt", negative_prompt=[negative_prompt] * len(chunk) if negative_prompt else None,
                           **call_kwargs).images
                images.append(out.float().cpu() * 2 - 1)  # the pipeline returns [0, 1]
                bar.update(len(chunk))
    finally:
        pipe._progress_bar_config = saved
    seconds = time.perf_counter() - started
    return torch.cat(images), seconds / max(len(prompts), 1)


def score(classifier, images: torch.Tensor, rows: Sequence[PromptRow]) -> dict:
    """Accuracy per attribute over the rows that state it, plus the per-image predictions (nothing without a judge)."""
    if classifier is None:
        return {"accuracy": {}, "scored": {}, "style_share": {}, "predicted": {}}
    predicted = classifier.predict(images)
    accuracy, counts = {}, {}
    for name in classifier.attributes:
        hits = [predicted[name][i] == row.attributes[name] for i, row in enumerate(rows) if name in row.attributes]
        if hits:
            accuracy[name] = float(np.mean(hits))
            counts[name] = len(hits)
    style_share = {v: float(np.mean([p == v for p in predicted["style"]])) for v in classifier.attributes.get("style", [])}
    return {"accuracy": accuracy, "scored": counts, "style_share": style_share, "predicted": predicted}


def evaluate_rows(pipe, rows: Sequence[PromptRow], classifier, seeds: int = 1, base_seed: int = 0,
                  **generate_kwargs) -> tuple[dict, torch.Tensor, list[PromptRow]]:
    """Generate `seeds` images per row and score them. Returns (result, images, expanded rows)."""
    expanded = [row for row in rows for _ in range(seeds)]
    seed_list = [base_seed + 1000 * i + k for i in range(len(rows)) for k in range(seeds)]
    images, seconds_per_image = generate(pipe, [r.prompt for r in expanded], seed_list, **generate_kwargs)
    scored = score(classifier, images, expanded)
    result = {"accuracy": scored["accuracy"], "scored": scored["scored"], "style_share": scored["style_share"],
              "images": len(expanded), "seconds_per_image": seconds_per_image}
    return result, images, expanded


def _font(size: int) -> ImageFont.ImageFont:
    """NanumGothic (shipped by koreanize-matplotlib) so Korean prompts render; PIL's default font otherwise."""
    try:
        import koreanize_matplotlib  # noqa: F401  (the package carries the font files)

        font_path = Path(koreanize_matplotlib.__file__).parent / "fonts" / "NanumGothic.ttf"
        return ImageFont.truetype(str(font_path), size)
    except (ImportError, OSError):
        return ImageFont.load_default()


def _wrap(draw, text: str, font, width: int) -> tuple[str, str]:
    """Split a label into two lines at a space so the first fits `width` pixels (the second is cut if too long)."""
    words, first = text.split(" "), ""
    while words and draw.textlength((first + " " + words[0]).strip(), font=font) <= width:
        first = (first + " " + words.pop(0)).strip()
    if not first:  # one long word: cut by characters
        first, words = text, []
        while draw.textlength(first, font=font) > width:
            first = first[:-1]
        words = [text[len(first):]]
    second = " ".join(words)
    while second and draw.textlength(second, font=font) > width:
        second = second[:-1]
    return first, second


def image_grid(images: torch.Tensor | Sequence[Image.Image], labels: Sequence[str] | None = None, cols: int = 8,
               cell: int = 96, label_height: int = 28) -> Image.Image:
    """A grid of images (upscaled to `cell` pixels, nearest neighbour) with a label under each."""
    pils = to_pil(images) if isinstance(images, torch.Tensor) else list(images)
    rows = (len(pils) + cols - 1) // cols
    lh = label_height if labels else 0
    grid = Image.new("RGB", (cols * cell, rows * (cell + lh)), "white")
    draw, font = ImageDraw.Draw(grid), _font(11)
    for i, im in enumerate(pils):
        x, y = (i % cols) * cell, (i // cols) * (cell + lh)
        grid.paste(im.resize((cell, cell), Image.NEAREST), (x, y))
        if labels:
            line1, line2 = _wrap(draw, labels[i], font, cell - 4)
            draw.text((x + 2, y + cell + 1), line1, fill="black", font=font)
            draw.text((x + 2, y + cell + 14), line2, fill="black", font=font)
    return grid


def with_triggers(rows: Sequence[PromptRow], entries: Sequence[dict]) -> list[PromptRow]:
    """Each prompt with the LoRAs' trigger words added (where each LoRA puts it), scored against the LoRA's style."""
    from .adapters import add_trigger

    out = []
    for row in rows:
        prompt, attributes = row.prompt, dict(row.attributes)
        for entry in entries:
            prompt = add_trigger(prompt, entry.get("trigger", ""), entry.get("trigger_position", "end"))
            if entry.get("style"):
                attributes["style"] = entry["style"]
        out.append(PromptRow(prompt, attributes, row.line))
    return out


def load_pipeline(pipeline_dir, text_encoder: str | Path | None = None, device: str | None = None,
                  safety_checker: bool = True):
    """The SD pipeline from a folder (or hub id, or `plan.ModelRef`), with a Korean student text encoder swapped in
    when one is given; a folder saved from a Korean pipeline loads as one. The checkpoint's safety checker is kept
    when it has one, unless `safety_checker=False`."""
    from diffusers import StableDiffusionPipeline

    from .common import pick_device
    from .pipeline import is_korean_pipeline, load_korean_pipeline

    if text_encoder is not None or is_korean_pipeline(pipeline_dir):
        return load_korean_pipeline(sd=pipeline_dir, text_encoder=text_encoder, device=device, safety_checker=safety_checker)
    from diffusers import AutoPipelineForText2Image

    from .pipeline import has_safety_checker, pipeline_index
    from .plan import checkpoint

    path, kwargs = checkpoint(pipeline_dir)
    if pipeline_index(pipeline_dir).get("_class_name") not in (None, StableDiffusionPipeline.__name__):
        # SD 2.x keeps StableDiffusionPipeline; SDXL and SD 3 (the sweep's English rows) open with their own class
        pipe = AutoPipelineForText2Image.from_pretrained(path, **kwargs)
        return pipe.to(pick_device(device))
    if not (safety_checker and has_safety_checker(pipeline_dir)):
        kwargs.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe = StableDiffusionPipeline.from_pretrained(path, **kwargs)
    return pipe.to(pick_device(device))


def main(argv: Sequence[str] | None = None) -> dict:
    ap = CliParser(prog="python -m koclip_lib.evaluate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--pipeline", required=True, type=existing_path,
                    help="SD pipeline folder (save_pretrained layout), English or Korean")
    ap.add_argument("--prompts", required=True, type=existing_path, help="TSV: prompt, color, shape[, position, style]")
    ap.add_argument("--text-encoder", type=existing_path,
                    help="Korean student folder to swap in for the pipeline's text encoder")
    ap.add_argument("--translate", type=existing_path,
                    help="translator folder: translate Korean prompts to English first (baseline)")
    ap.add_argument("--lora", action="append", help="NAME[:WEIGHT] from the LoRA registry, e.g. ink:1.0 (repeat to mix)")
    ap.add_argument("--lora-registry", default="outputs/mini/loras/registry.json", help="JSON {name: {path, trigger, ...}}")
    ap.add_argument("--trigger", action="store_true",
                    help="add each LoRA's trigger word to every prompt and expect the LoRA's style")
    ap.add_argument("--classifier", default="outputs/mini/classifier",
                    help="attribute judge folder (with a judge.json); 'none' generates (and --save-grid saves) unscored")
    ap.add_argument("--seeds", type=int, default=1, help="images per prompt")
    ap.add_argument("--base-seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale (the mini profile's)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--limit", type=int, help="score only the first N prompts")
    ap.add_argument("--save-grid", help="write an image grid (first 64 images) with prompts as labels")
    ap.add_argument("--device")
    args = ap.parse_args(argv)

    try:
        classifier = None if args.classifier.lower() == "none" else load_judge(args.classifier)
        rows = read_prompt_tsv(args.prompts, classifier.attributes if classifier is not None else None)
    except (PromptFileError, FileNotFoundError, NotADirectoryError) as err:
        ap.exit(2, f"error: {err}\n")
    rows = rows[: args.limit] if args.limit else rows
    pipe = load_pipeline(args.pipeline, args.text_encoder, args.device)
    if args.lora or args.trigger:
        from .adapters import LoraError, LoraRegistry, apply_loras, parse_lora_spec

        try:
            registry = LoraRegistry.from_file(args.lora_registry)
            weights = parse_lora_spec(args.lora)
            if args.trigger and not weights:
                raise LoraError("--trigger needs --lora NAME: the trigger word is the LoRA's")
            apply_loras(pipe, weights, registry)
        except LoraError as err:
            ap.exit(2, f"error: {err}\n")
        if args.trigger:
            rows = with_triggers(rows, [registry.get(n) for n in weights])
    translate_seconds = None
    if args.translate:
        from .translate import Translator

        translator = Translator.from_pretrained(args.translate)
        started = time.perf_counter()
        english = translator.translate([r.prompt for r in rows])
        translate_seconds = (time.perf_counter() - started) / len(rows)
        rows = [PromptRow(text, r.attributes, r.line) for text, r in zip(english, rows)]
    result, images, expanded = evaluate_rows(pipe, rows, classifier, seeds=args.seeds, base_seed=args.base_seed,
                                             steps=args.steps, guidance_scale=args.guidance, batch_size=args.batch_size)
    if translate_seconds is not None:
        result["translate_seconds_per_prompt"] = translate_seconds
    result.update({"pipeline": str(args.pipeline), "prompts": str(args.prompts), "text_encoder": args.text_encoder,
                   "translate": args.translate, "lora": args.lora, "trigger": args.trigger, "steps": args.steps,
                   "guidance": args.guidance})
    if args.save_grid:
        Path(args.save_grid).parent.mkdir(parents=True, exist_ok=True)
        image_grid(images[:64], [r.prompt for r in expanded[:64]]).save(args.save_grid)
        result["grid"] = args.save_grid
    print(json.dumps(result, ensure_ascii=False))
    return result



def evaluate_prompt_files(pipe, classifier, files: dict[str, str | Path], **kwargs):
    """Evaluate one pipeline on several prompt files: a table (one row per file) and the images of each."""
    import pandas as pd

    records, images = [], {}
    for name, path in files.items():
        rows = read_prompt_tsv(path, classifier.attributes if classifier is not None else None)
        result, imgs, expanded = evaluate_rows(pipe, rows, classifier, **kwargs)
        records.append({"prompts": name, **{f"{k} acc": v for k, v in result["accuracy"].items()},
                        "images": result["images"], "s/image": result["seconds_per_image"]})
        images[name] = (imgs, [r.prompt for r in expanded])
    return pd.DataFrame(records).set_index("prompts"), images


def guidance_sweep(pipe, classifier, prompt_file: str | Path, scales=(1.0, 2.0, 3.0, 5.0, 7.5), **kwargs):
    """Accuracy per classifier-free guidance scale on one prompt file (same seeds for every scale)."""
    import pandas as pd

    rows = read_prompt_tsv(prompt_file)
    records = []
    for scale in scales:
        result, _, _ = evaluate_rows(pipe, rows, classifier, guidance_scale=scale, **kwargs)
        records.append({"guidance": scale, **{f"{k} acc": v for k, v in result["accuracy"].items()}})
    return pd.DataFrame(records).set_index("guidance")



def sd_sweep(versions: dict[str, dict], encoders: dict[str, tuple[str, str | Path | None]], prompts: Sequence[tuple[str, str]],
             seed: int, classifier=None, prompt_files: dict[str, tuple[str, str]] | None = None,
             limit: int | None = None, device: str | None = None, **generate_kwargs):
    """SD versions x text encoders x prompts, with the same seed everywhere.

    versions: {name: {"path": SD folder or hub id, "stand_in": config-only folder}} (`generator.resolve_sd_versions`).
    encoders: {name: (kind, folder)}: kind "teacher" (the checkpoint's own English encoder on the English prompt),
      "raw" (the same on the Korean prompt: the problem), "student" (a Korean student swapped in, Korean prompt) or
      "translator" (a translator's English for the Korean prompt, then the checkpoint's own encoder).
    prompts: (Korean, English) pairs drawn as the grid. prompt_files: {name: (Korean TSV, English TSV)} scored with
      `classifier` (mini) into accuracy columns, the first `limit` rows of each.
    Returns (table, grids): one row per (version, encoder) with seconds per image, accuracies, or the error text of
    an incompatible pair; grids {(version, encoder): (images, labels)}.
    """
    import pandas as pd

    from .pipeline import IncompatibleCheckpointError, load_korean_pipeline
    from .translate import Translator

    records, grids = [], {}
    translators = {}
    for version, spec in versions.items():
        english_pipe = None
        for encoder, (kind, folder) in encoders.items():
            record = {"version": version, "encoder": encoder}
            try:
                if kind == "student":
                    pipe = load_korean_pipeline(sd=spec["path"], text_encoder=folder, device=device)
                elif spec["stand_in"]:
                    record["error"] = "config-only stand-in: only the student's compatibility check is shown"
                    records.append(record)
                    continue
                else:
                    english_pipe = english_pipe or load_pipeline(spec["path"], device=device)
                    pipe = english_pipe
            except IncompatibleCheckpointError as err:
                record["error"] = str(err)
                records.append(record)
                continue
            if kind == "translator":
                if folder not in translators:
                    translators[folder] = Translator.from_pretrained(folder, device=device)
                to_prompt = translators[folder].translate
            elif kind == "teacher":  # the English of each Korean prompt (prompt files: the English file, as is)
                to_prompt = lambda texts: [dict(prompts).get(t, t) for t in texts]  # noqa: E731
            else:
                to_prompt = list
            korean = [ko for ko, _ in prompts]
            started = time.perf_counter()  # the translator's time counts: it is part of that option's image
            images, _ = generate(pipe, to_prompt(korean), [seed] * len(korean), batch_size=1, **generate_kwargs)
            record["s/image (batch 1)"] = (time.perf_counter() - started) / len(korean)
            grids[(version, encoder)] = (images, korean)
            for name, (ko_file, en_file) in (prompt_files or {}).items() if classifier is not None else []:
                rows = read_prompt_tsv(en_file if kind == "teacher" else ko_file)[:limit]
                rows = [PromptRow(p, r.attributes, r.line) for p, r in zip(to_prompt([r.prompt for r in rows]), rows)]
                result, _, _ = evaluate_rows(pipe, rows, classifier, **generate_kwargs)
                record.update({f"{name} {attr}": acc for attr, acc in result["accuracy"].items() if attr in ("color", "shape")})
            records.append(record)
    return pd.DataFrame(records).set_index(["version", "encoder"]), grids


ENCODER_LABELS = {"teacher": "teacher · English prompt", "raw": "teacher · Korean prompt (raw)",
                  "translator": "translator + teacher"}


def sweep_encoders(names: Sequence[str], students: dict[str, Path], translator: str | Path | None = None) -> dict:
    """The `encoders` argument of `sd_sweep` from the profile's names: teacher, raw, translator, or a student objective."""
    out = {}
    for name in names:
        if name in ("teacher", "raw"):
            out[ENCODER_LABELS[name]] = (name, None)
        elif name == "translator":
            if translator is None:
                raise ValueError("the sweep lists 'translator' but no translator folder was given")
            out[ENCODER_LABELS[name]] = ("translator", translator)
        elif name in students:
            out[f"student · {name}"] = ("student", students[name])
        else:
            raise ValueError(f"unknown encoder {name!r} in sweep.encoders; known: teacher, raw, translator, {', '.join(students)}")
    return out



def cli() -> None:
    """The `koclip-evaluate` console script: `main` prints its table and JSON; the exit status is 0."""
    main(sys.argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
