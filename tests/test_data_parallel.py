"""Data-parallel training on the CPU: `accelerate launch --multi_gpu --num_processes 2` runs a distillation stage
on the stand-ins (`tests/ddp_distill.py`). Both processes end with the same weights, each trained on its own half of
every step's global batch, and two processes at per-device batch B end where one process at 2B ends; a job killed
after a checkpoint and launched again ends where the uninterrupted one ends. (accelerate's `--cpu` flag starts one
process and leaves several to MPI; its torchrun path starts two, which train on the CPU with gloo where there is no
GPU: `common.distributed`.)"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "tests" / "ddp_distill.py"
B = 4


def _run(args: list[str], processes: int, killed: bool = False) -> None:
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]
    command = (launcher if processes > 1 else [sys.executable]) + [str(SCRIPT), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert (proc.returncode != 0) == killed, proc.stdout[-2000:] + proc.stderr[-5000:]


@pytest.fixture(scope="module")
def runs(standin_hub, tmp_path_factory):
    from transformers import AutoModel, AutoTokenizer

    from koclip_lib.common import cached_artifact
    from koclip_lib.corpus import build_corpus

    base = tmp_path_factory.mktemp("ddp")
    xlsx = str(next((standin_hub / "aihub").glob("*.xlsx")))
    corpus = cached_artifact(base / "corpus", {"inputs": [xlsx]}, lambda d: build_corpus([xlsx], d, config=None))
    # the stand-in backbone without dropout: one process and two draw different masks, which would hide the comparison
    klue = standin_hub / "klue" / "roberta-small"
    backbone = AutoModel.from_pretrained(klue, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    backbone.save_pretrained(base / "backbone")
    AutoTokenizer.from_pretrained(klue).save_pretrained(base / "backbone")
    common = ["--hub", str(standin_hub), "--backbone", str(base / "backbone"), "--corpus", str(corpus)]
    out = {name: base / name for name in ("one", "two", "killed", "accumulated")}
    _run(common + ["--out", str(out["one"]), "--batch-size", str(2 * B)], processes=1)
    _run(common + ["--out", str(out["two"]), "--batch-size", str(B)], processes=2)
    _run(common + ["--out", str(out["killed"]), "--batch-size", str(B), "--stop-after", "2"], processes=2, killed=True)
    _run(common + ["--out", str(out["killed"]), "--batch-size", str(B)], processes=2)
    _run(common + ["--out", str(out["accumulated"]), "--batch-size", str(B // 2), "--accumulation", "2"], processes=2)
    return out


def _weights(folder: Path, rank: int) -> dict:
    return torch.load(folder / f"weights-rank{rank}.pt", weights_only=True)


def _samples(folder: Path, rank: int) -> dict:
    return json.loads((folder / f"samples-rank{rank}.json").read_text(encoding="utf-8"))


def test_both_processes_end_with_the_same_weights(runs):
    a, b = _weights(runs["two"], 0), _weights(runs["two"], 1)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_each_process_trains_on_its_own_half_of_the_global_batch(runs):
    one, first, second = _samples(runs["one"], 0), _samples(runs["two"], 0), _samples(runs["two"], 1)
    assert set(one) == set(first) == set(second) == {"0", "1", "2", "3"}
    for step in one:
        assert len(first[step]) == len(second[step]) == B
        assert first[step] != second[step]
        assert first[step] + second[step] == one[step]  # the one-process batch at 2B, split in two


def test_two_processes_end_where_one_process_at_twice_the_batch_ends(runs):
    one, two = _weights(runs["one"], 0), _weights(runs["two"], 0)
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-4, atol=1e-5)


def test_gradient_accumulation_ends_where_the_whole_batch_ends(runs):
    """2 processes x 2 micro-batches of B/2 = the same global batch of 2B."""
    one, accumulated = _weights(runs["one"], 0), _weights(runs["accumulated"], 0)
    for k in one:
        torch.testing.assert_close(accumulated[k], one[k], rtol=1e-4, atol=1e-5)


def test_a_killed_two_process_job_resumes_to_the_uninterrupted_weights(runs):
    resumed, uninterrupted = _weights(runs["killed"], 0), _weights(runs["two"], 0)
    for k in resumed:
        torch.testing.assert_close(resumed[k], uninterrupted[k], rtol=1e-5, atol=1e-6)
    stamp = json.loads((runs["killed"] / "student-sequence" / "artifact.json").read_text(encoding="utf-8"))
    assert stamp["finished"]


def test_the_main_process_alone_writes_the_artifact(runs):
    folder = runs["two"] / "student-sequence"
    assert json.loads((folder / "artifact.json").read_text(encoding="utf-8"))["finished"]
    log = json.loads((folder / "train" / "train_log.json").read_text(encoding="utf-8"))
    assert log["processes"] == 2 and log["config"]["batch_size"] == B
    assert not (folder / "train" / "checkpoints").exists()  # removed once, by the main process


def test_build_lanes_run_in_the_launched_process_instead_of_forking(monkeypatch, tmp_path):
    """Under a launcher `run --build` forks no lane: a lane would inherit RANK/WORLD_SIZE and wait in a rendezvous
    the other lanes never reach. Each process runs every lane's steps itself, in order."""
    from koclip_lib import common, run

    class Launched:
        is_main_process = True

    params = tmp_path / "profile.yaml"
    params.write_text("build_lanes: [[corpus, students], [translator]]\n", encoding="utf-8")
    ran = []
    monkeypatch.setattr(common, "distributed", lambda: Launched())
    monkeypatch.setattr(run, "build_step", lambda step, _params: ran.append(step))
    monkeypatch.setattr(run.subprocess, "Popen", lambda *a, **kw: pytest.fail("a build lane was forked"))
    monkeypatch.chdir(tmp_path)
    run.build(str(params), jobs=2)
    assert ran == ["corpus", "students", "translator"]
