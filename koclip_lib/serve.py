"""The image service: a fair, predictable queue in front of one Stable Diffusion pipeline.

    python -m koclip_lib.serve --pipeline outputs/mini/sd [--text-encoder DIR] [--host 127.0.0.1] [--port 8000]
        [--db outputs/serve/jobs.sqlite3] [--max-queue 16] [--max-batch 4] [--lora-registry loras.json]

API (JSON in, JSON out; `Authorization: Bearer KEY` or `X-API-Key: KEY` when KOCLIP_API_KEY is set):

    POST   /v1/images            {prompt, negative_prompt?, seed?, steps?, guidance?, width?, height?,
                                  loras?: [{name, weight}], deadline_s?}
                                 -> 202 {job_id, queue_position, estimated_start_s, deadline_s}
                                 -> 429 + Retry-After (queue full), 503 (deadline cannot be met), 422 (invalid)
    POST   /v1/images:sync       same body; waits for the PNG within the job's deadline, else 504 {job_id}
    GET    /v1/jobs/{id}         queued | running | succeeded | failed | cancelled | expired (+ reason)
    GET    /v1/jobs/{id}/image   the PNG (409 while not succeeded, 404 unknown)
    GET    /v1/jobs/{id}/events  server-sent events: `state` on every change, `progress` per denoising step
    DELETE /v1/jobs/{id}         cancel a queued or running job
    GET    /v1/loras             the registered LoRA names (never their paths)
    POST   /v1/tokens            a short-lived read token: `GET /v1/jobs/{id}/events?token=...` (a browser's EventSource
                                 sends no headers)
    GET    /                     a web page: Korean prompt, examples, LoRA picker, live progress, image and parameters
    POST   /sdapi/v1/txt2img (+ progress, loras, sd-models, samplers)   AUTOMATIC1111's API   } koclip_lib.serve_compat,
    POST   /v1/images/generations                                    OpenAI's images API  } over the same queue
    GET    /healthz  /readyz  /metrics (Prometheus text)

A prompt may carry A1111's `<lora:name:weight>` tags: they are taken out of the text and join `loras`, checked the same
way (unknown name: 422 naming it). Every PNG carries its generation parameters in A1111's `parameters` text chunk
(prompt, negative prompt, steps, sampler, CFG scale, seed, size, model, text encoder, LoRA weights), which A1111's
"PNG Info" and ComfyUI read.

Rules the design keeps:

* One deadline per job, an absolute time fixed at admission (`deadline_s`, or the default) and stored with the
  job. It bounds the queue wait and the generation together; a job past its deadline is stopped (between the
  UNet's blocks, not only between steps) and reported as `expired`, by a reaper thread whatever the worker is doing;
  a sync request whose deadline passes gets 504 and its job is expired with it: no work runs for a client that is
  gone, and a sync job whose connection ended with a restart is cancelled, not run.
* Admission says no at once instead of accepting and timing out, and it counts work, not jobs: a job costs
  megapixels x steps, the service time per unit is the median of the last batches (one outlier cannot skew it);
  a full queue (or a client's share of it, or of the store) answers 429 with a Retry-After, a deadline that the job's
  own work or the queue ahead cannot meet answers 503. The largest side is twice the pipeline's native one unless set.
* An accepted job is written to SQLite (WAL) before the 202 goes out and is never dropped or sent back to the
  end of the line: after a restart, queued and running jobs resume in their original order (a running job runs
  again from the start, same id and seed, so the same image). Every state change is written to the store before
  memory shows it; a failed write (locked, disk full) changes nothing and is retried with backoff, `/readyz` says
  so, and a worker that cannot write for `worker_give_up_s` ends the process (exit 70) for a supervisor to restart.
  A database deleted or replaced under the service is noticed and rebuilt from memory. Finished jobs stay until
  `result_ttl_s` (cancelled, expired and failed ones until `ended_ttl_s`).
* One worker thread owns the pipeline (the GPU is one resource). It takes the oldest queued job, adds up to
  `max_batch - 1` later jobs with the same (width, height, steps, guidance, LoRAs) and runs them as one pipeline
  call with one `torch.Generator` per image, so batching never changes an image. Prompt embeddings are cached
  (LRU) by (prompt, negative prompt, LoRAs).
* The HTTP side never blocks its event loop on the store; bodies over `max_body_bytes` get 413 before they are read
  and bodies slower than `body_timeout_s` 408; a Host header not in `allowed_hosts` gets 400 (DNS rebinding); error
  messages never carry a server path; `/metrics` counts responses by code and errors by kind.
"""

import asyncio
import contextlib
import hmac
import io
import itertools
import json
import logging
import math
import os
import re
import secrets
import sqlite3
import statistics
import threading
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Literal, Optional

import prometheus_client as prom
import torch
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import APIKeyHeader, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.middleware.trustedhost import TrustedHostMiddleware

from .adapters import LORA_NAME, LoraError, LoraRegistry, apply_loras  # one rule for LoRA names: the registry's
from .cli import CliParser, existing_path

log = logging.getLogger("koclip.serve")

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED, EXPIRED = "queued", "running", "succeeded", "failed", "cancelled", "expired"
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED, EXPIRED})


@dataclass
class Settings:
    db_path: str = "outputs/serve/jobs.sqlite3"
    max_queue: int = 16                   # queued jobs (the running batch not counted); beyond it: 429
    max_batch: int = 4
    result_ttl_s: float = 24 * 3600       # finished jobs and their PNGs are purged after this
    default_deadline_s: float = 300.0
    max_deadline_s: float = 3600.0
    max_prompt_chars: int = 1000
    min_side: int = 8
    max_side: Optional[int] = None        # None: twice the pipeline's native side (SD 1.5: 1024; the mini world's: 64)
    default_steps: int = 20
    max_steps: int = 100
    default_guidance: float = 5.0
    max_guidance: float = 30.0
    max_loras: int = 4
    max_lora_weight: float = 2.0
    lora_registry: Optional[str] = None   # JSON {name: {path, trigger, description}}
    api_key: Optional[str] = field(default_factory=lambda: os.environ.get("KOCLIP_API_KEY") or None)
    embed_cache_size: int = 256
    token_ttl_s: float = 300.0            # read tokens for EventSource (`POST /v1/tokens`)
    initial_s_per_image_step: float = 0.5  # at the native size: the service-time estimate until a batch is measured
    estimate_window: int = 15             # the estimate is the median of the last batches: one outlier cannot skew it
    warmup: bool = False                  # one short generation at startup (loads kernels, measures speed)
    purge_interval_s: float = 60.0
    ended_ttl_s: float = 600.0            # cancelled, expired and failed jobs are purged after this (succeeded: result_ttl_s)
    max_queued_per_client: Optional[int] = None  # queued jobs one client (address) may have; None: the queue's bound
    max_stored_per_client: int = 1000     # jobs one client may have in the store, in any state; beyond it: 429
    store_timeout_s: float = 5.0          # SQLite's busy timeout; a failed write is retried with backoff
    worker_give_up_s: float = 120.0       # the store failing this long: the worker gives up (`exit_on_fatal`)
    exit_on_fatal: bool = False           # the CLI sets it: the process exits non-zero, so a supervisor restarts it
    max_body_bytes: int = 1_000_000       # a larger request body gets 413 before it is read
    body_timeout_s: float = 10.0          # a body not received within this gets 408
    header_timeout_s: float = 10.0        # a request head not received within this: the connection is closed (CLI)
    allowed_hosts: tuple = ("127.0.0.1", "localhost", "::1", "testserver")  # Host header check (DNS rebinding)


# ---------------------------------------------------------------------------------------------------------------
# Jobs and their SQLite store
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class JobSpec:
    """A validated request with every default resolved (seed and size included), so a re-run is identical."""
    prompt: str
    negative_prompt: Optional[str]
    seed: int
    steps: int
    guidance: float
    width: int
    height: int
    loras: tuple = ()  # ((name, weight), ...) in request order
    text_windows: int = 1  # 77-state windows of the prompt (a Korean pipeline chunks long prompts)
    sampler: str = ""  # an A1111 sampler name (SAMPLERS); "" = the pipeline's own scheduler

    @property
    def batch_key(self) -> tuple:
        # equal windows too: padding a prompt with empty windows to share a batch would change its image
        return (self.width, self.height, self.steps, self.guidance, self.loras, self.text_windows, self.sampler)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> "JobSpec":
        d = json.loads(text)
        return cls(**{**d, "loras": tuple((n, float(w)) for n, w in d.get("loras", ()))})


@dataclass
class Job:
    id: str
    spec: JobSpec
    created_at: float   # epoch seconds
    deadline: float     # epoch seconds, fixed at admission
    seq: int = 0        # admission order (SQLite rowid): FIFO across restarts
    state: str = QUEUED
    reason: Optional[str] = None
    started_at: Optional[float] = None
    finished_at: Optional[float] = None
    attempts: int = 0   # times generation started (2 after a restart interrupted it)
    step: int = 0
    batch_id: Optional[int] = None
    batch_size: Optional[int] = None
    client: str = ""    # who submitted it (address): per-client quotas
    sync: bool = False  # a client is waiting on the connection (a sync request): it cannot outlive a restart


def overdue_in_generation(job: Job) -> str:
    return f"deadline passed during generation (step {job.step}/{job.spec.steps})"


def work_units(spec: "JobSpec") -> float:
    """What a job costs the worker: megapixels x denoising steps (one image)."""
    return spec.width * spec.height / 1e6 * spec.steps


class StoreUnavailable(RuntimeError):
    """The job store could not be written (locked past its timeout, disk full, I/O error): nothing was changed."""


class JobStore:
    """Jobs and result PNGs in SQLite (WAL). A commit survives the process being killed."""

    SCHEMA = """
    CREATE TABLE IF NOT EXISTS jobs (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, state TEXT NOT NULL, request TEXT NOT NULL,
        created_at REAL NOT NULL, deadline REAL NOT NULL, started_at REAL, finished_at REAL, reason TEXT,
        attempts INTEGER NOT NULL DEFAULT 0, image BLOB, client TEXT NOT NULL DEFAULT '', sync INTEGER NOT NULL DEFAULT 0);
    CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, finished_at);
    """

    def __init__(self, path: str | os.PathLike, timeout: float = 5.0):
        self.path = str(path)
        if self.path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=timeout)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # in WAL mode: durable across process crashes
        self._db.executescript(self.SCHEMA)
        columns = {r["name"] for r in self._db.execute("PRAGMA table_info(jobs)")}
        for column in ("client TEXT NOT NULL DEFAULT ''", "sync INTEGER NOT NULL DEFAULT 0"):  # a store from before them
            if column.split()[0] not in columns:
                self._db.execute(f"ALTER TABLE jobs ADD COLUMN {column}")
        self._identity = self._file_identity()
        self._lock = threading.Lock()

    def _file_identity(self) -> Optional[tuple]:
        if self.path == ":memory:":
            return None
        st = os.stat(self.path)
        return st.st_dev, st.st_ino

    def file_problem(self) -> Optional[str]:
        """'deleted' or 'replaced' when the file at the store's path is no longer the one it opened, else None."""
        if self._identity is None:
            return None
        try:
            return None if self._file_identity() == self._identity else "replaced"
        except FileNotFoundError:
            return "deleted"

    def insert(self, job: Job, image: Optional[bytes] = None) -> int:
        """Write `job` as it is; returns its admission order (`seq`): a new one for a new job (seq 0), its own for a
        job written again (a store rebuilt from memory, image included)."""
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO jobs (seq, id, state, request, created_at, deadline, started_at, finished_at, reason, attempts, "
                "image, client, sync) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job.seq or None, job.id, job.state, job.spec.to_json(), job.created_at, job.deadline, job.started_at,
                 job.finished_at, job.reason, job.attempts, image, job.client, int(job.sync)))
            return cur.lastrowid

    def save(self, job: Job, image: Optional[bytes] = None) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET state=?, started_at=?, finished_at=?, reason=?, attempts=?, image=COALESCE(?, image) "
                "WHERE id=?", (job.state, job.started_at, job.finished_at, job.reason, job.attempts, image, job.id))

    def load(self) -> list[Job]:
        with self._lock:
            rows = self._db.execute("SELECT seq, id, state, request, created_at, deadline, started_at, finished_at, "
                                    "reason, attempts, client, sync FROM jobs ORDER BY seq").fetchall()
        return [Job(id=r["id"], spec=JobSpec.from_json(r["request"]), created_at=r["created_at"], deadline=r["deadline"],
                    seq=r["seq"], state=r["state"], reason=r["reason"], started_at=r["started_at"],
                    finished_at=r["finished_at"], attempts=r["attempts"], client=r["client"], sync=bool(r["sync"]))
                for r in rows]

    def image(self, job_id: str) -> Optional[bytes]:
        with self._lock:
            row = self._db.execute("SELECT image FROM jobs WHERE id=?", (job_id,)).fetchone()
        return row["image"] if row else None

    def images(self, job_ids: list[str]) -> dict[str, bytes]:
        with self._lock:
            return {r["id"]: r["image"] for r in self._db.execute(
                f"SELECT id, image FROM jobs WHERE id IN ({','.join('?' * len(job_ids))})", job_ids) if r["image"]}

    def purge(self, succeeded_before: float, ended_before: float) -> list[str]:
        """Delete succeeded jobs finished before `succeeded_before` and other ended ones before `ended_before`."""
        others = tuple(TERMINAL - {SUCCEEDED})
        where = (f"(state = ? AND finished_at < ?) OR (state IN ({','.join('?' * len(others))}) AND finished_at < ?)")
        args = (SUCCEEDED, succeeded_before, *others, ended_before)
        with self._lock:
            ids = [r["id"] for r in self._db.execute(f"SELECT id FROM jobs WHERE {where}", args)]
            self._db.execute(f"DELETE FROM jobs WHERE {where}", args)
        return ids

    def close(self) -> None:
        with self._lock:
            self._db.close()


# ---------------------------------------------------------------------------------------------------------------
# The pipeline-backed engine: one call generates one batch
# ---------------------------------------------------------------------------------------------------------------
def load_lora_registry(path: str | os.PathLike | None) -> dict[str, dict]:
    """{name: {path, trigger, description, ...}} from a `koclip_lib.lora` registry file (relative paths are relative
    to the file); names are what clients send, paths never leave the server."""
    try:
        return LoraRegistry.from_file(path).entries
    except LoraError as err:
        raise ValueError(str(err)) from None


def png_bytes(image, parameters: Optional[str] = None) -> bytes:
    """The PNG; `parameters` goes into a `parameters` text chunk, where A1111's "PNG Info" and ComfyUI read it."""
    from PIL.PngImagePlugin import PngInfo

    info = None
    if parameters:
        info = PngInfo()
        info.add_itxt("parameters", parameters)  # iTXt: UTF-8, so Korean prompts survive
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


# A1111's sampler names -> the diffusers scheduler (and its settings) that implements each
SAMPLERS = {"DPM++ 2M": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
            "DPM++ 2M Karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True}),
            "Euler": ("EulerDiscreteScheduler", {}),
            "Euler a": ("EulerAncestralDiscreteScheduler", {}),
            "Heun": ("HeunDiscreteScheduler", {}),
            "LMS": ("LMSDiscreteScheduler", {}),
            "DDIM": ("DDIMScheduler", {}),
            "PLMS": ("PNDMScheduler", {}),
            "UniPC": ("UniPCMultistepScheduler", {})}


def sampler_name(scheduler) -> str:
    """A1111's name of a diffusers scheduler object (its class name when A1111 has none)."""
    name = type(scheduler).__name__
    config = getattr(scheduler, "config", {})
    for sampler, (cls, kwargs) in SAMPLERS.items():
        if cls == name and all(config.get(k) == v for k, v in kwargs.items()) and \
                (sampler != "DPM++ 2M" or not config.get("use_karras_sigmas")):
            return sampler
    return name


LORA_TAG = re.compile(r"<lora:([^:<>]+)(?::([^:<>]*))?>")


def prompt_loras(prompt: str) -> tuple[str, list[tuple[str, float]]]:
    """A1111's `<lora:name:weight>` tags taken out of a prompt: (the prompt without them, [(name, weight)]).
    The weight defaults to 1; one that is not a number is a ValueError naming the tag."""
    loras = []
    for match in LORA_TAG.finditer(prompt):
        name, weight = match.group(1).strip(), (match.group(2) or "1").strip()
        try:
            value = float(weight)
        except ValueError:
            raise ValueError(f"{match.group(0)}: the weight {weight!r} is not a number") from None
        if not math.isfinite(value):
            raise ValueError(f"{match.group(0)}: the weight must be finite")
        loras.append((name, value))
    return " ".join(LORA_TAG.sub(" ", prompt).split()), loras


def _model_name(module) -> str:
    path = getattr(module, "name_or_path", "") or getattr(getattr(module, "config", None), "_name_or_path", "") or ""
    return Path(str(path).rstrip("/")).name or type(module).__name__


def generation_parameters(spec: "JobSpec", pipe) -> str:
    """The A1111 "parameters" text of a job: prompt (with its LoRA tags), negative prompt, then
    `Steps, Sampler, CFG scale, Seed, Size, Model, Text encoder, Lora weights`."""
    tags = "".join(f" <lora:{name}:{weight:g}>" for name, weight in spec.loras)
    fields = {"Steps": spec.steps, "Sampler": spec.sampler or sampler_name(pipe.scheduler),
              "CFG scale": f"{spec.guidance:g}", "Seed": spec.seed, "Size": f"{spec.width}x{spec.height}",
              "Model": _model_name(pipe), "Text encoder": _model_name(pipe.text_encoder)}
    if spec.loras:
        fields["Lora weights"] = json.dumps({name: weight for name, weight in spec.loras})
    lines = [spec.prompt + tags]
    if spec.negative_prompt:
        lines.append(f"Negative prompt: {spec.negative_prompt}")
    lines.append(", ".join(f"{key}: {value}" for key, value in fields.items()))
    return "\n".join(lines)


class Interrupted(Exception):
    """Raised inside the pipeline call to end it now (between steps, or between the UNet's blocks)."""


class PipelineEngine:
    """Runs batches on a diffusers StableDiffusionPipeline. Only the worker thread calls `generate`."""

    def __init__(self, pipe, cache_size: int = 256, loras: Optional[dict[str, dict]] = None):
        self.pipe = pipe
        self.loras = dict(loras or {})    # name -> registry entry; create_app fills it from the settings
        self.cache_size = cache_size
        self._embeddings: OrderedDict = OrderedDict()
        self.cache_hits = self.cache_misses = 0
        self._schedulers = {"": pipe.scheduler}  # sampler name -> scheduler, built once from the checkpoint's config
        pipe.set_progress_bar_config(disable=True)

    def scheduler(self, sampler: str):
        """The scheduler of an A1111 sampler name ("" = the pipeline's own), from the checkpoint's scheduler config."""
        if sampler not in self._schedulers:
            import diffusers

            cls, kwargs = SAMPLERS[sampler]
            self._schedulers[sampler] = getattr(diffusers, cls).from_config(self._schedulers[""].config, **kwargs)
        return self._schedulers[sampler]

    def text_windows(self, prompt: str, negative_prompt: Optional[str]) -> int:
        """How many 77-state windows the prompt and its negative take: 1 for an English pipeline; a Korean pipeline
        chunks long prompts (and raises its PromptError, a ValueError, for one it will not draw)."""
        windows = getattr(self.pipe, "prompt_windows", None)
        if windows is None:
            return 1
        return max(len(windows(prompt)), len(windows(negative_prompt or "", allow_empty=True)))

    @property
    def default_size(self) -> tuple[int, int]:
        side = self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor
        return side, side

    def _encode(self, spec: JobSpec) -> tuple[torch.Tensor, torch.Tensor]:
        key = (spec.prompt, spec.negative_prompt or "", spec.loras)  # a text-encoder LoRA changes the embedding
        if key in self._embeddings:
            self._embeddings.move_to_end(key)
            self.cache_hits += 1
            return self._embeddings[key]
        self.cache_misses += 1
        embeds = self.pipe.encode_prompt(spec.prompt, self.pipe.device, 1, True, negative_prompt=spec.negative_prompt)
        self._embeddings[key] = embeds
        while len(self._embeddings) > self.cache_size:
            self._embeddings.popitem(last=False)
        return embeds

    def _apply_loras(self, loras: tuple) -> None:
        """Make exactly these (name, weight) LoRAs active; each file is checked before it is loaded, so a bad one
        fails its job (LoraFileError) and leaves the pipeline as it was."""
        apply_loras(self.pipe, dict(loras), LoraRegistry(self.loras))

    @torch.inference_mode()
    def generate(self, specs: list[JobSpec], on_step: Callable[[int, int], bool],
                 should_stop: Optional[Callable[[], bool]] = None) -> Optional[list[bytes]]:
        """PNG bytes per spec (all share one batch key), or None when `on_step(step, steps)` asked to stop after a
        step, or `should_stop()` did inside one (checked before each of the UNet's blocks: a large image's step can
        take many seconds). A stopped call skips the VAE decode."""
        first = specs[0]
        self._apply_loras(first.loras)
        self.pipe.scheduler = self.scheduler(first.sampler)
        positive, negative = zip(*(self._encode(s) for s in specs))
        generators = [torch.Generator(device="cpu").manual_seed(s.seed) for s in specs]

        def callback(pipe, i, t, tensors):
            if on_step(i + 1, first.steps):
                raise Interrupted
            return tensors

        def check(*_):
            if should_stop():
                raise Interrupted

        unet = self.pipe.unet
        blocks = [*getattr(unet, "down_blocks", []), *filter(None, [getattr(unet, "mid_block", None)]),
                  *getattr(unet, "up_blocks", [])]
        hooks = [b.register_forward_pre_hook(check) for b in blocks] if should_stop is not None else []
        try:
            out = self.pipe(prompt_embeds=torch.cat(positive), negative_prompt_embeds=torch.cat(negative),
                            width=first.width, height=first.height, num_inference_steps=first.steps,
                            guidance_scale=first.guidance, generator=generators, output_type="pil",
                            callback_on_step_end=callback)
        except Interrupted:
            return None
        finally:
            for hook in hooks:
                hook.remove()
        return [png_bytes(im, generation_parameters(spec, self.pipe)) for im, spec in zip(out.images, specs)]



# ---------------------------------------------------------------------------------------------------------------
# Service-time estimate, events, metrics
# ---------------------------------------------------------------------------------------------------------------
class ServiceTime:
    """Seconds per unit of work (megapixel x step, `work_units`), measured on whole batches (so the batching speed-up
    is in it): the median of the last `window` batches, so one outlier (a cold start, a batch slowed by another
    process) moves it by one rank, not by its size. `native` is the pipeline's own (width, height)."""

    def __init__(self, initial_s_per_image_step: float, native: tuple[int, int], window: int = 15):
        self.native_mp = native[0] * native[1] / 1e6
        self.initial = initial_s_per_image_step / self.native_mp
        self.samples: deque = deque(maxlen=window)

    def observe(self, seconds: float, specs: list["JobSpec"]) -> None:
        self.samples.append(seconds / max(sum(work_units(s) for s in specs), 1e-9))

    @property
    def s_per_unit(self) -> float:
        return statistics.median(self.samples) if self.samples else self.initial

    @property
    def s_per_image_step(self) -> float:
        """At the native size: what /readyz and the metrics show."""
        return self.s_per_unit * self.native_mp

    @s_per_image_step.setter
    def s_per_image_step(self, seconds: float) -> None:
        """Start over from this estimate (at the native size), as if nothing had been measured."""
        self.samples.clear()
        self.initial = seconds / self.native_mp

    def job_seconds(self, spec: "JobSpec") -> float:
        return self.s_per_unit * work_units(spec)


class EventHub:
    """Job events from the worker thread to asyncio subscribers (SSE streams, sync requests)."""

    def __init__(self):
        self._subscribers: dict[str, list] = {}
        self._lock = threading.Lock()

    def subscribe(self, job_id: str) -> asyncio.Queue:
        queue = asyncio.Queue()
        with self._lock:
            self._subscribers.setdefault(job_id, []).append((asyncio.get_running_loop(), queue))
        return queue

    def unsubscribe(self, job_id: str, queue: asyncio.Queue) -> None:
        with self._lock:
            subs = [s for s in self._subscribers.get(job_id, []) if s[1] is not queue]
            if subs:
                self._subscribers[job_id] = subs
            else:
                self._subscribers.pop(job_id, None)

    def publish(self, job_id: str, event: dict) -> None:
        with self._lock:
            subs = list(self._subscribers.get(job_id, []))
        for loop, queue in subs:
            with contextlib.suppress(RuntimeError):  # the subscriber's loop is closed
                loop.call_soon_threadsafe(queue.put_nowait, event)


class Metrics:
    def __init__(self, max_batch: int):
        self.registry = r = prom.CollectorRegistry()
        self.queue_depth = prom.Gauge("koclip_queue_depth", "Jobs waiting in the queue", registry=r)
        self.running = prom.Gauge("koclip_running_jobs", "Jobs in the batch being generated", registry=r)
        self.s_per_image_step = prom.Gauge("koclip_seconds_per_image_step", "EWMA service-time estimate", registry=r)
        self.batch_size = prom.Histogram("koclip_batch_size", "Images per pipeline call", registry=r,
                                         buckets=sorted({1, 2, 3, 4, 6, 8, 12, 16, 32, max_batch}))
        self.batch_seconds = prom.Histogram("koclip_batch_seconds", "Seconds per pipeline call", registry=r,
                                            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160))
        self.latency = prom.Histogram("koclip_job_latency_seconds", "Admission to image for succeeded jobs", registry=r,
                                      buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600))
        self.rejected = prom.Counter("koclip_rejected", "Requests refused at admission (429 queue full, 503 deadline)",
                                     ["code", "reason"], registry=r)
        self.finished = prom.Counter("koclip_jobs_finished", "Jobs by terminal state", ["state"], registry=r)
        self.accepted = prom.Counter("koclip_jobs_accepted", "Jobs admitted (202)", registry=r)
        # counters start at 0 in a new process: finished = accepted + resumed, once the queue is empty
        self.resumed = prom.Counter("koclip_jobs_resumed", "Accepted jobs taken over from the store at startup", registry=r)
        self.expired = prom.Counter("koclip_jobs_expired", "Jobs whose deadline passed", registry=r)
        self.failed = prom.Counter("koclip_jobs_failed", "Jobs whose generation raised", registry=r)
        self.prompt_cache = prom.Counter("koclip_prompt_cache", "Prompt-embedding cache lookups", ["result"], registry=r)
        self.errors = prom.Counter("koclip_errors", "Errors by kind: store (a failed write, retried), store_file (the "
                                   "database deleted or replaced), generation, worker, reaper, warmup", ["kind"], registry=r)
        self.responses = prom.Counter("koclip_http_responses", "HTTP responses by status code", ["code"], registry=r)
        self.worker_alive = prom.Gauge("koclip_worker_alive", "1 while the worker and reaper threads run", registry=r)
        for kind in ("store", "store_file", "generation", "worker", "reaper", "warmup"):
            self.errors.labels(kind)
        for state in sorted(TERMINAL):
            self.finished.labels(state)

    def render(self) -> bytes:
        return prom.generate_latest(self.registry)


_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][^\\/\s'\":]+)+[\\/]?")


def public_reason(err: Exception) -> str:
    """A failed job's reason for its client: the error's kind and message, with any server path taken out."""
    return f"generation failed: {type(err).__name__}: {_PATH.sub('<path>', str(err))}"


class Rejected(Exception):
    """A request refused at admission: HTTP status, message, optional Retry-After seconds."""

    def __init__(self, status: int, message: str, retry_after: Optional[int] = None):
        super().__init__(message)
        self.status, self.message, self.retry_after = status, message, retry_after


# ---------------------------------------------------------------------------------------------------------------
# The job service: admission, the queue, the worker thread, recovery
# ---------------------------------------------------------------------------------------------------------------
class JobService:
    def __init__(self, engine, settings: Settings, hub: Optional[EventHub] = None):
        self.engine, self.settings = engine, settings
        self.hub = hub or EventHub()
        self.metrics = Metrics(settings.max_batch)
        self.estimate = ServiceTime(settings.initial_s_per_image_step, engine.default_size, settings.estimate_window)
        self.store: Optional[JobStore] = None
        self.jobs: dict[str, Job] = {}   # every job not yet purged (metadata only; PNGs stay in SQLite)
        self.queue: list[Job] = []       # queued jobs in admission order
        self.batch: list[Job] = []       # the batch being generated
        self.batch_started = 0.0
        self.store_error: Optional[str] = None  # the last failed store write's error, until a write succeeds
        self.fatal: Optional[str] = None        # why the worker gave up
        self._unsaved: list[tuple] = []  # (job, state, reason, image) the worker could not write yet: retried first
        self._batch_ids = itertools.count(1)
        self._cache_seen = (0, 0)
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._paused = threading.Event()  # test hook: while set, the worker starts no new batch
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._reaper: Optional[threading.Thread] = None
        self.ready = False
        self.metrics.queue_depth.set_function(lambda: len(self.queue))
        self.metrics.running.set_function(lambda: len(self.batch))
        self.metrics.s_per_image_step.set_function(lambda: self.estimate.s_per_image_step)
        self.metrics.worker_alive.set_function(lambda: float(self.healthy))

    # -- lifecycle ------------------------------------------------------------------------------------------
    def start(self) -> None:
        self.store = JobStore(self.settings.db_path, self.settings.store_timeout_s)
        self._purge(time.time())
        resumed = 0
        for job in self.store.load():
            self.jobs[job.id] = job
            if job.state in TERMINAL:
                continue
            if job.sync:  # its client waited on a connection that ended with the old process: nobody wants it now
                self._finish(job, CANCELLED, "the sync request's connection ended when the server restarted")
                continue
            if job.state == RUNNING:  # the process died mid-generation: same job, runs again from the start
                self._commit(job, state=QUEUED, started_at=None)
            self.queue.append(job)
            resumed += 1
        if resumed:
            log.info("resumed %d accepted job(s) from %s", resumed, self.settings.db_path)
            self.metrics.resumed.inc(resumed)
        self._stop.clear()
        self._thread = threading.Thread(target=self._work, name="koclip-worker", daemon=True)
        self._thread.start()
        self._reaper = threading.Thread(target=self._reap, name="koclip-reaper", daemon=True)
        self._reaper.start()

    def stop(self, timeout: float = 60.0) -> None:
        """Stop the worker; a batch in progress is interrupted and its jobs stay queued for the next start."""
        self._stop.set()
        with self._wake:
            self._wake.notify_all()
        for thread in (self._thread, self._reaper):
            if thread:
                thread.join(timeout)
        self.ready = False
        if self.store and not (self._thread and self._thread.is_alive()):
            self.store.close()

    def pause(self) -> None:
        self._paused.set()

    def resume(self) -> None:
        self._paused.clear()
        with self._wake:
            self._wake.notify_all()

    @property
    def healthy(self) -> bool:
        """The worker and the reaper threads run and the worker has not given up (what /healthz reports)."""
        threads = [t for t in (self._thread, self._reaper) if t is not None]
        return bool(threads) and all(t.is_alive() for t in threads) and self.fatal is None

    @property
    def alive(self) -> bool:
        return self.healthy and self.ready and not self._stop.is_set()

    # -- the store: written first, memory second ------------------------------------------------------------
    def _store_failed(self, err: Exception) -> StoreUnavailable:
        self.store_error = f"{type(err).__name__}: {err}"
        self.metrics.errors.labels("store").inc()
        return StoreUnavailable(f"the job store is unavailable ({err}); nothing was changed")

    def _commit(self, job: Job, image: Optional[bytes] = None, **changes) -> None:
        """Write the job with `changes` to the store, then apply them in memory: a failed write (StoreUnavailable)
        leaves both as they were, so memory never reports a state the store does not hold."""
        try:
            self.store.save(replace(job, **changes), image)
        except sqlite3.Error as err:
            raise self._store_failed(err) from err
        self.store_error = None
        for name, value in changes.items():
            setattr(job, name, value)

    def _check_store_file(self) -> None:
        """A database deleted or replaced under the running service is noticed, reported, and rebuilt from memory
        (the jobs, and the images still readable through the open connection), never silently left behind."""
        problem = self.store.file_problem()
        if problem is None:
            return
        with self._lock:
            path = Path(self.store.path)
            log.error("the job store %s was %s while the service ran: rebuilding it from the %d jobs in memory",
                      path, problem, len(self.jobs))
            self.metrics.errors.labels("store_file").inc()
            images = self.store.images([j.id for j in self.jobs.values() if j.state == SUCCEEDED])
            self.store.close()
            if problem == "replaced":
                path.rename(path.with_name(f"{path.name}.replaced-{int(time.time())}"))
            for suffix in ("-wal", "-shm"):  # the old database's, if any are left
                Path(f"{path}{suffix}").unlink(missing_ok=True)
            self.store = JobStore(path, self.settings.store_timeout_s)
            for job in sorted(self.jobs.values(), key=lambda j: j.seq):
                self.store.insert(job, images.get(job.id))

    # -- admission ------------------------------------------------------------------------------------------
    def _running_remaining(self, now: float) -> float:
        if not self.batch:
            return 0.0
        total = sum(self.estimate.job_seconds(j.spec) for j in self.batch)
        return max(0.0, total - (now - self.batch_started))

    def _wait_estimate(self, now: float, ahead: list[Job]) -> float:
        return self._running_remaining(now) + sum(self.estimate.job_seconds(j.spec) for j in ahead)

    def retry_after(self) -> int:
        """Seconds until the queue has drained at the measured rate (at least 1)."""
        with self._lock:
            return max(1, math.ceil(self._wait_estimate(time.time(), self.queue)))

    def _refuse(self, status: int, reason: str, message: str, retry_after: Optional[int] = None) -> Rejected:
        self.metrics.rejected.labels(str(status), reason).inc()
        return Rejected(status, message, retry_after)

    def submit(self, spec: JobSpec, deadline_s: float, client: str = "", sync: bool = False) -> tuple[Job, int, float]:
        """Admit a job or raise Rejected. Returns (job, queue position, estimated seconds until it starts)."""
        with self._lock:
            if self.fatal:
                raise self._refuse(503, "worker", f"the service cannot run jobs: {self.fatal}")
            if not self.alive:
                raise self._refuse(503, "starting", "the service is starting or stopping; try again shortly", 5)
            if self.store_error:
                raise self._refuse(503, "store", f"the job store is unavailable ({self.store_error}); try again shortly", 2)
            now = time.time()
            if len(self.queue) >= self.settings.max_queue:
                retry = self.retry_after()
                raise self._refuse(429, "queue_full", f"queue full ({len(self.queue)} jobs waiting); retry after {retry} s", retry)
            per_client = self.settings.max_queued_per_client or self.settings.max_queue
            queued = sum(j.client == client for j in self.queue)
            if queued >= per_client:
                retry = self.retry_after()
                raise self._refuse(429, "client_queue", f"this client has {queued} jobs waiting (the limit per client is "
                                                        f"{per_client}); retry after {retry} s", retry)
            stored = sum(j.client == client for j in self.jobs.values())
            if stored >= self.settings.max_stored_per_client:
                raise self._refuse(429, "client_store", f"this client has {stored} jobs stored (the limit is "
                                   f"{self.settings.max_stored_per_client}); ended jobs are purged after "
                                   f"{self.settings.ended_ttl_s:g} s, images after {self.settings.result_ttl_s:g} s",
                                   max(1, math.ceil(min(self.settings.ended_ttl_s, self.settings.result_ttl_s))))
            start_in = self._wait_estimate(now, self.queue)
            service = self.estimate.job_seconds(spec)
            if service > deadline_s:
                raise self._refuse(503, "deadline", f"deadline_s={deadline_s:g} cannot be met: this job's own work "
                                   f"({spec.width}x{spec.height}, {spec.steps} steps) takes about {service:.1f} s; "
                                   "raise deadline_s, or ask for fewer steps or a smaller image")
            if start_in + service > deadline_s:
                raise self._refuse(503, "deadline", f"deadline_s={deadline_s:g} cannot be met: the estimated start is in "
                                   f"{start_in:.1f} s and generation takes about {service:.1f} s; raise deadline_s or "
                                   "retry later", math.ceil(start_in) if start_in >= 1 else None)
            job = Job(id=uuid.uuid4().hex, spec=spec, created_at=now, deadline=now + deadline_s, client=client, sync=sync)
            try:
                job.seq = self.store.insert(job)  # durable before the 202 goes out
            except sqlite3.Error as err:
                raise self._refuse(503, "store", str(self._store_failed(err)), 2) from err
            self.store_error = None
            self.jobs[job.id] = job
            self.queue.append(job)
            self.metrics.accepted.inc()
            self._wake.notify_all()
            return job, len(self.queue) - 1, start_in

    # -- state changes (all under the lock; a terminal state never changes) -------------------------------
    def _publish_state(self, job: Job) -> None:
        self.hub.publish(job.id, {"event": "state", "job_id": job.id, "state": job.state, "reason": job.reason,
                                  "attempts": job.attempts})

    def _finish(self, job: Job, state: str, reason: Optional[str] = None, image: Optional[bytes] = None) -> bool:
        """End the job (store first); False when it had ended already. Raises StoreUnavailable."""
        with self._lock:
            if job.state in TERMINAL:
                return False
            self._commit(job, image, state=state, reason=reason, finished_at=time.time())
            if job in self.queue:
                self.queue.remove(job)
            self.metrics.finished.labels(state).inc()
            if state == EXPIRED:
                self.metrics.expired.inc()
            elif state == FAILED:
                self.metrics.failed.inc()
            elif state == SUCCEEDED:
                self.metrics.latency.observe(job.finished_at - job.created_at)
            self._publish_state(job)
            return True

    def _settle(self, job: Job, state: str, reason: Optional[str] = None, image: Optional[bytes] = None) -> None:
        """The worker's `_finish`: a result the store cannot take yet is kept and written before the next batch."""
        try:
            self._finish(job, state, reason, image)
        except StoreUnavailable:
            self._unsaved.append((job, state, reason, image))

    def _flush_unsaved(self) -> None:
        while self._unsaved:
            self._finish(*self._unsaved[0])  # raises while the store still fails: the worker backs off
            self._unsaved.pop(0)

    def cancel(self, job_id: str, reason: str = "cancelled by the client", state: str = CANCELLED) -> Optional[dict]:
        """End a queued or running job: its status as it ended, or None when it had ended (or is unknown). Raises
        StoreUnavailable (nothing changed)."""
        with self._lock:  # the status is taken before the reaper may purge the ended job
            job = self.jobs.get(job_id)
            return self.status(job_id) if job and self._finish(job, state, reason) else None

    def _expire_overdue(self, now: float) -> None:
        with self._lock:
            for job in [j for j in self.queue if now > j.deadline]:
                waited = now - job.created_at
                self._finish(job, EXPIRED, f"deadline passed before the job started ({waited:.1f} s after admission)")
            for job in [j for j in self.batch if j.state == RUNNING and now > j.deadline]:
                self._finish(job, EXPIRED, overdue_in_generation(job))

    def _purge(self, now: float) -> None:
        with self._lock:
            for job_id in self.store.purge(now - self.settings.result_ttl_s, now - self.settings.ended_ttl_s):
                self.jobs.pop(job_id, None)

    # -- the worker and the reaper ----------------------------------------------------------------------
    def _take_batch(self) -> list[Job]:
        """The oldest queued job decides the batch key; up to max_batch queued jobs with that key join it."""
        with self._lock:
            if not self.queue or self._paused.is_set():
                return []
            key = self.queue[0].spec.batch_key
            candidates = [j for j in self.queue if j.spec.batch_key == key][: self.settings.max_batch]
            batch_id, now, batch = next(self._batch_ids), time.time(), []
            for job in candidates:
                try:
                    self._commit(job, state=RUNNING, started_at=now, step=0, attempts=job.attempts + 1,
                                 batch_id=batch_id, batch_size=len(candidates))
                except StoreUnavailable:
                    if not batch:
                        raise
                    break  # the ones written run now; the rest stay queued
                self.queue.remove(job)
                batch.append(job)
                self._publish_state(job)
            self.batch, self.batch_started = batch, now
            return batch

    def _work(self) -> None:
        try:
            if self.settings.warmup:
                self._warmup()
        except Exception:  # a broken pipeline should show in /readyz, not kill the process
            log.exception("warm-up generation failed")
            self.metrics.errors.labels("warmup").inc()
            return
        self.ready = True
        failing_since, backoff = None, 0.05
        while not self._stop.is_set():
            try:
                self._flush_unsaved()
                batch = self._take_batch()
                if batch:
                    self._run(batch)
                else:
                    with self._wake:
                        if not self._stop.is_set() and not (self.queue and not self._paused.is_set()):
                            self._wake.wait(timeout=0.25)  # woken by submit/resume/stop
                failing_since, backoff = None, 0.05
            except Exception as err:  # a store error (locked, disk full, I/O) must not end the worker for good
                kind = self._count_error(err, "worker")
                log.warning("worker: %s: %s (retrying in %.2f s)", kind, err, backoff)
                failing_since = failing_since or time.monotonic()
                if time.monotonic() - failing_since > self.settings.worker_give_up_s:
                    self._give_up(f"{kind} errors for {time.monotonic() - failing_since:.0f} s, the last: {err}")
                    return
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 2.0)

    def _count_error(self, err: Exception, kind: str) -> str:
        """Count an error of a thread's loop by kind ('store', else `kind`); a StoreUnavailable was counted when
        it was raised (`_store_failed`)."""
        if isinstance(err, StoreUnavailable):
            return "store"
        kind = "store" if isinstance(err, sqlite3.Error) else kind
        self.metrics.errors.labels(kind).inc()
        return kind

    def _give_up(self, reason: str) -> None:
        self.fatal = reason
        log.critical("the worker gives up: %s", reason)
        if self.settings.exit_on_fatal:  # a supervisor restarts the process; accepted jobs are in the store
            logging.shutdown()
            os._exit(70)

    def _reap(self) -> None:
        """Deadlines, purging and the store file, on their own thread: they happen whatever the worker is doing."""
        next_purge = next_check = 0.0
        while not self._stop.wait(0.2):
            try:
                now = time.time()
                self._expire_overdue(now)
                if now >= next_check:
                    self._check_store_file()
                    next_check = now + 1.0
                if now >= next_purge:
                    self._purge(now)
                    next_purge = now + self.settings.purge_interval_s
            except Exception as err:  # retried on the next round
                log.warning("reaper: %s: %s", self._count_error(err, "reaper"), err)

    def _warmup(self) -> None:
        width, height = self.engine.default_size
        spec = JobSpec("warm-up", None, 0, 2, self.settings.default_guidance, width, height)
        self.engine.generate([spec], lambda step, steps: False)
        started = time.perf_counter()
        self.engine.generate([spec], lambda step, steps: False)
        self.estimate.observe(time.perf_counter() - started, [spec])

    def _on_step(self, batch: list[Job], step: int, steps: int) -> bool:
        """Progress events and deadlines; True stops the pipeline (no job in the batch still wants it)."""
        with self._lock:
            for job in batch:
                if job.state == RUNNING:
                    job.step = step
            with contextlib.suppress(StoreUnavailable):  # else the reaper expires them
                self._expire_overdue(time.time())
            alive = [j for j in batch if j.state == RUNNING]
            for job in alive:
                self.hub.publish(job.id, {"event": "progress", "job_id": job.id, "step": step, "steps": steps})
        return not alive or self._stop.is_set()

    def _unwanted(self, batch: list[Job]) -> bool:
        """Inside a step: stop when no job of the batch still runs within its deadline."""
        now = time.time()
        return self._stop.is_set() or all(j.state != RUNNING or now > j.deadline for j in batch)

    def _run(self, batch: list[Job]) -> None:
        started = time.perf_counter()
        try:
            images = self.engine.generate([j.spec for j in batch], lambda s, n: self._on_step(batch, s, n),
                                          lambda: self._unwanted(batch))
        except Exception as err:
            log.exception("batch of %d failed", len(batch))
            self.metrics.errors.labels("generation").inc()
            self._count_cache()
            with self._lock:
                self.batch = []
            survivors = [j for j in batch if j.state == RUNNING]
            if len(batch) > 1 and not self._stop.is_set():  # one bad job must not fail its neighbours: run alone
                for job in survivors:
                    with self._lock:
                        job.batch_id, job.batch_size = next(self._batch_ids), 1
                        self.batch, self.batch_started = [job], time.time()
                    self._run([job])
            else:
                for job in survivors:
                    self._settle(job, FAILED, public_reason(err))
            return
        self._count_cache()
        seconds = time.perf_counter() - started
        with self._lock:
            self.batch = []
            if images is None:
                now = time.time()
                for job in [j for j in batch if j.state == RUNNING]:
                    if self._stop.is_set():  # shutting down: the jobs stay accepted and run after the restart
                        with contextlib.suppress(StoreUnavailable):
                            self._commit(job, state=QUEUED, started_at=None)
                    elif now > job.deadline:
                        self._settle(job, EXPIRED, overdue_in_generation(job))
                return
            self.estimate.observe(seconds, [j.spec for j in batch])
            self.metrics.batch_size.observe(len(batch))
            self.metrics.batch_seconds.observe(seconds)
            for job, png in zip(batch, images):
                if job.state == RUNNING:
                    job.step = job.spec.steps
                    self._settle(job, SUCCEEDED, image=png)

    def _count_cache(self) -> None:
        hits, misses = getattr(self.engine, "cache_hits", 0), getattr(self.engine, "cache_misses", 0)
        self.metrics.prompt_cache.labels("hit").inc(hits - self._cache_seen[0])
        self.metrics.prompt_cache.labels("miss").inc(misses - self._cache_seen[1])
        self._cache_seen = (hits, misses)

    # -- reads ----------------------------------------------------------------------------------------------
    def status(self, job_id: str) -> Optional[dict]:
        with self._lock:
            job = self.jobs.get(job_id)
            if job is None:
                return None
            now = time.time()
            out = {"job_id": job.id, "state": job.state, "reason": job.reason, "created_at": job.created_at,
                   "deadline": job.deadline, "deadline_in_s": round(job.deadline - now, 3),
                   "started_at": job.started_at, "finished_at": job.finished_at, "attempts": job.attempts,
                   "progress": {"step": job.step, "steps": job.spec.steps}, "batch_id": job.batch_id,
                   "batch_size": job.batch_size,
                   "request": {**asdict(job.spec), "loras": [{"name": n, "weight": w} for n, w in job.spec.loras]}}
            if job.state == QUEUED:
                position = self.queue.index(job)
                out["queue_position"] = position
                out["estimated_start_s"] = round(self._wait_estimate(now, self.queue[:position]), 3)
            if job.state == SUCCEEDED:
                out["image_url"] = f"/v1/jobs/{job.id}/image"
            return out

    def image(self, job_id: str) -> Optional[bytes]:
        """The PNG of a succeeded job; None when the store cannot give it (the route answers 503, never an empty 200)."""
        try:
            return self.store.image(job_id) or None
        except sqlite3.Error as err:
            self._store_failed(err)
            return None


# ---------------------------------------------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------------------------------------------
def request_models(s: Settings, lora_names: frozenset[str]):
    """The request body model, with this server's limits and LoRA registry in its validators."""

    class LoraRef(BaseModel):
        model_config = ConfigDict(extra="forbid")
        name: str = Field(description="a name from the LoRA registry (GET /v1/loras), never a file path")
        weight: float = Field(1.0, ge=-s.max_lora_weight, le=s.max_lora_weight, allow_inf_nan=False)

        @field_validator("name")
        @classmethod
        def registered(cls, name: str) -> str:
            if "/" in name or "\\" in name or ".." in name:
                raise ValueError(f"{name!r} looks like a path; give a registered LoRA name")
            if name not in lora_names:
                known = ", ".join(sorted(lora_names)) or "none are registered"
                raise ValueError(f"unknown LoRA {name!r}; known: {known}")
            return name

    side = dict(ge=s.min_side, le=s.max_side, multiple_of=8)

    class ImageRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        prompt: str
        negative_prompt: Optional[str] = None
        # strict: JSON's true is not the number 1
        seed: Optional[int] = Field(None, ge=0, le=2**63 - 1, strict=True, description="random when absent (stored with the job)")
        steps: int = Field(s.default_steps, ge=1, le=s.max_steps, strict=True)
        guidance: float = Field(s.default_guidance, ge=0, le=s.max_guidance, allow_inf_nan=False)
        width: Optional[int] = Field(None, strict=True, **side)
        height: Optional[int] = Field(None, strict=True, **side)
        loras: list[LoraRef] = Field(default_factory=list, max_length=s.max_loras)
        sampler: Optional[str] = Field(None, description=f"an A1111 sampler name: {', '.join(SAMPLERS)}; "
                                                         "default: the pipeline's scheduler")
        deadline_s: Optional[float] = Field(None, gt=0, le=s.max_deadline_s, allow_inf_nan=False,
                                            description=f"seconds from admission to image; default {s.default_deadline_s:g}")

        @field_validator("prompt", "negative_prompt")
        @classmethod
        def unicode_text(cls, text: Optional[str]) -> Optional[str]:
            if text is not None:
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError as err:  # a lone surrogate (JSON's "\\ud800"): not text
                    raise ValueError(f"is not valid Unicode text (a lone surrogate at position {err.start})") from None
            return text

        @field_validator("prompt")
        @classmethod
        def prompt_text(cls, text: str) -> str:
            if not text.strip():
                raise ValueError("must not be empty or only whitespace")
            if len(text) > s.max_prompt_chars:
                raise ValueError(f"is {len(text)} characters; the limit is {s.max_prompt_chars}")
            return text

        @field_validator("negative_prompt")
        @classmethod
        def negative_text(cls, text: Optional[str]) -> Optional[str]:
            if text is not None and len(text) > s.max_prompt_chars:
                raise ValueError(f"is {len(text)} characters; the limit is {s.max_prompt_chars}")
            return text or None

        @field_validator("sampler")
        @classmethod
        def known_sampler(cls, name: Optional[str]) -> Optional[str]:
            if name is not None and name not in SAMPLERS:
                raise ValueError(f"unknown sampler {name!r}; supported: {', '.join(SAMPLERS)}")
            return name

        @field_validator("loras")
        @classmethod
        def distinct(cls, loras: list) -> list:
            names = [lora.name for lora in loras]
            if len(set(names)) != len(names):
                raise ValueError("each LoRA may be named once")
            return loras

    return ImageRequest


# ---------------------------------------------------------------------------------------------------------------
# The response bodies, as /openapi.json documents them
# ---------------------------------------------------------------------------------------------------------------
class ErrorBody(BaseModel):
    detail: str


class FieldError(BaseModel):
    field: str = Field(description="the request field, dotted (loras.0.name)")
    message: str


class ValidationErrorBody(BaseModel):
    detail: str = Field(description="every field's message, joined")
    errors: list[FieldError]


class Accepted(BaseModel):
    job_id: str
    queue_position: int
    estimated_start_s: float
    deadline_s: float = Field(description="seconds from admission to the job's deadline")
    status_url: str


class StepProgress(BaseModel):
    step: int
    steps: int


class JobStatus(BaseModel):
    job_id: str
    state: Literal["queued", "running", "succeeded", "failed", "cancelled", "expired"]
    reason: Optional[str] = None
    created_at: float
    deadline: float
    deadline_in_s: float
    started_at: Optional[float] = None
    finished_at: Optional[float] = None
    attempts: int
    progress: StepProgress
    batch_id: Optional[int] = None
    batch_size: Optional[int] = None
    request: dict = Field(description="the job's request, every default resolved (seed and size included)")
    queue_position: Optional[int] = Field(None, description="while queued")
    estimated_start_s: Optional[float] = Field(None, description="while queued")
    image_url: Optional[str] = Field(None, description="once succeeded")


class ReadToken(BaseModel):
    token: str = Field(description="empty when the server has no key")
    expires_in: int


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    ready: bool
    queue: int
    running: int
    seconds_per_image_step: float
    safety_checker: Optional[bool] = None
    scheduler: Optional[str] = None
    dtype: Optional[str] = None


class NotReady(BaseModel):
    ready: bool
    detail: str


class LoraInfo(BaseModel):
    trigger: Optional[str] = None
    description: Optional[str] = None


def _error(description: str, **extra) -> dict:
    return {"model": ErrorBody, "description": description, **extra}


RETRY_AFTER = {"Retry-After": {"description": "seconds after which the queue should have room", "schema": {"type": "integer"}}}
ERRORS = {401: _error("missing or wrong API key (when the server has one)"),
          422: {"model": ValidationErrorBody, "description": "an invalid request: each bad field named"}}
ADMISSION = {429: _error("the queue is full; retry after Retry-After seconds", headers=RETRY_AFTER),
             503: _error("the deadline cannot be met at the current service time (the estimate is in the message)")}
JOB = {404: _error("unknown job (never accepted, or purged after its TTL)")}


def invalid_response(errors: list[dict]) -> JSONResponse:
    """422 naming each bad field, from pydantic/FastAPI validation errors (also used by koclip_lib.serve_ray)."""
    out = []
    for err in errors:
        # a JSON syntax error's location is a character offset, not a field
        loc = [] if err.get("type") == "json_invalid" else [str(p) for p in err["loc"] if p != "body"]
        name = ".".join(loc) or "body"
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        out.append({"field": name, "message": f"{name}: {msg}"})
    return JSONResponse(status_code=422, content={"detail": "; ".join(e["message"] for e in out), "errors": out})


def job_spec(req, engine, lora_names=frozenset(), max_loras: int = 4, max_lora_weight: float = 2.0) -> JobSpec:
    """The JobSpec of a validated request, every default resolved; 422 for a prompt the pipeline will not draw.
    `<lora:name:weight>` tags in the prompt (A1111's syntax) are taken out of it and join `loras`, checked against
    the registry's `lora_names` like the body's."""
    width, height = engine.default_size
    try:
        prompt, tagged = prompt_loras(req.prompt)
    except ValueError as err:
        raise HTTPException(422, f"prompt: {err}")
    loras = [(lora.name, float(lora.weight)) for lora in req.loras] + tagged
    for name, weight in tagged:
        if name not in lora_names:
            known = ", ".join(sorted(lora_names)) or "none are registered"
            raise HTTPException(422, f"prompt: unknown LoRA {name!r} in <lora:{name}:...>; known: {known}")
        if abs(weight) > max_lora_weight:
            raise HTTPException(422, f"prompt: <lora:{name}:{weight:g}>: the weight's limit is ±{max_lora_weight:g}")
    names = [name for name, _ in loras]
    if len(set(names)) != len(names):
        raise HTTPException(422, "prompt: each LoRA may be named once (in `loras` or as a <lora:...> tag)")
    if len(loras) > max_loras:
        raise HTTPException(422, f"prompt: {len(loras)} LoRAs; the limit is {max_loras}")
    if not prompt.strip():
        raise HTTPException(422, "prompt: nothing left to draw once its <lora:...> tags are taken out")
    try:
        windows = engine.text_windows(prompt, req.negative_prompt)
    except (ValueError, TypeError) as err:  # e.g. more tokens than the Korean pipeline reads
        raise HTTPException(422, f"prompt: {err}")
    return JobSpec(prompt=prompt, negative_prompt=req.negative_prompt,
                   seed=req.seed if req.seed is not None else secrets.randbelow(2**32), steps=req.steps,
                   guidance=float(req.guidance), width=req.width or width, height=req.height or height,
                   loras=tuple(loras), text_windows=windows, sampler=req.sampler or "")


def with_native_limits(settings: Settings, engine) -> Settings:
    """`settings` with the size limit from the pipeline's native resolution when none is set: twice its side (a
    step's cost grows with the pixels: 4x the side is 16x the work)."""
    if settings.max_side is not None:
        return settings
    return replace(settings, max_side=2 * max(engine.default_size))


def client_of(request: Request) -> str:
    """Who a request comes from, for the per-client quotas: its address."""
    return request.client.host if request.client else ""


def image_unavailable(job_id: str) -> JSONResponse:
    return JSONResponse(status_code=503, headers={"Retry-After": "2"},
                        content={"detail": f"job {job_id} succeeded but its image cannot be read from the store now; "
                                           "try again shortly", "job_id": job_id})


class BodyLimit:
    """ASGI middleware: a request body larger than `max_bytes` gets 413 (at once when Content-Length says so, else
    when the bytes received pass it), and one not received within `timeout_s` gets 408; the route never sees it."""

    class _Refused(BaseException):  # not an Exception: FastAPI turns those raised while reading a body into a 400
        def __init__(self, status: int, message: str):
            self.status, self.message = status, message

    def __init__(self, app, max_bytes: int, timeout_s: float):
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self._refuse(send, 413, f"request body of {int(length)} bytes; the limit is {self.max_bytes}")
        received, deadline, started = 0, time.monotonic() + self.timeout_s, False

        async def limited_receive():
            nonlocal received
            try:
                message = await asyncio.wait_for(receive(), timeout=max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                raise self._Refused(408, f"request body not received within {self.timeout_s:g} s") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._Refused(413, f"request body over {self.max_bytes} bytes")
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except self._Refused as refused:
            if not started:
                await self._refuse(send, refused.status, refused.message)

    @staticmethod
    async def _refuse(send, status: int, message: str) -> None:
        body = json.dumps({"detail": message}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


class CountResponses:
    """ASGI middleware: every response's status code into a Prometheus counter."""

    def __init__(self, app, counter):
        self.app, self.counter = app, counter

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def counting_send(message):
            if message["type"] == "http.response.start":
                self.counter.labels(str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counting_send)


def header_timeout_protocol(seconds: float):
    """uvicorn's h11 protocol with a deadline for a request's headers (`http=` of uvicorn.run): a connection that
    sends no complete request head within `seconds` of opening, or of starting the next request, is closed (a slow
    client holding a connection open with a header a second); uvicorn itself has no such timeout."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutH11Protocol(H11Protocol):
        _header_timer = None

        def _waiting_for_headers(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _arm(self) -> None:
            self._header_timer = self.loop.call_later(seconds, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if self._waiting_for_headers() and not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._header_timer is None and self._waiting_for_headers():
                self._arm()
            super().data_received(data)
            if not self._waiting_for_headers():
                self._disarm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderTimeoutH11Protocol


def _sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def create_app(engine, settings: Optional[Settings] = None) -> FastAPI:
    """The FastAPI app around `engine` (a PipelineEngine or anything with `generate` and `default_size`)."""
    settings = with_native_limits(settings or Settings(), engine)
    registry = load_lora_registry(settings.lora_registry)
    if hasattr(engine, "loras"):
        engine.loras.update(registry)
    service = JobService(engine, settings)
    ImageRequest = request_models(settings, frozenset(registry))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await asyncio.to_thread(service.start)
        try:
            yield
        finally:
            await asyncio.to_thread(service.stop)

    app = FastAPI(title="koclip image service", lifespan=lifespan)
    app.state.service = service
    # the last added is the outermost: every response counted, the Host checked, then the body limited
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(settings.allowed_hosts))
    app.add_middleware(CountResponses, counter=service.metrics.responses)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        return invalid_response(exc.errors())

    def require_key(request: Request, _bearer=Security(HTTPBearer(auto_error=False, description="Bearer KEY")),
                    _header=Security(APIKeyHeader(name="X-API-Key", auto_error=False))) -> None:
        if not settings.api_key:
            return
        auth = request.headers.get("authorization", "")
        given = auth[7:].strip() if auth[:7].lower() == "bearer " else request.headers.get("x-api-key", "")
        if auth[:6].lower() == "basic ":  # A1111's --api-auth clients (webuiapi): the key as the password
            import base64
            import binascii

            try:
                given = base64.b64decode(auth[6:].strip()).decode("utf-8").partition(":")[2]
            except (binascii.Error, UnicodeDecodeError):
                given = ""
        if not (given and hmac.compare_digest(given.encode(), settings.api_key.encode())):
            raise HTTPException(401, "missing or wrong API key (Authorization: Bearer KEY or X-API-Key: KEY)",
                                headers={"WWW-Authenticate": "Bearer"})

    def read_token(expires: int) -> str:
        mac = hmac.new(settings.api_key.encode(), f"read:{expires}".encode(), "sha256").hexdigest()
        return f"{expires}.{mac}"

    def require_key_or_token(request: Request, token: Optional[str] = None) -> None:
        """The key, or a read token from `POST /v1/tokens` in `?token=`: a browser's EventSource sends no headers."""
        if settings.api_key and token:
            expires, _, _ = token.partition(".")
            if expires.isdigit() and int(expires) >= time.time() and hmac.compare_digest(token, read_token(int(expires))):
                return
            raise HTTPException(401, "expired or invalid token (POST /v1/tokens gives a new one)",
                                headers={"WWW-Authenticate": "Bearer"})
        require_key(request)

    def admit(req, spec: Optional[JobSpec] = None, client: str = "", sync: bool = False) -> tuple[Job, int, float]:
        """Admit a request (blocking: the store is written; call it off the event loop from async routes)."""
        spec = spec or job_spec(req, engine, frozenset(registry), settings.max_loras, settings.max_lora_weight)
        try:
            return service.submit(spec, req.deadline_s or settings.default_deadline_s, client, sync)
        except Rejected as err:
            headers = {"Retry-After": str(err.retry_after)} if err.retry_after else None
            raise HTTPException(err.status, err.message, headers=headers)

    async def end(job: Job, reason: str, state: str) -> None:
        """Cancel or expire a job from an async route, off the event loop; if the store cannot take it now, the
        reaper expires the job at its deadline."""
        with contextlib.suppress(StoreUnavailable):
            await asyncio.to_thread(service.cancel, job.id, reason, state)

    async def wait_for(job: Job, request: Request) -> bool:
        """Wait until the job ends or its deadline passes (then it is expired); False when the client went away
        (then it is cancelled: no work runs for nobody)."""
        events = service.hub.subscribe(job.id)
        try:
            while job.state not in TERMINAL:
                remaining = job.deadline - time.time()
                if remaining <= 0:
                    await end(job, "deadline passed while the sync request waited", EXPIRED)
                    break
                try:
                    await asyncio.wait_for(events.get(), timeout=min(remaining, 1.0))
                except asyncio.TimeoutError:
                    if await request.is_disconnected():  # nobody is waiting for this image any more
                        await end(job, "the sync client disconnected", CANCELLED)
                        return False
        finally:
            service.hub.unsubscribe(job.id, events)
        return True

    def known(job_id: str) -> dict:
        status = service.status(job_id)
        if status is None:
            raise HTTPException(404, f"unknown job {job_id!r} (never accepted, or purged after its TTL)")
        return status

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_key)])

    @v1.post("/images", status_code=202, response_model=Accepted, responses={**ERRORS, **ADMISSION})
    def submit(req: ImageRequest, request: Request):
        job, position, start_in = admit(req, client=client_of(request))
        return {"job_id": job.id, "queue_position": position, "estimated_start_s": round(start_in, 3),
                "deadline_s": round(job.deadline - job.created_at, 3), "status_url": f"/v1/jobs/{job.id}"}

    @v1.post("/images:sync", response_class=Response, responses={
        200: {"content": {"image/png": {}}, "description": "the PNG (with its `parameters` text chunk)"}, **ERRORS, **ADMISSION,
        500: _error("generation failed"), 504: _error("the deadline passed before the image was done; the job is expired")})
    async def submit_and_wait(req: ImageRequest, request: Request):
        job, _, _ = await asyncio.to_thread(admit, req, None, client_of(request), True)
        if not await wait_for(job, request):
            return Response(status_code=499)
        if job.state == SUCCEEDED:
            png = await asyncio.to_thread(service.image, job.id)
            if png is None:
                return image_unavailable(job.id)
            return Response(png, media_type="image/png", headers={"X-Job-Id": job.id})
        code = {EXPIRED: 504, FAILED: 500}.get(job.state, 409)
        return JSONResponse(status_code=code, content={"detail": f"job {job.state}: {job.reason}", "job_id": job.id,
                                                       "state": job.state, "reason": job.reason})

    @v1.get("/jobs/{job_id}", response_model=JobStatus, responses={**ERRORS, **JOB})
    def job_status(job_id: str):
        return known(job_id)

    @v1.delete("/jobs/{job_id}", response_model=JobStatus, responses={**ERRORS, **JOB, 409: _error("the job already ended")})
    def cancel(job_id: str):
        status = known(job_id)
        try:
            cancelled = service.cancel(job_id)
        except StoreUnavailable as err:
            raise HTTPException(503, str(err), headers={"Retry-After": "2"})
        if cancelled is None:
            raise HTTPException(409, f"job is already {status['state']}")
        return cancelled

    @v1.get("/jobs/{job_id}/image", response_class=Response, responses={
        200: {"content": {"image/png": {}}, "description": "the PNG"}, **ERRORS, **JOB, 409: _error("the job has no image (yet)")})
    def job_image(job_id: str):
        status = known(job_id)
        if status["state"] != SUCCEEDED:
            why = f": {status['reason']}" if status["reason"] else ""
            raise HTTPException(409, f"job is {status['state']}{why}; no image")
        png = service.image(job_id)
        return Response(png, media_type="image/png") if png is not None else image_unavailable(job_id)

    @v1.post("/tokens", response_model=ReadToken, responses=ERRORS)
    def token():
        """A read-only token for `GET /v1/jobs/{id}/events?token=...` (what a browser's EventSource can send)."""
        if not settings.api_key:
            return {"token": "", "expires_in": 0}
        return {"token": read_token(int(time.time() + settings.token_ttl_s)), "expires_in": int(settings.token_ttl_s)}

    events_router = APIRouter(prefix="/v1", dependencies=[Depends(require_key_or_token)])

    @events_router.get("/jobs/{job_id}/events", response_class=StreamingResponse, responses={
        200: {"content": {"text/event-stream": {}}, "description": "`state` on every change, `progress` per step"}, **ERRORS, **JOB})
    async def job_events(job_id: str, request: Request):
        known(job_id)
        events = service.hub.subscribe(job_id)  # before the snapshot, so no change falls between the two

        async def stream():
            try:
                snapshot = service.status(job_id) or {"job_id": job_id, "state": "unknown"}
                progress = snapshot.get("progress") or {}
                if progress.get("step"):  # a late subscriber sees how far the job got, before a final state ends it
                    yield _sse("progress", {"event": "progress", "job_id": job_id, **progress})
                yield _sse("state", {"event": "state", **snapshot})
                if snapshot["state"] not in TERMINAL:
                    while True:
                        try:
                            event = await asyncio.wait_for(events.get(), timeout=15)
                        except asyncio.TimeoutError:
                            if await request.is_disconnected():
                                return
                            yield ": keep-alive\n\n"
                            continue
                        yield _sse(event["event"], event)
                        if event["event"] == "state" and event["state"] in TERMINAL:
                            return
            finally:
                service.hub.unsubscribe(job_id, events)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @v1.get("/loras", response_model=dict[str, LoraInfo], responses=ERRORS)
    def loras():
        return LoraRegistry(registry).public()

    app.include_router(v1)
    app.include_router(events_router)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page():
        """The web page: a Korean prompt, examples, a LoRA picker, live progress, the image and its parameters."""
        return (Path(__file__).parent / "web" / "index.html").read_text(encoding="utf-8")
    from .serve_compat import Service, a1111_router, openai_router

    compat = Service(engine=engine, settings=settings, service=service, registry=registry, ImageRequest=ImageRequest,
                     admit=admit, wait_for=wait_for)
    app.include_router(a1111_router(compat), dependencies=[Depends(require_key)])
    app.include_router(openai_router(compat), dependencies=[Depends(require_key)])

    @app.get("/healthz", response_model=Health, responses={503: {"model": NotReady}})
    def healthz():
        """Liveness: the worker and reaper threads run and the worker has not given up (else restart the process)."""
        if not service.healthy:
            why = service.fatal or "the worker or reaper thread stopped"
            return JSONResponse(status_code=503, content={"ready": False, "detail": why})
        return {"status": "ok"}

    @app.get("/readyz", response_model=Ready, responses={503: {"model": NotReady}})
    def readyz():
        if service.store_error:
            return JSONResponse(status_code=503, content={"ready": False, "detail": f"job store unavailable: {service.store_error}"})
        if not service.alive:
            why = service.fatal or "pipeline warming up or worker stopped"
            return JSONResponse(status_code=503, content={"ready": False, "detail": why})
        ready = {"ready": True, "queue": len(service.queue), "running": len(service.batch),
                 "seconds_per_image_step": service.estimate.s_per_image_step}
        pipe = getattr(engine, "pipe", None)
        if pipe is not None:  # what a client may want to know of the pipeline it is served by
            ready.update(safety_checker=getattr(pipe, "safety_checker", None) is not None,
                         scheduler=type(pipe.scheduler).__name__, dtype=str(pipe.unet.dtype).removeprefix("torch."))
        return ready

    @app.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text"}})
    def metrics():
        return Response(service.metrics.render(), media_type=prom.CONTENT_TYPE_LATEST)

    return app


def configure_pipeline(pipe, dtype: str = "auto", scheduler: str = "dpmsolver++"):
    """The serving defaults: half precision on a GPU (fp32 on a CPU, where fp16 is slow), DPM-Solver++."""
    from diffusers import DPMSolverMultistepScheduler

    dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
    chosen = dtypes[dtype] if dtype != "auto" else (torch.float16 if pipe.device.type == "cuda" else torch.float32)
    if chosen != pipe.unet.dtype:
        pipe = pipe.to(dtype=chosen)
    if scheduler == "dpmsolver++" and not isinstance(pipe.scheduler, DPMSolverMultistepScheduler):
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, algorithm_type="dpmsolver++")
    return pipe


def main(argv: Optional[list[str]] = None) -> None:
    import uvicorn

    from .evaluate import load_pipeline

    d = Settings(api_key=None)
    ap = CliParser(prog="python -m koclip_lib.serve", description=__doc__.split("\n\n")[0])
    ap.add_argument("--pipeline", required=True, type=existing_path, help="SD pipeline folder (save_pretrained layout)")
    ap.add_argument("--text-encoder", type=existing_path, help="Korean student text encoder folder to swap in")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--db", default=d.db_path, help="SQLite file for jobs and results")
    ap.add_argument("--max-queue", type=int, default=d.max_queue)
    ap.add_argument("--max-batch", type=int, default=d.max_batch)
    ap.add_argument("--lora-registry", type=existing_path, help="JSON {name: {path, trigger, description}}")
    ap.add_argument("--result-ttl-s", type=float, default=d.result_ttl_s)
    ap.add_argument("--default-deadline-s", type=float, default=d.default_deadline_s)
    ap.add_argument("--max-deadline-s", type=float, default=d.max_deadline_s)
    ap.add_argument("--max-prompt-chars", type=int, default=d.max_prompt_chars)
    ap.add_argument("--max-side", type=int, help="largest width or height (default: twice the pipeline's native side)")
    ap.add_argument("--default-steps", type=int, default=d.default_steps)
    ap.add_argument("--max-steps", type=int, default=d.max_steps)
    ap.add_argument("--no-warmup", action="store_true", help="skip the warm-up generation at startup")
    ap.add_argument("--device")
    ap.add_argument("--dtype", choices=("auto", "fp16", "bf16", "fp32"), default="auto", help="auto: fp16 on a GPU, else fp32")
    ap.add_argument("--scheduler", choices=("dpmsolver++", "checkpoint"), default="dpmsolver++",
                    help="DPM-Solver++ (good images in 20-25 steps), or the checkpoint's own scheduler")
    ap.add_argument("--no-safety-checker", action="store_true",
                    help="turn off the checkpoint's safety checker (kept by default when it has one; /readyz says which)")
    ap.add_argument("--allowed-host", action="append", default=[],
                    help="a Host header to accept besides the loopback names and --host (repeat; '*' accepts any)")
    ap.add_argument("--max-connections", type=int, default=64, help="open connections beyond this get 503 (uvicorn)")
    ap.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes)
    ap.add_argument("--max-queued-per-client", type=int, help="queued jobs per client address (default: --max-queue)")
    ap.add_argument("--max-stored-per-client", type=int, default=d.max_stored_per_client)
    ap.add_argument("--ended-ttl-s", type=float, default=d.ended_ttl_s, help="cancelled/expired/failed jobs are purged after this")
    ap.add_argument("--store-timeout-s", type=float, default=d.store_timeout_s)
    ap.add_argument("--worker-give-up-s", type=float, default=d.worker_give_up_s,
                    help="the job store failing this long: the process exits with code 70 (a supervisor restarts it)")
    ap.add_argument("--log-level", default="info")
    ap.add_argument("--access-log", action="store_true")
    args = ap.parse_args(argv)

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings(db_path=args.db, max_queue=args.max_queue, max_batch=args.max_batch,
                        lora_registry=args.lora_registry, result_ttl_s=args.result_ttl_s,
                        default_deadline_s=args.default_deadline_s, max_deadline_s=args.max_deadline_s,
                        max_prompt_chars=args.max_prompt_chars, max_side=args.max_side,
                        default_steps=args.default_steps, max_steps=args.max_steps, warmup=not args.no_warmup,
                        max_body_bytes=args.max_body_bytes, max_queued_per_client=args.max_queued_per_client,
                        max_stored_per_client=args.max_stored_per_client, ended_ttl_s=args.ended_ttl_s,
                        store_timeout_s=args.store_timeout_s, worker_give_up_s=args.worker_give_up_s, exit_on_fatal=True,
                        allowed_hosts=(*Settings.allowed_hosts, args.host, *args.allowed_host))
    loopback = args.host in ("127.0.0.1", "localhost", "::1")
    if settings.api_key:
        log.info("API key required (KOCLIP_API_KEY is set)")
    elif not loopback:
        log.warning("listening on %s with no API key: anyone who reaches it can generate (set KOCLIP_API_KEY)", args.host)
    pipe = load_pipeline(args.pipeline, args.text_encoder, args.device, safety_checker=not args.no_safety_checker)
    pipe = configure_pipeline(pipe, args.dtype, args.scheduler)
    log.info("pipeline %s: %s, %s, safety checker %s", args.pipeline, type(pipe.scheduler).__name__, pipe.unet.dtype,
             "on" if getattr(pipe, "safety_checker", None) is not None else "off")
    app = create_app(PipelineEngine(pipe, cache_size=settings.embed_cache_size), settings)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=args.access_log,
                timeout_graceful_shutdown=10, limit_concurrency=args.max_connections, timeout_keep_alive=5,
                http=header_timeout_protocol(settings.header_timeout_s))


if __name__ == "__main__":
    main()
