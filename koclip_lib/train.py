"""One training loop for every model in the project: teacher CLIP, VAE, UNet, Korean student, LoRAs.

Why one loop: checkpoints, resume, logging, validation and early stopping are written (and tested) once.
Batches are a pure function of the step number (`loss_fn(step)` seeds its own generator), so a run resumed
from a checkpoint sees exactly the batches an uninterrupted run would have seen and ends in the same weights.
accelerate places the models on the device, handles mixed precision, and saves/restores the whole state.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn as nn
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from diffusers.optimization import get_scheduler
from tqdm.auto import tqdm

from .common import seed_everything


@dataclass
class LoopConfig:
    steps: int = 1000
    lr: float = 1e-3
    batch_size: int = 64
    lr_schedule: str = "cosine"  # any diffusers.optimization scheduler name
    warmup_steps: int = 50
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    checkpoint_every: int = 250
    keep_checkpoints: int = 2
    log_every: int = 25
    validate_every: int = 0  # 0: never; else run `validate()` every N steps (an "epoch" for streaming data)
    patience: int = 0  # early stopping: stop after this many validations without improvement (0: off)
    min_delta: float = 0.0
    seed: int = 0
    mixed_precision: str = "no"  # "fp16" / "bf16" on a GPU

    @classmethod
    def from_params(cls, params: dict | None, **overrides) -> "LoopConfig":
        known = {k: v for k, v in (params or {}).items() if k in cls.__dataclass_fields__}
        return cls(**{**known, **overrides})


class LoopState:
    """What accelerate saves beside the weights: the step reached, the loss history and early-stopping state."""

    def __init__(self):
        self.step = 0
        self.history: list[dict] = []
        self.best_val = math.inf
        self.bad_validations = 0
        self.stopped_early = False

    def state_dict(self):
        return {"step": self.step, "history": self.history, "best_val": self.best_val, "bad_validations": self.bad_validations,
                "stopped_early": self.stopped_early}

    def load_state_dict(self, state):
        self.step, self.history = state["step"], state["history"]
        self.best_val, self.bad_validations = state["best_val"], state["bad_validations"]
        self.stopped_early = state.get("stopped_early", False)


def loop_accelerator(mixed_precision: str = "no") -> Accelerator:
    """An Accelerator for one loop. accelerate keeps one process-wide state whose mixed precision cannot change
    (`ValueError: AcceleratorState has already been initialized`), yet one process trains models in "no" and then
    students in "bf16" (`run --build`, a notebook). So a loop asking for another precision resets that state first;
    the process group (`PartialState`, the distributed side) is kept, as accelerate's own test suite does."""
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") not in (None, mixed_precision):
        AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(mixed_precision=mixed_precision, cpu=not torch.cuda.is_available())


def step_generator(seed: int, step: int, device: str | torch.device = "cpu") -> torch.Generator:
    """The random source for one step's batch: the same (seed, step) always gives the same batch."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + step)


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    ckpts = sorted(Path(out_dir, "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    return ckpts[-1] if ckpts else None


def train_loop(
    models: Sequence[nn.Module],
    loss_fn: Callable[[int], torch.Tensor | dict],
    cfg: LoopConfig,
    out_dir: str | Path,
    desc: str = "train",
    params: Sequence[nn.Parameter] | None = None,
    validate: Callable[[], float] | None = None,
    stop_after: int | None = None,
) -> dict:
    """Train `models` (their `params`, default all trainable ones) to minimise `loss_fn(step)`.

    `loss_fn` returns a scalar loss, or a dict whose "loss" is optimised and whose other numbers are logged.
    Checkpoints go to `out_dir/checkpoints/step-N` every `cfg.checkpoint_every` steps; the latest is resumed
    automatically. `validate()` (lower is better) drives early stopping; the best weights are restored at the
    end. `stop_after` ends the run early at that step, as an interruption would (used by tests).
    Returns {"history": [...], "steps": ..., "best_val": ..., "stopped_early": ..., "seconds": ...}.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    accelerator = loop_accelerator(cfg.mixed_precision)
    params = list(params) if params is not None else [p for m in models for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = get_scheduler(cfg.lr_schedule, optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=cfg.steps)
    prepared = accelerator.prepare(*models, optimizer, scheduler)
    optimizer, scheduler = prepared[-2], prepared[-1]
    state = LoopState()
    accelerator.register_for_checkpointing(state)
    seed_everything(cfg.seed)  # dropout and any other draw start from the seed; a resume restores the saved RNG states

    resume = latest_checkpoint(out_dir)
    if resume is not None:
        accelerator.load_state(str(resume))
        print(f"{desc}: resumed from {resume} at step {state.step}")
    best_path = out_dir / "best_weights.pt"  # on disk, so a resumed run still restores the best weights
    started = time.time()
    bar = tqdm(total=cfg.steps, initial=state.step, desc=desc, mininterval=5)
    stopped_early = state.stopped_early  # a run resumed from its early-stop checkpoint stays stopped
    for m in models:
        m.train()
    while state.step < cfg.steps and not stopped_early:
        if stop_after is not None and state.step >= stop_after:
            break
        with accelerator.autocast():
            out = loss_fn(state.step)
        logs = out if isinstance(out, dict) else {"loss": out}
        accelerator.backward(logs["loss"])
        if cfg.grad_clip:
            accelerator.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        bar.update(1)
        if state.step % cfg.log_every == 0 or state.step == cfg.steps:
            record = {"step": state.step, **{k: float(v.detach() if torch.is_tensor(v) else v) for k, v in logs.items()}, "lr": scheduler.get_last_lr()[0]}
            state.history.append(record)
            bar.set_postfix(loss=f"{record['loss']:.4f}")
        if validate is not None and cfg.validate_every and (state.step % cfg.validate_every == 0 or state.step == cfg.steps):
            for m in models:
                m.eval()
            with torch.no_grad():
                val = float(validate())
            for m in models:
                m.train()
            state.history.append({"step": state.step, "val_loss": val})
            if val < state.best_val - cfg.min_delta:
                state.best_val, state.bad_validations = val, 0
                torch.save([accelerator.unwrap_model(m).state_dict() for m in models], best_path)
            else:
                state.bad_validations += 1
                if cfg.patience and state.bad_validations >= cfg.patience:
                    stopped_early = state.stopped_early = True
        if state.step % cfg.checkpoint_every == 0 or stopped_early:
            _save_checkpoint(accelerator, out_dir, state.step, cfg.keep_checkpoints)
        if stopped_early:
            print(f"{desc}: early stop at step {state.step}, best validation loss {state.best_val:.5f}")
            break
    bar.close()
    if validate is not None and best_path.exists():  # keep the best validated weights, not the last
        for m, w in zip(models, torch.load(best_path, weights_only=True)):
            accelerator.unwrap_model(m).load_state_dict(w)
    for m in models:
        m.eval()
    result = {"history": state.history, "steps": state.step, "best_val": state.best_val if validate else None,
              "stopped_early": stopped_early, "seconds": time.time() - started, "config": asdict(cfg)}
    (out_dir / "train_log.json").write_text(json.dumps(result, indent=1, default=float), encoding="utf-8")
    return result


def _save_checkpoint(accelerator: Accelerator, out_dir: Path, step: int, keep: int) -> None:
    path = out_dir / "checkpoints" / f"step-{step}"
    accelerator.save_state(str(path))
    old = sorted(path.parent.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))[:-keep] if keep else []
    for p in old:
        shutil.rmtree(p, ignore_errors=True)


def remove_checkpoints(out_dir: str | Path) -> None:
    """Finished artifacts drop their resume checkpoints: they are only needed while training."""
    shutil.rmtree(Path(out_dir, "checkpoints"), ignore_errors=True)
