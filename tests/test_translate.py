import json

import pytest
import torch

from koclip_lib import miniworld as mw
from koclip_lib.corpus import BuildConfig, build_corpus, load_corpus
from koclip_lib.translate import Translator, TranslatorConfig, chrf, ensure_translator, train_translator

TINY = {"vocab_size": 200, "d_model": 32, "layers": 1, "heads": 2, "ffn_dim": 64, "max_length": 32,
        "val_examples": 40, "test_examples": 20}
TINY_LOOP = {"steps": 60, "lr": 3e-3, "batch_size": 32, "warmup_steps": 5, "validate_every": 30, "checkpoint_every": 30,
             "log_every": 10}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: a second thread gains nothing and, on a busy machine, can make a step 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("mt_corpus")
    raw = mw.write_aihub_csv(root / "raw.csv", 500, seed=0, world=mw.WorldConfig())
    build_corpus([raw], root / "corpus", BuildConfig(val_frac=0.1, test_frac=0.1, progress=False))
    return root / "corpus"


@pytest.fixture(scope="module")
def trained(corpus_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("translator")
    metrics = train_translator(corpus_dir, out, TranslatorConfig(**TINY, loop=TINY_LOOP))
    return out, metrics


@pytest.fixture(scope="module")
def prompts(corpus_dir):
    return list(load_corpus(corpus_dir, "test")["ko"])[:8]


def test_training_lowers_validation_loss_and_reports_metrics(trained):
    out, metrics = trained
    assert metrics["val_loss"] < 0.8 * metrics["val_loss_before"]
    assert metrics["steps"] == TINY_LOOP["steps"]
    for key in ("test_exact_match", "test_token_accuracy"):
        assert 0.0 <= metrics[key] <= 1.0
    assert 0.0 <= metrics["test_chrf"] <= 100.0
    assert json.loads((out / "metrics.json").read_text(encoding="utf-8"))["val_loss"] == pytest.approx(metrics["val_loss"])
    assert not (out / "train" / "checkpoints").exists()  # finished artifacts keep no resume checkpoints


def test_saved_translator_is_a_real_marian_checkpoint_with_consistent_ids(trained):
    out, _ = trained
    assert all((out / name).exists() for name in ("source.spm", "target.spm", "vocab.json", "config.json"))
    tr = Translator.from_pretrained(out)
    tok, config = tr.tokenizer, tr.model.config
    assert type(tok).__name__ == "MarianTokenizer"
    assert config.pad_token_id == tok.pad_token_id == config.decoder_start_token_id == len(tok) - 1
    assert config.eos_token_id == tok.eos_token_id == 0
    assert config.vocab_size == len(tok)


def test_round_trip_through_save_pretrained_gives_identical_outputs(trained, prompts, tmp_path):
    out, _ = trained
    first = Translator.from_pretrained(out, device="cpu")
    before = first.translate(prompts)
    first.save_pretrained(tmp_path / "copy")
    after = Translator.from_pretrained(tmp_path / "copy", device="cpu").translate(prompts)
    assert after == before
    assert all(isinstance(t, str) for t in before)


def test_translate_keeps_order_and_is_independent_of_batch_size(trained, prompts):
    tr = Translator.from_pretrained(trained[0], device="cpu")
    kw = {"max_new_tokens": 16}  # a barely trained model may not stop early; keep the test fast
    one = tr.translate(prompts, batch_size=1, **kw)
    assert tr.translate(prompts, batch_size=8, **kw) == one
    assert tr.translate(prompts[::-1], batch_size=8, **kw) == one[::-1]


def test_empty_list_and_empty_prompts(trained):
    tr = Translator.from_pretrained(trained[0], device="cpu")
    assert tr.translate([]) == []
    for bad in ("", "   "):
        with pytest.raises(ValueError, match="prompt 1 is empty"):
            tr.translate(["빨간 원", bad])


def test_long_prompts_are_truncated_not_an_error(trained):
    tr = Translator.from_pretrained(trained[0], device="cpu")
    assert len(tr.translate(["왼쪽에 빨간 원이 있다 " * 40], max_new_tokens=500)) == 1
    assert tr.seconds_per_prompt(["빨간 원", "파란 별"], batch_size=1) > 0


def test_chrf_bounds():
    assert chrf(["a red circle"], ["a red circle"]) == pytest.approx(100.0)
    assert chrf(["xyz"], ["abc"]) == 0.0
    assert 0 < chrf(["a red circle"], ["a blue circle"]) < 100


def test_ensure_translator_is_cached_by_config(tmp_path, corpus_dir):
    from koclip_lib.common import cached_artifact

    built = cached_artifact(tmp_path / "corpus", {"copy of": str(corpus_dir)},  # a corpus folder with its artifact.json
                            lambda d: __import__("shutil").copytree(corpus_dir, d, dirs_exist_ok=True))
    section = {**TINY, "val_examples": 10, "test_examples": 4, "loop": {**TINY_LOOP, "steps": 4, "validate_every": 2}}
    path = ensure_translator(section, tmp_path, corpus_dir=built)
    stamp = (path / "artifact.json").read_text(encoding="utf-8")
    assert json.loads(stamp)["finished"]
    mtime = (path / "model.safetensors").stat().st_mtime_ns
    assert ensure_translator(section, tmp_path, corpus_dir=built) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == mtime  # reused, not retrained
    assert len(Translator.from_pretrained(path, device="cpu").translate(["빨간 원"])) == 1


def test_interrupted_training_resumes_to_the_same_weights(corpus_dir, trained, tmp_path, monkeypatch, caplog):
    import koclip_lib.translate as translate

    real_loop = translate.train_loop

    def killed_at_step_30(*args, **kwargs):  # as if the process died right after the step-30 checkpoint
        real_loop(*args, **kwargs, stop_after=30)
        raise KeyboardInterrupt

    cfg = TranslatorConfig(**TINY, loop=TINY_LOOP)
    monkeypatch.setattr(translate, "train_loop", killed_at_step_30)
    with pytest.raises(KeyboardInterrupt):
        train_translator(corpus_dir, tmp_path, cfg)
    monkeypatch.undo()
    assert (tmp_path / "train" / "checkpoints" / "step-30").exists()
    with caplog.at_level("INFO", logger="koclip_lib.train"):
        metrics = train_translator(corpus_dir, tmp_path, cfg)  # resumes from step 30 with the same tokenizer
    assert "resumed from" in caplog.text and "at step 30" in caplog.text
    resumed = Translator.from_pretrained(tmp_path, device="cpu").model.state_dict()
    uninterrupted = Translator.from_pretrained(trained[0], device="cpu").model.state_dict()
    for name, weight in uninterrupted.items():
        torch.testing.assert_close(resumed[name], weight, msg=name)
    assert metrics["val_loss"] == pytest.approx(trained[1]["val_loss"])


def test_pretrained_checkpoint_with_zero_steps_is_evaluated_as_is(corpus_dir, trained, tmp_path):
    """The full profile's path (a pretrained opus-mt id), here with the tiny checkpoint trained above."""
    cfg = TranslatorConfig.from_params({"pretrained": str(trained[0]), "test_examples": TINY["test_examples"],
                                        "val_examples": TINY["val_examples"], "loop": {"steps": 0}})
    assert cfg.loop["lr"] == TranslatorConfig().loop["lr"]  # a partial loop keeps the other defaults
    metrics = train_translator(corpus_dir, tmp_path, cfg)
    assert metrics["steps"] == 0 and metrics["val_loss"] == pytest.approx(metrics["val_loss_before"])
    assert metrics["test_chrf"] == pytest.approx(trained[1]["test_chrf"])
    assert Translator.from_pretrained(tmp_path).translate(["빨간 원"]) == Translator.from_pretrained(trained[0]).translate(["빨간 원"])


def test_evaluate_cli_translate_baseline_and_saved_korean_pipeline(trained, tiny_parts, tiny_student, tmp_path):
    """`--translate DIR` scores the translate-then-generate baseline with its latency; `--pipeline` takes a saved Korean
    pipeline folder as it is. Untrained judge and random generator: the numbers are meaningless, the contract is not."""
    import subprocess
    import sys

    from safetensors.torch import save_file

    from koclip_lib.common import write_json
    from koclip_lib.pipeline import load_korean_pipeline

    clf_dir = tmp_path / "clf"
    clf_dir.mkdir()
    save_file(mw.AttributeClassifier(8).state_dict(), str(clf_dir / "classifier.safetensors"))
    write_json(clf_dir / "classifier.json", {"width": 8, "image_size": 32})
    write_json(clf_dir / "judge.json", {"loader": "koclip_lib.miniworld.world:load_classifier"})
    prompts = mw.write_prompt_tsv(tmp_path / "ko.tsv", mw.sample_scenes(4, 0, mw.WorldConfig()), "ko", 0)
    load_korean_pipeline(sd=tiny_parts / "sd", text_encoder=tiny_student).save_pretrained(tmp_path / "korean_sd")
    common = ["--prompts", str(prompts), "--classifier", str(clf_dir), "--steps", "2"]
    for extra in (["--pipeline", str(tiny_parts / "sd"), "--translate", str(trained[0])],
                  ["--pipeline", str(tmp_path / "korean_sd")]):
        proc = subprocess.run([sys.executable, "-m", "koclip_lib.evaluate", *extra, *common], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        assert result["images"] == 4
        assert ("translate_seconds_per_prompt" in result) == ("--translate" in extra)
