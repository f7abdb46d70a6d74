"""A Korean student text encoder distilled from CLIP's English text encoder.

The student reads Korean and learns to produce what the frozen teacher produces from the English translation, so
an unchanged Stable Diffusion UNet understands Korean. Three objectives (`OBJECTIVES`), compared in notebook 02:

* pooled   — the seed's loss, exactly: MSE(student(ko), teacher(en)) + MSE(student(en), teacher(en)) on the pooled
             vector only. SD never reads that vector: it cross-attends to all 77 hidden states.
* sequence — the whole 77 x width sequence the UNet reads, through a learned-query resampler (so Korean and English
             token counts need not line up), plus the pooled term, plus empty prompt -> teacher's empty prompt
             (classifier-free guidance and negative prompts need it).
* unet     — a second stage from the sequence student: the frozen UNet's noise prediction given student(ko) must
             match its prediction given teacher(en) on the same noisy latent and timestep (PEA-Diffusion style).

The student is one `transformers` model (backbone + heads) saved with its tokenizer in one folder; its forward
returns `last_hidden_state` of the teacher's width and length, which is all SD's `encode_prompt` asks of a text encoder.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedTokenizerFast
from transformers.modeling_outputs import BaseModelOutputWithPooling

from .common import artifact_hash, cached_artifact, is_main_process, write_json
# the student model lives in a self-contained file that its saved folders carry (trust_remote_code loading)
from .modeling_korean_text_encoder import KoreanTextEncoder, KoreanTextEncoderConfig  # noqa: F401
from .plan import ModelRef, checkpoint
from .train import Batch, LoopConfig, remove_checkpoints, step_generator, train_loop


def clip_like_tokenizer(texts, vocab_size: int = 400, max_length: int = 77):
    """A byte-level BPE tokenizer with CLIP's special tokens and 77 positions, trained on `texts`: the tokenizer of a
    CLIP text model trained here (the mini world's teacher) or built at random (the benchmark's)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    bos, eos, pad, unk = "<|startoftext|>", "<|endoftext|>", "<pad>", "<unk>"
    tok = Tokenizer(models.BPE(unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[pad, unk, bos, eos],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", special_tokens=[(bos, tok.token_to_id(bos)), (eos, tok.token_to_id(eos))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad, unk_token=unk,
                                   model_max_length=max_length, padding_side="right")


def train_student_tokenizer(texts, vocab_size: int = 2000, max_length: int = 128) -> PreTrainedTokenizerFast:
    """A RoBERTa-style BPE tokenizer trained on the corpus (Korean and English sides: the seed's loss reads
    English too, and mixed-language prompts should work)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    from tokenizers import decoders

    tok.decoder = decoders.BPEDecoder()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", mask_token="<mask>", model_max_length=max_length)


def load_student(path, device=None):
    """(student, tokenizer) from one folder written by `save_student`."""
    model = KoreanTextEncoder.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    return (model.to(device) if device else model), tokenizer


def save_student(model: KoreanTextEncoder, tokenizer, out_dir, card: dict) -> None:
    """The student and its tokenizer in one folder that plain transformers loads (`trust_remote_code=True`), with
    metrics.json and a model card. `card`: metrics, backbone and data (text), and where known the hub ids and
    licences: base_model (the backbone's id), datasets (the corpus inputs), licenses ({id: licence})."""
    from huggingface_hub import EvalResult

    from .cards import licence_of, strictest, write_card

    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    metrics = card.get("metrics", {})
    write_json(Path(out_dir) / "metrics.json", metrics)
    licenses = card.get("licenses", {})
    sources = [s for s in (card.get("base_model"), model.config.teacher, *card.get("datasets", [])) if s]
    derived = {s: licence_of(s, licenses) for s in sources}
    test = next((v for k, v in metrics.items() if k.startswith("embedding") and isinstance(v, dict)), {})
    results = [EvalResult(task_type="feature-extraction", dataset_type="ko-en-pairs", dataset_name=card.get("data", "test split"),
                          dataset_split="test", metric_type=k, metric_value=float(v))
               for k, v in test.items() if k in ("seq_cosine", "pooled_cosine", "R@1", "R@5")]
    write_card(out_dir, title=f"koclip Korean text encoder ({model.config.objective})",
               summary="Reads Korean (and English) and outputs what the teacher's `last_hidden_state` would be for the "
                       "English translation, so it replaces the text encoder of a Stable Diffusion pipeline built on "
                       "that teacher (its UNet, unchanged, then reads Korean).",
               licence=strictest(list(derived.values())), derived_from=derived, eval_results=results,
               base_model=card.get("base_model"), datasets=card.get("datasets") or None, language=["ko", "en"],
               library_name="transformers", tags=["koclip", "text-encoder", "distillation", "stable-diffusion"],
               usage=f"""
from transformers import AutoModel, AutoTokenizer

model = AutoModel.from_pretrained("{out_dir}", trust_remote_code=True)  # the folder's own modeling file
tokenizer = AutoTokenizer.from_pretrained("{out_dir}")
states = model(**tokenizer(["왼쪽에 빨간 별이 있다"], return_tensors="pt")).last_hidden_state
print(states.shape)  # (1, {model.config.num_positions}, {model.config.teacher_width}): what SD's UNet cross-attends to
""",
               sections={"Details": "\n".join(f"- {line}" for line in [
                   f"teacher: `{model.config.teacher}` (width {model.config.teacher_width}, "
                   f"{model.config.num_positions} positions)",
                   f"backbone: {card.get('backbone', model.config.backbone.get('model_type'))}",
                   f"objective: `{model.config.objective}`", f"data: {card.get('data', '')}",
                   "metrics: " + json.dumps(metrics, ensure_ascii=False, default=float)])})


# ---------------------------------------------------------------------------------------------------------------
# Teacher targets and losses.
# ---------------------------------------------------------------------------------------------------------------
def prompt_states(text_encoder, tokenizer, texts: list[str], pad_to_max: bool = True):
    """The text states exactly as `StableDiffusionPipeline.encode_prompt` computes them: padded to the tokenizer's
    max length, attention mask passed only if the encoder's config asks for it (CLIP's does not, so the padding
    positions attend to each other). Training on anything else would leave the UNet reading different states."""
    enc = tokenizer(list(texts), padding="max_length" if pad_to_max else "longest", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt")
    device = next(text_encoder.parameters()).device
    mask = enc.attention_mask.to(device) if getattr(_config(text_encoder), "use_attention_mask", False) else None
    return text_encoder(enc.input_ids.to(device), attention_mask=mask)


def encode(model, tokenizer, texts):
    """Run a text encoder (teacher or student) exactly as SD's `encode_prompt` does: the targets and the student's
    outputs are then the states the UNet will read."""
    # an encoder that masks padding (the student) gives the same states for any padding length: pad to the longest
    return prompt_states(model, tokenizer, texts, pad_to_max=not getattr(_config(model), "use_attention_mask", False))


def _config(model):
    """A model's config, also through the DDP wrapper a launched training loop runs it in."""
    return getattr(model, "module", model).config


class SentenceTeacher(nn.Module):
    """Any 🤗 encoder read the sentence-transformers way (attention mask, masked mean pooling: all-MiniLM-L6-v2),
    with the outputs `encode` expects of CLIP's text model, so the distillation objectives run unchanged:
    `last_hidden_state` = the first `num_positions` token states (zeros past the sentence's end: padding is masked
    out, so a sentence's targets do not depend on how its batch was padded), `pooler_output` = the mean over all
    its tokens (the sentence embedding). Outputs are memoised per token sequence: a teacher is frozen, and the
    training sentences come back every epoch (`precompute` fills the memo in length-sorted batches)."""

    def __init__(self, model, num_positions: int = 32):
        super().__init__()
        self.model, self.num_positions = model, num_positions
        self.model.config.use_attention_mask = True  # `encode` then pads to the longest and passes the mask
        self.memo: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def config(self):
        return self.model.config

    def _compute(self, input_ids, attention_mask):
        states = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(states.dtype)
        pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1)
        states = (states * mask)[:, : self.num_positions]
        return F.pad(states, (0, 0, 0, self.num_positions - states.shape[1])), pooled

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        if attention_mask is None:
            attention_mask = (input_ids != self.config.pad_token_id).long()
        keys = [tuple(ids[m.bool()].tolist()) for ids, m in zip(input_ids.cpu(), attention_mask.cpu())]
        new = [k for k in dict.fromkeys(keys) if k not in self.memo]
        if new:
            rows = [keys.index(k) for k in new]
            with torch.no_grad():
                states, pooled = self._compute(input_ids[rows], attention_mask[rows])
            for r, s, p in zip(rows, states.cpu(), pooled.cpu()):
                self.memo[keys[r]] = (s.half(), p)  # token states in half precision: 24 kB a sentence at 32 x 384
        device = input_ids.device
        states = torch.stack([self.memo[k][0] for k in keys]).float().to(device)
        pooled = torch.stack([self.memo[k][1] for k in keys]).to(device)
        return BaseModelOutputWithPooling(last_hidden_state=states, pooler_output=pooled)

    @torch.no_grad()
    def precompute(self, tokenizer, texts, batch_size: int = 64) -> int:
        """Fill the memo for `texts`, fewest tokens first (little padding); returns how many were new."""
        before = len(self.memo)
        texts = list(set(texts))
        lengths = [len(ids) for ids in tokenizer(texts, truncation=True).input_ids]
        texts = [texts[i] for i in np.argsort(lengths, kind="stable")]
        for start in range(0, len(texts), batch_size):
            encode(self, tokenizer, texts[start:start + batch_size])
        return len(self.memo) - before


def load_teacher(path, num_positions: int | None = None):
    """(teacher, tokenizer) from a folder or a `plan.ModelRef`: CLIP's text model exactly as SD runs it (an SD
    checkpoint's `text_encoder` subfolder reads with the `tokenizer` beside it), or any other encoder (a
    sentence-transformers model such as all-MiniLM-L6-v2) as a `SentenceTeacher` of `num_positions` states (default
    32), reading up to its sentence-transformers `max_seq_length` tokens."""
    from transformers import CLIPTextModel

    if isinstance(path, ModelRef):
        tok_ref = path.tokenizer()
        tokenizer = AutoTokenizer.from_pretrained(tok_ref.path, **tok_ref.kwargs)
        return CLIPTextModel.from_pretrained(path.path, **path.kwargs), tokenizer
    tokenizer = AutoTokenizer.from_pretrained(path)
    if AutoConfig.from_pretrained(path).model_type in ("clip", "clip_text_model"):
        return CLIPTextModel.from_pretrained(path), tokenizer
    st_config = Path(path) / "sentence_bert_config.json"
    if st_config.exists():
        tokenizer.model_max_length = json.loads(st_config.read_text())["max_seq_length"]
    return SentenceTeacher(AutoModel.from_pretrained(path).eval(), num_positions or 32), tokenizer


def sequence_mse(student_seq, teacher_seq, norm_weighted: bool = False):
    """MSE over all positions; norm-weighted divides each position's error by the teacher state's norm, so a few
    large-norm positions (CLIP's start token) do not dominate."""
    err = (student_seq - teacher_seq).pow(2)
    if not norm_weighted:
        return err.mean()
    return (err.sum(-1) / teacher_seq.pow(2).sum(-1).clamp(min=1e-6)).mean()


@dataclass
class DistillConfig:
    objective: str = "sequence"
    tokenizer_vocab: int = 2000
    max_length: int = 128  # the student reads up to this many tokens; it always outputs 77 states
    backbone: str | None = None  # a pretrained folder or hub id (full); None builds `backbone_config` at random
    backbone_config: dict = field(default_factory=lambda: {"model_type": "roberta", "hidden_size": 96, "num_hidden_layers": 3,
                                                            "num_attention_heads": 4, "intermediate_size": 384})
    head_layers: int = 2
    head_heads: int = 4
    pooled_weight: float = 1.0
    english_weight: float = 0.5  # the en->en term of the seed's loss, also in `sequence`
    empty_prob: float = 0.05  # share of empty prompts mapped to the teacher's empty prompt
    norm_weighted: bool = False
    pooled_from: str = "mean"  # what the pooled head reads: "mean" of the token states or the "backbone"'s sentence vector
    linear_probe: bool = False  # start the pooled head at its least-squares fit on the frozen backbone (LP-FT)
    train_pairs: int = 0  # train on this many pairs of the train split (a seeded, nested subset); 0 = all
    unet_sequence_weight: float = 0.5  # the unet stage keeps the sequence loss as an anchor
    gradient_checkpointing: bool = False  # the unet stage's frozen UNet recomputes activations (SD 1.5 on a 24 GB card)
    val_pairs: int = 512
    loop: dict = field(default_factory=lambda: {"steps": 1500, "lr": 1e-3, "batch_size": 128, "warmup_steps": 100,
                                                "validate_every": 250, "patience": 3})
    unet_loop: dict = field(default_factory=lambda: {"steps": 400, "lr": 2e-4, "batch_size": 32, "warmup_steps": 20,
                                                     "validate_every": 100, "patience": 3})
    seed: int = 0



def load_pairs(corpus_dir, split: str) -> list[tuple[str, str]]:
    from .corpus import load_corpus

    ds = load_corpus(corpus_dir, split)
    return list(zip(ds["ko"], ds["en"]))


def subset_pairs(pairs: list, n: int, seed: int = 0) -> list:
    """The first n of one seeded permutation, in corpus order: a smaller subset lies inside every larger one, so a
    data-size curve adds pairs instead of drawing new ones."""
    order = np.random.default_rng(seed).permutation(len(pairs))[:n]
    return [pairs[i] for i in sorted(order)]


class Distiller:
    """Holds the frozen teacher (and, for the unet stage, the frozen UNet and cached latents) and computes the loss."""

    def __init__(self, cfg: DistillConfig, student, student_tok, teacher, teacher_tok, unet=None, latents=None, scheduler=None):
        self.cfg, self.student, self.student_tok = cfg, student, student_tok
        self.teacher, self.teacher_tok = teacher.eval().requires_grad_(False), teacher_tok
        self.unet = unet.eval().requires_grad_(False) if unet is not None else None
        self.latents, self.scheduler = latents, scheduler

    def to(self, device):
        """Frozen parts follow the student (train_loop puts it on the accelerator's device)."""
        self.teacher.to(device)
        if self.unet is not None:
            self.unet.to(device)
            self.latents = self.latents.to(device)
        return self

    def targets(self, texts):
        with torch.no_grad():
            out = encode(self.teacher, self.teacher_tok, texts)
        return out.last_hidden_state, out.pooler_output

    def loss(self, objective: str, ko: list[str], en: list[str], gen: torch.Generator, latent_idx=None,
             batch: Batch | None = None) -> dict:
        """The objective's loss on one batch (`OBJECTIVES[objective].loss`); `latent_idx` (unet stage) picks the
        latents the prompts describe, None draws them at random. In the training loop, `batch` is this process's
        part of the step's global batch (`ko`, `en`, `latent_idx` are its rows already; what the loss draws per row
        is drawn for the whole batch, then taken) and its student is the prepared (DDP-wrapped) one."""
        return OBJECTIVES[objective].loss(self, ko, en, gen, latent_idx, batch or Batch.whole(len(ko), [self.student]))


# ---------------------------------------------------------------------------------------------------------------
# The objectives: each declares its loss, the settings only it reads and where it starts, in one place.
# ---------------------------------------------------------------------------------------------------------------
def pooled_loss(d: Distiller, ko, en, gen, latent_idx, batch: Batch) -> dict:
    """The seed's loss, exactly: the pooled vector of student(ko) and student(en) against teacher(en)."""
    t_seq, t_pool = d.targets(en)
    student = batch.models[0]
    s_ko = encode(student, d.student_tok, ko)
    s_en = encode(student, d.student_tok, en)
    logs = {"pooled_ko": F.mse_loss(s_ko.pooler_output, t_pool), "pooled_en": F.mse_loss(s_en.pooler_output, t_pool)}
    logs["loss"] = logs["pooled_ko"] + logs["pooled_en"]
    return logs


def _sequence_terms(d: Distiller, ko, en, student) -> tuple[dict, torch.Tensor, object]:
    """The sequence objective's terms: (logs with its loss, the teacher's sequence, the student's output for ko)."""
    cfg = d.cfg
    t_seq, t_pool = d.targets(en)
    s_ko = encode(student, d.student_tok, ko)
    s_en = encode(student, d.student_tok, en) if cfg.english_weight else None
    logs = {"seq_ko": sequence_mse(s_ko.last_hidden_state, t_seq, cfg.norm_weighted),
            "pooled_ko": F.mse_loss(s_ko.pooler_output, t_pool)}
    loss = logs["seq_ko"] + cfg.pooled_weight * logs["pooled_ko"]
    if s_en is not None:
        logs["seq_en"] = sequence_mse(s_en.last_hidden_state, t_seq, cfg.norm_weighted)
        loss = loss + cfg.english_weight * (logs["seq_en"] + cfg.pooled_weight * F.mse_loss(s_en.pooler_output, t_pool))
    logs["loss"] = loss
    return logs, t_seq, s_ko


def sequence_loss(d: Distiller, ko, en, gen, latent_idx, batch: Batch) -> dict:
    """All 77 states of student(ko) (and of student(en), weighted) against teacher(en), plus the pooled term."""
    return _sequence_terms(d, ko, en, batch.models[0])[0]


def unet_loss(d: Distiller, ko, en, gen, latent_idx, batch: Batch) -> dict:
    """The frozen UNet's noise prediction given student(ko) against its prediction given teacher(en), on the same
    noisy latent and timestep; the sequence loss stays as an anchor (`unet_sequence_weight`)."""
    logs, t_seq, s_ko = _sequence_terms(d, ko, en, batch.models[0])
    idx = batch.take(torch.randint(len(d.latents), (batch.size,), generator=gen)) if latent_idx is None else latent_idx
    x0 = d.latents[idx.to(d.latents.device)]
    # noise and timesteps are drawn for the step's whole batch, then this process's rows taken
    noise = batch.take(torch.randn((batch.size, *x0.shape[1:]), generator=gen)).to(x0.device)
    t = batch.take(torch.randint(0, d.scheduler.config.num_train_timesteps, (batch.size,), generator=gen)).to(x0.device)
    noisy = d.scheduler.add_noise(x0, noise, t)
    with torch.no_grad():
        target = d.unet(noisy, t, encoder_hidden_states=t_seq).sample
    logs["unet"] = F.mse_loss(d.unet(noisy, t, encoder_hidden_states=s_ko.last_hidden_state).sample, target)
    logs["loss"] = logs["unet"] + d.cfg.unet_sequence_weight * logs["loss"]
    return logs


@dataclass(frozen=True)
class Objective:
    """A distillation objective. A new one is one entry of `OBJECTIVES`: its loss, the `DistillConfig` fields only it
    reads (they key only its student's cache), its loop's field, the objective whose student it starts from, and
    whether it reads the SD checkpoint (its UNet and a latent source)."""
    loss: Callable[..., dict]      # (distiller, ko, en, gen, latent_idx, batch) -> {"loss": ..., other logged terms}
    loop_field: str = "loop"
    own_fields: tuple[str, ...] = ()
    starts_from: str | None = None
    needs_sd: bool = False
    empty_prompts: bool = True     # batches include empty prompts (classifier-free guidance's unconditional input)


OBJECTIVES: dict[str, Objective] = {
    "pooled": Objective(pooled_loss, empty_prompts=False),
    "sequence": Objective(sequence_loss),
    "unet": Objective(unet_loss, loop_field="unet_loop", own_fields=("unet_sequence_weight", "gradient_checkpointing", "unet_loop"),
                      starts_from="sequence", needs_sd=True),
}


def training_order(objectives) -> list[str]:
    """The objectives, each preceded by the one it starts from (added when not listed): what `ensure_students` needs."""
    ordered: list[str] = []

    def visit(name: str) -> None:
        start = OBJECTIVES[name].starts_from
        if start:
            visit(start)
        if name not in ordered:
            ordered.append(name)

    for name in objectives:
        visit(name)
    return ordered


def _batch(pairs, n: int, gen: torch.Generator, empty_prob: float):
    idx = torch.randint(len(pairs), (n,), generator=gen).tolist()
    empty = (torch.rand(n, generator=gen) < empty_prob).tolist()
    ko = ["" if e else pairs[i][0] for i, e in zip(idx, empty)]
    en = ["" if e else pairs[i][1] for i, e in zip(idx, empty)]
    return ko, en


def _latent_batch(source, n: int, gen: torch.Generator, empty_prob: float):
    """n latents of the unet stage's source (their indices) with the captions of each."""
    idx = torch.randint(len(source), (n,), generator=gen)
    empty = (torch.rand(n, generator=gen) < empty_prob).tolist()
    ko, en = source.captions(idx.tolist(), empty, gen)
    return ko, en, idx


def train_student(out_dir, cfg: DistillConfig, corpus_dir, teacher_dir, sd_dir=None, init_from=None,
                  stop_after: int | None = None, teacher=None, latents=None, backbone=None) -> dict:
    """Train one objective; returns the trained student, its tokenizer, the teacher and the training log.
    Checkpoints in out_dir/train/ let an interrupted run (`stop_after`, or a crash) resume where it stopped.
    `teacher_dir`: a folder or `plan.ModelRef` of the teacher; `teacher`: an already loaded (model, tokenizer), e.g.
    a `SentenceTeacher` with its outputs cached. The student outputs as many positions as the teacher (77 for CLIP).
    The unet objective reads the UNet, VAE and scheduler of `sd_dir` (a folder or ModelRef) and the latents and
    captions of `latents` (see `koclip_lib.latents`). `backbone`: a folder or ModelRef of a pretrained encoder
    (default: `cfg.backbone`); with neither, one is built from `cfg.backbone_config` at random."""
    out_dir = Path(out_dir)
    train_pairs, val_pairs = load_pairs(corpus_dir, "train"), load_pairs(corpus_dir, "val")[: cfg.val_pairs]
    if cfg.train_pairs:
        train_pairs = subset_pairs(train_pairs, cfg.train_pairs, cfg.seed)
    teacher, teacher_tok = teacher or load_teacher(teacher_dir)
    positions = getattr(teacher, "num_positions", 77)
    if init_from is not None:  # the unet stage starts from the sequence student
        student, student_tok = load_student(init_from)
    else:
        torch.manual_seed(cfg.seed)  # the heads (and a random backbone) start from the seed alone
        backbone = backbone or cfg.backbone
        if backbone:
            ref = ModelRef.of(backbone)
            path, kwargs = ref.path, ref.kwargs
            student_tok = AutoTokenizer.from_pretrained(path, **kwargs)
            student_tok.model_max_length = cfg.max_length  # SD pads prompts to this; a hub tokenizer may say 512 or "unset"
            student = KoreanTextEncoder.from_backbone(path, teacher.config.hidden_size, backbone_kwargs=kwargs,
                                                      head_layers=cfg.head_layers, head_heads=cfg.head_heads, num_positions=positions,
                                                      pooled_from=cfg.pooled_from)
        else:
            student_tok = train_student_tokenizer([t for pair in train_pairs for t in pair], cfg.tokenizer_vocab, cfg.max_length)
            backbone = AutoConfig.for_model(**{**cfg.backbone_config, "vocab_size": len(student_tok),
                                               "max_position_embeddings": cfg.max_length + 2,
                                               "pad_token_id": student_tok.pad_token_id, "bos_token_id": student_tok.bos_token_id,
                                               "eos_token_id": student_tok.eos_token_id, "type_vocab_size": 1})
            student = KoreanTextEncoder.from_backbone(backbone, teacher.config.hidden_size,
                                                      head_layers=cfg.head_layers, head_heads=cfg.head_heads, num_positions=positions,
                                                      pooled_from=cfg.pooled_from)
        if cfg.linear_probe:
            fit_pooled_head(student, student_tok, teacher, teacher_tok, train_pairs)
    student.config.teacher = str(teacher_dir)
    student.config.objective = cfg.objective
    objective = OBJECTIVES[cfg.objective]
    unet = latent_tensor = scheduler = None
    if objective.needs_sd:
        if latents is None:
            raise ValueError(f"the {cfg.objective} objective needs a latent source (koclip_lib.latents): images with their captions")
        unet, latent_tensor, scheduler = _unet_stage_inputs(sd_dir, latents, cfg)
    distiller = Distiller(cfg, student, student_tok, teacher, teacher_tok, unet, latent_tensor, scheduler)
    loop = LoopConfig.from_params(getattr(cfg, objective.loop_field), seed=cfg.seed)

    def loss_fn(batch: Batch):
        distiller.to(student.device)
        gen = step_generator(cfg.seed, batch.step)
        empty_prob = cfg.empty_prob if objective.empty_prompts else 0.0
        if objective.needs_sd:  # captions of each latent's own image: the UNet is matched where it is used
            ko, en, idx = _latent_batch(latents, batch.size, gen, empty_prob)
            return distiller.loss(cfg.objective, batch.take(ko), batch.take(en), gen, latent_idx=batch.take(idx), batch=batch)
        ko, en = _batch(train_pairs, batch.size, gen, empty_prob)
        return distiller.loss(cfg.objective, batch.take(ko), batch.take(en), gen, batch=batch)

    def validate():
        gen = torch.Generator().manual_seed(12345)  # the same noise every validation: comparable numbers
        losses = []
        for start in range(0, len(val_pairs), loop.batch_size):
            chunk = val_pairs[start:start + loop.batch_size]
            losses.append(float(distiller.loss(cfg.objective, [k for k, _ in chunk], [e for _, e in chunk], gen)["loss"]))
        return float(np.mean(losses))

    log = train_loop([student], loss_fn, loop, out_dir / "train", desc=f"student[{cfg.objective}]", validate=validate,
                     stop_after=stop_after)
    if log["steps"] >= loop.steps or log["stopped_early"]:
        remove_checkpoints(out_dir / "train")
    return {"student": student, "tokenizer": student_tok, "teacher": teacher, "teacher_tok": teacher_tok, "log": log}


@torch.no_grad()
def fit_pooled_head(student: KoreanTextEncoder, tokenizer, teacher, teacher_tok, pairs, ridge: float = 1e-2,
                    batch_size: int = 128) -> float:
    """The first step of LP-FT (Kumar et al., 2022, "Fine-Tuning can Distort Pretrained Features"): the pooled head
    set to the ridge-regression fit of teacher(en)'s pooled vector on the backbone's sentence vector of ko and of en,
    over `pairs`. With a pretrained backbone this is where a few thousand pairs get the most (gradient steps on a
    random head reach less in the same time), and fine-tuning from it moves the backbone less. `ridge` is relative
    to the features' mean square. Returns the fit's mean cosine on the pairs."""
    student.eval()
    pairs = sorted(pairs, key=lambda pair: len(pair[0]) + len(pair[1]))  # similar lengths batched: little padding
    feats, targets = [], []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        target = encode(teacher, teacher_tok, [en for _, en in chunk]).pooler_output.float().cpu()
        for side in (0, 1):
            enc = tokenizer([pair[side] for pair in chunk], padding=True, truncation=True, return_tensors="pt").to(student.device)
            feats.append(student.backbone_features(enc.input_ids, enc.attention_mask)[1].float().cpu())
            targets.append(target)
    x = torch.cat(feats)
    x = torch.cat([x, torch.ones(len(x), 1)], 1).double()
    y = torch.cat(targets).double()
    gram = x.T @ x
    w = torch.linalg.solve(gram + ridge * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype), x.T @ y)
    head = student.pooled_head
    head.weight.copy_(w[:-1].T.to(head.weight.dtype))
    head.bias.copy_(w[-1].to(head.bias.dtype))
    student.train()
    return float(F.cosine_similarity((x @ w).float(), y.float()).mean())


def _unet_stage_inputs(sd, latents, cfg: DistillConfig):
    """The frozen UNet, the source's latents (encoded once by the SD's VAE, on the GPU when there is one) and SD's
    training noise schedule."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    from .common import pick_device

    path, kwargs = checkpoint(sd)
    unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", **kwargs)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae", **kwargs).to(pick_device()).eval()
    tensor = latents.prepare(sd, vae, dict(unet.config))
    del vae
    return unet, tensor, DDPMScheduler.from_pretrained(path, subfolder="scheduler", **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# Embedding-level measurements.
# ---------------------------------------------------------------------------------------------------------------
def retrieval(queries: torch.Tensor, candidates: torch.Tensor, truth: torch.Tensor | None = None) -> dict:
    """R@1 / R@5 of each query finding its candidate (`truth[i]`, default candidate i) by cosine among all."""
    sims = F.normalize(queries, dim=-1) @ F.normalize(candidates, dim=-1).T
    truth = torch.arange(len(queries)) if truth is None else truth
    rank = (sims > sims.gather(1, truth[:, None])).sum(1)  # how many candidates beat the right one
    return {"R@1": float((rank < 1).float().mean()), "R@5": float((rank < 5).float().mean())}


@torch.no_grad()
def embedding_metrics(encoder, tokenizer, teacher, teacher_tok, pairs, batch_size: int = 256) -> dict:
    """On held-out (ko, en) pairs: token-sequence cosine and MSE of encoder(ko) to teacher(en), the pooled vectors'
    cosine pair by pair, and Korean->English retrieval R@1/R@5 in the teacher's pooled space (candidates: the distinct
    English sentences)."""
    ko, en = [k for k, _ in pairs], [e for _, e in pairs]
    seqs, pools, t_seqs, t_pools = [], [], [], []
    for start in range(0, len(pairs), batch_size):
        s = encode(encoder, tokenizer, ko[start:start + batch_size])
        t = encode(teacher, teacher_tok, en[start:start + batch_size])
        seqs.append(s.last_hidden_state[:, :77])
        pools.append(s.pooler_output)
        t_seqs.append(t.last_hidden_state)
        t_pools.append(t.pooler_output)
    seq, pool, t_seq = torch.cat(seqs), torch.cat(pools), torch.cat(t_seqs)
    if seq.shape[1] < t_seq.shape[1]:
        seq = F.pad(seq, (0, 0, 0, t_seq.shape[1] - seq.shape[1]))
    candidates = sorted(set(en))
    cand_pool = torch.cat([encode(teacher, teacher_tok, candidates[i:i + batch_size]).pooler_output
                           for i in range(0, len(candidates), batch_size)])
    truth = torch.tensor([candidates.index(e) for e in en])
    return {"seq_cosine": float(F.cosine_similarity(seq, t_seq, dim=-1).mean()), "seq_mse": float(F.mse_loss(seq, t_seq)),
            "pooled_cosine": float(F.cosine_similarity(pool, torch.cat(t_pools), dim=-1).mean()),
            **retrieval(pool, cand_pool, truth), "pairs": len(pairs), "candidates": len(candidates)}


# ---------------------------------------------------------------------------------------------------------------
# The main job's entry point.
# ---------------------------------------------------------------------------------------------------------------
def ensure_students(section: dict, root, *, corpus_dir, teacher, corpus_name: str = "", objectives: list[str] | None = None,
                    sd=None, latents=None, backbone=None, seed: int = 0, licenses: dict | None = None) -> dict[str, Path]:
    """Train (or reuse) one student per objective into root/student-<objective>/; returns their folders.

    Inputs, as the profile's plan resolves them (`plan.profile_inputs`): the built corpus folder, the teacher (a
    folder or `plan.ModelRef`), for the unet objective the SD checkpoint and a latent source, and a pretrained
    backbone if any. `section`: the profile's `distill:` settings; `objectives` (default: the section's) picks some:
    pooled and sequence need only the teacher, not the SD. Each student is keyed by its settings and by its inputs'
    own keys, so retraining an input retrains the students that read it, and only those. `licenses` (the profile's
    `licenses:`, id -> licence) go into each student's model card."""
    root = Path(root)
    teacher = ModelRef.of(teacher)
    base = {k: v for k, v in section.items() if k in DistillConfig.__dataclass_fields__}
    out = {}
    for objective in objectives or section.get("objectives", list(OBJECTIVES)):
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown distillation objective {objective!r}; known: {', '.join(OBJECTIVES)}")
        declared = OBJECTIVES[objective]
        cfg = DistillConfig(**{**base, "objective": objective, "seed": seed})
        init = out.get(declared.starts_from) if declared.starts_from else None
        if declared.starts_from and init is None:
            raise ValueError(f"the {objective} objective starts from the {declared.starts_from} student: "
                             f"list {declared.starts_from!r} before {objective!r}")
        # settings only another objective reads do not key this student: tuning them never retrains it
        others = {f for name, o in OBJECTIVES.items() if name != objective for f in o.own_fields} - set(declared.own_fields)
        key = {"distill": {k: v for k, v in cfg.__dict__.items() if k not in others}, "teacher": teacher.key,
               "corpus": artifact_hash(corpus_dir), "backbone": backbone.key if backbone is not None else None,
               "init": artifact_hash(init) if init else None}
        if declared.needs_sd:
            key["sd"] = ModelRef.of(sd).key
            key["latents"] = latents.key

        def build(d, cfg=cfg, init=init):
            result = train_student(d, cfg, corpus_dir, teacher, sd_dir=sd, init_from=init, latents=latents, backbone=backbone)
            if not is_main_process():  # the other processes trained beside it; the main one measures and saves
                return
            test_pairs = load_pairs(corpus_dir, "test")[:1000]
            metrics = {"embedding_test": embedding_metrics(result["student"], result["tokenizer"], result["teacher"],
                                                           result["teacher_tok"], test_pairs),
                       "best_val_loss": result["log"]["best_val"], "steps": result["log"]["steps"],
                       "stopped_early": result["log"]["stopped_early"], "seconds": result["log"]["seconds"]}
            base = (backbone.name or backbone.path) if backbone is not None else cfg.backbone
            save_student(result["student"], result["tokenizer"], d,
                         {"metrics": metrics, "backbone": str(base or "random init from backbone_config"),
                          "data": f"{corpus_name or corpus_dir} (train split; corpus folder {corpus_dir})",
                          "base_model": base, "licenses": licenses or {},
                          "datasets": [n.strip() for n in corpus_name.split(",") if n.strip()]})

        out[objective] = cached_artifact(root / f"student-{objective}", key, build, every_process=True)
    return out


def select_best(student_dirs: dict[str, Path], scores: dict[str, float], root) -> Path:
    """Copy the best objective's student (highest score) to root/student/."""
    best = max(scores, key=scores.get)
    target = Path(root) / "student"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(student_dirs[best], target)
    write_json(target / "selection.json", {"best": best, "scores": scores})
    return target
