"""Scale-out of the image service with Ray Serve: one replica per GPU, each wrapping the same PipelineEngine.

    serve run koclip_lib.serve_ray:build_app pipeline=outputs/mini/korean_sd replicas=2 [max_batch=4 ...]
    python -m koclip_lib.serve_ray --pipeline outputs/mini/korean_sd --replicas 2 [--host 127.0.0.1] [--port 8000]

API (the request body and its 422 messages are koclip_lib.serve's; `Authorization: Bearer KEY` or `X-API-Key: KEY`
when KOCLIP_API_KEY is set in the replicas' environment):

    POST /v1/images:sync  {prompt, negative_prompt?, seed?, steps?, guidance?, width?, height?, loras?, deadline_s?}
                          -> 200 PNG, headers X-Replica (which replica drew it), X-Batch-Size (images in its
                             pipeline call), X-Seed
                          -> 422 {detail, errors}   invalid request (same validation as koclip_lib.serve)
                          -> 429 + Retry-After      every replica holds `max_ongoing` requests and the proxy already
                                                    queues `max_queued`: refused at once by Ray Serve, never queued
                          -> 504 {detail}           the deadline passed before or during generation
    GET  /healthz  /readyz

How it maps onto Ray Serve:

* `num_replicas` = `replicas` (default: the GPUs visible to the builder, at least 1); each replica asks Ray for
  `num_gpus=1` when GPUs exist, so Ray pins one GPU per replica (CUDA_VISIBLE_DEVICES) and the pipeline loads on it.
* Batching: `@serve.batch` gathers up to `max_batch` requests for `batch_wait_s`; the gathered requests are split by
  `JobSpec.batch_key` (size, steps, guidance, LoRAs, prompt windows) and each group is one pipeline call, as in
  koclip_lib.serve, with one generator per image, so batching never changes an image.
* Back-pressure: a replica takes at most `max_ongoing` requests (default 2 x max_batch: one batch running, the next
  one gathering); beyond that the proxy queues up to `max_queued` (default replicas x max_ongoing) and answers the
  rest 429 + Retry-After at once (Ray's plain-text message).
* What stays in koclip_lib.serve: the durable SQLite job store, async jobs with polling and SSE, restart recovery.
  This front end is synchronous and stateless: a request lost with a replica is answered with an error, not resumed.
"""

import asyncio
import hmac
import logging
import time
from dataclasses import dataclass
from typing import Optional

import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from ray import serve
from ray.serve.config import BackpressureConfig

from .cli import CliParser, existing_path
from .serve import (JobSpec, PipelineEngine, ServiceTime, Settings, invalid_response, job_spec, load_lora_registry,
                    public_reason, request_models, with_native_limits)

log = logging.getLogger("koclip.serve_ray")
_D = Settings(api_key=None)


class AppArgs(BaseModel):
    """The builder's arguments (`serve run ... key=value`); strings from the command line are converted."""
    pipeline: str
    text_encoder: Optional[str] = None
    device: Optional[str] = None
    replicas: Optional[int] = None        # default: one per GPU, at least 1
    num_gpus: Optional[float] = None      # per replica; default 1 when GPUs exist, else 0
    num_cpus: float = 1.0                 # per replica
    max_batch: int = _D.max_batch
    batch_wait_s: float = 0.05
    max_ongoing: Optional[int] = None     # per replica; default 2 x max_batch
    max_queued: Optional[int] = None      # per proxy; beyond it: 429; default replicas x max_ongoing
    retry_after_s: float = 5.0
    lora_registry: Optional[str] = None
    default_steps: int = _D.default_steps
    max_steps: int = _D.max_steps
    max_side: Optional[int] = _D.max_side  # None: twice the pipeline's native side
    max_prompt_chars: int = _D.max_prompt_chars
    default_deadline_s: float = _D.default_deadline_s
    max_deadline_s: float = _D.max_deadline_s
    warmup: bool = True

    def settings(self) -> Settings:
        return Settings(max_batch=self.max_batch, lora_registry=self.lora_registry, default_steps=self.default_steps,
                        max_steps=self.max_steps, max_side=self.max_side, max_prompt_chars=self.max_prompt_chars,
                        default_deadline_s=self.default_deadline_s, max_deadline_s=self.max_deadline_s)


@dataclass
class Outcome:
    status: int                  # 200, 500 or 504
    png: Optional[bytes] = None
    detail: str = ""
    batch_size: int = 0


def split_by_key(specs: list[JobSpec]) -> list[list[int]]:
    """Indices of `specs` grouped by batch key, groups in order of their first request, FIFO inside each."""
    groups: dict[tuple, list[int]] = {}
    for i, spec in enumerate(specs):
        groups.setdefault(spec.batch_key, []).append(i)
    return list(groups.values())


http = FastAPI(title="koclip image service (Ray Serve)")


@serve.deployment(name="KoclipImages")
@serve.ingress(http)
class ImageDeployment:
    def __init__(self, args: dict):
        from .evaluate import load_pipeline

        a = AppArgs.model_validate(args)
        self.settings = a.settings()
        registry = load_lora_registry(self.settings.lora_registry)
        self.engine = PipelineEngine(load_pipeline(a.pipeline, a.text_encoder, a.device),
                                     cache_size=self.settings.embed_cache_size, loras=registry)
        self.settings = with_native_limits(self.settings, self.engine)
        self.estimate = ServiceTime(self.settings.initial_s_per_image_step, self.engine.default_size,
                                    self.settings.estimate_window)
        self.ImageRequest = request_models(self.settings, frozenset(registry))
        self.generate.set_max_batch_size(a.max_batch)
        self.generate.set_batch_wait_timeout_s(a.batch_wait_s)
        self.replica = serve.get_replica_context().replica_id.unique_id
        if a.warmup:
            width, height = self.engine.default_size
            self.engine.generate([JobSpec("warm-up", None, 0, 2, self.settings.default_guidance, width, height)],
                                 lambda step, steps: False)
        log.info("replica %s ready on %s", self.replica, self.engine.pipe.device)

    def _authorized(self, request: Request) -> bool:
        key = self.settings.api_key
        if not key:
            return True
        auth = request.headers.get("authorization", "")
        given = auth[7:].strip() if auth[:7].lower() == "bearer " else request.headers.get("x-api-key", "")
        return bool(given) and hmac.compare_digest(given.encode(), key.encode())

    @http.post("/v1/images:sync", responses={200: {"content": {"image/png": {}}}})
    async def images_sync(self, request: Request):
        if not self._authorized(request):
            return JSONResponse(status_code=401, content={"detail": "missing or wrong API key"},
                                headers={"WWW-Authenticate": "Bearer"})
        arrived = time.time()
        # JSON only, as the FastAPI service: a form or text/plain POST (which a web page can send without a
        # preflight) never starts GPU work
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            return invalid_response([{"loc": ("body",), "msg": "the body must be JSON (content-type: application/json)"}])
        try:
            body = await request.json()
        except ValueError:
            return invalid_response([{"loc": ("body",), "msg": "not valid JSON"}])
        except RecursionError:
            return JSONResponse(status_code=400, content={"detail": "the body is nested too deeply"})
        try:
            req = self.ImageRequest.model_validate(body)
            spec = job_spec(req, self.engine, frozenset(self.engine.loras), self.settings.max_loras, self.settings.max_lora_weight)
        except ValidationError as err:
            return invalid_response(err.errors())
        except HTTPException as err:
            return JSONResponse(status_code=err.status_code, content={"detail": err.detail})
        deadline_s = req.deadline_s or self.settings.default_deadline_s
        own = self.estimate.job_seconds(spec)
        if own > deadline_s:  # the rules of the FastAPI service's admission: a job that cannot fit is refused now
            return JSONResponse(status_code=503, content={"detail": f"deadline_s={deadline_s:g} cannot be met: this job's "
                                                                    f"own work takes about {own:.1f} s"})
        out: Outcome = await self.generate((spec, arrived + deadline_s))
        if out.status != 200:
            return JSONResponse(status_code=out.status, content={"detail": out.detail, "replica": self.replica})
        return Response(out.png, media_type="image/png", headers={
            "X-Replica": self.replica, "X-Batch-Size": str(out.batch_size), "X-Seed": str(spec.seed)})

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.05)  # both reset from the args in __init__
    async def generate(self, jobs: list[tuple[JobSpec, float]]) -> list[Outcome]:
        outcomes: list[Optional[Outcome]] = [None] * len(jobs)
        for group in split_by_key([spec for spec, _ in jobs]):
            now = time.time()
            live = []
            for i in group:
                if jobs[i][1] <= now:
                    outcomes[i] = Outcome(504, detail="deadline passed before generation began")
                else:
                    live.append(i)
            if live:
                for i, out in zip(live, await self._run([jobs[i] for i in live])):
                    outcomes[i] = out
        return outcomes

    async def _run(self, jobs: list[tuple[JobSpec, float]]) -> list[Outcome]:
        """One pipeline call; it stops early once every job's deadline has passed. One bad job must not fail its
        neighbours: a failed batch runs again one job at a time."""
        last = max(deadline for _, deadline in jobs)
        started = time.perf_counter()
        try:
            pngs = await asyncio.to_thread(self.engine.generate, [spec for spec, _ in jobs],
                                           lambda step, steps: time.time() > last, lambda: time.time() > last)
        except Exception as err:
            if len(jobs) > 1:
                return [(await self._run([job]))[0] for job in jobs]
            log.exception("generation failed")
            return [Outcome(500, detail=public_reason(err))]
        if pngs is None:
            return [Outcome(504, detail="deadline passed during generation")] * len(jobs)
        self.estimate.observe(time.perf_counter() - started, [spec for spec, _ in jobs])
        now = time.time()  # each job by its own deadline: one that passed while its batch ran gets 504, not the image
        return [Outcome(200, png=png, batch_size=len(jobs)) if now <= deadline else
                Outcome(504, detail="deadline passed during generation") for png, (_, deadline) in zip(pngs, jobs)]

    @http.get("/healthz")
    def healthz(self):
        return {"status": "ok"}

    @http.get("/readyz")
    def readyz(self):  # Ray routes to a replica only once its constructor (pipeline load, warm-up) has returned
        return {"ready": True, "replica": self.replica, "device": str(self.engine.pipe.device)}


def build_app(args: AppArgs) -> serve.Application:
    """The application builder: `serve run koclip_lib.serve_ray:build_app pipeline=DIR replicas=2`."""
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0)) if ray.is_initialized() else torch.cuda.device_count()
    replicas = args.replicas or max(1, gpus)
    num_gpus = args.num_gpus if args.num_gpus is not None else (1 if gpus else 0)
    actor = {"num_cpus": args.num_cpus, **({"num_gpus": num_gpus} if num_gpus else {})}
    max_ongoing = args.max_ongoing or 2 * args.max_batch
    # Ray counts a request as queued until a replica is picked for it, so a burst the replicas could take at once
    # is refused when max_queued is smaller than it: the default leaves room for that burst
    deployment = ImageDeployment.options(
        num_replicas=replicas, ray_actor_options=actor, max_ongoing_requests=max_ongoing,
        max_queued_requests=args.max_queued or replicas * max_ongoing,
        backpressure_config=BackpressureConfig(status_code=429, retry_after_s=args.retry_after_s))
    return deployment.bind(args.model_dump())


def main(argv: Optional[list[str]] = None) -> None:
    import ray

    d = AppArgs(pipeline="")
    ap = CliParser(prog="python -m koclip_lib.serve_ray", description=__doc__.split("\n\n")[0])
    ap.add_argument("--pipeline", required=True, type=existing_path, help="SD pipeline folder (save_pretrained layout)")
    ap.add_argument("--text-encoder", type=existing_path, help="Korean student text encoder folder to swap in")
    ap.add_argument("--device")
    ap.add_argument("--replicas", type=int, help="default: one per GPU, at least 1")
    ap.add_argument("--num-cpus", type=float, default=d.num_cpus, help="CPUs Ray reserves per replica")
    ap.add_argument("--num-gpus", type=float, help="GPUs per replica (default 1 when GPUs exist, else 0)")
    ap.add_argument("--max-batch", type=int, default=d.max_batch)
    ap.add_argument("--batch-wait-s", type=float, default=d.batch_wait_s)
    ap.add_argument("--max-ongoing", type=int, help="requests per replica (default 2 x max-batch)")
    ap.add_argument("--max-queued", type=int,
                    help="requests queued at the proxy, beyond them 429 (default replicas x max-ongoing)")
    ap.add_argument("--retry-after-s", type=float, default=d.retry_after_s)
    ap.add_argument("--lora-registry", type=existing_path)
    ap.add_argument("--default-steps", type=int, default=d.default_steps)
    ap.add_argument("--max-steps", type=int, default=d.max_steps)
    ap.add_argument("--default-deadline-s", type=float, default=d.default_deadline_s)
    ap.add_argument("--max-deadline-s", type=float, default=d.max_deadline_s)
    ap.add_argument("--max-side", type=int, help="largest width or height (default: twice the pipeline's native side)")
    ap.add_argument("--max-prompt-chars", type=int, default=d.max_prompt_chars)
    ap.add_argument("--no-warmup", action="store_true")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--address", help="an existing Ray cluster (default: start a local one)")
    a = ap.parse_args(argv)
    args = AppArgs(pipeline=a.pipeline, text_encoder=a.text_encoder, device=a.device, replicas=a.replicas,
                   num_gpus=a.num_gpus, num_cpus=a.num_cpus, max_batch=a.max_batch, batch_wait_s=a.batch_wait_s,
                   max_ongoing=a.max_ongoing, max_queued=a.max_queued, retry_after_s=a.retry_after_s,
                   lora_registry=a.lora_registry, default_steps=a.default_steps, max_steps=a.max_steps,
                   default_deadline_s=a.default_deadline_s, max_deadline_s=a.max_deadline_s, max_side=a.max_side,
                   max_prompt_chars=a.max_prompt_chars, warmup=not a.no_warmup)
    ray.init(address=a.address, include_dashboard=False)
    serve.start(http_options={"host": a.host, "port": a.port})
    serve.run(build_app(args), blocking=True)


if __name__ == "__main__":
    main()
