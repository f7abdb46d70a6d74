"""`python -m koclip_lib.targets`: the README's claims of the mini profile, checked against the notebooks' metrics."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

from koclip_lib import targets

REPO = Path(__file__).resolve().parent.parent


def test_every_claim_holds_on_the_committed_record():
    results = targets.check(REPO / "outputs" / "metrics")
    assert results and all(r["ok"] for r in results), [r for r in results if not r["ok"]]
    assert {r["notebook"] for r in results} >= {"00_feasibility", "01_corpus", "01b_generator", "02_distill", "03_sd_sweep",
                                                 "04_lora", "05_optimize"}


def test_every_claim_holds_on_the_amd_epyc_build_too():
    """The AMD EPYC build's record (its `make all`; notebook 04's from a second fresh `make all` there, with the taught
    trigger), which the README quotes beside the Intel one."""
    results = targets.check(REPO / "outputs" / "metrics-amd-epyc")
    assert len(results) == 16 and all(r["ok"] for r in results), [r for r in results if not r["ok"]]


def test_a_missed_target_fails_the_command_and_names_the_claim(tmp_path):
    metrics = tmp_path / "metrics"
    shutil.copytree(REPO / "outputs" / "metrics", metrics)
    record = json.loads((metrics / "04_lora.json").read_text(encoding="utf-8"))
    record["table"]["+ ink, no trigger"]["seen style rate"] = 0.5  # the LoRA turns itself on without its trigger
    (metrics / "04_lora.json").write_text(json.dumps(record, ensure_ascii=False), encoding="utf-8")
    (metrics / "03_sd_sweep.json").unlink()
    proc = subprocess.run([sys.executable, "-m", "koclip_lib.targets", "--metrics", str(metrics)], capture_output=True,
                          text=True, cwd=REPO)
    assert proc.returncode == 1
    missed = [line for line in proc.stdout.splitlines() if line.startswith("MISSED")]
    assert len(missed) == 2, proc.stdout
    assert any("04_lora" in line and "trigger switches ink-wash on" in line for line in missed)
    assert any("03_sd_sweep" in line for line in missed) and "03_sd_sweep.json missing" in proc.stdout


def _missed_with_frames(tmp_path, edit) -> list[dict]:
    """The 04_lora claims missed on the committed record with `edit` applied to its `frames` (it holds unedited)."""
    record = json.loads((REPO / "outputs" / "metrics" / "04_lora.json").read_text(encoding="utf-8"))
    assert targets._lora_held_out_frames(record)
    edit(record["frames"])
    (tmp_path / "04_lora.json").write_text(json.dumps(record, ensure_ascii=False), encoding="utf-8")
    return [r for r in targets.check(tmp_path, only=["04_lora"]) if not r["ok"]]


def test_a_frame_that_turns_the_style_on_without_the_trigger_misses_the_frames_claim(tmp_path):
    """One held-out frame at 20% untriggered ink-wash misses the frames claim, even with every split's mean under 5%."""
    missed = _missed_with_frames(tmp_path, lambda f: f["+ ink, no trigger"].update({"worst frame ink rate": 0.2}))
    assert [r["says"] for r in missed] == [targets.CLAIMS[-2].says] and "worst frame ink rate" in missed[0]["missed"]


def test_seen_pairs_colour_eleven_points_down_on_the_frames_misses_the_frames_claim(tmp_path):
    def eleven_down(frames):
        frames["+ ink, trigger 백묘법"]["seen color"] = frames["Korean pipeline, no LoRA"]["seen color"] - 0.11

    missed = _missed_with_frames(tmp_path, eleven_down)
    assert [r["says"] for r in missed] == [targets.CLAIMS[-2].says] and "'seen'" in missed[0]["missed"]
