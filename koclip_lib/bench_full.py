"""Full-size speed on one GPU: the published SD 1.5 speed-ups as rows, each guarded, stacked only where the guard holds.

    python -m koclip_lib.bench_full --out outputs/bench                  # on a GPU: `scripts/device_bench.sh` runs this
    python -m koclip_lib.bench_full --device cpu --scale 0.05 --resolution 64 --prompts 2 --no-compile   # toy size (CI)

It runs on SD 1.5-sized modules with random weights (`bench_inputs.full_random_inputs`: the hub is out of reach; the
timing depends on the shapes), with classifier-free guidance at the profile's scale. What it measures:

- two baselines in the same run: the seed's (fp32, diffusers' classic attention, PNDM 50 steps) and what a diffusers
  user writes in three lines (fp16 + SDPA + DPM-Solver++ 20, "practical"; fp32 on a CPU, whose fp16 kernels are
  reference paths), each with a per-stage split (text encoder / UNet / VAE decoder; CUDA events on a GPU);
- text conditioning: the student's encode against the opus-mt-ko-en-shaped translator through `generate` and through
  CTranslate2 (int8, and fp16 on a GPU), converted from the same weights, per prompt;
- rows that must not change the image, each one change from the practical baseline (bf16, channels_last, fused QKV
  projections, torch.compile of the UNet in three modes and of the VAE, CUDA graphs, the prompt-embedding cache,
  batching). Each is *guarded*: its UNet output on fixed inputs and its latents after `GUARD_STEPS` steps are
  compared with the practical baseline's (relative error within `TOLERANCE`, all finite). A row that fails is
  reported with why and never stacked;
- rows that change the sampler or skip work (DPM-Solver++ 8, LCM 4 steps, DeepCache, token merging, the tiny
  decoder): on random weights only their time means something, so they are marked timing-only and not stacked;
  the mini profile's benchmark (`koclip_lib.bench`) judges such rows on attribute accuracy;
- training throughput at these shapes (sequence distillation at the profile's batch, LoRA at the resolution), and
  the hours an epoch of a 4 M-pair corpus would take;
- the stack: the practical baseline with every guarded row that is faster (the best of each axis), measured and
  guarded again (or, where one row won alone, that row's figures); then its throughput curve over batch sizes
  (images/s) and its peak memory.

The rows that take seconds run first and the compiled ones (a minute or more each) after them, so a time budget
(`--budget-s`) that runs out drops compiled rows, not the cheap ones. The record (JSON and a markdown table) is
rewritten after every row, so a run cut short keeps what it measured. No NaN reaches the JSON: a non-finite figure is
a failed row.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

from .bench import (Setting, configure, device_name, distill_throughput, dtype_unsupported, environment, fresh_pipeline,
                    measure_setting, text_conditioning, text_conditioning_seconds, training_throughput, _release, _sync)
from .bench_inputs import BenchInputs, full_random_inputs
from .cli import CliParser, existing_path

GUARD_STEPS = 3
# relative error allowed against the practical baseline: kernels and fusion reorder sums (same dtype); bf16 keeps 8
# bits of mantissa where fp16 keeps 11 (another dtype)
TOLERANCE = {"same dtype": 0.01, "other dtype": 0.05}
SAME, CHANGES = "same result", "changes result"
COMPILE_FIELDS = ("compile", "compile_mode", "compile_vae")
CORPUS_PAIRS = 4_000_000  # the training-time estimate's corpus


@dataclass
class Row:
    name: str
    kind: str                   # baseline | same result | changes result | stacked
    setting: Setting
    skip: str = ""
    record: dict = field(default_factory=dict)


def practical(device: torch.device) -> Setting:
    """fp16 + SDPA + DPM-Solver++ 20, what a diffusers user gets in three lines (fp32 on a CPU)."""
    return Setting(dtype="fp16" if device.type == "cuda" else "fp32", attention="sdpa", scheduler="dpm++", steps=20)


def _missing(module: str, package: str) -> str:
    import importlib.util

    return "" if importlib.util.find_spec(module) else f"not available: pip install {package}"


def technique_rows(inputs: BenchInputs, device: torch.device, p: Setting, compile_rows: bool = True,
                   max_autotune: bool = False) -> tuple[list[Row], list[Row]]:
    """(rows that must keep the result, rows that change it), each one change from the practical baseline. The
    compiled rows come last (each compiles for a minute or more on a GPU): a time budget drops them first."""
    gpu = device.type == "cuda"
    no_compile = "" if compile_rows else "skipped: --no-compile"
    gpu_only = "" if gpu else "skipped: needs a GPU"
    same = [("bf16", replace(p, dtype="bf16"), dtype_unsupported("bf16", device) or ""),
            ("channels_last", replace(p, channels_last=True), ""),
            ("fused QKV projections", replace(p, fused_qkv=True), ""),
            ("prompt-embedding cache", replace(p, cache=True), ""),
            ("batch 4, per image", replace(p, batch=4), ""),
            ("CUDA graphs (torch.compile reduce-overhead)", replace(p, compile=True, compile_mode="reduce-overhead"),
             no_compile or gpu_only),
            ("torch.compile(UNet)", replace(p, compile=True, compile_mode="default"), no_compile),
            ("torch.compile(UNet) + VAE decoder", replace(p, compile=True, compile_vae=True, compile_mode="default"), no_compile),
            ("torch.compile(UNet), max-autotune-no-cudagraphs",
             replace(p, compile=True, compile_mode="max-autotune-no-cudagraphs"),
             no_compile or gpu_only or ("" if max_autotune else "skipped: --max-autotune not given (autotuning takes minutes)"))]
    changes = [("DPM-Solver++ 8", replace(p, steps=8), ""),
               ("LCM scheduler 4 steps, guidance 1", replace(p, scheduler="lcm", steps=4, guidance=1.0), ""),
               ("DeepCache, interval 3", replace(p, deepcache=3), _missing("DeepCache", "DeepCache")),
               ("token merging 50% (tomesd)", replace(p, tome=0.5), _missing("tomesd", "tomesd")),
               ("tiny VAE decoder (TAESD)", replace(p, vae="tiny"),
                "" if inputs.tiny_vae is not None else inputs.tiny_vae_missing or "not available")]
    return ([Row(n, SAME, s, skip) for n, s, skip in same], [Row(n, CHANGES, s, skip) for n, s, skip in changes])


# ---------------------------------------------------------------------------------------------------------------
# Guards: the same UNet call and the same first steps as the practical baseline, or the row is refused.
# ---------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def probe(pipe, inputs: BenchInputs, setting: Setting, device: torch.device) -> dict:
    """What a row's pipeline computes on fixed inputs: one UNet call (CFG's pair of conditionings, a mid-schedule
    timestep) and the first image's latents after `GUARD_STEPS` steps of its own schedule, as fp32 on the CPU."""
    unet, dtype = pipe.unet, pipe.unet.dtype
    gen = torch.Generator().manual_seed(0)
    size = unet.config.sample_size
    x = torch.randn(2, unet.config.in_channels, size, size, generator=gen).to(device, dtype)
    positive, negative = pipe.encode_prompt(inputs.prompts[0], device, 1, True)
    pipe.scheduler.set_timesteps(setting.steps)
    t = pipe.scheduler.timesteps[len(pipe.scheduler.timesteps) // 2]
    eps = unet(x, t, encoder_hidden_states=torch.cat([negative, positive]).to(dtype), return_dict=False)[0].float().cpu()

    def stop(p, i, _t, tensors):
        p._interrupt = i + 1 >= GUARD_STEPS  # the loop skips the rest: latents as they are after GUARD_STEPS
        return tensors

    idx = [i % len(inputs.prompts) for i in range(setting.batch)]
    kwargs = dict(num_inference_steps=setting.steps, output_type="latent", callback_on_step_end=stop,
                  guidance_scale=inputs.guidance if setting.guidance is None else setting.guidance,
                  generator=[torch.Generator().manual_seed(int(inputs.seeds[i])) for i in idx])
    if setting.cache:
        embeds = [pipe.encode_prompt(inputs.prompts[i], device, 1, True) for i in idx]
        kwargs.update(prompt_embeds=torch.cat([e[0] for e in embeds]), negative_prompt_embeds=torch.cat([e[1] for e in embeds]))
    else:
        kwargs["prompt"] = [inputs.prompts[i] for i in idx]
    return {"unet": eps, "latents": pipe(**kwargs).images[:1].float().cpu()}


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def judge(candidate: dict, reference: dict, other_dtype: bool) -> dict:
    """The guard's verdict on a row's probe against the practical baseline's: finite, and within tolerance."""
    if not all(torch.isfinite(t).all() for t in candidate.values()):
        return {"passed": False, "reason": "not finite: NaN or inf in the UNet output or the latents"}
    tol = TOLERANCE["other dtype" if other_dtype else "same dtype"]
    errors = {f"{k}_relative_error": relative_error(candidate[k], reference[k]) for k in ("unet", "latents")}
    failed = [f"{k} {v:.3g} > {tol}" for k, v in errors.items() if not v <= tol]
    return {"passed": not failed, "tolerance": tol, **errors, **({"reason": "changed result: " + ", ".join(failed)} if failed else {})}


def axis_of(setting: Setting, base: Setting) -> str:
    changes = setting.changes(base)
    return "compile" if set(changes) & set(COMPILE_FIELDS) else "+".join(sorted(changes))


def stack(rows: list[Row], base: Setting, min_gain: float) -> tuple[Setting, dict[str, Row]]:
    """The practical baseline with, per axis, the fastest same-result row that passed its guard and is at least
    `min_gain` faster; batching is left to the throughput curve. Returns the setting and the row chosen per axis."""
    best: dict[str, Row] = {}
    for row in rows:
        r = row.record
        if row.kind != SAME or r.get("status") != "measured" or row.setting.batch != 1:
            continue
        if not r.get("guard", {}).get("passed") or r.get("speedup_vs_practical", 0) < min_gain:
            continue
        axis = axis_of(row.setting, base)
        if axis not in best or r["p50_s_per_image"] < best[axis].record["p50_s_per_image"]:
            best[axis] = row
    stacked = base
    for row in best.values():
        stacked = replace(stacked, **row.setting.changes(base))
    return stacked, best


# ---------------------------------------------------------------------------------------------------------------
# Measurements: one row, its stages, the batch curve, text conditioning, training.
# ---------------------------------------------------------------------------------------------------------------
class StageTimes:
    """Seconds in the text encoder, the UNet and the VAE decoder during one call (CUDA events on a GPU), from hooks
    on those modules; for uncompiled pipelines (a hook inside a compiled graph would break it)."""

    def __init__(self, pipe, device: torch.device):
        self.device, self.spans, self.handles = device, {"text encoder": [], "unet": [], "vae decode": []}, []
        for name, module in (("text encoder", pipe.text_encoder), ("unet", pipe.unet)):
            self.handles.append(module.register_forward_pre_hook(lambda *_, n=name: self._start(n)))
            self.handles.append(module.register_forward_hook(lambda *_, n=name: self._end(n)))
        decode = pipe.vae.decode

        def timed_decode(*args, **kwargs):
            self._start("vae decode")
            out = decode(*args, **kwargs)
            self._end("vae decode")
            return out

        self.pipe, self.decode = pipe, decode
        pipe.vae.decode = timed_decode

    def _mark(self):
        if self.device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def _start(self, name):
        self.spans[name].append([self._mark(), None])

    def _end(self, name):
        self.spans[name][-1][1] = self._mark()

    def seconds(self) -> dict:
        _sync(self.device)
        span = (lambda a, b: a.elapsed_time(b) / 1000) if self.device.type == "cuda" else (lambda a, b: b - a)
        out = {name: sum(span(a, b) for a, b in spans) for name, spans in self.spans.items()}
        out["unet calls"] = len(self.spans["unet"])
        for h in self.handles:
            h.remove()
        self.pipe.vae.decode = self.decode
        return out


@torch.no_grad()
def stage_split(inputs: BenchInputs, setting: Setting, device: torch.device) -> dict:
    pipe = configure(fresh_pipeline(inputs.pipe), setting, device, inputs.tiny_vae)
    kwargs = dict(num_inference_steps=setting.steps, guidance_scale=inputs.guidance, output_type="pt")
    pipe(inputs.prompts[0], generator=torch.Generator().manual_seed(0), **kwargs)  # warm-up
    times = StageTimes(pipe, device)
    _sync(device)
    started = time.perf_counter()
    pipe(inputs.prompts[0], generator=torch.Generator().manual_seed(0), **kwargs)
    _sync(device)
    split = {**times.seconds(), "total": time.perf_counter() - started}
    del pipe
    _release(device)
    return split


def measure(inputs: BenchInputs, row: Row, device: torch.device, repeats: int, reference_images,
            compile_mode: str | None, guarded: bool = False) -> tuple[torch.Tensor | None, dict | None]:
    """Time `row` (warm-up, then every prompt `repeats` times) into `row.record`; its images must be finite. With
    `guarded`, also its `probe`, on the pipeline just measured (a compiled one is compiled once). Returns (images,
    probe)."""
    probed = []
    after = (lambda pipe: probed.append(probe(pipe, inputs, row.setting, device))) if guarded else None
    try:
        figures, images = measure_setting(inputs, row.setting, device, repeats, reference_images, compile_mode, after)
    except Exception as err:  # a missing compiler, memory: reported, the others go on
        row.record.update(status="failed", reason=f"{type(err).__name__}: {err}"[:500])
        _release(device, compiled=True)
        return None, None
    row.record.update(figures, status="measured")
    if not torch.isfinite(images).all():
        row.record.update(status="failed", reason="not finite: NaN or inf in the images")
        return images, None
    return images, (probed[0] if probed else None)


def throughput_curve(inputs: BenchInputs, setting: Setting, device: torch.device, batches: list[int],
                     compile_mode: str | None, budget: "Budget") -> list[dict]:
    """Images/s of `setting` at each batch size (two calls of that size after a warm-up), until memory or time runs out."""
    out = []
    for batch in batches:
        if not budget.allows(out[-1]["seconds"] * 2 if out else 0):
            out.append({"batch": batch, "status": "skipped: time budget"})
            break
        n = 2 * batch
        sized = replace(inputs, prompts=(inputs.prompts * n)[:n], seeds=[int(inputs.seeds[0]) + i for i in range(n)])
        started = time.perf_counter()
        try:
            figures, images = measure_setting(sized, replace(setting, batch=batch), device, 1, None, compile_mode)
        except torch.OutOfMemoryError as err:
            out.append({"batch": batch, "status": f"out of memory: {str(err)[:200]}"})
            _release(device, compiled=True)
            break
        ok = bool(torch.isfinite(images).all())
        out.append({"batch": batch, "status": "measured" if ok else "failed: not finite", "images_per_s": figures["images_per_s"],
                    "p50_s_per_image": figures["p50_s_per_image"], "peak_mb": figures["peak_mb"],
                    "seconds": time.perf_counter() - started})
    return out


def ctranslate2_conditioning(inputs: BenchInputs, device: torch.device, prompts: list[str]) -> dict:
    """Seconds per prompt of the translator converted to CTranslate2 (from the same weights), per compute type."""
    try:
        import ctranslate2
    except ImportError:
        return {"status": "not available: pip install ctranslate2"}
    tokenizer = getattr(inputs.translator.tokenizer, "tokenizer", inputs.translator.tokenizer)
    out = {}
    with tempfile.TemporaryDirectory(prefix="bench_ct2_") as folder:
        hf, ct2 = Path(folder) / "hf", Path(folder) / "ct2"
        inputs.translator.model.save_pretrained(hf)
        tokenizer.save_pretrained(hf)
        loader = ctranslate2.converters.transformers.MarianMTLoader
        original = loader.get_vocabulary

        def model_sized(self, model, tok):
            # random weights: the stand-in tokenizer has fewer pieces than opus-mt's vocabulary, which the model's
            # output projection keeps; filler tokens give the converter a vocabulary of the model's size
            tokens = original(self, model, tok)
            return tokens + [f"<filler_{i}>" for i in range(model.config.vocab_size - 1 - len(tokens))]

        loader.get_vocabulary = model_sized
        try:
            ctranslate2.converters.TransformersConverter(str(hf)).convert(str(ct2))
        finally:
            loader.get_vocabulary = original
        n = inputs.decode_tokens
        length = {"min_decoding_length": n, "max_decoding_length": n} if n else {}
        kinds = [("cuda", "int8_float16"), ("cuda", "float16")] if device.type == "cuda" else []
        for where, compute_type in kinds + [("cpu", "int8"), ("cpu", "float32")]:
            try:  # a wheel built for another CUDA than the machine's fails here: reported, the others go on
                translator = ctranslate2.Translator(str(ct2), device=where, compute_type=compute_type)

                def translate(prompt, t=translator):
                    tokens = tokenizer.convert_ids_to_tokens(tokenizer(prompt).input_ids)
                    return t.translate_batch([tokens], beam_size=1, **length)

                out[f"ctranslate2_{where}_{compute_type}_s"] = text_conditioning_seconds(translate, prompts)
                del translator
            except (RuntimeError, ValueError, OSError) as err:
                out[f"ctranslate2_{where}_{compute_type}"] = f"failed: {type(err).__name__}: {err}"[:300]
    return out


def training_rows(inputs: BenchInputs, device: torch.device, steps: int) -> list[dict]:
    """Distillation (sequence, then the unet stage) and LoRA training throughput, bf16 on a GPU that has it; the
    distillation rows with the hours one epoch of a 4 M-pair corpus would take."""
    rows = training_throughput(inputs, device, steps)
    for bf16 in ([False, True] if device.type == "cuda" and torch.cuda.is_bf16_supported() else [False]):
        try:
            rows.append(distill_throughput(inputs.pipe.text_encoder, inputs.pipe.tokenizer, *inputs.teacher, inputs.pairs,
                                           replace(inputs.distill_config, objective="unet"), inputs.unet_stage_batch,
                                           steps, device, bf16, unet=inputs.pipe.unet))
        except torch.OutOfMemoryError as err:
            rows.append({"what": "unet-stage distillation", "status": f"out of memory: {str(err)[:200]}"})
        _release(device)  # the copies trained above are gone with the call's frame
    for r in rows:
        rate = r.get("samples_per_s")
        if rate and "distillation" in r["what"]:
            r["hours_per_epoch_of_4m_pairs"] = CORPUS_PAIRS / rate / 3600
    return rows


# ---------------------------------------------------------------------------------------------------------------
# The run: a budget, a record written after every row, the summary against the issue's targets.
# ---------------------------------------------------------------------------------------------------------------
class Budget:
    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def allows(self, estimate: float) -> bool:
        return self.left() > estimate


def finite(value):
    """`value` with every non-finite float replaced by None: JSON has no NaN."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


TARGETS = {"s_per_image_20_steps": ("≤", 0.15), "best_images_per_s": ("≥", 12.0), "speedup_vs_seed_baseline": ("≥", 25.0),
           "speedup_vs_practical_baseline": ("≥", 3.0), "text_conditioning_vs_fastest_translator": ("≥", 10.0),
           "distillation_samples_per_s": ("≥", 2000.0)}


def summarise(record: dict) -> dict:
    """The headline figures, and each of the issue's targets with what this run measured against it."""
    seed = next((r for r in record["rows"] if r["name"].startswith("seed baseline")), {})
    prac = next((r for r in record["rows"] if r["name"].startswith("practical baseline") and r.get("status") == "measured"), {})
    best = next((r for r in record["rows"] if r["kind"] == "stacked" and r.get("guard", {}).get("passed")), None) or prac
    out = {"stacked_row": best.get("name"), "s_per_image_20_steps": best.get("p50_s_per_image")}
    if best.get("p50_s_per_image"):
        if seed.get("p50_s_per_image"):
            out["speedup_vs_seed_baseline"] = seed["p50_s_per_image"] / best["p50_s_per_image"]
        if prac.get("p50_s_per_image"):
            out["speedup_vs_practical_baseline"] = prac["p50_s_per_image"] / best["p50_s_per_image"]
    curve = [c for c in record.get("throughput", []) if c.get("status") == "measured"]
    if curve:
        top = max(curve, key=lambda c: c["images_per_s"])
        out.update(best_images_per_s=top["images_per_s"], best_batch=top["batch"])
    text = record.get("text_conditioning", {})
    routes = [v for k, v in text.items() if k.endswith("_s") and k != "student_encode_s" and isinstance(v, float)]
    if routes and text.get("student_encode_s"):
        out["text_conditioning_vs_fastest_translator"] = min(routes) / text["student_encode_s"]
    distill = [r for r in record.get("training", []) if r.get("samples_per_s") and r["what"].startswith("distillation (")]
    if distill:
        out["distillation_samples_per_s"] = max(r["samples_per_s"] for r in distill)
    out["refused_by_guard"] = [r["name"] for r in record["rows"] if r.get("guard") and not r["guard"].get("passed")]
    out["targets"] = {k: {"target": f"{op} {v:g}", "measured": out.get(k),
                          "met": None if out.get(k) is None else (out[k] <= v if op == "≤" else out[k] >= v)}
                      for k, (op, v) in TARGETS.items()}
    return out


def markdown(record: dict) -> str:
    env = record["environment"]
    lines = [f"# Full-size speed: {env['device_name']}, {record['resolution']}², guidance {record['guidance']}, "
             f"random weights at scale {record['scale']:g}", "",
             "| row | kind | s/image p50 | images/s | × seed baseline | × practical | peak MB | guard |", "|---|---|---|---|---|---|---|---|"]
    for r in record["rows"]:
        guard = r.get("guard")
        verdict = "—" if guard is None else "passed" if guard.get("passed") else f"REFUSED ({guard.get('reason')})"
        if r["kind"] == CHANGES and r.get("status") == "measured":
            verdict = "timing only (random weights)"
        if r.get("status") != "measured":
            reason = r.get("reason", "")
            status = reason if reason.startswith(r.get("status", "pending")) else f"{r.get('status', 'pending')}: {reason}"
            lines.append(f"| {r['name']} | {r['kind']} | {status} | | | | | {verdict} |")
            continue
        fmt = lambda v, f: "" if v is None else format(v, f)  # noqa: E731
        lines.append(f"| {r['name']} | {r['kind']} | {fmt(r.get('p50_s_per_image'), '.4f')} | {fmt(r.get('images_per_s'), '.2f')} | "
                     f"{fmt(r.get('speedup_vs_seed'), '.2f')} | {fmt(r.get('speedup_vs_practical'), '.2f')} | "
                     f"{fmt(r.get('peak_mb'), '.0f')} | {verdict} |")
    if record.get("stages"):
        lines += ["", "| per-stage seconds (one image) | " + " | ".join(next(iter(record["stages"].values()))) + " |",
                  "|---" * (1 + len(next(iter(record["stages"].values())))) + "|"]
        for name, split in record["stages"].items():
            lines.append(f"| {name} | " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in split.values()) + " |")
    if record.get("throughput"):
        lines += ["", "| batch | images/s | s/image | peak MB |", "|---|---|---|---|"]
        lines += [f"| {c['batch']} | {c['images_per_s']:.2f} | {c['p50_s_per_image']:.4f} | {c['peak_mb']:.0f} |"
                  if c.get("status") == "measured" else f"| {c['batch']} | {c.get('status')} | | |" for c in record["throughput"]]
    for key in ("text_conditioning", "summary"):
        if record.get(key):
            lines += ["", f"**{key.replace('_', ' ')}**: `{json.dumps(finite(record[key]), ensure_ascii=False)}`"]
    return "\n".join(lines) + "\n"


class Record:
    """The run's record, written (JSON + markdown) after every row."""

    def __init__(self, out_dir: Path, stem: str, record: dict):
        self.json, self.md, self.data = out_dir / f"{stem}.json", out_dir / f"{stem}.md", record
        out_dir.mkdir(parents=True, exist_ok=True)

    def save(self, rows: list[Row]) -> None:
        self.data["rows"] = [{"name": r.name, "kind": r.kind, "setting": asdict(r.setting),
                              "changes": r.setting.changes(Setting()), **(r.record or {"status": "pending"})} for r in rows]
        self.data["summary"] = summarise(self.data)
        self.json.write_text(json.dumps(finite(self.data), ensure_ascii=False, indent=1, allow_nan=False), encoding="utf-8")
        self.md.write_text(markdown(self.data), encoding="utf-8")


def run(inputs: BenchInputs, device: torch.device, out_dir: Path, stem: str, budget_s: float, repeats: int = 1,
        compile_rows: bool = True, compile_mode: str | None = None, batches: tuple[int, ...] = (1, 2, 4, 8, 16, 32),
        train_steps: int = 5, min_gain: float = 1.03, scale: float = 1.0, max_autotune: bool = False,
        log: Callable[[str], None] = print) -> dict:
    budget = Budget(budget_s)
    base = practical(device)
    record = Record(out_dir, stem, {"environment": environment(device), "resolution": inputs.resolution, "scale": scale,
                                    "guidance": inputs.guidance, "prompts": len(inputs.prompts), "repeats": repeats,
                                    "guard": {"steps": GUARD_STEPS, "tolerance": TOLERANCE}, "budget_s": budget_s,
                                    "notes": list(inputs.notes)})
    seed_row = Row("seed baseline: fp32, classic attention, PNDM 50", "baseline", Setting())
    prac_row = Row(f"practical baseline: {base.dtype} + SDPA + DPM-Solver++ 20", "baseline", base)
    rows = [seed_row, prac_row]

    # the last measured row's time, compiled or not: what the budget expects the next row of that kind to take
    # (compiling SD 1.5's UNet took 135 s on an H200 before anything was cached: a compiled row is expected to take that)
    last = {False: 0.0, True: 90.0}

    def timed(row: Row, images_ref=None, guarded: bool = False) -> tuple[torch.Tensor | None, dict | None]:
        """Measure one row if the budget allows (and probe it when `guarded`), set its ratios, save the record."""
        started = time.perf_counter()
        images = probed = None
        if row.skip:
            row.record.update(status="not available" if row.skip.startswith("not available") else "skipped", reason=row.skip)
        elif row.kind != "baseline" and not budget.allows(last[row.setting.compile] * 1.5):  # every ratio needs both
            row.record.update(status="skipped", reason=f"time budget: {budget.left():.0f} s left")
        else:
            images, probed = measure(inputs, row, device, repeats, images_ref, compile_mode, guarded)
            for key, ref in (("speedup_vs_seed", seed_row), ("speedup_vs_practical", prac_row)):
                if row.record.get("status") == "measured" and ref.record.get("p50_s_per_image"):
                    row.record[key] = ref.record["p50_s_per_image"] / row.record["p50_s_per_image"]
            last[row.setting.compile] = row.record["seconds"] = time.perf_counter() - started
            if probed is not None and reference is not None:
                row.record["guard"] = judge(probed, reference, other_dtype=row.setting.dtype != base.dtype)
            log(f"{row.name}: {row.record.get('status')} {row.record.get('p50_s_per_image', '')}")
        record.save(rows)
        return images, probed

    reference = None
    timed(seed_row)
    reference_images, reference = timed(prac_row, guarded=True)
    if reference is None and base.dtype == "fp16":
        # random weights can overflow fp16 where trained ones do not: the practical baseline then runs in bf16
        prac_row.name += f" (refused: {prac_row.record.get('reason')})"
        base = replace(base, dtype="bf16")
        prac_row = Row("practical baseline: bf16 + SDPA + DPM-Solver++ 20", "baseline", base)
        rows.append(prac_row)
        reference_images, reference = timed(prac_row, guarded=True)
    if reference is None:
        raise RuntimeError(f"the practical baseline did not run: {prac_row.record.get('reason')}")
    same, changes = technique_rows(inputs, device, base, compile_rows, max_autotune)
    rows += [*same, *changes]
    record.data["stages"] = {r.name: stage_split(inputs, r.setting, device) for r in (seed_row, prac_row)}
    text_prompts = inputs.prompts[:8]
    record.data["text_conditioning"] = {**text_conditioning(inputs, device, len(text_prompts)),
                                        **ctranslate2_conditioning(inputs, device, text_prompts)}
    record.save(rows)
    # the rows of seconds first, the compiled ones (minutes each) last: a budget that runs out drops only those
    for row in [r for r in same if not r.setting.compile] + changes:
        timed(row, reference_images, guarded=row.kind == SAME)
    if not train_steps:
        record.data["training"] = [{"status": "skipped: --train-steps 0"}]
    elif budget.allows(30):
        record.data["training"] = training_rows(inputs, device, train_steps)
    else:
        record.data["training"] = [{"status": f"skipped: time budget ({budget.left():.0f} s left)"}]
    record.save(rows)
    for row in [r for r in same if r.setting.compile]:
        timed(row, reference_images, guarded=True)
    stacked_setting, parts = stack(rows, base, min_gain)
    why = record.data["stacked_from"] = {axis: f"{r.name} ({r.record['speedup_vs_practical']:.2f}x)" for axis, r in parts.items()}
    if stacked_setting != base:
        stacked = Row("stacked: " + ", ".join(why.values()), "stacked", stacked_setting)
        rows.insert(rows.index(same[-1]) + 1, stacked)
        if len(parts) > 1:
            timed(stacked, reference_images, guarded=True)
        if len(parts) == 1 or stacked.record.get("status") == "skipped":
            # one axis won, or no time was left to measure them together: the fastest part, measured alone in this
            # run with its guard, is the stack
            axis, part = min(parts.items(), key=lambda item: item[1].record["p50_s_per_image"])
            if len(parts) > 1:
                stacked.name = f"stacked: {why[axis]} (the whole stack did not fit the time budget)"
            stacked.setting = stacked_setting = part.setting
            stacked.record = {**part.record, "same_as": part.name}
            record.save(rows)
        if not stacked.record.get("guard", {}).get("passed"):
            stacked_setting = base  # refused: the curve runs on the practical baseline
    record.data["throughput"] = throughput_curve(inputs, stacked_setting, device, list(batches), compile_mode, budget)
    record.save(rows)
    return record.data


def main(argv: list[str] | None = None) -> dict:
    ap = CliParser(prog="python -m koclip_lib.bench_full", description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", type=existing_path, default="params/full.yaml", help="the profile (seed, guidance, batches)")
    ap.add_argument("--out", default="outputs/bench", help="folder for full-<device>.json and .md")
    ap.add_argument("--device", help="cuda (default when present) or cpu")
    ap.add_argument("--budget-s", type=float, default=360.0, help="stop starting rows when this many seconds have passed")
    ap.add_argument("--scale", type=float, default=1.0, help="shrink every width and depth (a dry run)")
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--prompts", type=int, default=8, help="prompts per row (one image each)")
    ap.add_argument("--batches", default="1,2,4,8,16,32", help="the throughput curve's batch sizes")
    ap.add_argument("--train-steps", type=int, default=5)
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    ap.add_argument("--compile-mode", default="default")
    ap.add_argument("--max-autotune", action="store_true", help="also the max-autotune compile row (minutes of autotuning)")
    ap.add_argument("--stem", help="file name (default full-<device>)")
    args = ap.parse_args(argv)

    from .cli import cli_logging
    from .common import load_params, pick_device

    cli_logging()
    device = pick_device(args.device)
    params = load_params(args.params)
    inputs = full_random_inputs(params, args.prompts, args.scale, args.resolution)
    stem = args.stem or f"full-{device_name(device)}" + (f"-scale{args.scale:g}" if args.scale != 1 else "")
    record = run(inputs, device, Path(args.out), stem, args.budget_s, compile_rows=not args.no_compile,
                 compile_mode=args.compile_mode, batches=tuple(int(b) for b in args.batches.split(",")),
                 train_steps=args.train_steps, scale=args.scale, max_autotune=args.max_autotune, log=lambda line: print(line, flush=True))
    print(markdown(record))
    print(f"wrote {Path(args.out) / (stem + '.json')} and .md")
    return record


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
