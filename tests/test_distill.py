"""The Korean student: its interface, the three objectives, resume, and the full-profile path on tiny stand-ins."""

import pytest
import torch
from transformers import AutoModel, AutoTokenizer, CLIPTextModel, RobertaConfig, RobertaModel

from koclip_lib import distill
from koclip_lib import miniworld as mw
from koclip_lib.corpus import build_corpus

TINY = {"backbone_config": {"model_type": "roberta", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                            "intermediate_size": 64}, "tokenizer_vocab": 400, "head_layers": 1, "head_heads": 2,
        "val_pairs": 64}


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    build_corpus([mw.write_aihub_csv(root / "mini.csv", 1500, 0, mw.WorldConfig())], root / "built",
                 config=None)
    return root / "built"


def _cfg(objective="sequence", steps=12, **loop):
    return distill.DistillConfig(objective=objective, **TINY, loop={"steps": steps, "lr": 2e-3, "batch_size": 16, "warmup_steps": 0,
                                                                   "validate_every": 4, "checkpoint_every": 5, **loop},
                                 unet_loop={"steps": steps, "lr": 1e-3, "batch_size": 8, "warmup_steps": 0, "validate_every": 4,
                                            "checkpoint_every": 5, **loop})


def test_student_outputs_the_teachers_shape_for_any_length(tiny_corpus, tiny_parts, tmp_path):
    result = distill.train_student(tmp_path, _cfg(steps=2), tiny_corpus, tiny_parts / "teacher")
    student, tok = result["student"], result["tokenizer"]
    long_prompt = " ".join(["빨간 별"] * 40)  # more tokens than 77
    out = distill.encode(student, tok, ["빨간 별", long_prompt, ""])
    assert out.last_hidden_state.shape == (3, 77, 32) and out.pooler_output.shape == (3, 32)
    distill.save_student(student, tok, tmp_path / "s", {"metrics": {"x": 1}})
    again, tok2 = distill.load_student(tmp_path / "s")
    auto = AutoModel.from_pretrained(tmp_path / "s")  # registered with transformers' Auto classes
    assert isinstance(auto, distill.KoreanTextEncoder)
    torch.testing.assert_close(distill.encode(again, tok2, ["빨간 별"]).last_hidden_state,
                               distill.encode(student.eval(), tok, ["빨간 별"]).last_hidden_state)
    card = (tmp_path / "s" / "README.md").read_text()
    assert "teacher" in card and "sequence" in card


def test_pooled_objective_is_the_seeds_loss_exactly(tiny_corpus, tiny_parts, tmp_path):
    result = distill.train_student(tmp_path, _cfg("pooled", steps=1), tiny_corpus, tiny_parts / "teacher")
    student, tok, teacher, t_tok = result["student"], result["tokenizer"], result["teacher"], result["teacher_tok"]
    d = distill.Distiller(_cfg("pooled"), student, tok, teacher, t_tok)
    ko, en = ["왼쪽에 빨간 별이 있다", "파란 하트"], ["a red star on the left", "a blue heart"]
    # computed by hand, without the module's helpers: the teacher's pooled output (at its end token) for English,
    # the student's for Korean and for English, two mean-squared errors added
    t_ids = t_tok(en, padding="max_length", max_length=77, return_tensors="pt").input_ids
    t = teacher(input_ids=t_ids).pooler_output
    s_ko = student(**tok(ko, padding=True, return_tensors="pt")).pooler_output
    s_en = student(**tok(en, padding=True, return_tensors="pt")).pooler_output
    expected = ((s_ko - t) ** 2).mean() + ((s_en - t) ** 2).mean()
    logs = d.loss("pooled", ko, en, torch.Generator())
    torch.testing.assert_close(logs["loss"], expected)
    assert set(logs) == {"loss", "pooled_ko", "pooled_en"}  # nothing else: no sequence term in the seed's loss


def test_sequence_objective_lowers_validation_loss(tiny_corpus, tiny_parts, tmp_path):
    result = distill.train_student(tmp_path, _cfg(steps=40), tiny_corpus, tiny_parts / "teacher")
    vals = [h["val_loss"] for h in result["log"]["history"] if "val_loss" in h]
    assert vals[-1] < vals[0]


def test_interrupted_training_resumes_to_the_same_student(tiny_corpus, tiny_parts, tmp_path):
    full = distill.train_student(tmp_path / "a", _cfg(steps=12), tiny_corpus, tiny_parts / "teacher")
    distill.train_student(tmp_path / "b", _cfg(steps=12), tiny_corpus, tiny_parts / "teacher", stop_after=7)
    resumed = distill.train_student(tmp_path / "b", _cfg(steps=12), tiny_corpus, tiny_parts / "teacher")
    assert resumed["log"]["steps"] == 12
    pairs = distill.load_pairs(tiny_corpus, "test")[:50]
    m_full = distill.embedding_metrics(full["student"], full["tokenizer"], full["teacher"], full["teacher_tok"], pairs)
    m_res = distill.embedding_metrics(resumed["student"], resumed["tokenizer"], resumed["teacher"], resumed["teacher_tok"], pairs)
    assert m_full == pytest.approx(m_res, rel=1e-5)


def test_unet_objective_backpropagates_through_the_frozen_unet(tiny_corpus, tiny_parts, tmp_path):
    seq = distill.train_student(tmp_path / "seq", _cfg(steps=2), tiny_corpus, tiny_parts / "teacher")
    distill.save_student(seq["student"], seq["tokenizer"], tmp_path / "seq-model", {})
    frozen = {k: v.clone() for k, v in __import__("diffusers").UNet2DConditionModel.from_pretrained(tiny_parts / "sd" / "unet").state_dict().items()}
    result = distill.train_student(tmp_path / "unet", _cfg("unet", steps=3), tiny_corpus, tiny_parts / "teacher",
                                   sd_dir=tiny_parts / "sd", init_from=tmp_path / "seq-model",
                                   latents=mw.SceneLatents(None, n=64))
    assert any("unet" in h for h in result["log"]["history"])
    after = __import__("diffusers").UNet2DConditionModel.from_pretrained(tiny_parts / "sd" / "unet").state_dict()
    assert all(torch.equal(frozen[k], after[k]) for k in frozen)


def test_unet_objective_needs_a_latent_source(tiny_corpus, tiny_parts, tmp_path):
    distill.train_student(tmp_path / "seq", _cfg(steps=1), tiny_corpus, tiny_parts / "teacher")
    with pytest.raises(ValueError, match="latent source"):
        distill.train_student(tmp_path / "unet", _cfg("unet", steps=1), tiny_corpus, tiny_parts / "teacher",
                              sd_dir=tiny_parts / "sd")


def test_full_profile_path_with_pretrained_stand_ins(tiny_corpus, tiny_parts, tmp_path):
    """A pretrained RoBERTa loaded by path (as klue/roberta-small would be) and a CLIPTextModel teacher by path."""
    tok = distill.train_student_tokenizer(["빨간 별이 왼쪽에 있다", "a red star on the left"] * 20, vocab_size=200)
    roberta = RobertaModel(RobertaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=64, max_position_embeddings=130, pad_token_id=tok.pad_token_id),
                           add_pooling_layer=False)
    roberta.save_pretrained(tmp_path / "roberta")
    tok.save_pretrained(tmp_path / "roberta")
    CLIPTextModel.from_pretrained(tiny_parts / "teacher").save_pretrained(tmp_path / "clip-text")
    AutoTokenizer.from_pretrained(tiny_parts / "teacher").save_pretrained(tmp_path / "clip-text")
    cfg = distill.DistillConfig(**{**TINY, "backbone": str(tmp_path / "roberta")},
                                loop={"steps": 3, "lr": 1e-3, "batch_size": 8, "warmup_steps": 0})
    result = distill.train_student(tmp_path / "out", cfg, tiny_corpus, tmp_path / "clip-text")
    student = result["student"]
    fresh = distill.KoreanTextEncoder.from_backbone(str(tmp_path / "roberta"), 32)
    loaded, original = fresh.backbone.state_dict(), roberta.state_dict()
    assert set(loaded) == set(original)  # every pretrained weight has its place in the student
    assert all(torch.equal(loaded[k], original[k]) for k in original)
    assert result["tokenizer"].model_max_length == cfg.max_length
    distill.save_student(student, result["tokenizer"], tmp_path / "student", {})
    from koclip_lib.pipeline import load_korean_pipeline

    pipe = load_korean_pipeline(sd=tiny_parts / "sd", text_encoder=tmp_path / "student")
    image = pipe("왼쪽에 빨간 별", negative_prompt="파란색", num_inference_steps=2, output_type="pt",
                 generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 3, 32, 32) and torch.isfinite(image).all()


def test_a_new_objective_is_one_entry_of_objectives(tiny_parts, tmp_path, monkeypatch):
    """Declaring an objective in `distill.OBJECTIVES` is all it takes: `ensure_students` trains it with its loss,
    starts it from the student it names, and refuses it without that student or under an unknown name."""
    import json

    from koclip_lib.common import cached_artifact

    corpus_dir = cached_artifact(tmp_path / "corpus", {"n": 600}, lambda d: build_corpus(
        [mw.write_aihub_csv(tmp_path / "mini.csv", 600, 0, mw.WorldConfig())], d, config=None))
    batches = []

    def halved_sequence(d, ko, en, gen, latent_idx, batch):
        batches.append(len(ko))
        logs = distill.sequence_loss(d, ko, en, gen, latent_idx, batch)
        return {**logs, "loss": 0.5 * logs["loss"]}

    monkeypatch.setitem(distill.OBJECTIVES, "halved", distill.Objective(halved_sequence, starts_from="sequence"))
    section = {**TINY, "val_pairs": 16, "loop": {"steps": 2, "lr": 2e-3, "batch_size": 8, "warmup_steps": 0, "validate_every": 2}}
    teacher = tiny_parts / "teacher"
    out = distill.ensure_students(section, tmp_path, corpus_dir=corpus_dir, teacher=teacher, objectives=["sequence", "halved"])
    assert set(out) == {"sequence", "halved"} and 8 in batches
    assert json.loads((out["halved"] / "config.json").read_text())["objective"] == "halved"
    with pytest.raises(ValueError, match="starts from the sequence student"):
        distill.ensure_students(section, tmp_path / "alone", corpus_dir=corpus_dir, teacher=teacher, objectives=["halved"])
    with pytest.raises(ValueError, match="unknown distillation objective 'nope'"):
        distill.ensure_students(section, tmp_path / "unknown", corpus_dir=corpus_dir, teacher=teacher, objectives=["nope"])
