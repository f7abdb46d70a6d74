"""Korean–English parallel corpus: read many formats, clean, dedupe, split, write Parquet shards.

    from koclip_lib.corpus import build_corpus, load_corpus, BuildConfig
    summary = build_corpus(["aihub.xlsx", "news/dev.ko", "tatoeba:kor.txt"], "outputs/corpus")
    train = load_corpus("outputs/corpus", "train")        # a 🤗 datasets.Dataset with ko, en, source

    python -m koclip_lib.corpus build --input aihub.csv tatoeba:kor.txt --out outputs/corpus
    python -m koclip_lib.corpus bench --mb 300 --out outputs/bench/corpus_stream.json

The build streams: every reader yields one Row at a time, rows are cleaned one by one, deduplicated and
written in batches, so memory does not grow with the input size (except 8 bytes per kept pair, see SeenHashes).

Counted reasons (summary.json):
  malformed (the row could not be read): wrong_column_count, csv_error, bad_encoding, invalid_json,
      missing_key, not_text
  dropped (the row was read but is not a usable pair): empty, ko_no_hangul, en_has_hangul, too_short,
      too_long, length_ratio, duplicate
"""

from __future__ import annotations

import codecs
import csv
import json
import os
import re
import sys
import time
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass, field
from hashlib import blake2b
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from .cli import CliParser

# -----------------------------------------------------------------------------
# Rows and readers. Every reader is a function that checks the input up front (so a bad input fails
# before anything is written) and returns a generator of Rows. A malformed row is yielded too, with
# `problem` set, so the build can count it with its file and line instead of crashing.

SPLITS = ("train", "val", "test")
FORMATS = ("csv", "tsv", "xlsx", "jsonl", "lines", "tatoeba")
KO_COLUMNS = ("원문", "ko")  # AI Hub names first, then the plain ones
EN_COLUMNS = ("번역문", "en")
SNIPPET_CHARS = 80


class Row(NamedTuple):
    source: str  # file (or dataset) the row came from
    line: int  # 1-based line in the file (Excel row for xlsx, 0-based index for a 🤗 dataset)
    ko: str | None  # None when the row is malformed
    en: str | None
    problem: str | None = None  # malformed reason, None for a good row
    snippet: str = ""  # start of the offending raw text, for the report


def _snippet(raw: bytes | str) -> str:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    text = text.rstrip("\r\n")
    return text if len(text) <= SNIPPET_CHARS else text[: SNIPPET_CHARS - 1] + "…"


def _decode_line(raw: bytes, line_no: int) -> str | None:
    """One line of bytes -> text, or None if it is not UTF-8. Decoding per line means one bad byte
    costs one row, not the whole file."""
    if line_no == 1 and raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8) :]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _find_columns(header: list, ko_col: str | None, en_col: str | None, source: str) -> tuple[int, int]:
    """Indices of the Korean and English columns in a header row (names compared trimmed, case-blind)."""
    names = [str(h).strip().lower() if h is not None else "" for h in header]

    def find(wanted: tuple[str, ...], side: str) -> int:
        for name in wanted:
            if name.strip().lower() in names:
                return names.index(name.strip().lower())
        raise ValueError(
            f"{source}: no {side} column (looked for {' or '.join(map(repr, wanted))}); "
            f"columns found: {[h for h in header]}"
        )

    return find((ko_col,) if ko_col else KO_COLUMNS, "Korean"), find((en_col,) if en_col else EN_COLUMNS, "English")


class _LineFeed:
    """Feeds decoded lines to csv.reader, skipping (and remembering) lines that are not UTF-8,
    and remembering the physical line where the current CSV record started."""

    def __init__(self, f):
        self.lines = enumerate(f, 1)
        self.record_start: int | None = None
        self.bad: list[tuple[int, bytes]] = []

    def __iter__(self):
        return self

    def __next__(self) -> str:
        while True:
            line_no, raw = next(self.lines)
            text = _decode_line(raw, line_no)
            if text is None:
                self.bad.append((line_no, raw))
                continue
            if self.record_start is None:
                self.record_start = line_no
            return text


def read_delimited(path, delimiter: str | None = None, ko_col: str | None = None, en_col: str | None = None) -> Iterator[Row]:
    """AI Hub style CSV (원문/번역문 + any extra columns) or a plain ko,en CSV/TSV. The delimiter comes
    from the suffix (.tsv tab, else comma). TSV is read without quoting: a sentence that starts with
    a quote mark is common in Korean text and must not swallow the following lines."""
    path = Path(path)
    source = str(path)
    if delimiter is None:
        delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL

    def records(f):
        feed = _LineFeed(f)
        return feed, csv.reader(feed, delimiter=delimiter, quoting=quoting)

    with open(path, "rb") as f:
        feed, reader = records(f)
        header = next(reader, None)
        if feed.bad and feed.bad[0][0] == 1:
            raise ValueError(f"{source}: the header line is not UTF-8 (AI Hub files are sometimes CP949: "
                             f"convert with `iconv -f cp949 -t utf-8`)")
        if header is None:
            raise ValueError(f"{source}: empty file, no header row")
    ko_i, en_i = _find_columns(header, ko_col, en_col, source)
    n_columns = len(header)

    def rows() -> Iterator[Row]:
        with open(path, "rb") as f:
            feed, reader = records(f)
            next(reader)  # header, checked above
            while True:
                feed.record_start, fields, error = None, None, None
                try:
                    fields = next(reader)
                except StopIteration:
                    pass
                except csv.Error as e:  # e.g. a NUL byte or a runaway quoted field
                    error = str(e)
                for line_no, raw in feed.bad:
                    yield Row(source, line_no, None, None, "bad_encoding", _snippet(raw))
                feed.bad.clear()
                if error is not None:
                    yield Row(source, feed.record_start or 0, None, None, "csv_error", _snippet(error))
                    continue
                if fields is None:
                    return
                if not fields or (len(fields) == 1 and not fields[0].strip()):
                    continue  # blank line
                if len(fields) != n_columns:
                    yield Row(source, feed.record_start, None, None, "wrong_column_count",
                              _snippet(f"{len(fields)} fields, expected {n_columns}: " + delimiter.join(fields)))
                    continue
                yield Row(source, feed.record_start, fields[ko_i], fields[en_i])

    return rows()


def read_xlsx(path, ko_col: str | None = None, en_col: str | None = None) -> Iterator[Row]:
    """AI Hub style Excel file (first sheet, header in row 1), streamed with openpyxl's read-only mode."""
    import openpyxl

    path = Path(path)
    source = str(path)

    def open_rows():
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
        return book, book.worksheets[0].iter_rows(values_only=True)

    book, cells = open_rows()
    header = next(cells, None)
    book.close()
    if header is None:
        raise ValueError(f"{source}: empty sheet, no header row")
    ko_i, en_i = _find_columns(list(header), ko_col, en_col, source)

    def text(cells: tuple, i: int) -> str:
        value = cells[i] if i < len(cells) else None
        return "" if value is None else str(value)

    def rows() -> Iterator[Row]:
        book, cells = open_rows()
        try:
            next(cells)
            for row_no, values in enumerate(cells, 2):
                if all(v is None or str(v).strip() == "" for v in values):
                    continue
                yield Row(source, row_no, text(values, ko_i), text(values, en_i))
        finally:
            book.close()

    return rows()


def read_jsonl(path, ko_col: str | None = None, en_col: str | None = None) -> Iterator[Row]:
    """One JSON object per line with Korean and English keys (default "ko" and "en")."""
    path = Path(path)
    source, ko_key, en_key = str(path), ko_col or "ko", en_col or "en"
    if not path.is_file():
        raise FileNotFoundError(path)

    def rows() -> Iterator[Row]:
        with open(path, "rb") as f:
            for line_no, raw in enumerate(f, 1):
                text = _decode_line(raw, line_no)
                if text is None:
                    yield Row(source, line_no, None, None, "bad_encoding", _snippet(raw))
                    continue
                if not text.strip():
                    continue
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError:
                    yield Row(source, line_no, None, None, "invalid_json", _snippet(text))
                    continue
                if not isinstance(obj, dict) or obj.get(ko_key) is None or obj.get(en_key) is None:
                    yield Row(source, line_no, None, None, "missing_key", _snippet(text))
                    continue
                ko, en = obj[ko_key], obj[en_key]
                if isinstance(ko, (dict, list)) or isinstance(en, (dict, list)):
                    yield Row(source, line_no, None, None, "not_text", _snippet(text))
                    continue
                yield Row(source, line_no, str(ko), str(en))

    return rows()


def line_pair_paths(path) -> tuple[Path, Path, Path]:
    """`X.ko`, `X.en` or the stem `X` -> (stem, X.ko, X.en)."""
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".ko", ".en") else path
    return stem, Path(f"{stem}.ko"), Path(f"{stem}.en")


def _count_lines(path: Path) -> int:
    """Lines as `for line in file` would see them, counted in 1 MB chunks (never the whole file)."""
    n, last = 0, b"\n"
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            n += chunk.count(b"\n")
            last = chunk[-1:]
    return n + (last != b"\n")


def read_line_pair(path) -> Iterator[Row]:
    """Line-aligned files: line N of X.ko translates line N of X.en. Give either file or the stem."""
    stem, ko_path, en_path = line_pair_paths(path)
    for p in (ko_path, en_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p} (line-aligned pair {stem}.ko + {stem}.en)")
    n_ko, n_en = _count_lines(ko_path), _count_lines(en_path)
    if n_ko != n_en:
        raise ValueError(f"line-aligned pair does not line up: {ko_path} has {n_ko} lines, {en_path} has {n_en}")
    source = f"{stem}.{{ko,en}}"

    def rows() -> Iterator[Row]:
        with open(ko_path, "rb") as f_ko, open(en_path, "rb") as f_en:
            for line_no, (raw_ko, raw_en) in enumerate(zip(f_ko, f_en), 1):
                ko, en = _decode_line(raw_ko, line_no), _decode_line(raw_en, line_no)
                if ko is None or en is None:
                    yield Row(source, line_no, None, None, "bad_encoding", _snippet(raw_ko if ko is None else raw_en))
                    continue
                yield Row(source, line_no, ko.rstrip("\r\n"), en.rstrip("\r\n"))

    return rows()


def read_tatoeba(path) -> Iterator[Row]:
    """Tatoeba / manythings.org `kor.txt`: `en<TAB>ko<TAB>attribution` per line (attribution optional)."""
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise FileNotFoundError(path)

    def rows() -> Iterator[Row]:
        with open(path, "rb") as f:
            for line_no, raw in enumerate(f, 1):
                text = _decode_line(raw, line_no)
                if text is None:
                    yield Row(source, line_no, None, None, "bad_encoding", _snippet(raw))
                    continue
                text = text.rstrip("\r\n")
                if not text.strip():
                    continue
                fields = text.split("\t")
                if len(fields) not in (2, 3):
                    yield Row(source, line_no, None, None, "wrong_column_count", _snippet(text))
                    continue
                yield Row(source, line_no, fields[1], fields[0])

    return rows()


def from_hf_dataset(ds, ko: str = "ko", en: str = "en", name: str | None = None) -> Iterator[Row]:
    """Rows from a 🤗 datasets Dataset or IterableDataset; `ko`/`en` name its columns. Row.line is the
    0-based row index, so a reported row can be looked up with ds[i]."""
    columns = ds.column_names  # None for an IterableDataset whose features are unknown
    if columns is not None and (ko not in columns or en not in columns):
        raise ValueError(f"{name or 'dataset'}: needs columns {ko!r} and {en!r}; columns found: {columns}")
    info = getattr(ds, "info", None)
    source = name or f"hf:{getattr(info, 'dataset_name', None) or 'dataset'}"

    def rows() -> Iterator[Row]:
        index = 0
        for batch in ds.select_columns([ko, en]).iter(batch_size=1000):  # batches: far faster than ds[i]
            for k, e in zip(batch[ko], batch[en]):
                if k is None or e is None:
                    yield Row(source, index, None, None, "missing_key", _snippet(f"{k!r} | {e!r}"))
                else:
                    yield Row(source, index, str(k), str(e))
                index += 1

    return rows()


def detect_format(path) -> str:
    """Format from the file suffix; a stem `X` with `X.ko` next to it is a line-aligned pair."""
    suffix = Path(path).suffix.lower()
    by_suffix = {".csv": "csv", ".tsv": "tsv", ".xlsx": "xlsx", ".jsonl": "jsonl", ".ndjson": "jsonl",
                 ".ko": "lines", ".en": "lines"}
    if suffix in by_suffix:
        return by_suffix[suffix]
    if Path(f"{path}.ko").is_file():
        return "lines"
    raise ValueError(f"{path}: cannot tell the format from the suffix {suffix!r}; pass fmt= (or `FMT:path`), "
                     f"one of {FORMATS} (Tatoeba's kor.txt is fmt='tatoeba')")


def read_file(path, fmt: str | None = None, ko_col: str | None = None, en_col: str | None = None) -> Iterator[Row]:
    """Rows of one input file in any supported format (detected from the suffix unless fmt is given)."""
    fmt = fmt or detect_format(path)
    if fmt in ("csv", "tsv"):
        return read_delimited(path, "\t" if fmt == "tsv" else ",", ko_col, en_col)
    if fmt == "xlsx":
        return read_xlsx(path, ko_col, en_col)
    if fmt == "jsonl":
        return read_jsonl(path, ko_col, en_col)
    if fmt == "lines":
        return read_line_pair(path)
    if fmt == "tatoeba":
        return read_tatoeba(path)
    raise ValueError(f"unknown format {fmt!r}; one of {FORMATS}")


# -----------------------------------------------------------------------------
# Cleaning: one pair in, the normalised pair and a drop reason (None = keep) out.


@dataclass
class CleanConfig:
    min_chars: int = 1  # per side, after normalisation
    max_chars: int = 1000  # per side; the longest real news sentence is ~540 chars of English
    # len(ko) / len(en) in characters. Korean needs about half the characters of English (median 0.52 on
    # Tatoeba + news + FLORES; 1st–99th percentile 0.26–1.08); below 0.15 or above 3 the real pairs
    # inspected were misalignments ("번역 :" for a whole sentence, a truncated English side).
    min_ratio: float = 0.15
    max_ratio: float = 3.0
    # ...judged only when the longer side has at least this many characters: for a word pair such as
    # 산 / mountain (0.125) the ratio says nothing about alignment.
    ratio_min_chars: int = 10


_ZERO_WIDTH = re.compile("[\u200b\u200c\u200d\u2060\ufeff\u00ad]")  # ZW space/joiners, BOM, soft hyphen
_HANGUL = re.compile("[\u1100-\u11ff\u3130-\u318f\ua960-\ua97f\uac00-\ud7a3\ud7b0-\ud7ff]")  # jamo + syllables


def normalize_text(text: str) -> str:
    """NFC (composes decomposed jamo, so equal text compares equal), drop zero-width characters,
    collapse every kind of whitespace to one space, strip. (str.split() splits on all Unicode
    whitespace, NBSP and ideographic space included, and is ~3x faster than a regex here.)"""
    return " ".join(_ZERO_WIDTH.sub("", unicodedata.normalize("NFC", text)).split())


def clean_pair(ko: str, en: str, config: CleanConfig | None = None) -> tuple[str, str, str | None]:
    """(normalised ko, normalised en, drop reason or None). Duplicates are handled by the build."""
    config = config or CleanConfig()
    ko, en = normalize_text(ko), normalize_text(en)
    if not ko or not en:
        return ko, en, "empty"
    if not _HANGUL.search(ko):
        return ko, en, "ko_no_hangul"
    if _HANGUL.search(en):
        return ko, en, "en_has_hangul"
    n_ko, n_en = len(ko), len(en)
    if n_ko < config.min_chars or n_en < config.min_chars:
        return ko, en, "too_short"
    if n_ko > config.max_chars or n_en > config.max_chars:
        return ko, en, "too_long"
    if max(n_ko, n_en) >= config.ratio_min_chars and not config.min_ratio <= n_ko / n_en <= config.max_ratio:
        return ko, en, "length_ratio"
    return ko, en, None


# -----------------------------------------------------------------------------
# Hashing, split and dedupe. One 8-byte blake2b digest of the normalised "ko\ten" serves both: it is the
# dedupe key, and read as a number in [0, 1) it picks the split. The split therefore depends on the pair
# alone: the same pair lands in the same split whatever else is in the corpus, and adding data never
# moves a val/test pair into train. (Python's hash() is salted per process, so it is not used.)


def _digest(ko: str, en: str) -> bytes:
    return blake2b(f"{ko}\t{en}".encode(), digest_size=8).digest()


def pair_hash(ko: str, en: str) -> int:
    """Stable 64-bit hash of a normalised pair."""
    return int.from_bytes(_digest(ko, en), "little")


def _unit_interval(h):
    """64-bit hash -> float in [0, 1) (top 53 bits, exact in a double). Works on ints and uint64 arrays."""
    if isinstance(h, np.ndarray):
        return (h >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return (h >> 11) * 2.0**-53


def split_of(ko: str, en: str, val_frac: float = 0.05, test_frac: float = 0.05) -> str:
    """The split a pair goes to. Test takes the bottom of [0, 1), val the next slice, so growing val_frac
    never moves a test pair."""
    u = _unit_interval(pair_hash(normalize_text(ko), normalize_text(en)))
    return "test" if u < test_frac else "val" if u < test_frac + val_frac else "train"


class SeenHashes:
    """Exact set of 64-bit pair hashes in sorted numpy runs: 8 bytes per kept pair, whatever the text length.

    Why not a Python set: each entry costs ~80 bytes there (int object + table slot, measured), ~1 GB for the
    ~13M pairs of a 2 GB input, versus ~100 MB here. Why not a fixed-size Bloom filter: it is bounded, but
    its false positives silently drop unique pairs. With 64-bit hashes the chance that two different pairs
    collide is ~n²/2^65, about 5e-6 at 13M pairs. Runs are merged like a binary counter (a new run is
    merged into the last one while that is no bigger), so there are O(log n) runs, each searched with one
    vectorised searchsorted per batch; a merge briefly needs ~2.5× the largest run.
    """

    def __init__(self):
        self.runs: list[np.ndarray] = []

    def __len__(self) -> int:
        return sum(len(r) for r in self.runs)

    @property
    def nbytes(self) -> int:
        return sum(r.nbytes for r in self.runs)

    def contains(self, hashes: np.ndarray) -> np.ndarray:
        found = np.zeros(len(hashes), dtype=bool)
        for run in self.runs:
            i = np.minimum(np.searchsorted(run, hashes), len(run) - 1)
            found |= run[i] == hashes
        return found

    def add(self, hashes: np.ndarray) -> None:
        """Add hashes that are unique and not yet present."""
        if len(hashes) == 0:
            return
        run = np.sort(hashes)
        while self.runs and len(self.runs[-1]) <= len(run):
            run = np.sort(np.concatenate([self.runs.pop(), run]), kind="stable")  # timsort: merges the 2 runs
        self.runs.append(run)


# -----------------------------------------------------------------------------
# Writing: each split goes to out_dir/{split}-00000.parquet, ... of at most shard_rows rows, written in
# row groups of WRITE_ROWS through a ParquetWriter, so only one row group per split is ever in memory.

SCHEMA = pa.schema([("ko", pa.string()), ("en", pa.string()), ("source", pa.string())])
WRITE_ROWS = 10_000  # rows per Parquet row group and per dedupe batch (20k: +40 MB peak RSS, no faster)


class ShardWriter:
    def __init__(self, out_dir: Path, split: str, shard_rows: int):
        self.out_dir, self.split, self.shard_rows = out_dir, split, shard_rows
        self.buffer: dict[str, list[str]] = {"ko": [], "en": [], "source": []}
        self.writer: pq.ParquetWriter | None = None
        self.rows_in_shard = 0
        self.rows = 0
        self.files: list[str] = []

    def extend(self, ko: list[str], en: list[str], source: list[str]) -> None:
        self.buffer["ko"] += ko
        self.buffer["en"] += en
        self.buffer["source"] += source
        if len(self.buffer["ko"]) >= WRITE_ROWS:
            self.flush()

    def _open_shard(self) -> None:
        name = f"{self.split}-{len(self.files):05d}.parquet"
        self.files.append(name)
        self.writer = pq.ParquetWriter(self.out_dir / name, SCHEMA)
        self.rows_in_shard = 0

    def flush(self) -> None:
        table = pa.table(self.buffer, schema=SCHEMA)
        self.buffer = {"ko": [], "en": [], "source": []}
        while table.num_rows:
            if self.writer is None:
                self._open_shard()
            take = min(table.num_rows, self.shard_rows - self.rows_in_shard)
            self.writer.write_table(table.slice(0, take))
            table = table.slice(take)
            self.rows_in_shard += take
            self.rows += take
            if self.rows_in_shard == self.shard_rows:
                self.writer.close()
                self.writer = None

    def close(self) -> None:
        self.flush()
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if not self.files:  # an empty split still gets one (empty) shard, so load_corpus works on it
            self._open_shard()
            self.writer.close()
            self.writer = None


# -----------------------------------------------------------------------------
# The build.


@dataclass
class BuildConfig:
    clean: CleanConfig = field(default_factory=CleanConfig)
    val_frac: float = 0.05
    test_frac: float = 0.05
    shard_rows: int = 500_000
    fmt: str | None = None  # format for every path input (else from the suffix, or a `FMT:path` prefix)
    ko_col: str | None = None  # column / key names, for csv, tsv, xlsx and jsonl inputs
    en_col: str | None = None
    progress: bool = True  # tqdm bar over rows read
    max_examples: int = 5  # examples kept per malformed / dropped reason
    # English sides longer than the teacher reads (CLIP: 77 tokens with its two special tokens) are dropped: the
    # teacher would truncate them, so the student would learn states for a sentence the Korean says more than.
    # 0: no limit. Counted with `build_corpus(count_en_tokens=...)`, e.g. `token_counter(teacher)`.
    en_max_tokens: int = 0


_FORMAT_PREFIX = re.compile(rf"^({'|'.join(FORMATS)}):(.+)$")


def split_format(item) -> tuple[str, str]:
    """`tatoeba:kor.txt` -> ("tatoeba", "kor.txt"); a path without a known format prefix -> ("", path)."""
    match = _FORMAT_PREFIX.match(str(item))
    return (match.group(1), match.group(2)) if match else ("", str(item))


def _open_inputs(inputs: Iterable, config: BuildConfig) -> list[tuple[dict, Iterator[Row]]]:
    """(summary entry, row iterator) per input. Paths are opened (and so checked) here, before anything is
    written; a line pair named twice (X.ko and X.en, as a shell glob gives) is read once."""
    opened, seen = [], set()
    for item in inputs:
        if isinstance(item, (str, os.PathLike)):
            fmt, path = split_format(item)
            fmt = fmt or config.fmt or detect_format(path)
            key = (fmt, str(line_pair_paths(path)[0].resolve()) if fmt == "lines" else str(Path(path).resolve()))
            if key in seen:
                continue
            seen.add(key)
            source = f"{line_pair_paths(path)[0]}.{{ko,en}}" if fmt == "lines" else path
            opened.append(({"source": source, "format": fmt}, read_file(path, fmt, config.ko_col, config.en_col)))
        else:  # already an iterator of Rows, e.g. from_hf_dataset(ds, ...)
            opened.append(({"source": None, "format": "rows"}, iter(item)))
    return opened


def open_input(item):
    """A corpus input as `build_corpus` takes it: `hf:NAME[:SPLIT]` loads that 🤗 dataset (columns `ko` and `en`, or a
    `translation` dict of them), anything else is a file path (with an optional `FMT:` prefix)."""
    if isinstance(item, str) and item.startswith("hf:"):
        from datasets import load_dataset

        name, _, split = item[3:].partition(":")
        ds = load_dataset(name, split=split or "train")
        if "translation" in ds.column_names:
            ds = ds.map(lambda r: {"ko": r["translation"]["ko"], "en": r["translation"]["en"]}, remove_columns=ds.column_names)
        return from_hf_dataset(ds, name=item)
    return item


def token_counter(teacher):
    """English side -> how many tokens the teacher's tokenizer makes of it (special tokens included). `teacher`: a
    `plan.ModelRef` of the text encoder (its tokenizer is the `tokenizer` subfolder beside `text_encoder`) or a path."""
    from transformers import AutoTokenizer

    from .plan import ModelRef

    ref = ModelRef.of(teacher).tokenizer()
    tokenizer = AutoTokenizer.from_pretrained(ref.path, **ref.kwargs)
    return lambda text: len(tokenizer(text, truncation=False).input_ids)


def build_corpus(inputs: Iterable, out_dir, config: BuildConfig | None = None, count_en_tokens=None) -> dict:
    """Read, clean, dedupe and split every input; write Parquet shards and summary.json to out_dir.

    inputs: file paths (format from the suffix, config.fmt, or a `FMT:path` prefix such as
    "tatoeba:kor.txt"), or iterators of Rows such as from_hf_dataset(ds, ko=..., en=...).
    Returns the summary that is also written to out_dir/summary.json.
    """
    config = config or BuildConfig()
    if not (0 <= config.val_frac and 0 <= config.test_frac and config.val_frac + config.test_frac < 1):
        raise ValueError(f"need 0 <= val_frac, test_frac and val_frac + test_frac < 1, got {config.val_frac}, {config.test_frac}")
    start = time.perf_counter()
    opened = _open_inputs(inputs, config)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:  # stale shards of an earlier build would otherwise mix into load_corpus
        for old in out_dir.glob(f"{split}-[0-9][0-9][0-9][0-9][0-9].parquet"):
            old.unlink()

    writers = [ShardWriter(out_dir, split, config.shard_rows) for split in SPLITS]
    seen = SeenHashes()
    malformed, dropped = Counter(), Counter()
    malformed_examples: list[dict] = []
    dropped_examples: dict[str, list[dict]] = {}
    batch: list[tuple[str, str, str, int]] = []  # cleaned pairs waiting for dedupe: (ko, en, source, line)
    kept = 0

    def keep_example(reason: str, example: dict) -> None:
        examples = dropped_examples.setdefault(reason, [])
        if len(examples) < config.max_examples:
            examples.append(example)

    def flush_batch() -> int:
        """Dedupe a batch against itself and everything before it, route the new pairs to their split."""
        if not batch:
            return 0
        hashes = np.frombuffer(b"".join(_digest(ko, en) for ko, en, _, _ in batch), dtype="<u8")
        new = np.zeros(len(batch), dtype=bool)
        new[np.unique(hashes, return_index=True)[1]] = True  # first occurrence within the batch
        new &= ~seen.contains(hashes)
        seen.add(hashes[new])
        u = _unit_interval(hashes)
        split_index = np.where(u < config.test_frac, 2, np.where(u < config.test_frac + config.val_frac, 1, 0))
        for i in np.flatnonzero(~new)[: config.max_examples]:
            keep_example("duplicate", {"source": batch[i][2], "line": batch[i][3], "ko": batch[i][0][:SNIPPET_CHARS], "en": batch[i][1][:SNIPPET_CHARS]})
        for s, writer in enumerate(writers):
            pairs = [batch[i] for i in np.flatnonzero(new & (split_index == s))]
            writer.extend([p[0] for p in pairs], [p[1] for p in pairs], [p[2] for p in pairs])
        n_new = int(new.sum())
        if n_new < len(batch):
            dropped["duplicate"] += len(batch) - n_new
        batch.clear()
        return n_new

    bar = tqdm(unit=" rows", disable=not config.progress, mininterval=1.0, desc="corpus")
    rows_read = 0
    for entry, rows in opened:
        read_before, kept_before = rows_read, kept
        for row in rows:
            rows_read += 1
            if rows_read % 10_000 == 0:
                bar.update(10_000)
            if entry["source"] is None:
                entry["source"] = row.source
            if row.problem is not None:
                malformed[row.problem] += 1
                if malformed[row.problem] <= config.max_examples:  # the first few of each reason
                    malformed_examples.append({"source": row.source, "line": row.line, "reason": row.problem, "snippet": row.snippet})
                continue
            ko, en, reason = clean_pair(row.ko, row.en, config.clean)
            # a token covers at least one character: only sides longer than the limit need the tokenizer
            if (reason is None and config.en_max_tokens and count_en_tokens is not None and len(en) + 2 > config.en_max_tokens
                    and count_en_tokens(en) > config.en_max_tokens):
                reason = "en_over_token_limit"
            if reason is not None:
                dropped[reason] += 1
                if dropped[reason] <= config.max_examples:
                    keep_example(reason, {"source": row.source, "line": row.line, "ko": ko[:SNIPPET_CHARS], "en": en[:SNIPPET_CHARS]})
                continue
            batch.append((ko, en, row.source, row.line))
            if len(batch) >= WRITE_ROWS:
                kept += flush_batch()
        kept += flush_batch()  # per input, so its kept count is exact
        entry["rows_read"], entry["kept"] = rows_read - read_before, kept - kept_before
    bar.update(rows_read % 10_000)
    bar.close()
    for writer in writers:
        writer.close()

    summary = {
        "out_dir": str(out_dir),
        "inputs": [entry for entry, _ in opened],
        "rows_read": rows_read,
        "kept": kept,
        "malformed_total": sum(malformed.values()),
        "malformed": dict(malformed.most_common()),
        "dropped_total": sum(dropped.values()),
        "dropped": dict(dropped.most_common()),
        "splits": {w.split: w.rows for w in writers},
        "shards": {w.split: w.files for w in writers},
        "malformed_examples": sorted(malformed_examples, key=lambda e: (e["source"], e["line"])),
        "dropped_examples": dropped_examples,
        "dedupe_hash_bytes": seen.nbytes,
        "config": asdict(config),
        "seconds": round(time.perf_counter() - start, 3),
    }
    assert rows_read == summary["malformed_total"] + summary["dropped_total"] + kept
    (out_dir / "summary.json").write_text(json.dumps(summary, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return summary


# -----------------------------------------------------------------------------
# Reading the corpus back, and helpers for the notebook.


def _shards(out_dir, split: str) -> list[str]:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    files = sorted(str(p) for p in Path(out_dir).glob(f"{split}-[0-9][0-9][0-9][0-9][0-9].parquet"))
    if not files:
        raise FileNotFoundError(f"no {split}-*.parquet shards in {out_dir}; run build_corpus first")
    return files


def _no_rows():
    yield from ()


def load_corpus(out_dir, split: str = "train", streaming: bool = False, cache_dir=None):
    """The split as a 🤗 datasets.Dataset (memory-mapped), or an IterableDataset when streaming."""
    import datasets

    files = _shards(out_dir, split)
    if sum(pq.read_metadata(f).num_rows for f in files) == 0:  # datasets' Parquet loader refuses 0 rows
        features = datasets.Features.from_arrow_schema(SCHEMA)
        if streaming:
            return datasets.IterableDataset.from_generator(_no_rows, features=features)
        return datasets.Dataset.from_dict({name: [] for name in SCHEMA.names}, features=features, split=split)
    return datasets.load_dataset("parquet", data_files={split: files}, split=split,
                        streaming=streaming, cache_dir=None if cache_dir is None else str(cache_dir))


def _count_rows(summary: dict) -> list[tuple[str, str, int]]:
    """(stage, reason, count) rows: what was read, why rows were lost, what each split got."""
    return ([("read", "rows", summary["rows_read"])]
            + [("malformed", reason, n) for reason, n in summary["malformed"].items()]
            + [("dropped", reason, n) for reason, n in summary["dropped"].items()]
            + [("kept", split, n) for split, n in summary["splits"].items()])


def summary_table(summary: dict):
    """pandas DataFrame with columns stage, reason, count (summary: build_corpus's return or summary.json)."""
    import pandas as pd

    return pd.DataFrame(_count_rows(summary), columns=["stage", "reason", "count"])


def length_stats(out_dir, split: str = "train"):
    """pandas DataFrame with one row per pair: ko_chars, en_chars, ko_tokens, en_tokens (whitespace tokens)."""
    import pandas as pd
    import pyarrow.compute as pc

    frames = []
    for path in _shards(out_dir, split):
        table = pq.read_table(path, columns=["ko", "en"])
        frames.append(pd.DataFrame({
            f"{side}_{what}": np.asarray(values, dtype=np.int64)
            for side in ("ko", "en")
            for what, values in (("chars", pc.utf8_length(table[side])),
                                 ("tokens", pc.list_value_length(pc.utf8_split_whitespace(table[side]))))
        }))
    return pd.concat(frames, ignore_index=True)


# -----------------------------------------------------------------------------
# Benchmark: a synthetic AI Hub CSV of a given size, built in a child process so that neither the
# generation nor this process's memory counts in the measured peak RSS.


def write_synthetic_aihub_csv(path, target_bytes: int, seed: int = 0) -> dict:
    """AI Hub style CSV (ID,원문,번역문,도메인) of about target_bytes: unique pairs made of two phrase
    halves, plus every 50th row a repeat of an earlier row and a few malformed lines."""
    import random

    rng = random.Random(seed)
    n_halves = 3000  # 3000 × 3000 distinct (first, second) half combinations: unique for 9M rows
    ko_words = ["".join(chr(0xAC00 + rng.randrange(11172)) for _ in range(rng.randint(1, 3))) for _ in range(5000)]
    en_words = ["".join(rng.choice("etaoinshrdlucmfwypvbgk") for _ in range(rng.randint(2, 8))) for _ in range(5000)]
    ko_halves = [" ".join(rng.choices(ko_words, k=rng.randint(3, 7))) for _ in range(n_halves)]
    en_halves = [" ".join(rng.choices(en_words, k=rng.randint(4, 9))) for _ in range(n_halves)]
    domains = ["일상생활", "뉴스", "문화", "기술과학", "사회"]
    counts = Counter()
    written = 0
    with open(path, "wb") as f:
        f.write("ID,원문,번역문,도메인\n".encode())
        i = 0
        while written < target_bytes:
            lines = []
            for _ in range(10_000):
                i += 1
                if i % 50 == 0 and i > 1000:  # an exact repeat of an earlier pair (row i - 999 is never one)
                    k = i - 999
                    counts["duplicate_rows"] += 1
                elif i % 1000 == 7:  # wrong field count
                    lines.append(f"{i},{ko_halves[i % n_halves]}\n")
                    counts["wrong_column_count_rows"] += 1
                    continue
                else:
                    k = i
                    counts["pair_rows"] += 1
                a, b = k % n_halves, (k // n_halves) % n_halves
                lines.append(f'{i},{ko_halves[a]} {ko_halves[b]}다.,"{en_halves[a]}, {en_halves[b]}.",{domains[k % 5]}\n')
            chunk = "".join(lines).encode()
            chunk += b"%d,\xff\xfe not utf-8 \xc3\x28,bad\n" % (i + 1)  # one bad-encoding line per 10k rows
            counts["bad_encoding_rows"] += 1
            i += 1
            f.write(chunk)
            written += len(chunk)
    return {"bytes": written, "lines": i, **counts}


def bench(mb: float, out, keep: bool = False) -> dict:
    import platform
    import resource
    import shutil
    import subprocess
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="corpus_bench_"))
    try:
        csv_path = work / "aihub_synthetic.csv"
        t0 = time.perf_counter()
        generated = write_synthetic_aihub_csv(csv_path, int(mb * 1e6))
        generate_s = time.perf_counter() - t0
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}

        def child_peak_mb() -> float:  # ru_maxrss of the largest finished child so far, KiB on Linux
            return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024

        subprocess.run([sys.executable, "-c", "import koclip_lib.corpus"], env=env, check=True)
        import_rss_mb = child_peak_mb()
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "koclip_lib.corpus", "build", "--input", str(csv_path),
                               "--out", str(work / "corpus"), "--no-progress"],
                              env=env, check=True, capture_output=True, text=True)
        build_s = time.perf_counter() - t0
        build_rss_mb = child_peak_mb()
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        parquet_mb = sum(p.stat().st_size for p in (work / "corpus").glob("*.parquet")) / 1e6
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)

    result = {
        "input_mb": round(generated["bytes"] / 1e6, 1),
        "generated": generated,
        "generate_seconds": round(generate_s, 1),
        "build_seconds": round(build_s, 2),
        "rows_read": summary["rows_read"],
        "rows_per_second": round(summary["rows_read"] / build_s),
        "mb_per_second": round(generated["bytes"] / 1e6 / build_s, 1),
        "peak_rss_mb": round(build_rss_mb, 1),
        "import_only_rss_mb": round(import_rss_mb, 1),
        "kept": summary["kept"],
        "malformed": summary["malformed"],
        "dropped": summary["dropped"],
        "splits": summary["splits"],
        "parquet_mb": round(parquet_mb, 1),
        "dedupe": {"structure": "exact set of 8-byte blake2b digests in sorted numpy runs (SeenHashes)",
                   "bytes": summary["dedupe_hash_bytes"],
                   "bytes_per_kept_pair": round(summary["dedupe_hash_bytes"] / max(summary["kept"], 1), 2),
                   "python_set_estimate_bytes": 80 * summary["kept"]},
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "work_dir": str(work) if keep else None,
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return result


# -----------------------------------------------------------------------------
# CLI


def _print_build_report(summary: dict) -> None:
    print(f"{'stage':<10} {'reason':<20} {'count':>10}")
    for stage, reason, count in _count_rows(summary):
        print(f"{stage:<10} {reason:<20} {count:>10,}")
    if summary["malformed_examples"]:
        print("first malformed rows:")
        for e in summary["malformed_examples"]:
            print(f"  {e['source']}:{e['line']}  {e['reason']}  {e['snippet']!r}")


def main(argv: list[str] | None = None) -> int:
    parser = CliParser(prog="python -m koclip_lib.corpus", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    b = commands.add_parser("build", help="build a corpus; the last stdout line is the summary JSON")
    b.add_argument("--input", nargs="+", required=True, help="files; prefix FMT: to set one file's format, e.g. tatoeba:kor.txt")
    b.add_argument("--out", required=True)
    b.add_argument("--format", choices=FORMATS, help="format of every input (default: from the suffix)")
    b.add_argument("--ko-col")
    b.add_argument("--en-col")
    defaults, clean_defaults = BuildConfig(), CleanConfig()
    b.add_argument("--val-frac", type=float, default=defaults.val_frac)
    b.add_argument("--test-frac", type=float, default=defaults.test_frac)
    b.add_argument("--min-chars", type=int, default=clean_defaults.min_chars)
    b.add_argument("--max-chars", type=int, default=clean_defaults.max_chars)
    b.add_argument("--min-ratio", type=float, default=clean_defaults.min_ratio, help="min len(ko)/len(en) in characters")
    b.add_argument("--max-ratio", type=float, default=clean_defaults.max_ratio)
    b.add_argument("--shard-rows", type=int, default=defaults.shard_rows)
    b.add_argument("--no-progress", action="store_true")

    m = commands.add_parser("bench", help="time a streaming build of a synthetic AI Hub CSV")
    m.add_argument("--mb", type=float, default=300)
    m.add_argument("--out", default="outputs/bench/corpus_stream.json")
    m.add_argument("--keep", action="store_true", help="keep the generated CSV and corpus")

    args = parser.parse_args(argv)
    if args.command == "build":
        missing = [name for name in args.input if not Path(split_format(name)[1]).exists()]
        if missing:
            parser.exit(2, f"error: no such input file: {', '.join(missing)}\n")
        config = BuildConfig(
            clean=CleanConfig(min_chars=args.min_chars, max_chars=args.max_chars,
                              min_ratio=args.min_ratio, max_ratio=args.max_ratio),
            val_frac=args.val_frac, test_frac=args.test_frac, shard_rows=args.shard_rows,
            fmt=args.format, ko_col=args.ko_col, en_col=args.en_col, progress=not args.no_progress)
        try:
            summary = build_corpus(args.input, args.out, config)
        except (FileNotFoundError, ValueError) as err:  # an unreadable input, a missing column: one line, no traceback
            parser.exit(2, f"error: {err}\n")
        _print_build_report(summary)
        print(json.dumps(summary, ensure_ascii=False))
    else:
        r = bench(args.mb, args.out, args.keep)
        print(f"{'input':<22} {r['input_mb']} MB, {r['rows_read']:,} rows")
        print(f"{'build':<22} {r['build_seconds']} s, {r['rows_per_second']:,} rows/s, {r['mb_per_second']} MB/s")
        print(f"{'peak RSS (build)':<22} {r['peak_rss_mb']} MB  (interpreter + imports alone: {r['import_only_rss_mb']} MB)")
        print(f"{'dedupe hashes':<22} {r['dedupe']['bytes'] / 1e6:.1f} MB = {r['dedupe']['bytes_per_kept_pair']} B/pair "
              f"(a Python set would be ~{r['dedupe']['python_set_estimate_bytes'] / 1e6:.0f} MB)")
        print(f"{'kept / malformed':<22} {r['kept']:,} / {r['malformed']}")
        print(f"{'dropped':<22} {r['dropped']}")
        print(f"{'generation (excluded)':<22} {r['generate_seconds']} s")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
