"""Model cards for the saved artifacts (student, Korean pipeline), written with `huggingface_hub.ModelCard`.

A card's YAML header is what the Hub indexes: licence, base model, languages, datasets, metrics. Every artifact
derives from something with a licence of its own (SD 1.5: CreativeML OpenRAIL-M; klue/roberta-small: CC-BY-SA 4.0;
the corpus: its provider's terms): the profile names them under `licenses:` (hub id or input -> licence id) and the
card lists each, so a `push_to_hub` carries them. Anything the profile does not name is the project's own work
(`PROJECT_LICENSE`, the repository's LICENSE file), as the mini world's models trained from scratch are.

    card = ModelCard.load("outputs/mini/student/README.md"); card.data.license, card.data.base_model
    card.push_to_hub("me/koclip-student")   # with the folder: model.push_to_hub(...), pipe.push_to_hub(...)
"""

from __future__ import annotations

from fnmatch import fnmatch
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .adapters import SD15_LICENSE, a1111_sidecar, korean_trigger_note

PROJECT_LICENSE = "apache-2.0"
# licence ids the Hub knows; anything else goes in as `other` with its name (AI Hub's terms, say)
HUB_LICENSES = {"apache-2.0", "mit", "cc-by-4.0", "cc-by-sa-4.0", "cc-by-nc-4.0", "cc-by-nc-sa-4.0", "cc-by-2.0",
                "creativeml-openrail-m", "openrail", "openrail++", "bsd-3-clause", "other"}


def licence_of(name: str | None, licenses: dict | None) -> str:
    """The licence the profile gives `name` (a hub id, a component of one such as `<id>/text_encoder`, or a corpus
    input; keys may be globs), else the project's own."""
    for pattern, licence in (licenses or {}).items():
        if name and (fnmatch(str(name), pattern) or str(name).startswith(pattern.rstrip("/") + "/")):
            return licence
    return PROJECT_LICENSE


def _licence_fields(licence: str) -> dict:
    return {"license": licence} if licence in HUB_LICENSES else {"license": "other", "license_name": licence}


def write_card(folder, *, title: str, summary: str, licence: str, derived_from: dict[str, str], usage: str,
               sections: dict[str, str] | None = None, eval_results: list[EvalResult] | None = None, **card_data) -> Path:
    """README.md in `folder`: YAML from `ModelCardData` (licence, `card_data`: base_model, language, datasets, tags,
    library_name, instance_prompt, ...), then the summary, what the artifact derives from and under which licence, a
    usage snippet, and `sections` ({heading: markdown})."""
    data = ModelCardData(**_licence_fields(licence), eval_results=eval_results or None,
                         model_name=title if eval_results else None, **card_data)
    sources = "\n".join(f"- `{what}`: {lic}" for what, lic in derived_from.items()) or "- nothing outside this project"
    text = (f"---\n{data.to_yaml()}\n---\n\n# {title}\n\n{summary}\n\n## Derived from (and their licences)\n\n{sources}\n\n"
            f"This artifact's licence is `{licence}`: the most restrictive of those above where one applies to "
            "derivatives (CreativeML OpenRAIL-M's use restrictions travel with any model derived from SD 1.5).\n\n"
            f"## Usage\n\n```python\n{usage.strip()}\n```\n")
    for heading, body in (sections or {}).items():
        text += f"\n## {heading}\n\n{body.strip()}\n"
    path = Path(folder) / "README.md"
    ModelCard(text).save(path)
    return path


def strictest(licences: list[str]) -> str:
    """The licence a derivative carries: OpenRAIL-M over share-alike over the rest (their conditions pass on)."""
    for licence in ("creativeml-openrail-m", "openrail", "cc-by-nc-sa-4.0", "cc-by-sa-4.0", "cc-by-nc-4.0"):
        if licence in licences:
            return licence
    others = [lic for lic in licences if lic not in (PROJECT_LICENSE, "mit", "apache-2.0", "cc-by-4.0", "cc-by-2.0")]
    return others[0] if others else PROJECT_LICENSE


def korean_pipeline_card(folder, *, sd: str, student, licenses: dict | None = None) -> Path:
    """The card of a saved Korean pipeline folder: SD checkpoint `sd` (its hub id) with the student in `student`."""
    student_card = Path(student) / "README.md"
    student_data = ModelCard.load(student_card).data if student_card.is_file() else None
    derived = {sd: licence_of(sd, licenses)}
    if student_data is not None:
        derived[f"{student} (the Korean text encoder)"] = getattr(student_data, "license_name", None) or student_data.license
    return write_card(
        folder, title="koclip Korean Stable Diffusion",
        summary=f"`{sd}` with its CLIP text encoder replaced by a Korean student distilled to give CLIP's states for the "
                "English translation: Korean prompts draw directly, with no translation step. UNet and VAE are the "
                "checkpoint's own, byte for byte.",
        licence=strictest(list(derived.values())), derived_from=derived, base_model=sd, language=["ko", "en"],
        library_name="diffusers", pipeline_tag="text-to-image",
        tags=["koclip", "stable-diffusion", "text-to-image", "korean"],
        usage=f"""
import torch
from diffusers import DiffusionPipeline

# this folder's pipeline.py and text_encoder/modeling_korean_text_encoder.py: no koclip install needed
pipe = DiffusionPipeline.from_pretrained("{folder}", custom_pipeline="pipeline", trust_remote_code=True)
image = pipe("왼쪽에 빨간 별이 있다", generator=torch.Generator().manual_seed(1147446245)).images[0]
# with koclip installed: koclip_lib.pipeline.load_korean_pipeline("{folder}")
""")


def write_lora_card(folder: str | Path, record: dict, *, base_model: str, pipeline: str, text_encoder: str | None = None,
                    korean: bool = True, license: str = SD15_LICENSE, example_prompt: str = "",
                    best_val: float | None = None) -> Path:
    """`folder/README.md`, the LoRA's model card: licence, base model, language, tags, `instance_prompt` (the
    trigger), which file each tool reads, and a snippet that draws with it through koclip_lib. `record` is the
    folder's `lora.json`; the snippet loads `pipeline` with `text_encoder` (the Korean student; None for a saved Korean
    pipeline, which has its own); `korean`: the LoRA was trained behind the Korean text encoder."""
    folder = Path(folder).resolve()
    name, trigger, kohya = record["name"], record["trigger"], record["kohya_file"]
    if korean:
        encoder = f", text_encoder={text_encoder!r}" if text_encoder else ""
        load = ["from koclip_lib.pipeline import load_korean_pipeline", "",
                f"pipe = load_korean_pipeline(sd={pipeline!r}{encoder})  # the Korean text encoder: the trigger needs it"]
    else:
        load = ["from koclip_lib.evaluate import load_pipeline", "",
                f"pipe = load_pipeline({pipeline!r})  # the base's own CLIP text encoder, which it was trained behind"]
    snippet = ["from koclip_lib.adapters import LoraRegistry, apply_loras", *load,
               f"registry = LoraRegistry({{{name!r}: {{'path': {str(folder)!r}, 'trigger': {trigger!r}}}}})",
               f"apply_loras(pipe, {{{name!r}: 1.0}}, registry)" + (
                   "  # the UNet's and the text encoder's LoRA, and the trigger's token" if record.get("text_encoder_file")
                   else f"  # or: pipe.load_lora_weights({str(folder)!r})"),
               f"pipe({example_prompt!r}).images[0].save({name + '.png'!r})"]
    trigger_line = korean_trigger_note(trigger) or (f"The trigger '{trigger}' is read by the base's own CLIP text encoder."
                                                    if trigger else "No trigger: the style is on whenever the LoRA is.")
    files = "\n".join([
        "| file | layout | read by |", "|---|---|---|",
        f"| `{record['file']}` | diffusers / peft (`unet.…lora.down.weight`) | diffusers `pipe.load_lora_weights(folder)`, "
        "koclip `apply_loras`; not ComfyUI's LoraLoader |",
        f"| `{kohya}` | kohya-ss (`lora_unet_…`, `ss_*` and `modelspec.*` metadata) | kohya sd-scripts, A1111 / Forge, "
        "ComfyUI, diffusers |",
        f"| `{a1111_sidecar(kohya).name}` | A1111 user metadata | A1111's activation text (the trigger) |",
        *([f"| `{record['trigger_embedding_file']}` | the trigger as a token of its own: its embedding for the "
           f"`{record['text_encoder']}` text encoder (diffusers' textual-inversion layout) | koclip `apply_loras`, "
           "diffusers `pipe.load_textual_inversion(folder, weight_name=..., token=trigger)`; without it the LoRA "
           "does not know its trigger |"] if record.get("trigger_embedding_file") else []),
        *([f"| `{record['text_encoder_file']}` | peft (`….lora_A.weight`; rank, alpha and target modules in the "
           f"metadata): a LoRA on the `{record['text_encoder']}` text encoder that teaches it the trigger | koclip "
           "`apply_loras`; learnt with the trigger's row: the two go together |"] if record.get("text_encoder_file") else []),
        "| `lora.json` | koclip's training record | |"])
    res = record["resolution"]
    training = (f"UNet LoRA (rank {record['rank']}, alpha {record['alpha']}, on {', '.join(record['target_modules'])}), "
                f"{record['images']} images at {res}x{res}, {record['steps']} steps, behind the `{record['text_encoder']}` "
                "text encoder.")
    if record.get("text_encoder_file"):
        config = record["config"]
        training += (f" First, {record['text_encoder_steps']} steps of a rank-{config['text_encoder_rank']} LoRA on that "
                     f"text encoder ({', '.join(config['text_encoder_target_modules'])}) and the trigger's row: a "
                     f"triggered caption reads as the caption plus what `{config['style_prompt_en']}` adds in the base's "
                     "own text encoder, an untriggered one as before.")
    if best_val is not None and best_val < float("inf"):  # inf: no validation ran
        training += f" Best validation loss (noise-prediction MSE on held-out images): {best_val:.4g}."
    summary = "\n\n".join(filter(None, [record.get("description"), f"**Trigger:** `{trigger}`. {trigger_line}"]))
    return write_card(folder, title=f"{name}: a style LoRA for `{base_model}`", summary=summary, licence=license,
                      derived_from={base_model: license}, usage="\n".join(snippet),
                      sections={"Files": files, "Training": training}, base_model=base_model,
                      language="ko" if korean else "en", library_name="diffusers", instance_prompt=trigger or None,
                      tags=["lora", "text-to-image", "stable-diffusion", "stable-diffusion-diffusers", "diffusers", "koclip"])
