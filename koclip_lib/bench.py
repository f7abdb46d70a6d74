"""Measured costs: text-conditioning latency, seconds per image, weights in memory, and training throughput.

Every speed figure is measured in the same process as the figure it is compared with, and reported as a ratio
to it, so a busy or a faster machine changes the numbers but not the comparison. Notebook 00 (feasibility) uses:

* `text_conditioning_seconds` — prompt -> the 77 states the UNet reads: the student's encode vs the translator's
  generate + the teacher's encode (the seed's option ③ without the network hop);
* `seconds_per_image` — end to end at batch 1, as a service draws one request;
* `weights_mb` — what each option keeps in memory.

Option (c), training a Korean text-to-image model from scratch for a measured while, is the profile's own
(`profile_inputs(params).from_scratch_probe()`: the mini world trains its tiny generator on Korean captions).

The optimisation study (issue 7) is the command line:

    python -m koclip_lib.bench [--profile mini|full] [--params params/mini.yaml] [--random-weights] [--quick]
        [--out outputs/bench]

It runs a matrix of configurations of the Korean pipeline on the current device, each one change from an
unoptimised baseline (dtype, attention processor, channels_last, scheduler and steps, torch.compile of the UNet,
VAE decoder, batch size, prompt-embedding cache), then the winners stacked; measures text conditioning (student vs
translator) and training throughput (distillation, LoRA); prints a markdown table and writes it with the JSON to
outputs/bench/<profile>-<device>.{json,md}. What it measures on comes from `koclip_lib.bench_inputs`: a hub
profile's checkpoints, SD 1.5-sized random modules (`--random-weights`, no model hub), or what the profile's own
inputs make (the mini world's `bench_inputs`).
"""

from __future__ import annotations

import copy
import gc
import os
import platform
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

# re-exported: `bench.BenchInputs` and the builders are what callers and tests name
from .bench_inputs import (FULL_PROMPTS, BenchInputs, bench_distill_config, full_inputs, full_random_inputs,  # noqa: F401
                           pixel_difference, sd15_noise_scheduler, sd15_random_parts, spread)
from .cli import CliParser, existing_path


def _timed(fn: Callable[[], object], repeats: int = 1) -> float:
    """Median wall-clock seconds of `fn()` over `repeats` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


@torch.no_grad()
def text_conditioning_seconds(encode: Callable[[str], torch.Tensor], prompts: Sequence[str]) -> float:
    """Median seconds per prompt for `encode(prompt)` (one prompt at a time, as requests arrive)."""
    encode(prompts[0])  # warm-up
    times = []
    for prompt in prompts:
        start = time.perf_counter()
        encode(prompt)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def pipeline_encoder(pipe) -> Callable[[str], torch.Tensor]:
    """prompt -> the states the pipeline's UNet reads, through the pipeline's own `encode_prompt`."""
    return lambda prompt: pipe.encode_prompt(prompt, pipe.device, 1, False)[0]


def translate_then_encode(translator, pipe) -> Callable[[str], torch.Tensor]:
    """Korean prompt -> English (the translator) -> the English pipeline's states."""
    encode = pipeline_encoder(pipe)
    return lambda prompt: encode(translator.translate([prompt])[0])


@torch.no_grad()
def seconds_per_image(pipe, prompt: str, steps: int, guidance_scale: float, repeats: int = 3, prepare=None) -> float:
    """Median end-to-end seconds for one image at batch 1 (`prepare` turns the user's prompt into the pipeline's,
    e.g. a translator: its time is part of the image's)."""
    def one():
        text = prepare(prompt) if prepare else prompt
        pipe(text, num_inference_steps=steps, guidance_scale=guidance_scale, output_type="pt",
             generator=torch.Generator().manual_seed(0))
    return _timed(one, repeats)


def weights_mb(*modules: torch.nn.Module) -> float:
    """Megabytes of parameters and buffers of the given modules."""
    total = 0
    for m in modules:
        total += sum(t.numel() * t.element_size() for t in list(m.parameters()) + list(m.buffers()))
    return total / 2**20


# ---------------------------------------------------------------------------------------------------------------
# The optimisation study: one configuration of the image pipeline, and how it is applied.
# ---------------------------------------------------------------------------------------------------------------
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


@dataclass(frozen=True)
class Setting:
    """One configuration of the image pipeline. The defaults are the baseline: what a user gets with no tuning on
    SD 1.5 — fp32, diffusers' classic attention processor (`AttnProcessor`, an explicit matmul + softmax; diffusers
    picks SDPA by itself on torch 2, so the baseline sets the classic one to measure what SDPA gains), contiguous
    memory, SD 1.5's shipped scheduler (PNDM) at the pipeline's default 50 steps, no compile, the full VAE decoder,
    batch 1, and the prompt encoded on every call."""

    dtype: str = "fp32"            # fp32 | fp16 | bf16 (every module of the pipeline)
    attention: str = "classic"     # classic (AttnProcessor) | sdpa (AttnProcessor2_0: torch's scaled_dot_product_attention)
    channels_last: bool = False    # UNet and VAE in channels_last memory format
    scheduler: str = "pndm"        # pndm | ddim | dpm++ | lcm
    steps: int = 50
    guidance: float | None = None  # None: the profile's classifier-free guidance scale
    compile: bool = False          # torch.compile of the UNet
    vae: str = "full"              # full | tiny (AutoencoderTiny, TAESD's architecture, as the decoder)
    batch: int = 1
    cache: bool = False            # prompt embeddings encoded once beforehand (a cache hit) vs on every call
    # the GPU study's techniques (koclip_lib.bench_full); their defaults change nothing
    fused_qkv: bool = False        # one QKV projection per attention layer (diffusers' fuse_qkv_projections; SDPA only)
    compile_mode: str | None = None  # torch.compile mode of the compiled parts (None: the run's --compile-mode)
    compile_vae: bool = False      # torch.compile of the VAE decoder
    deepcache: int = 0             # DeepCache's cache interval (the deep UNet features reused for N-1 of N steps); 0: off
    tome: float = 0.0              # token merging ratio (tomesd) in the UNet's attention; 0: off

    def changes(self, other: "Setting") -> dict:
        """The fields where this setting differs from `other`."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != getattr(other, f.name)}


def make_scheduler(name: str, config):
    """A scheduler of kind `name` on the pipeline's own noise schedule and prediction type. PNDM and DDIM as SD 1.5
    configures them (PLMS only, no Runge-Kutta warm-up; alpha at t=0 not forced to one)."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, LCMScheduler, PNDMScheduler

    if name == "pndm":
        return PNDMScheduler.from_config(config, skip_prk_steps=True, set_alpha_to_one=False)
    if name == "ddim":
        return DDIMScheduler.from_config(config, set_alpha_to_one=False, clip_sample=False)
    if name == "dpm++":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2)
    if name == "lcm":
        return LCMScheduler.from_config(config)
    raise ValueError(f"unknown scheduler {name!r}")


def set_attention(module, kind: str) -> None:
    """Every attention layer of a diffusers model to the classic processor or to SDPA (no-op without attention)."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    if getattr(module, "attn_processors", None):
        module.set_attn_processor(AttnProcessor() if kind == "classic" else AttnProcessor2_0())


def fresh_pipeline(pipe):
    """A pipeline of deep copies of `pipe`'s modules: every configuration starts from the same fp32 weights (a bf16
    or compiled copy cannot be turned back into the baseline exactly). The tokenizer is shared: it has no state."""
    parts = {k: copy.deepcopy(v) if isinstance(v, torch.nn.Module) else v for k, v in pipe.components.items()}
    parts["scheduler"] = copy.deepcopy(pipe.scheduler)
    fresh = type(pipe)(**parts)
    fresh.set_progress_bar_config(disable=True)
    return fresh


def configure(pipe, setting: Setting, device: torch.device, tiny_vae=None, compile_mode: str | None = None):
    """Apply `setting` to a fresh pipeline, in place; returns it."""
    if setting.vae == "tiny":
        pipe.vae = copy.deepcopy(tiny_vae)  # vae_scale_factor stays: TAESD upsamples 8x like SD's VAE
    pipe.to(device=device, dtype=DTYPES[setting.dtype])
    set_attention(pipe.unet, setting.attention)
    set_attention(pipe.vae, setting.attention)
    if setting.channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if setting.fused_qkv:
        pipe.fuse_qkv_projections()
    pipe.scheduler = make_scheduler(setting.scheduler, pipe.scheduler.config)
    if setting.tome:
        import tomesd

        tomesd.apply_patch(pipe, ratio=setting.tome)
    if setting.deepcache:
        from DeepCache import DeepCacheSDHelper

        helper = DeepCacheSDHelper(pipe=pipe)
        helper.set_params(cache_interval=setting.deepcache, cache_branch_id=0)
        helper.enable()
    mode = setting.compile_mode or compile_mode
    if setting.compile:
        pipe.unet.compile(mode=mode)  # in place: the pipeline still sees a UNet2DConditionModel
    if setting.compile_vae:
        pipe.vae.decode = torch.compile(pipe.vae.decode, mode=mode)
    return pipe


def dtype_unsupported(dtype: str, device: torch.device) -> str | None:
    """Why `dtype` is not benchmarked on `device`, or None."""
    if device.type == "cpu" and dtype == "fp16":
        return ("fp16 on CPU: PyTorch's CPU half-precision kernels are slow reference paths (CPUs compute in fp32 or "
                "bf16), so a figure would measure the fallback, not fp16")
    if device.type == "cuda" and dtype == "bf16" and not torch.cuda.is_bf16_supported():
        return f"bf16: {torch.cuda.get_device_name(device)} has no bf16 support"
    return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Peak memory of the code in the `with` block: torch.cuda.max_memory_allocated on a GPU; on CPU the process's
    peak resident set (VmHWM), reset at entry through /proc/self/clear_refs (Linux), else ru_maxrss since start.
    On CPU `work_mb` is the peak above the resident set at entry: what the block itself allocated."""

    def __init__(self, device: torch.device):
        self.device, self.mb, self.kind, self.work_mb, self._start = device, None, None, None, None

    @staticmethod
    def _status_mb(field_name: str) -> float:
        status = Path("/proc/self/status").read_text()
        return int(re.search(rf"{field_name}:\s+(\d+) kB", status).group(1)) / 1024

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.kind = "torch.cuda.max_memory_allocated"
            return self
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.kind = "process peak RSS (VmHWM, reset per call)"
            self._start = self._status_mb("VmRSS")
        except OSError:
            self.kind = "process peak RSS since start (ru_maxrss)"
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif self._start is not None:
            self.mb = self._status_mb("VmHWM")
            self.work_mb = max(0.0, self.mb - self._start)
        else:
            import resource

            self.mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return False


# ---------------------------------------------------------------------------------------------------------------
# The matrix: rows, measurement, ratios, and the stacked winners.
# ---------------------------------------------------------------------------------------------------------------
AXES = ("baseline", "dtype", "attention", "memory format", "scheduler", "compile", "vae decode", "batch",
        "prompt cache", "optimised")
STACKED_AXES = ("dtype", "attention", "memory format", "scheduler", "compile", "vae decode", "prompt cache")


def matrix(inputs: BenchInputs, device: torch.device, quick: bool = False, compile_unet: bool = True) -> list[dict]:
    """The one-factor rows: each a change of one axis from the baseline, or a skipped entry that says why."""
    base = Setting()
    rows = [("baseline", "baseline", base, None)]
    for dtype in ("fp16", "bf16"):
        skip = dtype_unsupported(dtype, device)
        if skip is None and quick and device.type == "cpu":  # measured 0.13-0.78x fp32 on this project's CPUs
            skip = "skipped: --quick on CPU (bf16 is slower than fp32 on CPU kernels; a full run measures it)"
        rows.append((dtype, "dtype", replace(base, dtype=dtype), skip))
    rows.append(("SDPA attention", "attention", replace(base, attention="sdpa"), None))
    rows.append(("channels_last", "memory format", replace(base, channels_last=True), None))
    rows.append(("DDIM 50", "scheduler", replace(base, scheduler="ddim"), None))
    for steps in (25, 20):
        rows.append((f"DPM-Solver++ {steps}", "scheduler", replace(base, scheduler="dpm++", steps=steps), None))
    rows.append(("DPM-Solver++ 8 (few-step)", "scheduler", replace(base, scheduler="dpm++", steps=8), None))
    rows.append(("LCM 4, guidance 1", "scheduler", replace(base, scheduler="lcm", steps=4, guidance=1.0), inputs.lcm_missing or None))
    compile_skip = None
    if not compile_unet:
        compile_skip = "skipped: --no-compile"
    elif quick and device.type == "cpu":
        compile_skip = "skipped: --quick on CPU (compiling the UNet takes about a minute)"
    rows.append(("torch.compile(UNet)", "compile", replace(base, compile=True), compile_skip))
    rows.append(("tiny VAE decoder", "vae decode", replace(base, vae="tiny"),
                 None if inputs.tiny_vae is not None else inputs.tiny_vae_missing or "not available: no tiny decoder"))
    for batch in (4, 8):
        rows.append((f"batch {batch}", "batch", replace(base, batch=batch), None))
    rows.append(("prompt-embedding cache", "prompt cache", replace(base, cache=True), None))
    return [{"name": name, "axis": axis, "setting": setting, "skip": skip} for name, axis, setting, skip in rows]


class Runner:
    """One configuration, ready to time: a fresh pipeline with `setting` applied, the prompts split into calls of
    `setting.batch` (one seed per prompt, one generator per image, so the batch size never changes an image), and
    what its timed calls measured. The rows of a phase can then be timed one after the other or interleaved."""

    def __init__(self, inputs: BenchInputs, setting: Setting, device: torch.device, compile_mode: str | None = None):
        self.inputs, self.setting, self.device = inputs, setting, device
        self.pipe = configure(fresh_pipeline(inputs.pipe), setting, device, inputs.tiny_vae, compile_mode)
        self.guidance = inputs.guidance if setting.guidance is None else setting.guidance
        self.cfg = self.guidance > 1
        n = len(inputs.prompts)
        self.chunks = [list(range(s, min(s + setting.batch, n))) for s in range(0, n, setting.batch)]
        with torch.no_grad():  # a cache hit: the states of an earlier request, no text encoder in the timed call
            self.cache = [self.pipe.encode_prompt(p, device, 1, self.cfg) for p in inputs.prompts] if setting.cache else None
        self.steps = 0
        self.per_image, self.call_seconds, self.images, self.peak_mb, self.work_mb = [], [], [], 0.0, None
        self.first_call = self.memory_kind = None

    def _count(self, _pipe, _i, _t, tensors):  # once per denoising step: one UNet evaluation, every image of the batch in it
        self.steps += 1
        return tensors

    @torch.no_grad()
    def _call(self, idx: list[int]) -> torch.Tensor:
        kwargs = dict(num_inference_steps=self.setting.steps, guidance_scale=self.guidance, output_type="pt",
                      callback_on_step_end=self._count,
                      generator=[torch.Generator().manual_seed(int(self.inputs.seeds[i])) for i in idx])
        if self.cache is not None:
            kwargs["prompt_embeds"] = torch.cat([self.cache[i][0] for i in idx])
            kwargs["negative_prompt_embeds"] = torch.cat([self.cache[i][1] for i in idx]) if self.cfg else None
        else:
            kwargs["prompt"] = [self.inputs.prompts[i] for i in idx]
        return self.pipe(**kwargs).images

    def _timed_call(self, idx: list[int]) -> tuple[float, torch.Tensor]:
        with PeakMemory(self.device) as memory:
            _sync(self.device)
            started = time.perf_counter()
            out = self._call(idx)
            _sync(self.device)
            seconds = time.perf_counter() - started
        self.peak_mb, self.memory_kind = max(self.peak_mb, memory.mb), memory.kind
        if memory.work_mb is not None:
            self.work_mb = max(self.work_mb or 0.0, memory.work_mb)
        return seconds, out

    def warm_up(self) -> None:
        """One untimed call (it pays for compiling, allocation and caches), two for a compiled UNet (CUDA graph trees
        record on the second); the first's seconds are kept as `first_call`."""
        self.first_call, _ = self._timed_call(self.chunks[0])
        if self.setting.compile:
            self._timed_call(self.chunks[0])
        self.steps = 0

    def timed(self, k: int, keep: bool) -> None:
        """Time call `k` (the k-th chunk of prompts); `keep` its images for the quality proxy."""
        seconds, out = self._timed_call(self.chunks[k])
        self.per_image.append(seconds / len(self.chunks[k]))
        self.call_seconds.append((len(self.chunks[k]), seconds))
        if keep:
            self.images.append(out.float().cpu())

    def result(self, baseline_images: torch.Tensor | None) -> tuple[dict, torch.Tensor]:
        images = torch.cat(self.images)
        timed, total = sum(n for n, _ in self.call_seconds), sum(s for _, s in self.call_seconds)
        row = {"status": "measured", "p50_s_per_image": float(np.percentile(self.per_image, 50)),
               "p90_s_per_image": float(np.percentile(self.per_image, 90)), "images_per_s": timed / total,
               "peak_mb": self.peak_mb, "peak_memory_kind": self.memory_kind, "peak_above_call_start_mb": self.work_mb,
               "unet_steps_per_image": self.steps / len(self.call_seconds), "first_call_s": self.first_call,
               "calls": len(self.call_seconds), "images_timed": timed, "guidance": self.guidance,
               "quality": self.inputs.quality(images, baseline_images)}
        if self.setting.compile:  # the warm-up compiled the graph: its excess over a steady call of the same size
            same = [s for n, s in self.call_seconds if n == len(self.chunks[0])]
            row["compile_s"] = max(0.0, self.first_call - float(np.median(same)))
        return row, images

    def close(self) -> None:
        del self.pipe, self.cache
        _release(self.device)


def measure_setting(inputs: BenchInputs, setting: Setting, device: torch.device, repeats: int = 1,
                    baseline_images: torch.Tensor | None = None, compile_mode: str | None = None,
                    after: Callable[[object], None] | None = None) -> tuple[dict, torch.Tensor]:
    """One configuration on its own: warm-up, then every prompt `repeats` times. Returns the row's figures and the
    first pass's images (in [0, 1]). `after(pipe)` runs on the measured pipeline before it is freed (a compiled one
    is compiled once)."""
    runner = Runner(inputs, setting, device, compile_mode)
    try:
        runner.warm_up()
        for rep in range(repeats):
            for k in range(len(runner.chunks)):
                runner.timed(k, keep=rep == 0)
        out = runner.result(baseline_images)
        if after is not None:
            after(runner.pipe)
        return out
    finally:
        runner.close()
        if setting.compile:
            _release(device, compiled=True)


def _release(device: torch.device, compiled: bool = False) -> None:
    if compiled:
        torch._dynamo.reset()  # the next compiled rows start from an empty cache (no recompile limit carried over)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def add_ratios(rows: list[dict]) -> None:
    """Every measured row's speed as a ratio to the baseline timed in the same phase of the same run (p50 and p90
    seconds per image, images/s), and its attribute accuracy beside that baseline's."""
    for r in rows:
        if r["status"] != "measured":
            continue
        base = next(b for b in rows if b["axis"] == "baseline" and b["phase"] == r["phase"])
        r["speedup_p50"] = base["p50_s_per_image"] / r["p50_s_per_image"]
        r["speedup_p90"] = base["p90_s_per_image"] / r["p90_s_per_image"]
        r["images_per_s_ratio"] = r["images_per_s"] / base["images_per_s"]
        if "attribute_accuracy" in r["quality"]:
            r["quality"]["accuracy_delta_vs_baseline"] = r["quality"]["attribute_accuracy"] - base["quality"]["attribute_accuracy"]


def quality_holds(row: dict, tolerance: float) -> bool | None:
    """True when the row keeps the baseline's quality (attribute accuracy within `tolerance`), None when the proxy
    cannot tell (random weights: pixel difference measures change, not quality)."""
    delta = row["quality"].get("accuracy_delta_vs_baseline")
    return None if delta is None else delta >= -tolerance


def pick_winners(rows: list[dict], tolerance: float, min_gain: float = 1.05) -> tuple[Setting, dict, int]:
    """The baseline with each axis's fastest row stacked, where it is at least `min_gain` faster (p50) and keeps
    quality. Where quality cannot be judged (random weights) a schedule of fewer than 20 steps, or one without
    classifier-free guidance, is not taken: only a measured quality could justify it. Returns the stacked
    setting, the reason per axis, and the batch with the most images/s."""
    base = next(r for r in rows if r["axis"] == "baseline")["setting"]
    stacked, why = base, {}
    for axis in STACKED_AXES:
        candidates = []
        for r in rows:
            if r["axis"] != axis or r["status"] != "measured":
                continue
            ok = quality_holds(r, tolerance)
            if ok is False:
                continue
            if ok is None and axis == "scheduler" and (r["setting"].steps < 20 or r["setting"].guidance is not None):
                continue
            candidates.append(r)
        best = max(candidates, key=lambda r: r["speedup_p50"], default=None)
        if best is not None and best["speedup_p50"] >= min_gain:
            stacked = replace(stacked, **best["setting"].changes(base))
            why[axis] = f"{best['name']} ({best['speedup_p50']:.2f}x)"
        else:
            why[axis] = "baseline kept (no measured option at least %.2fx faster with quality held)" % min_gain
    batches = [r for r in rows if r["status"] == "measured" and r["axis"] in ("baseline", "batch")]
    best_batch = max(batches, key=lambda r: r["images_per_s"])
    batch = best_batch["setting"].batch if best_batch["images_per_s"] >= min_gain * batches[0]["images_per_s"] else 1
    why["batch"] = f"batch {batch} ({best_batch['images_per_s_ratio']:.2f}x images/s)" if batch > 1 else "batch 1 kept"
    return stacked, why, batch


def run_phase(inputs: BenchInputs, entries: list[dict], device: torch.device, repeats: int = 1, interleave: bool = True,
              compile_mode: str | None = None, baseline_images: torch.Tensor | None = None,
              phase: int = 1) -> tuple[list[dict], torch.Tensor | None]:
    """Measure `entries` (the first is the phase's baseline). Interleaved (the default on a CPU), every configuration
    is prepared and warmed up first, then the prompts are timed round-robin across them, so a machine that other
    work slows down or frees up mid-run slows every row alike and the ratios stay fair; else one row after another
    (a dedicated GPU), each freed before the next is built. Returns the rows and the images quality is compared
    with (`baseline_images`, else the phase's baseline's)."""
    base = Setting()
    rows = [{"name": e["name"], "axis": e["axis"], "setting": e["setting"], "changes": e["setting"].changes(base),
             "phase": phase} for e in entries]
    runners = {}
    for i, entry in enumerate(tqdm(entries, desc=f"bench: phase {phase}", mininterval=5)):
        if entry["skip"]:
            status = "not available" if entry["skip"].startswith("not available") else "skipped"
            rows[i].update(status=status, reason=entry["skip"])
            continue
        runner = None
        try:
            runner = Runner(inputs, entry["setting"], device, compile_mode)
            runner.warm_up()
            if not interleave:
                for rep in range(repeats):
                    for k in range(len(runner.chunks)):
                        runner.timed(k, keep=rep == 0)
                baseline_images = _finish(rows[i], runner, baseline_images)
            else:
                runners[i] = runner
        except Exception as err:  # one configuration failing (a compiler missing, memory) must not lose the others
            rows[i].update(status="failed", reason=f"{type(err).__name__}: {err}"[:500])
            if runner is not None and hasattr(runner, "pipe"):
                runner.close()
            _release(device, compiled=True)
    if interleave:
        for rep in range(repeats):
            for p in tqdm(range(len(inputs.prompts)), desc=f"bench: phase {phase}, interleaved", mininterval=5):
                for i, runner in list(runners.items()):
                    if p % runner.setting.batch:
                        continue
                    try:
                        runner.timed(p // runner.setting.batch, keep=rep == 0)
                    except Exception as err:
                        rows[i].update(status="failed", reason=f"{type(err).__name__}: {err}"[:500])
                        runners.pop(i).close()
        for i, runner in runners.items():
            baseline_images = _finish(rows[i], runner, baseline_images)
    _release(device, compiled=True)
    return rows, baseline_images


def _finish(row: dict, runner: Runner, baseline_images):
    """Fill `row` from the runner and free it; returns the baseline's images (the first row's, if not given)."""
    figures, images = runner.result(baseline_images)
    row.update(figures)
    runner.close()
    return images if baseline_images is None else baseline_images


def run_matrix(inputs: BenchInputs, device: torch.device, quick: bool = False, repeats: int = 1, tolerance: float = 0.05,
               compile_unet: bool = True, compile_mode: str | None = None, min_gain: float = 1.05,
               interleave: bool | None = None) -> tuple[list[dict], dict]:
    """Phase 1: the baseline and every one-factor row. Phase 2: the baseline again, timed with the winners stacked
    at batch 1 and at the best batch size (each phase's ratios are to its own baseline; the two baselines show how
    far the machine drifted between them). Quality is always compared with phase 1's baseline images."""
    interleave = device.type == "cpu" if interleave is None else interleave
    base = Setting()
    rows, baseline_images = run_phase(inputs, matrix(inputs, device, quick, compile_unet), device, repeats, interleave,
                                      compile_mode)
    add_ratios(rows)
    stacked, why, batch = pick_winners(rows, tolerance, min_gain)
    second = [{"name": "baseline, again (timed with the optimised rows)", "axis": "baseline", "setting": base, "skip": None},
              {"name": "optimised, batch 1", "axis": "optimised", "setting": replace(stacked, batch=1), "skip": None}]
    if batch > 1:
        second.append({"name": f"optimised, batch {batch}", "axis": "optimised", "setting": replace(stacked, batch=batch),
                       "skip": None})
    at_20 = replace(stacked, scheduler="dpm++", steps=20, guidance=None, batch=1)
    if at_20 != second[1]["setting"]:  # the reference point (20 steps, guidance, batch 1): the stack without few-step
        second.append({"name": "optimised at DPM-Solver++ 20, batch 1", "axis": "optimised", "setting": at_20, "skip": None})
        why["at 20 steps"] = "the same stack with DPM-Solver++ 20 (the issue's reference point) in place of the chosen schedule"
    rows += run_phase(inputs, second, device, repeats, interleave, compile_mode, baseline_images, phase=2)[0]
    add_ratios(rows)
    for r in rows:
        if r["status"] == "measured":
            r["quality_held"] = quality_holds(r, tolerance)
    return rows, why


# ---------------------------------------------------------------------------------------------------------------
# Text conditioning and training throughput.
# ---------------------------------------------------------------------------------------------------------------
def _synced(fn: Callable, device: torch.device) -> Callable:
    def call(prompt):
        out = fn(prompt)
        _sync(device)
        return out
    return call


def text_conditioning(inputs: BenchInputs, device: torch.device, n_prompts: int = 20) -> dict:
    """Seconds per prompt, one prompt at a time: the student's encode (the Korean pipeline's `encode_prompt`) vs
    the translator's generate alone and generate + the English pipeline's encode; ratios to the student."""
    prompts = spread(inputs.prompts, n_prompts) if len(inputs.prompts) >= n_prompts else inputs.prompts
    pipe = fresh_pipeline(inputs.pipe).to(device)
    out = {"prompts": len(prompts), "student_encode_s": text_conditioning_seconds(_synced(pipeline_encoder(pipe), device), prompts)}
    if inputs.translator is None:
        out["translator"] = inputs.translator_missing or "not available"
    else:
        translator = inputs.translator
        translator.model.to(device)
        translator.device = device
        kwargs = {"max_new_tokens": inputs.decode_tokens} if inputs.decode_tokens else {}
        generate = _synced(lambda p: translator.translate([p], **kwargs), device)
        out["translator_generate_s"] = text_conditioning_seconds(generate, prompts)
        out["ratio_generate_to_student"] = out["translator_generate_s"] / out["student_encode_s"]
        if inputs.english_pipe is not None:
            english = inputs.english_pipe.to(device)
            encode = pipeline_encoder(english)
            both = _synced(lambda p: encode(translator.translate([p], **kwargs)[0]), device)
            out["translate_then_encode_s"] = text_conditioning_seconds(both, prompts)
            out["ratio_translate_then_encode_to_student"] = out["translate_then_encode_s"] / out["student_encode_s"]
            english.to("cpu")
        if inputs.decode_tokens:
            out["decode_tokens"] = inputs.decode_tokens
        translator.model.to("cpu")
        translator.device = torch.device("cpu")
    del pipe
    _release(device)
    return out


def _timed_steps(step: Callable[[int], None], steps: int, warmup: int, device: torch.device) -> float:
    """Seconds per step over `steps` steps after `warmup` untimed ones."""
    for i in range(warmup):
        step(i)
    _sync(device)
    started = time.perf_counter()
    for i in range(warmup, warmup + steps):
        step(i)
    _sync(device)
    return (time.perf_counter() - started) / steps


def distill_throughput(student, student_tok, teacher, teacher_tok, pairs, cfg, batch_size: int, steps: int,
                       device: torch.device, bf16: bool = False, warmup: int = 1, unet=None) -> dict:
    """Distillation samples/s: a (Korean, English) pair per sample through `cfg.objective` — the frozen teacher's
    forward on the English (online, no cached targets), the student's forward on both sides, the backward and an
    AdamW step on the student. With `unet` (the unet stage), also the frozen UNet's prediction for both on a noisy
    latent of its own size (gradient checkpointing as `cfg` sets it), the backward running through it."""
    from .distill import Distiller

    student = copy.deepcopy(student).to(device).train()
    stage = {}
    if unet is not None:
        unet = copy.deepcopy(unet)
        if cfg.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        size = unet.config.sample_size
        stage = {"unet": unet, "scheduler": sd15_noise_scheduler(), "latents": torch.randn(
            64, unet.config.in_channels, size, size, generator=torch.Generator().manual_seed(0))}
    distiller = Distiller(cfg, student, student_tok, copy.deepcopy(teacher), teacher_tok, **stage).to(device)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-5)
    gen = torch.Generator().manual_seed(0)

    def step(i):
        batch = [pairs[(i * batch_size + k) % len(pairs)] for k in range(batch_size)]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = distiller.loss(cfg.objective, [ko for ko, _ in batch], [en for _, en in batch], gen)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    with PeakMemory(device) as memory:
        seconds = _timed_steps(step, steps, warmup, device)
    out = {"what": "distillation (student fwd+bwd, online teacher fwd)", "objective": cfg.objective,
           "precision": "bf16 autocast" if bf16 else "fp32", "batch": batch_size, "steps": steps,
           "seconds_per_step": seconds, "samples_per_s": batch_size / seconds, "peak_mb": memory.mb}
    if unet is not None:
        out.update(what="unet-stage distillation (student fwd+bwd through the frozen UNet, online teacher)",
                   latent_size=unet.config.sample_size, gradient_checkpointing=cfg.gradient_checkpointing)
    return out


def lora_throughput(unet, text_width: int, batch_size: int, steps: int, device: torch.device, bf16: bool = False,
                    warmup: int = 1, n_latents: int = 256, prediction_type: str = "epsilon") -> dict:
    """LoRA training images/s: a rank-4 LoRA on the UNet's attention projections (peft, `unet.add_adapter`), the
    rest frozen; cached latents (encoded once, as LoRA scripts do) and fixed text states, so the step is the
    UNet's forward + backward + AdamW on the LoRA weights, at the UNet's own latent size."""
    from peft import LoraConfig

    unet = copy.deepcopy(unet).to(device)
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=LORA_TARGETS))
    unet.train()
    trainable = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    size = unet.config.sample_size
    latents = torch.randn(n_latents, unet.config.in_channels, size, size, generator=gen).to(device)
    states = torch.randn(batch_size, 77, text_width, generator=gen).to(device)
    scheduler = sd15_noise_scheduler(prediction_type)

    def step(i):
        idx = torch.randint(n_latents, (batch_size,), generator=gen).to(device)
        x0 = latents[idx]
        noise = torch.randn(x0.shape, generator=gen).to(device)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), generator=gen).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            pred = unet(scheduler.add_noise(x0, noise, t), t, encoder_hidden_states=states).sample
        target = noise if prediction_type == "epsilon" else scheduler.get_velocity(x0, noise, t)
        loss = torch.nn.functional.mse_loss(pred.float(), target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    with PeakMemory(device) as memory:
        seconds = _timed_steps(step, steps, warmup, device)
    n_lora = sum(p.numel() for p in trainable)
    return {"what": "LoRA training (r=4 on to_q/to_k/to_v/to_out.0, cached latents)", "precision": "bf16 autocast" if bf16 else "fp32",
            "batch": batch_size, "steps": steps, "latent_size": size, "lora_parameters": n_lora, "seconds_per_step": seconds, "images_per_s": batch_size / seconds, "peak_mb": memory.mb}


def training_throughput(inputs: BenchInputs, device: torch.device, steps: int, warmup: int = 1) -> list[dict]:
    """Distillation samples/s and LoRA images/s at the profile's resolution; on a GPU also under bf16 autocast."""
    precisions = [False, True] if device.type == "cuda" and torch.cuda.is_bf16_supported() else [False]
    pipe = inputs.pipe
    out = []
    for bf16 in precisions:
        if inputs.teacher is not None:
            out.append(distill_throughput(pipe.text_encoder, pipe.tokenizer, inputs.teacher[0], inputs.teacher[1], inputs.pairs,
                                          inputs.distill_config, inputs.distill_batch, steps, device, bf16, warmup))
            _release(device)  # the copies trained above are gone with the call's frame
        row = lora_throughput(pipe.unet, pipe.unet.config.cross_attention_dim, inputs.lora_batch, steps, device, bf16, warmup,
                              prediction_type=pipe.scheduler.config.get("prediction_type", "epsilon"))
        row["image_size"] = inputs.resolution
        out.append(row)
        _release(device)
    return out


# ---------------------------------------------------------------------------------------------------------------
# The whole run, its record and its table.
# ---------------------------------------------------------------------------------------------------------------
def device_name(device: torch.device) -> str:
    """'cpu' or the GPU's name as a file-name slug ('nvidia-h100-80gb-hbm3')."""
    if device.type != "cuda":
        return device.type
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")


def environment(device: torch.device) -> dict:
    import diffusers
    import peft
    import transformers

    cpu = platform.processor()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    env = {"device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu,
           "torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__,
           "peft": peft.__version__, "python": platform.python_version(), "threads": torch.get_num_threads(),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "cpu_count": os.cpu_count(),
           "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if hasattr(os, "getloadavg"):
        env["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    env["inductor_cache_dir"] = os.environ.get("TORCHINDUCTOR_CACHE_DIR")  # main: a fresh one unless --warm-compile-cache
    if device.type == "cuda":
        env["cuda"] = torch.version.cuda
        env["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
    return env


def run_benchmark(inputs: BenchInputs, device: torch.device, quick: bool = False, repeats: int = 1,
                  tolerance: float = 0.05, compile_unet: bool = True, compile_mode: str | None = None,
                  train_steps: int = 5, text_prompts: int = 20, min_gain: float = 1.05, interleave: bool | None = None) -> dict:
    """Everything the command measures, as one JSON-able record."""
    started = time.perf_counter()
    interleave = device.type == "cpu" if interleave is None else interleave
    record = {"profile": inputs.profile, "random_weights": inputs.random_weights, "quick": quick, "environment": environment(device),
              "resolution": inputs.resolution, "prompts": len(inputs.prompts), "repeats": repeats, "guidance": inputs.guidance,
              "quality_proxy": inputs.quality_kind, "quality_tolerance": tolerance, "min_gain": min_gain,
              "interleaved": interleave, "baseline": asdict(Setting()), "notes": list(inputs.notes)}
    rows, why = run_matrix(inputs, device, quick, repeats, tolerance, compile_unet, compile_mode, min_gain, interleave)
    record["rows"] = [{**r, "setting": asdict(r["setting"])} for r in rows]
    record["optimised_from"] = why
    record["text_conditioning"] = text_conditioning(inputs, device, text_prompts)
    record["training"] = training_throughput(inputs, device, train_steps)
    record["summary"] = summarise(rows)
    record["seconds"] = time.perf_counter() - started
    if hasattr(os, "getloadavg"):
        record["environment"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return record


def summarise(rows: list[dict]) -> dict:
    """The headline: the optimised rows against the baseline, with quality beside them."""
    base, *again = [r for r in rows if r["axis"] == "baseline" and r["status"] == "measured"]
    out = {"baseline_p50_s_per_image": base["p50_s_per_image"], "baseline_images_per_s": base["images_per_s"]}
    if again:  # phase 2's baseline over phase 1's: > 1, the machine got slower between the phases
        out["baseline_drift_p50"] = again[-1]["p50_s_per_image"] / base["p50_s_per_image"]
    for r in rows:
        if r["axis"] == "optimised" and r["status"] == "measured":
            out[r["name"]] = {"p50_s_per_image": r["p50_s_per_image"], "speedup_p50": r["speedup_p50"],
                              "images_per_s": r["images_per_s"], "images_per_s_ratio": r["images_per_s_ratio"],
                              "quality": r["quality"], "quality_held": r.get("quality_held"), "changes": r["changes"]}
    return out


def _quality_text(q: dict | None) -> str:
    if not q:
        return ""
    if "attribute_accuracy" in q:
        return f"colour {100 * q.get('color', float('nan')):.1f}% · shape {100 * q.get('shape', float('nan')):.1f}%"
    return f"MAD {q['pixel_mad_vs_baseline']:.4f}"


def _row_line(r: dict) -> str:
    if r["status"] != "measured":
        return f"| {r['name']} | {r['axis']} | {r['status']}: {r['reason'].split(': ', 1)[-1]} | | | | | | | | |"
    held = " ✗" if r.get("quality_held") is False else ""
    compiled = f"{r['compile_s']:.1f}" if "compile_s" in r else ""
    memory = f"{r['peak_mb']:.0f}"
    if r.get("peak_above_call_start_mb") is not None:  # CPU: the process's peak, and what the call itself added
        memory += f" (+{r['peak_above_call_start_mb']:.0f})"
    return (f"| {r['name']} | {r['axis']} | {r['p50_s_per_image']:.4f} | {r['p90_s_per_image']:.4f} | "
            f"{r['images_per_s']:.2f} | {r['speedup_p50']:.2f}× | {r['images_per_s_ratio']:.2f}× | {memory} | "
            f"{_quality_text(r['quality'])}{held} | {r['unet_steps_per_image']:g} | {compiled} |")


def _memory_kind(record: dict) -> str:
    kind = next((r["peak_memory_kind"] for r in record["rows"] if r.get("peak_memory_kind")), "")
    if kind.startswith("process"):
        return (f"{kind}, with every configuration of the phase loaded when interleaved; in brackets what the call "
                "itself added above the resident set at its start")
    return kind


def markdown(record: dict) -> str:
    """The record as the markdown table the command prints (and writes beside the JSON)."""
    env = record["environment"]
    base = record["baseline"]
    lines = [f"## koclip benchmark — profile `{record['profile']}`{' (random weights)' if record['random_weights'] else ''}"
             f"{' (--quick)' if record['quick'] else ''} on {env['device_name']} ({env['device']})", "",
             f"torch {env['torch']}, diffusers {env['diffusers']}, {env['threads']} thread(s), {env['date']}"
             + (f", load average at start {env['load_average_at_start']}" if env.get("load_average_at_start") else ""), "",
             f"{record['resolution']}×{record['resolution']} images, {record['prompts']} prompts × {record['repeats']} "
             f"repeat(s) per row, classifier-free guidance {record['guidance']}. Baseline: {base['dtype']}, "
             f"{base['attention']} attention (AttnProcessor), {base['scheduler'].upper()} {base['steps']} steps, "
             f"full VAE, batch {base['batch']}, prompt encoded every call. Every ratio is to a baseline timed in the "
             "same phase of this run: phase 1 is the baseline and one change of one axis per row, phase 2 the baseline "
             "again with the winners stacked (rows from the second baseline on)"
             + (", each phase's rows timed interleaved, prompt by prompt, so load from other work falls on all alike"
                if record.get("interleaved") else ", each row timed on its own") +
             f". Quality: {record['quality_proxy']}. Peak MB: {_memory_kind(record)}.", "",
             "| configuration | axis | p50 s/img | p90 s/img | images/s | speed-up (p50) | images/s ratio | peak MB "
             "| quality | UNet steps/img | compile s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [_row_line(r) for r in record["rows"]]
    lines += ["", "UNet steps/img: denoising steps per image (one UNet evaluation serves every image of a batch, both "
              "halves of classifier-free guidance in it). Compile s: the warm-up call's excess over a steady call, with "
              f"inductor's cache at {record['environment'].get('inductor_cache_dir')} (a fresh folder unless "
              "--warm-compile-cache); a UNet graph already compiled earlier in the run is reused, so it costs ~0."]
    judged = "attribute_accuracy" in record["rows"][0].get("quality", {})
    lines += ["", "Optimised = the winners stacked: " + "; ".join(f"{k}: {v}" for k, v in record["optimised_from"].items()) + ".",
              f"✗ marks a row whose attribute accuracy fell more than {100 * record['quality_tolerance']:.0f} points below "
              "the baseline's: it is not stacked." if judged else
              "The quality proxy (pixel difference) shows change, not quality: no row is judged by it."]
    tc = record["text_conditioning"]
    lines += ["", "**Text conditioning**, one prompt at a time (median of "
              f"{tc['prompts']} prompts): student encode {1000 * tc['student_encode_s']:.2f} ms"]
    if "translator_generate_s" in tc:
        lines[-1] += (f"; translator generate {1000 * tc['translator_generate_s']:.2f} ms "
                      f"(**{tc['ratio_generate_to_student']:.1f}×** the student)")
        if "translate_then_encode_s" in tc:
            lines[-1] += (f"; translate + English encode {1000 * tc['translate_then_encode_s']:.2f} ms "
                          f"({tc['ratio_translate_then_encode_to_student']:.1f}×)")
        if tc.get("decode_tokens"):
            lines[-1] += f"; random weights: every translation decodes {tc['decode_tokens']} tokens"
    else:
        lines[-1] += f"; translator {tc.get('translator')}"
    lines[-1] += "."
    lines += ["", "**Training throughput**", "", "| what | precision | batch | s/step | throughput | peak MB |", "|---|---|---|---|---|---|"]
    for t in record["training"]:
        rate = f"{t['samples_per_s']:.1f} samples/s" if "samples_per_s" in t else \
            f"{t['images_per_s']:.1f} images/s at {t['image_size']}×{t['image_size']}"
        lines.append(f"| {t['what']} | {t['precision']} | {t['batch']} | {t['seconds_per_step']:.3f} | {rate} | {t['peak_mb']:.0f} |")
    for note in record["notes"]:
        lines += ["", f"Note: {note}."]
    summary = record["summary"]
    if "baseline_drift_p50" in summary:
        lines += ["", f"Drift: phase 2's baseline took {summary['baseline_drift_p50']:.2f}× phase 1's p50 "
                  f"(load average {env.get('load_average_at_start')} at start, {env.get('load_average_at_end')} at the end)."]
    for name, s in summary.items():
        if isinstance(s, dict):
            lines += ["", f"**{name}**: {s['p50_s_per_image']:.4f} s/image p50, {s['speedup_p50']:.2f}× the p50 of the baseline timed with it, "
                      f"{s['images_per_s']:.2f} images/s ({s['images_per_s_ratio']:.2f}×); quality {_quality_text(s['quality'])}."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict:
    ap = CliParser(prog="python -m koclip_lib.bench",
                                 description="Benchmark the Korean pipeline's configurations on this device (issue 7).")
    ap.add_argument("--profile", help="the record's name (default: the params file's `profile`, else mini)")
    ap.add_argument("--params", type=existing_path, help="profile file (default params/<profile>.yaml)")
    ap.add_argument("--random-weights", action="store_true", help="full: SD 1.5-sized modules with random weights (no hub)")
    ap.add_argument("--quick", action="store_true", help="a small subset for CI: few prompts, no compile on CPU, 2 training steps")
    ap.add_argument("--out", default="outputs/bench", help="folder for <profile>-<device>.json and .md")
    ap.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when present)")
    ap.add_argument("--prompts", type=int, help="prompts per configuration (default: mini 40, full 4; --quick 4)")
    ap.add_argument("--repeats", type=int, help="timed passes over the prompts (default 1)")
    ap.add_argument("--train-steps", type=int, help="timed training steps (default 5 on CPU, 10 on a GPU; --quick 2)")
    ap.add_argument("--scale", type=float, default=1.0, help="--random-weights: shrink every width and depth (tests)")
    ap.add_argument("--resolution", type=int, default=512, help="--random-weights: image size")
    ap.add_argument("--quality-tolerance", type=float, default=0.05, help="mini: accuracy a row may lose and still be 'equal'")
    ap.add_argument("--min-gain", type=float, default=1.05, help="a row is stacked into 'optimised' when at least this much faster")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile rows")
    ap.add_argument("--warm-compile-cache", action="store_true", help="keep inductor's on-disk cache (compile times as "
                    "a restarted server on this machine sees them); default: a fresh one, so compile times are cold")
    ap.add_argument("--sequential", action="store_true", help="time rows one after another (the default on a GPU) "
                    "instead of interleaved prompt by prompt (the default on a CPU: fair under load from other work)")
    ap.add_argument("--compile-mode", help="torch.compile mode (default: reduce-overhead on CUDA, default on CPU)")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: as OMP_NUM_THREADS / torch decide)")
    args = ap.parse_args(argv)

    from diffusers.utils import logging as diffusers_logging

    from . import plan
    from .common import load_params, pick_device, write_json

    diffusers_logging.set_verbosity_error()  # one "cast with to()" warning per dtype row says nothing new
    fresh_cache = None if args.warm_compile_cache else tempfile.mkdtemp(prefix="bench_inductor_")
    if fresh_cache:  # cold compile times: a fresh inductor cache, not one warmed by earlier runs on this machine
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = fresh_cache
    if args.threads:
        torch.set_num_threads(args.threads)
    params_file = args.params or f"params/{args.profile or 'mini'}.yaml"
    params = load_params(params_file)
    profile = args.profile or params.get("profile", "mini")
    params["profile"] = profile
    device = pick_device(args.device)
    gpu = device.type == "cuda"
    # a profile whose inputs are made rather than downloaded (the mini world) hands over its own bench inputs
    made = plan.profile_inputs(params)
    # a hub checkpoint (SD 1.5 at fp32, 50 steps) takes seconds an image; the mini pipeline, milliseconds
    n_prompts = args.prompts or (40 if hasattr(made, "bench_inputs") and not args.quick else 4)
    repeats = args.repeats or 1
    train_steps = args.train_steps or (2 if args.quick else 10 if gpu else 5)
    if hasattr(made, "bench_inputs"):
        inputs = made.bench_inputs(n_prompts)
    elif args.random_weights:
        inputs = full_random_inputs(params, n_prompts, args.scale, args.resolution)
    else:
        inputs = full_inputs(params, n_prompts)
    compile_mode = args.compile_mode or ("reduce-overhead" if gpu else None)
    record = run_benchmark(inputs, device, args.quick, repeats, args.quality_tolerance, not args.no_compile, compile_mode,
                           train_steps, 4 if args.quick else 20, args.min_gain, False if args.sequential else None)
    record["command"] = " ".join(["python -m koclip_lib.bench", *(argv if argv is not None else sys.argv[1:])])
    record["params"] = str(params_file)
    stem = f"{profile}-{device_name(device)}" + (f"-scale{args.scale:g}" if args.scale != 1 else "") + ("-quick" if args.quick else "")
    out = Path(args.out)
    table = markdown(record)
    write_json(out / f"{stem}.json", record)
    (out / f"{stem}.md").write_text(table, encoding="utf-8")
    print(table)
    print(f"wrote {out / (stem + '.json')} and {out / (stem + '.md')}")
    if fresh_cache:
        import shutil

        shutil.rmtree(fresh_cache, ignore_errors=True)
    return record



def cli() -> None:
    """The `koclip-bench` console script: `main` prints its table and JSON; the exit status is 0."""
    main(sys.argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
