"""The Korean pipeline: compatibility errors, the prompt policy, save/load, and the evaluate CLI on a saved pipeline."""
import json

import pytest
import torch

from koclip_lib.miniworld import generator as g
from koclip_lib.pipeline import (IncompatibleCheckpointError, KoreanStableDiffusionPipeline, PromptError,
                                 load_korean_pipeline)


@pytest.fixture(scope="module")
def pipe(tiny_parts, tiny_student):
    return load_korean_pipeline(sd=tiny_parts / "sd", text_encoder=tiny_student)


def _image(pipe, prompt, seed=0, **kwargs):
    return pipe(prompt, num_inference_steps=2, output_type="pt", generator=torch.Generator().manual_seed(seed), **kwargs).images


@pytest.mark.parametrize("kind, numbers", [("sd2", ["1024", "32"]), ("sdxl", ["768 + 1280"]), ("sd3", ["T5"])])
def test_incompatible_checkpoints_raise_the_named_error(tiny_parts, tiny_student, tmp_path, kind, numbers):
    folder = g.save_stand_in_checkpoint(kind, tmp_path / kind)
    with pytest.raises(IncompatibleCheckpointError) as err:
        load_korean_pipeline(sd=folder, text_encoder=tiny_student)
    assert all(n in str(err.value) for n in numbers), str(err.value)
    assert "SD 1.x" in str(err.value)  # the fix


def test_long_prompts_are_chunked_and_every_window_counts(pipe):
    short = "왼쪽에 빨간 별이 있다"
    long = " ".join([short] * 40)  # far more than max_windows=4 windows of the tiny student's 22 tokens
    windows = pipe.prompt_windows(" ".join([short] * 6))
    assert len(windows) > 1 and " ".join(windows) == " ".join([short] * 6)  # whole words, nothing lost
    embeds, negative = pipe.encode_prompt([" ".join([short] * 6), short], "cpu", 1, True, negative_prompt="파란색")
    assert embeds.shape == negative.shape == (2, 77 * len(windows), 32)
    # the short prompt is its own window followed by empty-prompt windows
    alone, _ = pipe.encode_prompt(short, "cpu", 1, False)
    torch.testing.assert_close(embeds[1, :77], alone[0], atol=1e-5, rtol=1e-4)
    assert _image(pipe, " ".join([short] * 6)).shape == (1, 3, 32, 32)
    with pytest.raises(PromptError, match="prompt too long: .* at most 4"):
        pipe.prompt_windows(long)


def test_truncate_policy_warns_how_much_was_cut(tiny_parts, tiny_student):
    pipe = load_korean_pipeline(sd=tiny_parts / "sd", text_encoder=tiny_student, long_prompts="truncate")
    with pytest.warns(UserWarning, match=r"the last \d+ of \d+ words \(\d+ tokens\) were cut"):
        embeds, _ = pipe.encode_prompt(" ".join(["왼쪽에 빨간 별이 있다"] * 6), "cpu", 1, False)
    assert embeds.shape == (1, 77, 32)


def test_empty_prompt_only_as_unconditional(pipe):
    with pytest.raises(PromptError, match="empty prompt"):
        _image(pipe, "  ")
    assert torch.isfinite(_image(pipe, "빨간 별", negative_prompt="")).all()  # "" is the unconditional input


def test_mixed_language_and_negative_prompts_run_and_matter(pipe):
    mixed = _image(pipe, "a red 별 on the 왼쪽")
    korean = _image(pipe, "왼쪽에 빨간 별")
    with_negative = _image(pipe, "왼쪽에 빨간 별", negative_prompt="파란 하트")
    assert torch.isfinite(mixed).all()
    assert not torch.equal(korean, with_negative)  # the Korean negative prompt reaches the guidance
    assert not torch.equal(mixed, korean)


def test_saved_pipeline_reloads_and_gives_identical_images(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "korean_sd")
    index = json.loads((tmp_path / "korean_sd" / "model_index.json").read_text())
    assert index["_class_name"] == "KoreanStableDiffusionPipeline" and index["text_encoder"][1] == "KoreanTextEncoder"
    for again in (KoreanStableDiffusionPipeline.from_pretrained(tmp_path / "korean_sd"),
                  load_korean_pipeline(sd=tmp_path / "korean_sd")):
        again.set_progress_bar_config(disable=True)
        torch.testing.assert_close(_image(again, "왼쪽에 빨간 별", seed=1147446245), _image(pipe, "왼쪽에 빨간 별", seed=1147446245))


def test_an_english_checkpoint_needs_a_student(tiny_parts):
    with pytest.raises(IncompatibleCheckpointError, match="not a saved Korean pipeline: pass text_encoder"):
        load_korean_pipeline(sd=tiny_parts / "sd")


def test_sweep_shows_the_compatibility_error_in_its_cell(tiny_parts, tiny_student, tmp_path):
    from koclip_lib import evaluate

    versions = {"tiny": {"path": tiny_parts / "sd", "stand_in": False},
                "SD 2.x": {"path": g.save_stand_in_checkpoint("sd2", tmp_path / "sd2"), "stand_in": True}}
    encoders = evaluate.sweep_encoders(["teacher", "raw", "student"], {"student": tiny_student})
    table, grids = evaluate.sd_sweep(versions, encoders, [("왼쪽에 빨간 별", "a red star on the left")], seed=1147446245, steps=2)
    assert set(grids) == {("tiny", e) for e in encoders}
    assert "1024" in table.loc[("SD 2.x", "student · student"), "error"]
    assert table.loc[("tiny", "student · student"), "s/image (batch 1)"] > 0
    # the teacher cell drew the English prompt, the raw cell the Korean one, with the same seed
    teacher, raw = evaluate.ENCODER_LABELS["teacher"], evaluate.ENCODER_LABELS["raw"]
    assert not torch.equal(grids[("tiny", teacher)][0], grids[("tiny", raw)][0])
    with pytest.raises(ValueError, match="unknown encoder 'nope'"):
        evaluate.sweep_encoders(["nope"], {"student": tiny_student})


def test_service_batches_only_prompts_of_equal_windows(pipe, tmp_path):
    """Padding a short prompt with empty windows would change its image, so the service's batch key holds the
    window count; a prompt the Korean pipeline will not read is a 422 at admission, not a failed job."""
    from fastapi.testclient import TestClient

    from koclip_lib.serve import PipelineEngine, Settings, create_app

    engine = PipelineEngine(pipe)
    long, short = " ".join(["왼쪽에 빨간 별이 있다"] * 6), "빨간 별"
    assert engine.text_windows(long, None) > 1 == engine.text_windows(short, "파란색")
    settings = Settings(db_path=str(tmp_path / "jobs.sqlite3"), warmup=False, default_steps=2, max_prompt_chars=2000)
    with TestClient(create_app(engine, settings)) as client:
        refused = client.post("/v1/images", json={"prompt": " ".join(["왼쪽에 빨간 별이 있다"] * 60)})
        assert refused.status_code == 422 and "prompt too long" in refused.text
        assert client.post("/v1/images", json={"prompt": long}).status_code == 202
