"""A distillation stage on the stand-ins, as `tests/test_data_parallel.py` runs it: in one process
(`python tests/ddp_distill.py ...`) or in several (`accelerate launch --multi_gpu --num_processes 2 tests/ddp_distill.py ...`, on the CPU with gloo where
there is no GPU).

It trains the sequence student through `distill.ensure_students` (so through `cached_artifact`'s lock and the main
process's writes) and leaves, per process, what the test compares: the student's weights as that process ended
(`weights-rank{N}.pt`) and the Korean sentences each of its training steps saw (`samples-rank{N}.json`).
`--stop-after K` ends every process after step K's checkpoint, as a killed job would, before the artifact is finished.
"""
import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
torch.set_num_threads(1)

from koclip_lib import distill  # noqa: E402
from koclip_lib.plan import ModelRef  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--hub", required=True)
ap.add_argument("--backbone", required=True)
ap.add_argument("--corpus", required=True)
ap.add_argument("--out", required=True)
ap.add_argument("--batch-size", type=int, required=True)
ap.add_argument("--steps", type=int, default=4)
ap.add_argument("--accumulation", type=int, default=1)
ap.add_argument("--stop-after", type=int)
args = ap.parse_args()

from koclip_lib.common import distributed  # noqa: E402

rank = distributed().process_index if distributed() is not None else 0
out = Path(args.out)
samples: dict[int, list[str]] = {}
loss = distill.Distiller.loss


def recording_loss(self, objective, ko, en, gen, latent_idx=None, batch=None):
    if batch is not None:  # a training step (validation passes none)
        samples.setdefault(batch.step, []).extend(ko)
    return loss(self, objective, ko, en, gen, latent_idx, batch)


train_student = distill.train_student


def recording_train_student(*a, **kw):
    result = train_student(*a, **kw, stop_after=args.stop_after)
    torch.save(result["student"].state_dict(), out / f"weights-rank{rank}.pt")
    (out / f"samples-rank{rank}.json").write_text(json.dumps(samples, ensure_ascii=False), encoding="utf-8")
    if args.stop_after is not None:
        sys.exit(3)  # killed after its checkpoint: the artifact stays unfinished
    return result


distill.Distiller.loss = recording_loss
distill.train_student = recording_train_student
section = {"max_length": 32, "head_layers": 1, "head_heads": 2, "empty_prob": 0.1, "norm_weighted": True, "val_pairs": 8,
           "loop": {"steps": args.steps, "lr": 1e-3, "batch_size": args.batch_size, "warmup_steps": 1,
                    "gradient_accumulation_steps": args.accumulation, "checkpoint_every": 2, "validate_every": args.steps,
                    "mixed_precision": "no"}}
teacher = ModelRef(str(Path(args.hub) / "stable-diffusion-v1-5" / "stable-diffusion-v1-5"), "text_encoder")
distill.ensure_students(section, out, corpus_dir=args.corpus, teacher=teacher, objectives=["sequence"],
                        backbone=ModelRef(args.backbone))
