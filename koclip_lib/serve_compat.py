"""The APIs Stable Diffusion clients already speak, over the image service's one queue (`koclip_lib.serve`).

    POST /sdapi/v1/txt2img          AUTOMATIC1111's web UI API (the `webuiapi` client, bots, plugins): prompt,
                                    negative_prompt, seed (-1 = random), steps, cfg_scale, width, height, batch_size,
                                    n_iter, sampler_name -> {images: [base64 PNG], parameters, info}
    GET  /sdapi/v1/progress         the running job's progress
    GET  /sdapi/v1/loras            the registered LoRAs (names; never their paths)
    GET  /sdapi/v1/sd-models        the model being served
    GET  /sdapi/v1/samplers         the sampler names `sampler_name` accepts
    POST /v1/images/generations     OpenAI's images API (the `openai` SDK): prompt, n, size "WxH",
                                    response_format b64_json | url -> {created, data: [{b64_json | url}]}

Every image is one job of the service: admitted (429/503 at once when it cannot be), stored, batched, bounded by its
deadline and stamped with its parameters, exactly as `POST /v1/images:sync`. A1111 accepts fields it does not use;
so does this layer, and it lists them in the response's `info.ignored_fields`. OpenAI's error shape
(`{"error": {"message", "type", "param", "code"}}`) answers OpenAI's route.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Optional

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .adapters import LoraRegistry
from .serve import (EXPIRED, FAILED, SAMPLERS, SUCCEEDED, StoreUnavailable, _model_name, client_of, invalid_response, job_spec,
                    sampler_name)

MAX_IMAGES = 16  # images one compatible request may ask for (batch_size x n_iter, or n)


@dataclass
class Service:
    """What the compatible routes use of the app `serve.create_app` builds."""
    engine: Any
    settings: Any
    service: Any
    registry: dict
    ImageRequest: type
    admit: Callable
    wait_for: Callable


class CompatError(Exception):
    def __init__(self, status: int, message: str, param: Optional[str] = None, headers: Optional[dict] = None):
        super().__init__(message)
        self.status, self.message, self.param, self.headers = status, message, param, headers


async def generate(ctx: Service, body: dict, count: int, request: Request, seed_step: int = 1) -> list:
    """`count` images of one request body (the service's own fields), as jobs of the service: seeds seed, seed+1, ...
    (A1111's rule). Returns the finished jobs; raises CompatError for an invalid body, a refused admission (the
    jobs admitted before it are cancelled) or a job that did not succeed."""
    try:
        req = ctx.ImageRequest.model_validate(body)
        first = job_spec(req, ctx.engine, frozenset(ctx.registry), ctx.settings.max_loras, ctx.settings.max_lora_weight)
    except ValidationError as err:
        raise CompatError(422, "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()),
                          param=".".join(str(p) for p in err.errors()[0]["loc"])) from None
    except HTTPException as err:
        raise CompatError(err.status_code, str(err.detail), param="prompt") from None
    jobs = []
    try:
        for i in range(count):
            spec = replace(first, seed=(first.seed + i * seed_step) % 2**32)
            # admission writes the store: off the event loop
            jobs.append((await asyncio.to_thread(ctx.admit, req, spec, client_of(request), True))[0])
    except HTTPException as err:
        for job in jobs:
            with contextlib.suppress(StoreUnavailable):  # the reaper expires it at its deadline
                await asyncio.to_thread(ctx.service.cancel, job.id, "another image of the same request was refused")
        raise CompatError(err.status_code, str(err.detail), headers=getattr(err, "headers", None)) from None
    for job in jobs:
        if not await ctx.wait_for(job, request):
            for other in jobs:
                with contextlib.suppress(StoreUnavailable):
                    await asyncio.to_thread(ctx.service.cancel, other.id, "the client disconnected")
            raise CompatError(499, "the client disconnected")
    for job in jobs:
        if job.state != SUCCEEDED:
            status = {EXPIRED: 504, FAILED: 500}.get(job.state, 409)
            raise CompatError(status, f"job {job.id} {job.state}: {job.reason}")
    return jobs


def _b64(ctx: Service, job) -> str:
    png = ctx.service.image(job.id)
    if png is None:  # never an empty image: the store cannot give it now
        raise CompatError(503, f"job {job.id} succeeded but its image cannot be read from the store now; try again shortly")
    return base64.b64encode(png).decode("ascii")


# ---------------------------------------------------------------------------------------------------------------
# AUTOMATIC1111
# ---------------------------------------------------------------------------------------------------------------
class A1111Txt2Img(BaseModel):
    model_config = ConfigDict(extra="allow")  # A1111 ignores what it does not use (hr_*, scripts, ...); so do we
    prompt: str = ""
    negative_prompt: Optional[str] = ""
    seed: int = -1
    steps: Optional[int] = None
    cfg_scale: float = 7.0
    width: Optional[int] = None
    height: Optional[int] = None
    batch_size: int = Field(1, ge=1)
    n_iter: int = Field(1, ge=1)
    sampler_name: Optional[str] = None
    sampler_index: Optional[str] = None  # A1111's older name of sampler_name


class A1111Result(BaseModel):
    images: list[str] = Field(description="base64 PNGs, each with its `parameters` text chunk")
    parameters: dict = Field(description="the request as received")
    info: str = Field(description="JSON: seeds, prompts, sampler, LoRAs, job ids, ignored_fields")


class A1111State(BaseModel):
    job_count: int
    job: str
    sampling_step: int
    sampling_steps: int


class A1111Progress(BaseModel):
    progress: float
    eta_relative: float
    state: A1111State
    current_image: Optional[str] = None
    textinfo: Optional[str] = None


class A1111Lora(BaseModel):
    name: str
    alias: str
    path: str = Field(description="the name again: a server path is never shown")
    metadata: dict


class A1111Model(BaseModel):
    title: str
    model_name: str
    hash: Optional[str] = None
    sha256: Optional[str] = None
    filename: str
    config: Optional[str] = None


class A1111Sampler(BaseModel):
    name: str
    aliases: list[str]
    options: dict


class A1111Error(BaseModel):
    detail: str
    error: str


A1111_ERRORS = {401: {"model": A1111Error}, 422: {"model": A1111Error}, 429: {"model": A1111Error}, 503: {"model": A1111Error},
                504: {"model": A1111Error, "description": "an image's deadline passed"}}

A1111_FIELDS = {"guidance": "cfg_scale", "sampler": "sampler_name"}  # the service's field -> A1111's


def a1111_router(ctx: Service) -> APIRouter:
    router = APIRouter(prefix="/sdapi/v1", tags=["AUTOMATIC1111-compatible"])

    @router.post("/txt2img", response_model=A1111Result, responses=A1111_ERRORS)
    async def txt2img(req: A1111Txt2Img, request: Request):
        count = req.batch_size * req.n_iter
        if count > MAX_IMAGES:
            return invalid_response([{"loc": ("body", "batch_size"), "msg": f"batch_size x n_iter is {count}; the limit is {MAX_IMAGES}"}])
        sampler = req.sampler_name or req.sampler_index
        body = {"prompt": req.prompt, "negative_prompt": req.negative_prompt or None,
                "seed": None if req.seed < 0 else req.seed, "guidance": req.cfg_scale, "sampler": sampler,
                **{k: v for k, v in (("steps", req.steps), ("width", req.width), ("height", req.height)) if v is not None}}
        try:
            jobs = await generate(ctx, body, count, request)
        except CompatError as err:
            if err.status == 422:
                for ours, theirs in A1111_FIELDS.items():
                    err.message = err.message.replace(f"body.{ours}:", f"{theirs}:").replace(f"{ours}:", f"{theirs}:")
            return JSONResponse(status_code=err.status, content={"detail": err.message, "error": type(err).__name__},
                                headers=err.headers)
        specs = [job.spec for job in jobs]
        first = specs[0]
        info = {"prompt": first.prompt, "all_prompts": [s.prompt for s in specs], "negative_prompt": first.negative_prompt or "",
                "seed": first.seed, "all_seeds": [s.seed for s in specs], "steps": first.steps, "cfg_scale": first.guidance,
                "width": first.width, "height": first.height, "sampler_name": first.sampler or sampler_name(ctx.engine.pipe.scheduler),
                "sd_model_name": _model_name(ctx.engine.pipe), "batch_size": req.batch_size, "n_iter": req.n_iter,
                "loras": dict(first.loras), "job_ids": [job.id for job in jobs],
                "ignored_fields": sorted(req.model_extra or {})}
        return {"images": [_b64(ctx, job) for job in jobs], "parameters": req.model_dump(),
                "info": json.dumps(info, ensure_ascii=False)}

    @router.get("/progress", response_model=A1111Progress)
    def progress():
        batch = list(ctx.service.batch)
        queued = len(ctx.service.queue)
        if not batch:
            return {"progress": 0.0, "eta_relative": 0.0, "state": {"job_count": queued, "job": "", "sampling_step": 0,
                                                                     "sampling_steps": 0}, "current_image": None, "textinfo": None}
        job = batch[0]
        steps = job.spec.steps
        done = job.step / steps if steps else 0.0
        eta = ctx.service.estimate.s_per_image_step * len(batch) * max(steps - job.step, 0)
        return {"progress": round(done, 4), "eta_relative": round(eta, 3),
                "state": {"job_count": queued + len(batch), "job": job.id, "sampling_step": job.step, "sampling_steps": steps},
                "current_image": None, "textinfo": None}

    @router.get("/loras", response_model=list[A1111Lora])
    def loras():
        public = LoraRegistry(ctx.registry).public()
        return [{"name": name, "alias": name, "path": name, "metadata": entry} for name, entry in public.items()]

    @router.get("/sd-models", response_model=list[A1111Model])
    def sd_models():
        name = _model_name(ctx.engine.pipe)
        return [{"title": name, "model_name": name, "hash": None, "sha256": None, "filename": name, "config": None}]

    @router.get("/samplers", response_model=list[A1111Sampler])
    def samplers():
        return [{"name": name, "aliases": [cls], "options": kwargs} for name, (cls, kwargs) in SAMPLERS.items()]

    return router


# ---------------------------------------------------------------------------------------------------------------
# OpenAI images API
# ---------------------------------------------------------------------------------------------------------------
class OpenAIImageRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # quality, style, user, ...: OpenAI's options this model has no use for
    prompt: str
    model: Optional[str] = None
    n: int = Field(1, ge=1, le=MAX_IMAGES)
    size: Optional[str] = None
    response_format: Optional[str] = "b64_json"


class OpenAIImage(BaseModel):
    b64_json: Optional[str] = None
    url: Optional[str] = None
    revised_prompt: Optional[str] = None


class OpenAIImages(BaseModel):
    created: int
    data: list[OpenAIImage]


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[str] = None


class OpenAIError(BaseModel):
    error: OpenAIErrorDetail


def openai_error(status: int, message: str, param: Optional[str] = None, headers: Optional[dict] = None) -> JSONResponse:
    kind = {401: "authentication_error", 429: "rate_limit_exceeded"}.get(status, "invalid_request_error" if status < 500 else "server_error")
    return JSONResponse(status_code=status, headers=headers,
                        content={"error": {"message": message, "type": kind, "param": param, "code": None}})


def openai_router(ctx: Service) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["OpenAI-compatible"])

    @router.post("/images/generations", response_model=OpenAIImages, response_model_exclude_none=True,
                 responses={code: {"model": OpenAIError} for code in (400, 401, 429, 503, 504)},
                 openapi_extra={"requestBody": {"required": True, "content": {
                     "application/json": {"schema": OpenAIImageRequest.model_json_schema()}}}})
    async def generations(request: Request):
        try:
            req = OpenAIImageRequest.model_validate(await request.json())
        except ValidationError as err:
            e = err.errors()[0]
            return openai_error(400, f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}", param=str(e["loc"][0]))
        except ValueError:
            return openai_error(400, "the body is not valid JSON")
        if req.response_format not in ("b64_json", "url"):
            return openai_error(400, f"response_format {req.response_format!r}: supported are b64_json and url", "response_format")
        body: dict = {"prompt": req.prompt}
        if req.size:
            w, _, h = req.size.lower().partition("x")
            if not (w.isdigit() and h.isdigit()):
                return openai_error(400, f"size {req.size!r}: expected WIDTHxHEIGHT, e.g. 512x512", "size")
            body.update(width=int(w), height=int(h))
        try:
            jobs = await generate(ctx, body, req.n, request)
        except CompatError as err:
            status = 400 if err.status == 422 else err.status
            return openai_error(status, err.message, err.param if status == 400 else None, err.headers)
        if req.response_format == "url":
            base = str(request.base_url).rstrip("/")
            data = [{"url": f"{base}/v1/jobs/{job.id}/image", "revised_prompt": job.spec.prompt} for job in jobs]
        else:
            data = [{"b64_json": _b64(ctx, job), "revised_prompt": job.spec.prompt} for job in jobs]
        return {"created": int(time.time()), "data": data}

    return router
