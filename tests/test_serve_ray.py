"""The Ray Serve scale-out (koclip_lib.serve_ray) on CPU: 2 real replicas of the tiny random pipeline behind Ray's
HTTP proxy. Checks routing to both replicas, batching by key, 422 validation and immediate 429 back-pressure."""
import io
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

ray = pytest.importorskip("ray")
httpx = pytest.importorskip("httpx")
from ray import serve  # noqa: E402

from koclip_lib.serve import JobSpec, PipelineEngine  # noqa: E402
from koclip_lib.serve_ray import AppArgs, build_app, split_by_key  # noqa: E402

MAX_ONGOING, MAX_QUEUED = 4, 8  # Ray counts a request queued until it is routed: room for a burst of 8


@pytest.fixture(scope="module")
def ray_url(tiny_parts):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}})
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        args = AppArgs(pipeline=str(tiny_parts / "sd"), replicas=2, num_cpus=1, max_batch=4, batch_wait_s=0.3,
                       max_ongoing=MAX_ONGOING, max_queued=MAX_QUEUED, retry_after_s=2, warmup=False,
                       default_steps=2, max_steps=10, max_side=256, max_prompt_chars=50)
        serve.run(build_app(args), name="koclip", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def post_all(url, bodies, timeout=60):
    """POST every body at once (one thread each); returns [(status, headers, content, seconds)]."""
    def one(body):
        started = time.perf_counter()
        with httpx.Client(base_url=url, timeout=timeout, trust_env=False) as client:
            r = client.post("/v1/images:sync", json=body)
        return r.status_code, r.headers, r.content, time.perf_counter() - started

    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(one, bodies))


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def test_split_by_key_groups_compatible_jobs_in_fifo_order():
    spec = lambda steps, seed, w=32: JobSpec("a red star", None, seed, steps, 5.0, w, w)  # noqa: E731
    specs = [spec(2, 0), spec(3, 1), spec(2, 2), spec(2, 3, 64), spec(3, 4), spec(2, 5)]
    assert split_by_key(specs) == [[0, 2, 5], [1, 4], [3]]
    assert split_by_key([]) == []


@pytest.mark.parametrize("body, field", [
    ({"prompt": "  "}, "prompt"),
    ({"prompt": "x" * 51}, "prompt"),
    ({"prompt": "a", "width": 36}, "width"),
    ({"prompt": "a", "steps": 11}, "steps"),
    ({"prompt": "a", "loras": [{"name": "../crayon"}]}, "loras.0.name"),
    ({"prompt": "a", "colour": "red"}, "colour"),
])
def test_invalid_requests_get_422_naming_the_field(ray_url, body, field):
    r = httpx.post(f"{ray_url}/v1/images:sync", json=body, timeout=30, trust_env=False)
    assert r.status_code == 422, r.text
    assert [e["field"] for e in r.json()["errors"]] == [field]
    assert r.json()["detail"].startswith(f"{field}: ")


def test_non_json_body_gets_422(ray_url):
    r = httpx.post(f"{ray_url}/v1/images:sync", content=b"{not json", timeout=30, trust_env=False,
                   headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "body"


def test_the_ray_app_keeps_the_services_rules(ray_url):
    """JSON only (a form or text/plain POST needs no CORS preflight), deep nesting is a 400, not a 500, and a job
    whose own work cannot fit its deadline is refused at once."""
    for content_type in ("text/plain", "application/x-www-form-urlencoded"):
        r = httpx.post(f"{ray_url}/v1/images:sync", content=b'{"prompt": "a red star"}', timeout=30, trust_env=False,
                       headers={"content-type": content_type})
        assert r.status_code == 422 and "application/json" in r.text, r.text
    r = httpx.post(f"{ray_url}/v1/images:sync", content=b"[" * 100_000 + b"]" * 100_000, timeout=30, trust_env=False,
                   headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    started = time.perf_counter()
    r = httpx.post(f"{ray_url}/v1/images:sync", json={"prompt": "a red star", "width": 256, "height": 256, "steps": 10,
                                                      "deadline_s": 5}, timeout=30, trust_env=False)
    assert r.status_code == 503 and "own work" in r.json()["detail"] and time.perf_counter() - started < 5


def test_both_replicas_answer_and_batches_group_compatible_requests_only(ray_url, tiny_parts):
    # 8 concurrent requests, two batch keys (2 and 3 steps) interleaved: at most 2 x MAX_ONGOING in flight, no 429
    bodies = [{"prompt": "a red star" if i % 3 else "a blue heart", "seed": i, "steps": 2 + i % 2} for i in range(8)]
    results = post_all(ray_url, bodies)
    assert [status for status, *_ in results] == [200] * 8, [(s, c[:200]) for s, _, c, _ in results if s != 200]
    assert len({h["x-replica"] for _, h, _, _ in results}) == 2  # the proxy spread the load over both replicas
    sizes = [int(h["x-batch-size"]) for _, h, _, _ in results]
    assert max(sizes) > 1, sizes  # concurrent compatible requests shared a pipeline call
    assert max(sizes) <= 4  # 4 of each key were sent: a bigger call would have mixed keys
    assert [int(h["x-seed"]) for _, h, _, _ in results] == list(range(8))

    # every image is the one its request alone draws: batching by key changed no image (another step count
    # in the same call would have changed it completely); float32 summation order may flip a rare 8-bit level
    from diffusers import StableDiffusionPipeline

    engine = PipelineEngine(StableDiffusionPipeline.from_pretrained(tiny_parts / "sd"))
    width, height = engine.default_size
    for body, (_, _, png, _) in zip(bodies, results):
        spec = JobSpec(body["prompt"], None, body["seed"], body["steps"], 5.0, width, height)
        alone = pixels(engine.generate([spec], lambda step, steps: False)[0])
        diff = np.abs(pixels(png) - alone)
        assert diff.max() <= 1 and (diff == 0).mean() > 0.99


def test_over_capacity_is_refused_at_once_with_429(ray_url):
    # 2 replicas x MAX_ONGOING running or gathering, MAX_QUEUED waiting at the proxy: 16; send 32 slow ones at once
    n = 32
    bodies = [{"prompt": "a red star", "seed": i, "steps": 10, "width": 64, "height": 64} for i in range(n)]
    results = post_all(ray_url, bodies)
    codes = [status for status, *_ in results]
    assert set(codes) <= {200, 429}, codes
    rejected = [r for r in results if r[0] == 429]
    served = [r for r in results if r[0] == 200]
    assert len(served) >= 2 * MAX_ONGOING and len(rejected) >= 1, codes
    assert all(h.get("retry-after") == "2" for _, h, _, _ in rejected)
    slowest_reject, slowest_served = max(r[3] for r in rejected), max(r[3] for r in served)
    assert slowest_reject < 2.0 and slowest_reject < slowest_served / 2, (slowest_reject, slowest_served)
    # after the burst the service is healthy again
    r = httpx.post(f"{ray_url}/v1/images:sync", json={"prompt": "a red star", "seed": 1}, timeout=30, trust_env=False)
    assert r.status_code == 200 and r.content.startswith(b"\x89PNG")
