"""Translate-then-generate baseline (option ③): Korean -> English machine translation, then the English pipeline.

The full profile loads a real Marian checkpoint (Helsinki-NLP/opus-mt-ko-en); the mini profile trains a tiny
MarianMTModel from scratch on the mini world's parallel corpus. Both go through the same classes and the same
`from_pretrained` code, so the baseline is measured the same way in both profiles.
Read top to bottom: config -> Translator (inference) -> tokenizer -> model -> training + metrics -> cached artifact.
"""

from __future__ import annotations

import io
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from transformers import AutoTokenizer, GenerationConfig, MarianConfig, MarianMTModel, MarianTokenizer

from .common import cached_artifact, is_main_process, pick_device, wait_for_everyone, write_json
from .train import Batch, LoopConfig, remove_checkpoints, step_generator, train_loop


@dataclass
class TranslatorConfig:
    """The `translator:` section of a profile. `pretrained` set: start from that checkpoint (its tokenizer too)
    and fine-tune for `loop.steps` steps (0: evaluate it as is); unset: a tokenizer and a tiny Marian from scratch."""

    pretrained: str | None = None  # hub id or folder, e.g. Helsinki-NLP/opus-mt-ko-en
    vocab_size: int = 1000  # shared Korean + English sentencepiece vocabulary (an upper bound: the mini world needs fewer)
    d_model: int = 128
    layers: int = 2  # encoder layers = decoder layers
    heads: int = 4
    ffn_dim: int = 256
    dropout: float = 0.1
    max_length: int = 64  # tokens per side in training; also the position-embedding table size
    val_examples: int = 512  # validation loss on this many val pairs (fixed, so values are comparable across steps)
    test_examples: int = 1000  # generation metrics on this many test pairs
    # lr 2e-3 stalled in a source-blind language-model plateau in one trial; 1e-3 reaches val loss ~0.30 by step 800
    loop: dict = field(default_factory=lambda: {"steps": 800, "lr": 1e-3, "batch_size": 64, "warmup_steps": 100,
                                                "validate_every": 200, "checkpoint_every": 400, "log_every": 50})
    seed: int = 0

    @classmethod
    def from_params(cls, params: dict | None) -> "TranslatorConfig":
        params = dict(params or {})  # a partial `loop:` overrides the default loop key by key, not as a whole
        return cls(**{**params, "loop": {**cls().loop, **(params.get("loop") or {})}})


# ---------------------------------------------------------------------------------------------------------------
# Inference.
# ---------------------------------------------------------------------------------------------------------------
class Translator:
    """A MarianMTModel and its tokenizer: `translate(["빨간 원"]) -> ["a red circle"]`."""

    def __init__(self, model: MarianMTModel, tokenizer, device: str | torch.device | None = None):
        self.device = pick_device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer

    @classmethod
    def from_pretrained(cls, path_or_hub_id, device: str | None = None) -> "Translator":
        """A folder, hub id or `plan.ModelRef` (a revision pin)."""
        from .plan import ModelRef

        ref = ModelRef.of(path_or_hub_id)
        # AutoTokenizer resolves to MarianTokenizer for real opus-mt checkpoints and for ours alike
        tokenizer = AutoTokenizer.from_pretrained(ref.path, **ref.kwargs)
        model = MarianMTModel.from_pretrained(ref.path, **ref.kwargs)
        return cls(model, tokenizer, device)

    def save_pretrained(self, out_dir: str | Path) -> Path:
        self.model.save_pretrained(out_dir)
        self.tokenizer.save_pretrained(out_dir)
        return Path(out_dir)

    @torch.no_grad()
    def translate(self, texts: Sequence[str], batch_size: int = 64, max_new_tokens: int = 64, num_beams: int = 1) -> list[str]:
        """English for each Korean text, in input order. Greedy by default.

        An empty or blank prompt raises ValueError: a translator would invent a sentence for it, and the
        generator would silently draw that. Texts are batched by length (less padding) and put back in order.
        """
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise ValueError(f"prompt {i} is empty or not a string: {t!r}")
        limit = self.model.config.max_position_embeddings  # both sides' position tables end here
        max_new_tokens = min(max_new_tokens, limit - 1)  # the decoder also holds the start token
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        out: list[str] = [""] * len(texts)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            enc = self.tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, truncation=True,
                                 max_length=limit).to(self.device)
            # max_length=None: max_new_tokens alone bounds the output (checkpoints also carry a max_length)
            ids = self.model.generate(**enc, max_new_tokens=max_new_tokens, max_length=None, num_beams=num_beams, do_sample=False)
            for i, text in zip(idx, self.tokenizer.batch_decode(ids, skip_special_tokens=True)):
                out[i] = text
        return out

    def seconds_per_prompt(self, texts: Sequence[str], batch_size: int = 1, warmup: int = 2, **kwargs) -> float:
        """Wall-clock seconds per prompt for translating `texts` at `batch_size` (after a short warm-up)."""
        self.translate(list(texts)[:warmup], batch_size=batch_size, **kwargs)
        start = time.perf_counter()
        self.translate(texts, batch_size=batch_size, **kwargs)
        return (time.perf_counter() - start) / max(len(texts), 1)


# ---------------------------------------------------------------------------------------------------------------
# Tokenizer. Choice: MarianTokenizer over sentencepiece models, the files real opus-mt checkpoints ship
# (source.spm, target.spm, vocab.json), so the mini and full profiles load through one code path. One unigram
# model is trained on Korean and English together and used as both source.spm and target.spm (a shared vocab,
# as with tied Marian embeddings). Ids follow opus-mt: </s> = 0, <unk> = 1, <pad> = last = decoder start.
# ---------------------------------------------------------------------------------------------------------------
def train_marian_tokenizer(texts: Sequence[str], out_dir: str | Path, vocab_size: int = 1000) -> MarianTokenizer:
    import sentencepiece as spm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size, model_type="unigram",
        character_coverage=1.0, hard_vocab_limit=False,  # a small corpus may support fewer pieces than asked
        unk_id=1, eos_id=0, bos_id=-1, pad_id=-1, num_threads=1, minloglevel=2,
    )
    for name in ("source.spm", "target.spm"):
        (out_dir / name).write_bytes(model.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    vocab["<pad>"] = len(vocab)
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=1), encoding="utf-8")
    tokenizer = MarianTokenizer(str(out_dir / "source.spm"), str(out_dir / "target.spm"), str(out_dir / "vocab.json"),
                                source_lang="ko", target_lang="en")
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def build_marian(cfg: TranslatorConfig, tokenizer) -> MarianMTModel:
    """A tiny MarianMTModel whose special ids agree with the tokenizer (eos ends, pad starts the decoder)."""
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    config = MarianConfig(
        vocab_size=len(tokenizer), d_model=cfg.d_model, encoder_layers=cfg.layers, decoder_layers=cfg.layers,
        encoder_attention_heads=cfg.heads, decoder_attention_heads=cfg.heads, encoder_ffn_dim=cfg.ffn_dim,
        decoder_ffn_dim=cfg.ffn_dim, dropout=cfg.dropout, max_position_embeddings=cfg.max_length,
        pad_token_id=pad, eos_token_id=eos, decoder_start_token_id=pad, forced_eos_token_id=eos, bos_token_id=None,
        scale_embedding=True,  # as opus-mt: unscaled N(0, 0.02) embeddings drown under the sinusoidal positions
    )
    torch.manual_seed(cfg.seed)
    model = MarianMTModel(config)
    model.generation_config = GenerationConfig(decoder_start_token_id=pad, eos_token_id=eos, pad_token_id=pad,
                                               forced_eos_token_id=eos, bad_words_ids=[[pad]], num_beams=1)
    return model


# ---------------------------------------------------------------------------------------------------------------
# Training data: each split encoded once into padded id matrices; a batch is rows picked by step_generator.
# ---------------------------------------------------------------------------------------------------------------
def _encode_pairs(tokenizer, ko: Sequence[str], en: Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
    enc = tokenizer(list(ko), text_target=list(en), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    labels = enc["labels"].masked_fill(enc["labels"] == tokenizer.pad_token_id, -100)  # no loss on padding
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}


def _rows(data: dict[str, torch.Tensor], idx) -> dict[str, torch.Tensor]:
    """The rows `idx`, trimmed to their longest source and target (the matrices are padded to the split's longest)."""
    batch = {k: v[idx] for k, v in data.items()}
    src_len = int(batch["attention_mask"].sum(1).max())
    tgt_len = int((batch["labels"] != -100).sum(1).max())
    return {"input_ids": batch["input_ids"][:, :src_len].contiguous(),
            "attention_mask": batch["attention_mask"][:, :src_len].contiguous(), "labels": batch["labels"][:, :tgt_len].contiguous()}


@torch.no_grad()
def teacher_forced_metrics(model: MarianMTModel, data: dict[str, torch.Tensor], batch_size: int = 256) -> dict[str, float]:
    """Mean cross-entropy per target token and next-token accuracy, given the reference prefix."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    loss_sum, correct, count = 0.0, 0, 0
    for start in range(0, len(data["input_ids"]), batch_size):
        batch = {k: v.to(device) for k, v in _rows(data, slice(start, start + batch_size)).items()}
        logits = model(**batch).logits
        mask = batch["labels"] != -100
        loss_sum += float(torch.nn.functional.cross_entropy(logits[mask], batch["labels"][mask], reduction="sum"))
        correct += int((logits.argmax(-1)[mask] == batch["labels"][mask]).sum())
        count += int(mask.sum())
    model.train(was_training)
    return {"loss": loss_sum / max(count, 1), "token_accuracy": correct / max(count, 1)}


def chrf(hypotheses: Sequence[str], references: Sequence[str], n: int = 6, beta: float = 2.0) -> float:
    """Corpus chrF (character n-grams 1..n, spaces removed, recall weighted by beta), 0-100, as sacrebleu computes it."""
    precisions, recalls = [], []
    for k in range(1, n + 1):
        match = hyp_total = ref_total = 0
        for hyp, ref in zip(hypotheses, references):
            h, r = hyp.replace(" ", ""), ref.replace(" ", "")
            hc, rc = Counter(h[i:i + k] for i in range(len(h) - k + 1)), Counter(r[i:i + k] for i in range(len(r) - k + 1))
            match += sum((hc & rc).values())
            hyp_total, ref_total = hyp_total + sum(hc.values()), ref_total + sum(rc.values())
        if hyp_total and ref_total:
            precisions.append(match / hyp_total)
            recalls.append(match / ref_total)
    if not precisions:
        return 0.0
    p, r = sum(precisions) / len(precisions), sum(recalls) / len(recalls)
    return 0.0 if p + r == 0 else 100 * (1 + beta**2) * p * r / (beta**2 * p + r)


def translation_metrics(translator: Translator, ko: Sequence[str], en: Sequence[str]) -> dict:
    """Exact match (whitespace- and case-normalised) and chrF of greedy translations against references."""
    start = time.perf_counter()
    hyp = translator.translate(ko)
    seconds = time.perf_counter() - start
    norm = lambda s: " ".join(s.lower().split())  # noqa: E731
    exact = sum(norm(h) == norm(r) for h, r in zip(hyp, en)) / max(len(en), 1)
    samples = [{"ko": k, "en": r, "mt": h} for k, r, h in list(zip(ko, en, hyp))[:10]]
    return {"exact_match": exact, "chrf": chrf(hyp, en), "n": len(en), "seconds_per_prompt_b64": seconds / max(len(en), 1),
            "samples": samples}


# ---------------------------------------------------------------------------------------------------------------
# Training: the project's train_loop; batches are a pure function of the step, so a resumed run is exact.
# ---------------------------------------------------------------------------------------------------------------
def train_translator(corpus_dir: str | Path, out_dir: str | Path, cfg: TranslatorConfig) -> dict:
    """Train (or fine-tune) a Marian translator on the corpus's train split; save it to `out_dir` and return metrics.

    `Translator.from_pretrained(out_dir)` restores the result. Validation loss on the val split picks the
    best weights; exact match, chrF and teacher-forced token accuracy are measured on the test split.
    """
    from .corpus import load_corpus

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    def pairs(split: str, n: int | None = None) -> dict[str, list[str]]:
        ds = load_corpus(corpus_dir, split)
        ds = ds if n is None else ds.select(range(min(n, len(ds))))
        return {side: list(ds[side]) for side in ("ko", "en")}

    loop = LoopConfig.from_params(cfg.loop, seed=cfg.seed)
    train = pairs("train") if loop.steps > 0 or not cfg.pretrained else None  # steps 0: a checkpoint evaluated as is
    if cfg.pretrained:
        tokenizer = AutoTokenizer.from_pretrained(cfg.pretrained)
        model = MarianMTModel.from_pretrained(cfg.pretrained)
    else:
        # an interrupted build resumes with the tokenizer it started with; under a launcher the main process trains
        # it and the others read it
        tokenizer = None
        if is_main_process() and not (out_dir / "vocab.json").exists():
            tokenizer = train_marian_tokenizer(train["ko"] + train["en"], out_dir, cfg.vocab_size)
        wait_for_everyone()
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(out_dir)
        model = build_marian(cfg, tokenizer)
    max_length = min(cfg.max_length, model.config.max_position_embeddings)
    val, test = pairs("val", cfg.val_examples), pairs("test", cfg.test_examples)
    val_data = _encode_pairs(tokenizer, val["ko"], val["en"], max_length)
    device = pick_device()
    val_before = teacher_forced_metrics(model.to(device), val_data)["loss"]
    log = {"steps": 0, "seconds": 0.0, "history": []}
    if loop.steps > 0:
        train_data = _encode_pairs(tokenizer, train["ko"], train["en"], max_length)

        def loss_fn(batch: Batch):
            idx = torch.randint(len(train_data["input_ids"]), (batch.size,), generator=step_generator(cfg.seed, batch.step))
            return batch.models[0](**{k: v.to(device) for k, v in _rows(train_data, batch.take(idx)).items()}).loss

        (out_dir / "train").mkdir(exist_ok=True)  # train_loop saves best weights there before its first checkpoint
        log = train_loop([model], loss_fn, loop, out_dir / "train", desc="translator",
                         validate=lambda: teacher_forced_metrics(model, val_data)["loss"])
    model.eval()
    if not is_main_process():  # the other processes trained beside it; the main one measures and saves
        return {}
    translator = Translator(model, tokenizer)
    translator.save_pretrained(out_dir)
    test_tf = teacher_forced_metrics(model, _encode_pairs(tokenizer, test["ko"], test["en"], max_length))
    metrics = {
        "val_loss_before": val_before,
        "val_loss": teacher_forced_metrics(model, val_data)["loss"],
        "test_loss": test_tf["loss"],
        "test_token_accuracy": test_tf["token_accuracy"],
        **{f"test_{k}": v for k, v in translation_metrics(translator, test["ko"], test["en"]).items()},
        "train_seconds": log["seconds"], "steps": log["steps"],
        "parameters": sum(p.numel() for p in model.parameters()), "vocab_size": len(tokenizer),
        "loss_curve": [(h["step"], h["loss"]) for h in log["history"] if "loss" in h],
        "val_curve": [(h["step"], h["val_loss"]) for h in log["history"] if "val_loss" in h],
        "config": asdict(cfg),
    }
    write_json(out_dir / "metrics.json", metrics)
    remove_checkpoints(out_dir / "train")
    (out_dir / "train" / "best_weights.pt").unlink(missing_ok=True)  # saved above as the model itself
    return metrics


# ---------------------------------------------------------------------------------------------------------------
# The main job's entry point: cached under the profile's root by config.
# ---------------------------------------------------------------------------------------------------------------
def ensure_translator(section: dict | None, root: str | Path, *, corpus_dir, pretrained=None, seed: int = 0) -> Path:
    """Train (or reuse) the translator on the corpus; returns the folder for `Translator.from_pretrained`.
    `section`: the profile's `translator:` settings; `pretrained`: the checkpoint to start from (a `plan.ModelRef`,
    resolved through the profile's `models:`), fine-tuned for `loop.steps` steps (0: evaluated as it is)."""
    from .common import artifact_hash
    from .plan import ModelRef

    cfg = TranslatorConfig.from_params({**(section or {}), "seed": seed})
    if pretrained is not None:
        cfg.pretrained = pretrained.path if isinstance(pretrained, ModelRef) else str(pretrained)
    key = {"corpus": artifact_hash(corpus_dir), "translator": asdict(cfg),
           "pretrained": pretrained.key if isinstance(pretrained, ModelRef) else None}
    return cached_artifact(Path(root) / "translator", key, lambda d: train_translator(corpus_dir, d, cfg),
                           every_process=True)
