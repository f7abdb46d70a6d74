import csv
import random
import re

import pytest

from koclip_lib import miniworld as mw
from koclip_lib.common import cached_artifact


def _captions(lang, n=3000, seed=0):
    world = mw.WorldConfig()
    scenes = mw.sample_scenes(n, seed, world, split="all", styles=["plain"])
    rng = random.Random(seed)
    caption = mw.caption_en if lang == "en" else mw.caption_ko
    return scenes, [caption(s, rng, world) for s in scenes]


def test_korean_captions_use_every_synonym_and_no_english():
    scenes, texts = _captions("ko")
    joined = "\n".join(texts)
    for table in (mw.COLORS, mw.SHAPES, mw.POSITIONS):
        for forms in table.values():
            for form in forms:
                assert form in joined, f"Korean form {form} never used"
    assert not re.search(r"[A-Za-z]", joined), "Korean captions must not contain Latin letters"
    # each caption names its own colour and shape with one of their Korean forms
    for scene, text in zip(scenes, texts):
        assert any(f in text for f in mw.COLORS[scene.color]), (scene, text)
        assert any(f in text for f in mw.SHAPES[scene.shape]), (scene, text)


def test_korean_particles_follow_the_last_syllable():
    _, texts = _captions("ko")
    joined = "\n".join(texts)
    assert "네모가" in joined and "네모이 " not in joined
    assert "원이" in joined and "원가" not in joined
    assert "동그라미를" in joined and "동그라미을" not in joined
    assert mw.has_final_consonant("별") and not mw.has_final_consonant("하트")


def test_english_captions_vary_and_name_attributes():
    scenes, texts = _captions("en")
    assert len(set(texts)) > 300
    assert not any(re.search(r"[가-힣]", t) for t in texts)
    for scene, text in zip(scenes, texts):
        assert scene.color in text and scene.shape in text
        assert mw.caption_mentions_position(scene, text) == any(p in text for p in mw.EN_POSITION[scene.position])


def test_korean_is_not_a_word_for_word_gloss():
    # the same scene gets several Korean sentence shapes, with the place first in most of them
    world = mw.WorldConfig(position_in_caption=1.0)
    scene = mw.Scene("red", "circle", "left")
    rng = random.Random(1)
    texts = {mw.caption_ko(scene, rng, world) for _ in range(200)}
    assert len(texts) >= 10
    assert sum(t.startswith("왼쪽") for t in texts) > len(texts) / 3


def test_render_is_seeded_and_heldout_split():
    world = mw.WorldConfig()
    scene = mw.Scene("blue", "star", "top")
    a, b, c = (mw.render(scene, s) for s in (3, 3, 4))
    assert list(a.getdata()) == list(b.getdata()) and list(a.getdata()) != list(c.getdata())
    seen = mw.sample_scenes(500, 0, world, split="seen")
    held = mw.sample_scenes(100, 0, world, split="heldout")
    assert not any(world.is_heldout(s.color, s.shape) for s in seen)
    assert all(world.is_heldout(s.color, s.shape) for s in held)
    with pytest.raises(ValueError, match="unknown color"):
        mw.Scene("teal", "star", "top")


def test_eval_prompts_ask_for_the_same_scenes_in_ink_wash_in_english(tmp_path):
    """The English ink-wash prompt files describe the scenes of the plain ones, with the style named and asked for;
    Korean ones are not written (the corpus, and so the students, have plain captions only)."""
    from koclip_lib.evaluate import read_prompt_tsv

    files = mw.ensure_eval_prompts({"evaluate": {"n_prompts": 40}}, tmp_path)
    assert set(files) == {f"{kind}_{split}" for kind in ("en", "ko", "en_ink") for split in ("seen", "heldout")} | \
        {"ko_frames", "en_frames"}
    for split in ("seen", "heldout"):
        plain, ink = read_prompt_tsv(files[f"en_{split}"]), read_prompt_tsv(files[f"en_ink_{split}"])
        assert len(plain) == len(ink) == 40
        for p, i in zip(plain, ink):
            assert p.attributes["style"] == "plain" and i.attributes["style"] == "ink"
            assert (p.attributes["color"], p.attributes["shape"]) == (i.attributes["color"], i.attributes["shape"])
            assert re.search(r"\bink\b", i.prompt) and not re.search(r"\bink\b", p.prompt), (p.prompt, i.prompt)


def test_aihub_csv_builds_through_the_corpus_builder(tmp_path):
    from koclip_lib.corpus import build_corpus, load_corpus

    path = mw.write_aihub_csv(tmp_path / "mini.csv", 400, 0, mw.WorldConfig())
    with open(path, encoding="utf-8-sig") as f:
        header = next(csv.reader(f))
    assert header == mw.AIHUB_HEADER
    summary = build_corpus([path], tmp_path / "corpus")
    assert summary["rows_read"] == 400 and summary["kept"] > 200
    train = load_corpus(tmp_path / "corpus", "train")
    assert re.search(r"[가-힣]", train[0]["ko"]) and not re.search(r"[가-힣]", train[0]["en"])


def test_cached_artifact_reuses_and_rebuilds(tmp_path):
    calls = []
    build = lambda d: calls.append(d) or (d / "w.txt").write_text("x")  # noqa: E731
    cached_artifact(tmp_path / "a", {"k": 1}, build)
    cached_artifact(tmp_path / "a", {"k": 1}, build)
    assert len(calls) == 1
    cached_artifact(tmp_path / "a", {"k": 2}, build)
    assert len(calls) == 2


def _build_slowly(out_dir):
    import time

    with open(out_dir.parent / "builds.txt", "a") as f:
        f.write(f"{out_dir.name}\n")
    time.sleep(1.0)
    (out_dir / "weights.bin").write_text("done")


def _ask_for_artifact(folder):
    cached_artifact(folder, {"k": 1}, _build_slowly)


def test_two_processes_asking_for_one_artifact_build_it_once(tmp_path):
    """`run --build --jobs 2` starts two lanes that may reach the same artifact: the second waits for the first."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_ask_for_artifact, args=(tmp_path / "model",)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert (tmp_path / "builds.txt").read_text().splitlines() == ["model"]
    assert (tmp_path / "model" / "weights.bin").read_text() == "done"


def test_held_out_frames_are_phrasings_the_corpus_never_uses(tmp_path):
    """The evaluation held out by phrasing: no prompt of a held-out frame is a caption the corpus writer makes, each
    frame has its own scenes of both kinds of pairs, and the frames come in several families."""
    world = mw.WorldConfig()
    rng = random.Random(0)
    corpus = {c for scene in mw.sample_scenes(20000, 0, world, split="all") for c in mw.caption_pair(scene, rng, world)}
    for lang, frames in mw.HELDOUT_FRAMES.items():
        path = mw.write_frame_prompts(tmp_path / f"{lang}_frames.tsv", lang, world, 5, 0)
        with open(path, encoding="utf-8") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        assert len(rows) == len(frames) * 10 and not {r["prompt"] for r in rows} & corpus
        for frame in frames:
            mine = [r for r in rows if r["frame"] == frame]
            assert [r["pairs"] for r in mine] == ["held-out"] * 5 + ["seen"] * 5
            assert all(world.is_heldout(r["color"], r["shape"]) == (r["pairs"] == "held-out") for r in mine)
        assert len({family for family, _ in frames.values()}) >= 4
    assert "mixed ko/en" in {family for family, _ in mw.KO_HELDOUT_FRAMES.values()}
