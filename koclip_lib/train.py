"""One training loop for every model in the project: teacher CLIP, VAE, UNet, Korean student, LoRAs, translator.

Why one loop: checkpoints, resume, logging, validation, early stopping and data parallelism are written (and tested)
once. Each optimizer step has one global batch, a pure function of the seed and the step (`loss_fn` seeds its own
generator from `batch.step`), so a run resumed from a checkpoint sees exactly the batches an uninterrupted run would
have seen and ends in the same weights. Under `accelerate launch --num_processes N` every process draws that global
batch and trains on its own rows of it (`Batch.take`): global batch = `batch_size` (per device) x N x
`gradient_accumulation_steps`, and N processes end where one process at N times the per-device batch ends.
accelerate places the models on each process's device, wraps them for DDP, handles mixed precision, and
saves/restores the whole state; only the main process writes files.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn as nn
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedDataParallelKwargs
from diffusers.optimization import get_scheduler
from tqdm.auto import tqdm

from .common import distributed, is_main_process, seed_everything, wait_for_everyone

logger = logging.getLogger(__name__)


@dataclass
class LoopConfig:
    steps: int = 1000
    lr: float = 1e-3
    batch_size: int = 64  # per device and micro-step; the global batch is this x processes x accumulation steps
    gradient_accumulation_steps: int = 1
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
    # learning-rate multipliers by parameter-name prefix, the longest matching prefix winning: {"backbone": 0.1}
    # fine-tunes a pretrained backbone ten times slower than the new heads, {"backbone": 0} freezes it
    lr_scales: dict = field(default_factory=dict)

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
    the process group (`PartialState`, the distributed side) is kept, as accelerate's own test suite does.
    The LR schedule counts optimizer steps (`step_scheduler_with_optimizer=False`: accelerate would otherwise step
    it once per process). DDP looks for unused parameters: a student's objective may read only its pooled head."""
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") not in (None, mixed_precision):
        AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(mixed_precision=mixed_precision, cpu=not torch.cuda.is_available(),
                       step_scheduler_with_optimizer=False,
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])


@dataclass(frozen=True)
class Batch:
    """This process's part of one optimizer step's global batch, as `loss_fn` receives it.

    `loss_fn(batch)` draws the step's whole global batch (`size` rows) from `step_generator(seed, batch.step)`, in the
    same order in every process, keeps its own rows with `batch.take(...)` (indices, captions, noise: anything drawn
    per row) and runs the forward through `batch.models`, the modules as prepared (DDP-wrapped under a launcher, so
    their gradients are averaged across processes). Its loss is the mean over its rows."""
    step: int
    size: int
    rows: slice
    models: tuple

    def take(self, rows):
        return rows[self.rows]

    @classmethod
    def whole(cls, size: int, models: Sequence[nn.Module], step: int = 0) -> "Batch":
        """All `size` rows in one process (validation, evaluation)."""
        return cls(step, size, slice(0, size), tuple(models))


def micro_batches(step: int, batch_size: int, accumulation: int, models: Sequence[nn.Module]) -> list[Batch]:
    """This process's micro-batches of one step: the global batch split between the processes (accelerate's
    `split_between_processes`), then each process's rows into `accumulation` micro-batches of `batch_size`."""
    state = distributed()
    processes = state.num_processes if state is not None else 1
    size = batch_size * processes * accumulation
    if state is None:
        mine = range(size)
    else:
        with state.split_between_processes(list(range(size))) as split:
            mine = split
    return [Batch(step, size, slice(mine[0] + m * batch_size, mine[0] + (m + 1) * batch_size), tuple(models))
            for m in range(accumulation)]


def step_generator(seed: int, step: int, device: str | torch.device = "cpu") -> torch.Generator:
    """The random source for one step's batch: the same (seed, step) always gives the same batch."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + step)


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    ckpts = sorted(Path(out_dir, "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    return ckpts[-1] if ckpts else None


def train_loop(
    models: Sequence[nn.Module],
    loss_fn: Callable[[Batch], torch.Tensor | dict],
    cfg: LoopConfig,
    out_dir: str | Path,
    desc: str = "train",
    params: Sequence[nn.Parameter] | None = None,
    validate: Callable[[], float] | None = None,
    stop_after: int | None = None,
) -> dict:
    """Train `models` (their `params`, default all trainable ones) to minimise `loss_fn(batch)` (see `Batch`).

    `loss_fn` returns a scalar loss, or a dict whose "loss" is optimised and whose other numbers are logged (averaged
    over micro-batches and processes). Checkpoints go to `out_dir/checkpoints/step-N` every `cfg.checkpoint_every`
    steps; the latest is resumed automatically. `validate()` (lower is better; every process runs it on the same data)
    drives early stopping; the best weights are restored at the end. `stop_after` ends the run early at that step, as
    an interruption would (used by tests).
    Returns {"history": [...], "steps": ..., "best_val": ..., "stopped_early": ..., "seconds": ...}.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    accelerator = loop_accelerator(cfg.mixed_precision)
    main = accelerator.is_main_process
    params = list(params) if params is not None else [p for m in models for p in m.parameters() if p.requires_grad]
    params, groups = _param_groups(models, params, cfg)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = get_scheduler(cfg.lr_schedule, optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=cfg.steps)
    prepared = accelerator.prepare(*models, optimizer, scheduler)
    wrapped, optimizer, scheduler = prepared[:-2], prepared[-2], prepared[-1]
    accumulation = cfg.gradient_accumulation_steps
    state = LoopState()
    accelerator.register_for_checkpointing(state)
    seed_everything(cfg.seed)  # dropout and any other draw start from the seed; a resume restores the saved RNG states

    resume = latest_checkpoint(out_dir)
    if resume is not None:
        accelerator.load_state(str(resume))
        if main:
            logger.info("%s: resumed from %s at step %d", desc, resume, state.step)
    best_path = out_dir / "best_weights.pt"  # on disk, so a resumed run still restores the best weights
    started = time.time()
    bar = tqdm(total=cfg.steps, initial=state.step, desc=desc, mininterval=5, disable=not main)
    stopped_early = state.stopped_early  # a run resumed from its early-stop checkpoint stays stopped
    for m in models:
        m.train()
    while state.step < cfg.steps and not stopped_early:
        if stop_after is not None and state.step >= stop_after:
            break
        logs = {}
        for i, batch in enumerate(micro_batches(state.step, cfg.batch_size, accumulation, wrapped)):
            # gradients are averaged across processes once per optimizer step, on the last micro-batch
            with contextlib.ExitStack() as no_sync:
                if i < accumulation - 1:
                    for m in wrapped:
                        no_sync.enter_context(accelerator.no_sync(m))
                with accelerator.autocast():
                    out = loss_fn(batch)
                out = out if isinstance(out, dict) else {"loss": out}
                accelerator.backward(out["loss"] / accumulation if accumulation > 1 else out["loss"])
            for k, v in out.items():
                v = (v.detach() if torch.is_tensor(v) else float(v)) / accumulation
                logs[k] = logs[k] + v if k in logs else v
        if cfg.grad_clip:
            accelerator.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        bar.update(1)
        if state.step % cfg.log_every == 0 or state.step == cfg.steps:
            if accelerator.num_processes > 1:  # the mean over the processes' rows
                logs = {k: accelerator.reduce(torch.as_tensor(v, dtype=torch.float32, device=accelerator.device), "mean")
                        for k, v in logs.items()}
            record = {"step": state.step, **{k: float(v) for k, v in logs.items()}, "lr": scheduler.get_last_lr()[0]}
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
                if main:
                    torch.save([accelerator.unwrap_model(m).state_dict() for m in models], best_path)
            else:
                state.bad_validations += 1
                if cfg.patience and state.bad_validations >= cfg.patience:
                    stopped_early = state.stopped_early = True
        if state.step % cfg.checkpoint_every == 0 or stopped_early:
            _save_checkpoint(accelerator, out_dir, state.step, cfg.keep_checkpoints)
        if stopped_early:
            if main:
                logger.info("%s: early stop at step %d, best validation loss %.5f", desc, state.step, state.best_val)
            break
    bar.close()
    accelerator.wait_for_everyone()  # the main process has written the best weights
    if validate is not None and best_path.exists():  # keep the best validated weights, not the last
        for m, w in zip(models, torch.load(best_path, weights_only=True)):
            accelerator.unwrap_model(m).load_state_dict(w)
    for m in models:
        m.eval()
    result = {"history": state.history, "steps": state.step, "best_val": state.best_val if validate else None,
              "stopped_early": stopped_early, "seconds": time.time() - started, "config": asdict(cfg),
              "processes": accelerator.num_processes}
    if main:
        (out_dir / "train_log.json").write_text(json.dumps(result, indent=1, default=float), encoding="utf-8")
    return result


def _param_groups(models: Sequence[nn.Module], params: list[nn.Parameter], cfg: LoopConfig):
    """(the parameters trained, the optimizer's groups): one group at `cfg.lr` unless `cfg.lr_scales` names prefixes;
    a parameter scaled to 0 is frozen (no gradient is computed for it)."""
    if not cfg.lr_scales:
        return params, params
    names = {id(p): n for m in models for n, p in m.named_parameters()}
    by_scale: dict[float, list] = {}
    for p in params:
        name = names.get(id(p), "")
        prefixes = [k for k in cfg.lr_scales if name == k or name.startswith(k + ".")]
        scale = float(cfg.lr_scales[max(prefixes, key=len)]) if prefixes else 1.0
        if scale == 0:
            p.requires_grad_(False)
        else:
            by_scale.setdefault(scale, []).append(p)
    if not by_scale:
        raise ValueError(f"lr_scales {cfg.lr_scales} freezes every parameter")
    return ([p for group in by_scale.values() for p in group],
            [{"params": group, "lr": cfg.lr * scale} for scale, group in by_scale.items()])


def _save_checkpoint(accelerator: Accelerator, out_dir: Path, step: int, keep: int) -> None:
    """Every process calls `save_state` (the main one writes the weights, each its own RNG state); the main process
    then drops the oldest checkpoints, once all have written."""
    path = out_dir / "checkpoints" / f"step-{step}"
    accelerator.save_state(str(path))
    accelerator.wait_for_everyone()
    old = sorted(path.parent.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))[:-keep] if keep else []
    for p in old if accelerator.is_main_process else ():
        shutil.rmtree(p, ignore_errors=True)


def remove_checkpoints(out_dir: str | Path) -> None:
    """Finished artifacts drop their resume checkpoints: they are only needed while training."""
    wait_for_everyone()
    if is_main_process():
        shutil.rmtree(Path(out_dir, "checkpoints"), ignore_errors=True)
