"""Tests for koclip_lib.corpus: readers, cleaning, malformed rows, dedupe, split, output, CLI."""

import json
import random
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from koclip_lib import corpus
from koclip_lib.corpus import (BuildConfig, CleanConfig, SeenHashes, build_corpus, clean_pair, from_hf_dataset,
                               length_stats, load_corpus, normalize_text, read_file, split_of, summary_table)

REPO = Path(__file__).resolve().parent.parent
REAL_DATA = REPO.parent / "shared" / "data" / "ko-en"  # /work/shared/data/ko-en next to the checkout


def quiet(**kwargs) -> BuildConfig:
    return BuildConfig(progress=False, **kwargs)


def pairs(rows) -> list[tuple[str, str]]:
    return [(r.ko, r.en) for r in rows if r.problem is None]


def kept_pairs(out_dir) -> set[tuple[str, str]]:
    found = set()
    for path in Path(out_dir).glob("*.parquet"):
        t = pq.read_table(path)
        found |= set(zip(t["ko"].to_pylist(), t["en"].to_pylist()))
    return found


def many_pairs(n: int, seed: int = 0, tag: str = "") -> list[tuple[str, str]]:
    rng = random.Random(seed)
    syllables = [chr(0xAC00 + i) for i in range(0, 11172, 37)]
    words = ["apple", "river", "stone", "green", "quiet", "house", "light", "music", "paper", "cloud"]
    out = []
    for i in range(n):
        ko = " ".join("".join(rng.choices(syllables, k=3)) for _ in range(4)) + f" {tag}{i}번"
        en = " ".join(rng.choices(words, k=5)) + f" number {tag}{i}"
        out.append((ko, en))
    return out


# ----------------------------------------------------------------------------- readers


def test_aihub_csv_with_bom_and_extra_columns(tmp_path):
    path = tmp_path / "aihub.csv"
    # the BOM sits right before the first column name: not stripping it would hide the 원문 column
    path.write_bytes("\ufeff원문,번역문,ID,도메인\n안녕하세요.,Hello.,1,일상\n\"쉼표, 있음\",\"Comma, here\",2,뉴스\n".encode())
    rows = list(read_file(path))
    assert pairs(rows) == [("안녕하세요.", "Hello."), ("쉼표, 있음", "Comma, here")]
    assert [r.line for r in rows] == [2, 3]
    assert rows[0].source == str(path)


def test_xlsx_streamed_with_extra_columns(tmp_path):
    openpyxl = pytest.importorskip("openpyxl")
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["번호", "분야", "원문", "번역문"])
    sheet.append([1, "일상", "고양이가 잔다.", "The cat sleeps."])
    sheet.append([None, None, None, None])  # empty row: skipped
    sheet.append([3, "숫자", 2024, "The year"])  # non-text cell becomes text
    path = tmp_path / "aihub.xlsx"
    book.save(path)
    rows = list(read_file(path))
    assert pairs(rows) == [("고양이가 잔다.", "The cat sleeps."), ("2024", "The year")]
    assert [r.line for r in rows] == [2, 4]


def test_tsv_ko_en_columns_any_order_no_quoting(tmp_path):
    path = tmp_path / "plain.tsv"
    # a Korean sentence that starts with a quote mark must not swallow the next line
    path.write_text('en\tnote\tko\n"Hi," he said.\tx\t"안녕," 그가 말했다.\nBye.\ty\t잘 가.\n', encoding="utf-8")
    rows = list(read_file(path))
    assert pairs(rows) == [('"안녕," 그가 말했다.', '"Hi," he said.'), ("잘 가.", "Bye.")]


def test_csv_column_override_and_missing_column_error(tmp_path):
    path = tmp_path / "custom.csv"
    path.write_text("korean,english,id\n사과,apple,1\n", encoding="utf-8")
    assert pairs(read_file(path, ko_col="korean", en_col="english")) == [("사과", "apple")]
    with pytest.raises(ValueError) as err:
        read_file(path)
    message = str(err.value)
    assert "custom.csv" in message and "korean" in message and "english" in message


def test_jsonl_with_bad_lines(tmp_path):
    path = tmp_path / "data.jsonl"
    lines = [
        json.dumps({"src": "하나", "tgt": "one"}, ensure_ascii=False),
        "{not json",
        json.dumps({"src": "둘"}, ensure_ascii=False),
        "",
        json.dumps({"src": "셋", "tgt": "three", "extra": 1}, ensure_ascii=False),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    rows = list(read_file(path, ko_col="src", en_col="tgt"))
    assert pairs(rows) == [("하나", "one"), ("셋", "three")]
    assert [(r.line, r.problem) for r in rows if r.problem] == [(2, "invalid_json"), (3, "missing_key")]


def test_line_pair_by_either_file_or_stem(tmp_path):
    (tmp_path / "news.ko").write_text("첫 줄\n둘째 줄\n", encoding="utf-8")
    (tmp_path / "news.en").write_text("first line\r\nsecond line", encoding="utf-8")  # CRLF, no final newline
    expected = [("첫 줄", "first line"), ("둘째 줄", "second line")]
    for given in ("news.ko", "news.en", "news"):
        assert pairs(read_file(tmp_path / given)) == expected
    # both halves of one pair given (a shell glob does this): read once
    summary = build_corpus([tmp_path / "news.ko", tmp_path / "news.en"], tmp_path / "out", quiet())
    assert summary["rows_read"] == 2 and len(summary["inputs"]) == 1


def test_line_pair_count_mismatch_names_both_counts(tmp_path):
    (tmp_path / "x.ko").write_text("하나\n둘\n셋\n", encoding="utf-8")
    (tmp_path / "x.en").write_text("one\ntwo\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"x\.ko has 3 lines.*x\.en has 2"):
        read_file(tmp_path / "x.ko")
    with pytest.raises(ValueError):  # and the build fails before writing anything
        build_corpus([tmp_path / "x"], tmp_path / "out", quiet())
    assert not (tmp_path / "out").exists()


def test_tatoeba_format(tmp_path):
    path = tmp_path / "kor.txt"
    path.write_text("Go.\t가.\tCC-BY 2.0 (France) Attribution: tatoeba.org #1\n"
                    "just one field\n"
                    "Hi.\t안녕.\n", encoding="utf-8")
    with pytest.raises(ValueError, match="tatoeba"):  # .txt is not guessed
        read_file(path)
    rows = list(read_file(path, fmt="tatoeba"))
    assert pairs(rows) == [("가.", "Go."), ("안녕.", "Hi.")]
    assert [(r.line, r.problem) for r in rows if r.problem] == [(2, "wrong_column_count")]
    # the FMT:path prefix selects the format per input
    summary = build_corpus([f"tatoeba:{path}"], tmp_path / "out", quiet())
    assert summary["kept"] == 2 and summary["malformed"] == {"wrong_column_count": 1}
    assert summary["inputs"][0]["format"] == "tatoeba"


def test_hf_dataset_with_column_mapping(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"korean": ["바다", "산", None], "english": ["sea", "mountain", "x"],
                                     "id": [1, 2, 3]})
    rows = list(from_hf_dataset(ds, ko="korean", en="english", name="toy"))
    assert pairs(rows) == [("바다", "sea"), ("산", "mountain")]
    assert [(r.line, r.problem) for r in rows if r.problem] == [(2, "missing_key")]
    with pytest.raises(ValueError, match="columns found"):
        from_hf_dataset(ds, ko="ko", en="english")
    summary = build_corpus([from_hf_dataset(ds.to_iterable_dataset(), ko="korean", en="english", name="toy")],
                           tmp_path / "out", quiet())
    assert summary["inputs"] == [{"source": "toy", "format": "rows", "rows_read": 3, "kept": 2}]
    assert kept_pairs(tmp_path / "out") == {("바다", "sea"), ("산", "mountain")}


# ----------------------------------------------------------------------------- cleaning


def test_normalisation():
    decomposed = unicodedata.normalize("NFD", "한국어")
    assert decomposed != "한국어" and normalize_text(decomposed) == "한국어"
    assert normalize_text("\u00a0 가\u200b나 \t 다\u3000라\n") == "가나 다 라"


@pytest.mark.parametrize("ko, en, reason", [
    ("  ", "Hello.", "empty"),
    ("안녕", "\u200b", "empty"),
    ("Hello there.", "Hello there.", "ko_no_hangul"),
    ("안녕하세요.", "Hello 안녕.", "en_has_hangul"),
    ("가", "A", "too_short"),
    ("가" * 30, "a" * 301, "too_long"),
    ("번역 :", "A team of international researchers said they have found it.", "length_ratio"),
    ("그는 아주 긴 문장을 말했고 모두가 들었다.", "OK.", "length_ratio"),
    ("고양이가 잔다.", "The cat sleeps.", None),
])
def test_clean_pair_reasons(ko, en, reason):
    config = CleanConfig(min_chars=2, max_chars=300)
    assert clean_pair(ko, en, config)[2] == reason


def test_length_ratio_not_judged_on_short_pairs():
    assert clean_pair("산", "mountain")[2] is None  # ratio 0.125, but a word pair: nothing to judge
    assert clean_pair("산", "mountain", CleanConfig(ratio_min_chars=1))[2] == "length_ratio"


def test_every_cleaning_rule_counted_in_build(tmp_path):
    rows = [
        ("고양이가 잔다.", "The cat sleeps."),  # kept
        ("", "Nothing here."),  # empty
        ("No Korean here.", "No Korean here."),  # ko_no_hangul
        ("안녕", "Hello 안녕"),  # en_has_hangul
        ("가", "A"),  # too_short (min_chars=2)
        ("가" * 30, "a" * 301),  # too_long (max_chars=300)
        ("번역 :", "A team of international researchers said they have found it."),  # length_ratio
        ("고양이가  잔다.", "The cat\u00a0sleeps."),  # duplicate once normalised
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"ko": k, "en": e}, ensure_ascii=False) + "\n" for k, e in rows), encoding="utf-8")
    summary = build_corpus([path], tmp_path / "out", quiet(clean=CleanConfig(min_chars=2, max_chars=300)))
    assert summary["dropped"] == {r: 1 for r in ("empty", "ko_no_hangul", "en_has_hangul", "too_short",
                                                   "too_long", "length_ratio", "duplicate")}
    assert summary["kept"] == 1 and summary["rows_read"] == len(rows)
    assert kept_pairs(tmp_path / "out") == {("고양이가 잔다.", "The cat sleeps.")}
    assert summary["dropped_examples"]["duplicate"][0]["line"] == 8


# ----------------------------------------------------------------------------- malformed rows


def test_malformed_csv_rows_counted_with_line_numbers_and_no_good_row_lost(tmp_path):
    lines = [
        "id,원문,번역문,비고\n".encode(),  # 1
        "1,사과,apple,x\n".encode(),  # 2
        "2,배,pear\n".encode(),  # 3: too few fields
        "3,포도,grape,x,extra\n".encode(),  # 4: too many fields
        b"4,\xff\xfe broken,bad bytes,x\n",  # 5: not UTF-8
        '5,"여러 줄\n이어진 문장","multi\nline",x\n'.encode(),  # 6-8: one good record over three lines
        "6,수박,watermelon,x\n".encode(),  # 9
        b"\n",  # 10: blank line, ignored
        b"7,\xea\xb0,persimmon,x\n",  # 11: a truncated UTF-8 sequence
        "8,귤,tangerine,x\n".encode(),  # 12
    ]
    path = tmp_path / "messy.csv"
    path.write_bytes(b"".join(lines))
    summary = build_corpus([path], tmp_path / "out", quiet())
    assert summary["malformed"] == {"wrong_column_count": 2, "bad_encoding": 2}
    assert [(e["line"], e["reason"]) for e in summary["malformed_examples"]] == [
        (3, "wrong_column_count"), (4, "wrong_column_count"), (5, "bad_encoding"), (11, "bad_encoding")]
    assert all(e["source"] == str(path) and e["snippet"] for e in summary["malformed_examples"])
    assert kept_pairs(tmp_path / "out") == {("사과", "apple"), ("여러 줄 이어진 문장", "multi line"),
                                             ("수박", "watermelon"), ("귤", "tangerine")}
    assert summary["rows_read"] == summary["kept"] + summary["malformed_total"] + summary["dropped_total"] == 8


def test_malformed_examples_are_capped(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("ko,en\n" + "".join(f"{i},too,many\n" for i in range(20)) + "좋다,good\n", encoding="utf-8")
    summary = build_corpus([path], tmp_path / "out", quiet(max_examples=3))
    assert summary["malformed"] == {"wrong_column_count": 20} and summary["kept"] == 1
    assert [e["line"] for e in summary["malformed_examples"]] == [2, 3, 4]


# ----------------------------------------------------------------------------- dedupe and split


def test_seen_hashes_matches_a_python_set():
    rng = np.random.default_rng(0)
    seen, reference = SeenHashes(), set()
    for _ in range(40):
        batch = rng.integers(0, 5000, size=300, dtype=np.uint64)  # many repeats across batches
        expected = np.array([int(h) in reference for h in batch])
        assert np.array_equal(seen.contains(batch), expected)
        new = np.unique(batch[~expected])
        seen.add(new)
        reference |= set(int(h) for h in new)
    assert len(seen) == len(reference) and len(seen.runs) <= 12
    assert seen.nbytes == 8 * len(reference)


def test_duplicates_across_batches_and_inputs(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus, "WRITE_ROWS", 7)  # many small batches: exercises the sorted runs
    data = many_pairs(60)
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("".join(json.dumps({"ko": k, "en": e}, ensure_ascii=False) + "\n" for k, e in data + data[:25]), encoding="utf-8")
    b.write_text("".join(json.dumps({"ko": k, "en": e}, ensure_ascii=False) + "\n" for k, e in data[10:40]), encoding="utf-8")
    summary = build_corpus([a, b], tmp_path / "out", quiet())
    assert summary["dropped"] == {"duplicate": 55} and summary["kept"] == 60
    assert [e["kept"] for e in summary["inputs"]] == [60, 0]
    assert kept_pairs(tmp_path / "out") == set(data)


def split_by_pair(out_dir) -> dict:
    where = {}
    for split in corpus.SPLITS:
        for path in Path(out_dir).glob(f"{split}-*.parquet"):
            t = pq.read_table(path)
            for pair in zip(t["ko"].to_pylist(), t["en"].to_pylist()):
                where[pair] = split
    return where


def write_tsv(path, data):
    path.write_text("ko\ten\n" + "".join(f"{k}\t{e}\n" for k, e in data), encoding="utf-8")
    return path


def test_split_is_stable_and_fractions_respected(tmp_path):
    data = many_pairs(5000)
    extra = many_pairs(3000, seed=1, tag="x")
    small = write_tsv(tmp_path / "small.tsv", data)
    big = write_tsv(tmp_path / "big.tsv", extra[:1500] + data + extra[1500:])
    alone = split_by_pair(build_corpus([small], tmp_path / "a", quiet(shard_rows=1000))["out_dir"])
    among = split_by_pair(build_corpus([big], tmp_path / "b", quiet())["out_dir"])
    assert len(alone) == 5000 and len(among) == 8000
    assert all(among[p] == s for p, s in alone.items())  # adding data never moves a pair
    assert all(split_of(k, e) == alone[(k, e)] for k, e in data[:500])  # and split_of predicts it
    counts = {s: sum(v == s for v in alone.values()) for s in corpus.SPLITS}
    assert 190 <= counts["val"] <= 310 and 190 <= counts["test"] <= 310, counts
    # raising val_frac only moves train pairs into val; test stays put
    wider = split_by_pair(build_corpus([small], tmp_path / "c", quiet(val_frac=0.2))["out_dir"])
    assert all(wider[p] == "test" for p, s in alone.items() if s == "test")
    assert all(wider[p] == "val" for p, s in alone.items() if s == "val")
    assert 850 <= sum(v == "val" for v in wider.values()) <= 1150


def test_split_of_normalises_its_input():
    assert split_of("가  나", "a\u00a0b") == split_of("가 나", "a b")


# ----------------------------------------------------------------------------- output, loading, helpers


def test_shards_round_trip_through_load_corpus(tmp_path):
    datasets = pytest.importorskip("datasets")
    data = many_pairs(350)
    src = write_tsv(tmp_path / "in.tsv", data)
    out = tmp_path / "out"
    (out).mkdir()
    (out / "train-00099.parquet").write_bytes(b"stale")  # left from an earlier build: removed
    summary = build_corpus([src], out, quiet(val_frac=0.0, test_frac=0.0, shard_rows=100))
    assert summary["shards"]["train"] == [f"train-0000{i}.parquet" for i in range(4)]
    assert [pq.read_metadata(out / f).num_rows for f in summary["shards"]["train"]] == [100, 100, 100, 50]
    assert not (out / "train-00099.parquet").exists()
    train = load_corpus(out, "train", cache_dir=tmp_path / "hf")
    assert isinstance(train, datasets.Dataset) and train.column_names == ["ko", "en", "source"]
    assert list(zip(train["ko"], train["en"])) == data  # input order kept
    assert set(train["source"]) == {str(src)}
    streamed = load_corpus(out, "train", streaming=True)
    assert isinstance(streamed, datasets.IterableDataset)
    assert [(r["ko"], r["en"]) for r in streamed] == data
    assert len(load_corpus(out, "test", cache_dir=tmp_path / "hf")) == 0  # empty split: an empty shard
    assert list(load_corpus(out, "val", streaming=True)) == []
    on_disk = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert on_disk["splits"] == {"train": 350, "val": 0, "test": 0}


def test_summary_table_and_length_stats(tmp_path):
    src = write_tsv(tmp_path / "in.tsv", [("고양이가 잔다", "The cat sleeps"), ("개", "A dog"), ("개", "A dog")])
    summary = build_corpus([src], tmp_path / "out", quiet(val_frac=0.0, test_frac=0.0))
    table = summary_table(summary)
    assert list(table.columns) == ["stage", "reason", "count"]
    counts = {(s, r): c for s, r, c in table.itertuples(index=False)}
    assert counts[("read", "rows")] == 3 and counts[("dropped", "duplicate")] == 1 and counts[("kept", "train")] == 2
    stats = length_stats(tmp_path / "out", "train")
    assert stats.to_dict("list") == {"ko_chars": [7, 1], "ko_tokens": [2, 1], "en_chars": [14, 5], "en_tokens": [3, 2]}


def test_format_override_and_unknown_suffix(tmp_path):
    path = tmp_path / "pairs.data"
    path.write_text("ko,en\n나무,tree\n", encoding="utf-8")
    with pytest.raises(ValueError, match="cannot tell the format"):
        build_corpus([path], tmp_path / "out", quiet())
    assert build_corpus([path], tmp_path / "out", quiet(fmt="csv"))["kept"] == 1
    assert build_corpus([f"csv:{path}"], tmp_path / "out2", quiet())["kept"] == 1


def test_cli_build_last_line_is_summary_json(tmp_path):
    src = tmp_path / "aihub.csv"
    src.write_bytes("원문,번역문\n사과,apple\n배,pear,extra\n사과,apple\n".encode() + b"\xff,bad\n")
    done = subprocess.run([sys.executable, "-m", "koclip_lib.corpus", "build", "--input", str(src),
                           "--out", str(tmp_path / "out"), "--no-progress", "--val-frac", "0", "--test-frac", "0"],
                          cwd=REPO, capture_output=True, text=True, check=True)
    lines = done.stdout.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary["kept"] == 1 and summary["dropped"] == {"duplicate": 1}
    assert summary["malformed"] == {"wrong_column_count": 1, "bad_encoding": 1}
    assert any(f"{src}:3" in line and "wrong_column_count" in line for line in lines[:-1])
    assert any(f"{src}:5" in line and "bad_encoding" in line for line in lines[:-1])


# ----------------------------------------------------------------------------- real data


@pytest.mark.skipif(not (REAL_DATA / "tatoeba" / "kor.txt").is_file(), reason="real ko-en data not present")
def test_real_tatoeba_and_news_mostly_kept(tmp_path):
    inputs = [f"tatoeba:{REAL_DATA / 'tatoeba' / 'kor.txt'}", *sorted((REAL_DATA / "news").glob("*.ko"))]
    summary = build_corpus(inputs, tmp_path / "out", quiet())
    assert summary["malformed_total"] == 0
    assert summary["rows_read"] > 7000 and summary["kept"] >= 0.99 * summary["rows_read"], summary["dropped"]
    assert set(summary["dropped"]) <= {"length_ratio", "duplicate", "ko_no_hangul", "en_has_hangul", "empty"}
