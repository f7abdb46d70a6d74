import json
import subprocess
import sys

import pytest

from koclip_lib import evaluate
from koclip_lib import miniworld as mw
from koclip_lib.common import write_json


def _tsv(tmp_path, text):
    path = tmp_path / "prompts.tsv"
    path.write_text(text, encoding="utf-8")
    return path


def test_reads_required_and_optional_columns(tmp_path):
    rows = evaluate.read_prompt_tsv(_tsv(tmp_path, "prompt\tcolor\tshape\tposition\n빨간 별\tred\tstar\t\na blue heart on the left\tblue\theart\tleft\n"))
    assert [r.attributes for r in rows] == [{"color": "red", "shape": "star"}, {"color": "blue", "shape": "heart", "position": "left"}]
    assert rows[1].line == 3
    assert rows[1].columns == {"prompt": "a blue heart on the left", "color": "blue", "shape": "heart", "position": "left"}


@pytest.mark.parametrize("text, message", [
    ("prompt\tcolor\nred star\tred\n", r":1: missing column\(s\) shape"),
    ("prompt\tcolor\tshape\nred star\tred\tstar\nteal star\tteal\tstar\n", r":3: unknown color 'teal'"),
    ("prompt\tcolor\tshape\tstyle\nred star\tred\tstar\twatercolour\n", r":2: unknown style 'watercolour'"),
    ("prompt\tcolor\tshape\n\tred\tstar\n", r":2: empty prompt"),
    ("prompt\tcolor\tshape\nred star\tred\n", r":2: 2 fields, the header has 3"),
])
def test_bad_prompt_files_name_the_line(tmp_path, text, message):
    with pytest.raises(evaluate.PromptFileError, match=message):
        evaluate.read_prompt_tsv(_tsv(tmp_path, text), mw.AttributeClassifier.attributes)  # the values a judge reads


def test_a_plain_prompt_list_is_generated_unscored(tiny_parts, tmp_path):
    """A profile without a judge (a hub profile) evaluates a plain `prompt` list: images and timings, no accuracies;
    a judge given such a list says there is nothing to score."""
    path = _tsv(tmp_path, "prompt\n의자에 앉은 고양이\na cat on a chair\n")
    rows = evaluate.read_prompt_tsv(path)
    assert [(r.prompt, r.attributes) for r in rows] == [("의자에 앉은 고양이", {}), ("a cat on a chair", {})]
    with pytest.raises(evaluate.PromptFileError, match="plain prompt list"):
        evaluate.read_prompt_tsv(path, mw.AttributeClassifier.attributes)
    pipe = evaluate.load_pipeline(tiny_parts / "sd")
    table, images = evaluate.evaluate_prompt_files(pipe, evaluate.load_judge(None), {"plain": path}, steps=2)
    assert list(table.columns) == ["images", "s/image"] and table.loc["plain", "images"] == 2
    assert images["plain"][0].shape[0] == 2 and images["plain"][1] == [r.prompt for r in rows]


def _untrained_judge(folder):
    """An untrained mini-world judge saved as `train_classifier` saves one (judge.json names its loader)."""
    from safetensors.torch import save_file

    folder.mkdir()
    save_file(mw.AttributeClassifier(8).state_dict(), str(folder / "classifier.safetensors"))
    write_json(folder / "classifier.json", {"width": 8, "image_size": 32})
    write_json(folder / "judge.json", {"loader": "koclip_lib.miniworld.world:load_classifier"})
    return folder


def test_cli_rejects_a_bad_file_with_a_clear_message(tmp_path):
    path = _tsv(tmp_path, "prompt\tcolor\tshape\nred star\tred\tstar\nteal star\tteal\tstar\n")
    proc = subprocess.run([sys.executable, "-m", "koclip_lib.evaluate", "--pipeline", str(tmp_path), "--prompts", str(path),
                           "--classifier", str(_untrained_judge(tmp_path / "clf"))], capture_output=True, text=True)
    assert proc.returncode == 2
    assert f"{path}:3: unknown color 'teal'" in proc.stderr


def test_cli_scores_a_pipeline_and_prints_json_last(tiny_parts, tmp_path):
    """End to end on a tiny random pipeline and an untrained judge: the numbers are meaningless, the contract is not."""
    clf_dir = _untrained_judge(tmp_path / "clf")
    scenes = mw.sample_scenes(5, 0, mw.WorldConfig())
    prompts = mw.write_prompt_tsv(tmp_path / "ko.tsv", scenes, "ko", 0)
    grid = tmp_path / "grid.png"
    proc = subprocess.run([sys.executable, "-m", "koclip_lib.evaluate", "--pipeline", str(tiny_parts / "sd"), "--prompts",
                           str(prompts), "--classifier", str(clf_dir), "--seeds", "2", "--steps", "2", "--save-grid", str(grid)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["images"] == 10
    assert set(result["accuracy"]) >= {"color", "shape", "style"}
    assert all(0.0 <= v <= 1.0 for v in result["accuracy"].values())
    assert result["seconds_per_image"] > 0
    assert grid.exists() and grid.stat().st_size > 1000


def test_cli_without_a_judge_says_so_in_one_line(tmp_path):
    path = _tsv(tmp_path, "prompt\tcolor\tshape\nred star\tred\tstar\n")
    proc = subprocess.run([sys.executable, "-m", "koclip_lib.evaluate", "--pipeline", str(tmp_path), "--prompts", str(path),
                           "--classifier", str(tmp_path / "nothing-here")], capture_output=True, text=True)
    assert proc.returncode == 2 and "judge.json" in proc.stderr and "Traceback" not in proc.stderr


def test_batch_size_does_not_change_an_image(tiny_parts):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_parts / "sd")
    pipe.set_progress_bar_config(disable=True)
    prompts, seeds = ["a red star", "a blue heart", "a green circle"], [1, 2, 3]
    together, _ = evaluate.generate(pipe, prompts, seeds, steps=2, batch_size=3)
    alone, _ = evaluate.generate(pipe, prompts, seeds, steps=2, batch_size=1)
    assert (together - alone).abs().max() < 1e-4
