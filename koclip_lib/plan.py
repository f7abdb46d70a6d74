"""A profile's build plan: what each stage reads, resolved in one place.

A profile (`params/*.yaml`) names its inputs: the corpus files, the SD checkpoint, the teacher, the student's
backbone, the translator, the captioner and caption translator, the LoRA image folders and where the unet stage's
latents come from. `profile_inputs(params)` resolves them into `ModelRef`s and folders, and the stages
(`distill.ensure_students`, `translate.ensure_translator`, `lora.ensure_loras`, ...) take those as arguments; no
stage reads the profile's name.

- A hub profile (`full`, `standin`) resolves every hub id through its `models:` map (a local folder in place of the
  id, and a `revision` pin), builds its corpus from `corpus.inputs`, and defaults the teacher to the SD checkpoint's
  own `text_encoder`/`tokenizer` subfolders (a fine-tune such as dreamshaper-7 then distils against its own encoder).
- The mini profile names the module that produces its inputs (`inputs_from: koclip_lib.miniworld`): the mini world
  is one way of making a teacher, an SD checkpoint, a corpus and image folders, and its `profile_inputs` builds them.
"""

from __future__ import annotations

import glob
import importlib
from dataclasses import dataclass
from pathlib import Path

from .common import artifact_hash, cached_artifact


@dataclass(frozen=True)
class ModelRef:
    """Where to load a model from: a hub id or a folder, an optional subfolder (SD's `text_encoder`) and revision."""
    path: str
    subfolder: str | None = None
    revision: str | None = None
    name: str | None = None  # the hub id this stands for (a local folder named in `models:`)

    @property
    def kwargs(self) -> dict:
        """The `from_pretrained` keyword arguments besides the path."""
        return {k: v for k, v in (("subfolder", self.subfolder), ("revision", self.revision)) if v}

    @classmethod
    def of(cls, model) -> "ModelRef":
        """`model` as a ModelRef: a ModelRef as it is, a folder or hub id wrapped (no subfolder, no revision)."""
        return model if isinstance(model, cls) else cls(str(model))

    def sibling(self, subfolder: str) -> "ModelRef":
        """Another component of the same checkpoint (the tokenizer beside the text encoder)."""
        return ModelRef(self.path, subfolder, self.revision, self.name)

    def tokenizer(self) -> "ModelRef":
        """Where this model's tokenizer is: an SD checkpoint's text encoder reads the `tokenizer` subfolder beside it."""
        return self.sibling("tokenizer") if self.subfolder == "text_encoder" else self

    @property
    def key(self) -> dict:
        """What a cache key records of this model: its id, revision and subfolder, and, for a folder this project
        built, that folder's own config hash (so retraining it retrains what depends on it)."""
        key = {"model": self.name or self.path, "subfolder": self.subfolder, "revision": self.revision}
        if (Path(self.path) / "artifact.json").exists():
            key["artifact"] = artifact_hash(self.path)
        return key

    def __str__(self) -> str:
        return f"{self.name or self.path}{'/' + self.subfolder if self.subfolder else ''}"

    def __fspath__(self) -> str:
        """The folder or hub id to load from (`os.fspath(ref)`, for a command line's `--pipeline`)."""
        return self.path


def checkpoint(model) -> tuple[str, dict]:
    """(path or hub id, `from_pretrained` keyword arguments) of a whole checkpoint, given as a folder, hub id or
    ModelRef: its revision, not a subfolder (a pipeline or a component class names its own)."""
    ref = ModelRef.of(model)
    return ref.path, {k: v for k, v in ref.kwargs.items() if k != "subfolder"}


def resolve_model(params: dict, model_id: str | None, subfolder: str | None = None) -> ModelRef | None:
    """A hub id through the profile's `models:` map: `{id: {path: folder, revision: sha}}` or `{id: folder}`;
    an id not in the map loads from the hub (or a folder of that name)."""
    if not model_id:
        return None
    entry = (params.get("models") or {}).get(model_id)
    if entry is None:
        return ModelRef(str(model_id), subfolder)
    if isinstance(entry, str):
        entry = {"path": entry}
    return ModelRef(str(entry.get("path") or model_id), subfolder, entry.get("revision"), name=model_id)


def expand_inputs(inputs: list[str]) -> list[str]:
    """Corpus inputs with shell globs expanded (a `FMT:` prefix kept); 🤗 dataset ids (`hf:org/name`) pass as they are.
    A glob that matches nothing is an error naming it: a typo must not build an empty corpus."""
    from .corpus import split_format

    out = []
    for item in inputs:
        prefix, rest = split_format(item)
        if str(item).startswith("hf:") or not any(ch in rest for ch in "*?["):
            out.append(str(item))
            continue
        matches = sorted(glob.glob(rest))
        if not matches:
            raise FileNotFoundError(f"corpus input {item!r} matches no file")
        out += [f"{prefix}:{m}" if prefix else m for m in matches]
    return out


class HubInputs:
    """The inputs of a profile of real (or stand-in) 🤗 checkpoints and the user's own files."""

    def __init__(self, params: dict):
        self.params = params
        self.root = Path(params["root"])

    def model(self, model_id: str | None, subfolder: str | None = None) -> ModelRef | None:
        return resolve_model(self.params, model_id, subfolder)

    def sd(self) -> ModelRef:
        """The SD 1.x checkpoint the Korean pipeline is built on."""
        return self.model(self.params["sd"])

    def teacher(self) -> ModelRef:
        """The English text encoder the student learns to imitate: `distill.teacher`, or the SD's own."""
        named = self.params.get("distill", {}).get("teacher")
        return self.model(named) if named else self.sd().sibling("text_encoder")

    def backbone(self) -> ModelRef | None:
        return self.model(self.params.get("distill", {}).get("backbone"))

    def corpus(self) -> Path:
        """The profile's corpus built from `corpus.inputs` (AI Hub CSV/XLSX, line pairs, Tatoeba, `hf:` datasets),
        English sides longer than the teacher's 77 tokens dropped; cached by the inputs' names, sizes and settings."""
        from . import corpus

        section = self.params.get("corpus", {})
        inputs = expand_inputs(section.get("inputs", []))
        if not inputs:
            raise ValueError("the profile's corpus.inputs is empty: name the AI Hub CSV/XLSX (or other) files to build from")
        teacher = self.teacher()
        files = {}
        for item in inputs:
            path = Path(corpus.split_format(item)[1])
            files[str(item)] = path.stat().st_size if path.exists() else None
        key = {"inputs": files, "corpus": {k: v for k, v in section.items() if k != "inputs"}, "teacher": teacher.key}

        def build(out_dir: Path):
            corpus.build_corpus([corpus.open_input(item) for item in inputs], out_dir, corpus.BuildConfig(
                val_frac=section.get("val_frac", 0.05), test_frac=section.get("test_frac", 0.05), progress=False,
                en_max_tokens=section.get("en_max_tokens", 77)), count_en_tokens=corpus.token_counter(teacher))

        return cached_artifact(self.root / "corpus", key, build)

    def corpus_name(self) -> str:
        """The corpus's input files, as a model card names its training data."""
        return ", ".join(expand_inputs(self.params.get("corpus", {}).get("inputs", [])))

    def latent_source(self):
        """Where the unet stage's latents come from (`distill.unet_latents`): an image folder encoded by the SD's VAE,
        or, with no images, latents the English pipeline draws from the corpus's English sentences."""
        from . import latents

        spec = dict(self.params.get("distill", {}).get("unet_latents") or {})
        if spec.get("image_dir"):
            return latents.ImageFolderLatents(spec["image_dir"], resolution=spec.get("resolution"))
        return latents.GeneratedLatents(self.corpus(), n=spec.get("n", 256), steps=spec.get("steps", 20),
                                        guidance_scale=spec.get("guidance_scale", 7.5), batch_size=spec.get("batch_size", 8),
                                        seed=self.params.get("seed", 0), root=self.root / "latents")

    def translator(self) -> ModelRef | None:
        return self.model(self.params.get("translator", {}).get("pretrained"))

    def lora_dataset(self, adapter: dict, out_dir: Path, resolution: int | None, device=None) -> Path:
        """An adapter's image folder captioned by the profile's captioner (English) and caption translator (en->ko)."""
        from . import lora

        section = self.params.get("lora", {})
        captioner = lora.hf_captioner(self.model(section.get("captioner", "Salesforce/blip-image-captioning-base")), device)
        translator = lora.hf_translator(self.model(section.get("caption_translator", "Helsinki-NLP/opus-mt-tc-big-en-ko")), device)
        return lora.caption_image_folder(adapter["image_dir"], out_dir, adapter.get("trigger", ""), captioner, translator,
                                         position=adapter.get("trigger_position", "end"), resolution=resolution)

    def lora_dataset_key(self, adapter: dict) -> dict:
        section = self.params.get("lora", {})
        folder = Path(adapter["image_dir"])
        images = sorted((p.name, p.stat().st_size) for p in folder.iterdir()) if folder.is_dir() else None
        return {"images": images, "captioner": self.model(section.get("captioner")).key if section.get("captioner") else None,
                "caption_translator": self.model(section.get("caption_translator")).key if section.get("caption_translator") else None}

    def sweep_versions(self) -> dict[str, dict]:
        """`sweep.versions` as {name: {"path": ModelRef, "stand_in": False}}."""
        return {v["name"]: {"path": self.model(v["path"]), "stand_in": False} for v in self.params.get("sweep", {}).get("versions", [])}

    def judge(self):
        """An attribute classifier for accuracy tables, where the profile has one (a hub profile has none)."""
        return None

    def generator_paths(self) -> dict:
        """The English pipeline's parts as the notebooks read them: the SD checkpoint, its teacher and VAE, and the
        judge (None here: a hub profile's images are shown, not scored)."""
        sd = self.sd()
        return {"sd": sd, "teacher": self.teacher(), "vae": sd.sibling("vae"), "classifier": self.judge()}

    def eval_prompts(self) -> dict[str, Path]:
        """Prompt lists (TSV, one `prompt` column) from the corpus, `evaluate.n_prompts` of each: held-out pairs from
        its test split, seen pairs from its train split, the Korean side and the same pairs' English."""
        import csv
        import io

        from .common import write_text_atomic
        from .distill import load_pairs

        corpus_dir = self.corpus()
        n = self.params.get("evaluate", {}).get("n_prompts", 8)

        def build(out_dir: Path):
            for split, name in (("test", "heldout"), ("train", "seen")):
                pairs = load_pairs(corpus_dir, split)[:n]
                for lang, side in (("ko", 0), ("en", 1)):
                    buffer = io.StringIO()
                    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
                    writer.writerows([["prompt"]] + [[pair[side]] for pair in pairs])
                    write_text_atomic(out_dir / f"{lang}_{name}.tsv", buffer.getvalue())

        folder = cached_artifact(self.root / "prompts", {"corpus": artifact_hash(corpus_dir), "n": n}, build)
        return {f"{lang}_{name}": folder / f"{lang}_{name}.tsv" for lang in ("ko", "en") for name in ("heldout", "seen")}


def profile_inputs(params: dict):
    """The profile's inputs: `inputs_from: MODULE` names a module whose `profile_inputs(params)` produces them (the
    mini world); otherwise they are hub checkpoints and files named in the profile."""
    producer = params.get("inputs_from")
    if producer:
        return importlib.import_module(producer).profile_inputs(params)
    return HubInputs(params)


# ---------------------------------------------------------------------------------------------------------------
# The stages on a profile: each resolves the inputs it reads, then calls the stage with them. `run --build` and the
# notebooks call these, so both build (or find cached) the same artifacts.
# ---------------------------------------------------------------------------------------------------------------
def students(params: dict, objectives: list[str] | None = None) -> dict[str, Path]:
    """The profile's Korean students, one per distillation objective (`distill.ensure_students`)."""
    from . import distill

    inputs = profile_inputs(params)
    section = params.get("distill", {})
    wanted = objectives or section.get("objectives", list(distill.OBJECTIVES))
    needs_sd = any(distill.OBJECTIVES[o].needs_sd for o in wanted if o in distill.OBJECTIVES)  # else: no SD is built
    return distill.ensure_students(section, inputs.root, corpus_dir=inputs.corpus(), teacher=inputs.teacher(),
                                   corpus_name=inputs.corpus_name(), objectives=wanted,
                                   sd=inputs.sd() if needs_sd else None, latents=inputs.latent_source() if needs_sd else None,
                                   backbone=inputs.backbone(), seed=params.get("seed", 0),
                                   licenses=params.get("licenses"))


def translator(params: dict) -> Path:
    """The translate-then-generate baseline's translator (`translate.ensure_translator`)."""
    from . import translate

    inputs = profile_inputs(params)
    return translate.ensure_translator(params.get("translator"), inputs.root, corpus_dir=inputs.corpus(),
                                       pretrained=inputs.translator(), seed=params.get("seed", 0))


def loras(params: dict, names: list[str] | None = None) -> Path:
    """The profile's style LoRAs and their registry (`lora.ensure_loras`). Adapters behind the Korean student use
    `lora.student`'s objective; adapters behind the teacher (the seed's English LoRA) need no student."""
    from . import lora

    inputs = profile_inputs(params)
    section = params.get("lora", {})
    adapters = [a for a in section.get("adapters", []) if names is None or a["name"] in names]
    needs_student = any(a.get("text_encoder", "student") == "student" for a in adapters)
    student = students(params)[section.get("student", "unet")] if needs_student else None
    return lora.ensure_loras(section, inputs.root, sd=inputs.sd(), student=student, make_dataset=inputs.lora_dataset,
                             dataset_key=inputs.lora_dataset_key, names=names, licenses=params.get("licenses"))


def save_korean_pipeline(params: dict, student: str | Path | None = None) -> Path:
    """The production step: the profile's SD with the chosen student (default `root/student`, which notebook 02's
    `distill.select_best` writes, else the `lora.student` objective) saved as one folder, `root/korean_sd`."""
    from .cards import korean_pipeline_card
    from .pipeline import load_korean_pipeline

    inputs = profile_inputs(params)
    if student is None:
        chosen = inputs.root / "student"
        student = chosen if (chosen / "config.json").exists() else students(params)[params.get("lora", {}).get("student", "unet")]
    out = inputs.root / "korean_sd"
    load_korean_pipeline(sd=inputs.sd(), text_encoder=student).save_pretrained(out)
    korean_pipeline_card(out, sd=inputs.sd().name or inputs.sd().path, student=student, licenses=params.get("licenses"))
    return out
