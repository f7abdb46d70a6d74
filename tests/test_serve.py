"""The image service on a tiny random pipeline: admission, deadlines, batching, recovery, events, auth."""
import io
import json
import sqlite3
import time

import numpy as np
import pytest
from PIL import Image
from fastapi.testclient import TestClient

from koclip_lib.serve import PipelineEngine, Settings, create_app


@pytest.fixture
def registry(tmp_path):
    path = tmp_path / "loras.json"
    path.write_text(json.dumps({"crayon": {"path": "missing/crayon", "trigger": "crayon style", "description": "test"}}))
    return str(path)


def make_app(pipe, tmp_path, **overrides):
    settings = dict(db_path=str(tmp_path / "jobs.sqlite3"), warmup=False, default_steps=2, max_queue=8, max_batch=4,
                    initial_s_per_image_step=0.01, api_key=None, max_prompt_chars=50, max_side=256, max_steps=10)
    settings.update(overrides)
    return create_app(PipelineEngine(pipe), Settings(**settings))


class Running:
    """TestClient with the lifespan running, the worker ready."""

    def __init__(self, app, headers=None):
        self.app, self.headers = app, headers or {}

    def __enter__(self):
        self.client = TestClient(self.app, headers=self.headers).__enter__()
        deadline = time.time() + 10
        while self.client.get("/readyz").status_code != 200:
            assert time.time() < deadline, "service never became ready"
            time.sleep(0.02)
        return self.client

    def __exit__(self, *exc):
        return self.client.__exit__(*exc)


def wait_state(client, job_id, states=("succeeded", "failed", "cancelled", "expired"), timeout=20.0):
    deadline = time.time() + timeout
    while True:
        status = client.get(f"/v1/jobs/{job_id}").json()
        if status["state"] in states:
            return status
        assert time.time() < deadline, status
        time.sleep(0.02)


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def submit(client, **body):
    r = client.post("/v1/images", json={"prompt": "a red star", **body})
    assert r.status_code == 202, r.text
    return r.json()["job_id"]


@pytest.mark.parametrize("body, field", [
    ({"prompt": ""}, "prompt"),
    ({"prompt": "   \n"}, "prompt"),
    ({"prompt": "x" * 51}, "prompt"),
    ({}, "prompt"),
    ({"prompt": "a", "negative_prompt": "y" * 51}, "negative_prompt"),
    ({"prompt": "a", "width": 36}, "width"),
    ({"prompt": "a", "height": 512}, "height"),
    ({"prompt": "a", "steps": 0}, "steps"),
    ({"prompt": "a", "steps": 11}, "steps"),
    ({"prompt": "a", "guidance": -1}, "guidance"),
    ({"prompt": "a", "guidance": 31}, "guidance"),
    ({"prompt": "a", "seed": -5}, "seed"),
    ({"prompt": "a", "deadline_s": 0}, "deadline_s"),
    ({"prompt": "a", "loras": [{"name": "unknown"}]}, "loras.0.name"),
    ({"prompt": "a", "loras": [{"name": "../crayon"}]}, "loras.0.name"),
    ({"prompt": "a", "loras": [{"name": "/etc/passwd"}]}, "loras.0.name"),
    ({"prompt": "a", "loras": [{"name": "crayon", "weight": 9}]}, "loras.0.weight"),
    ({"prompt": "a", "loras": [{"name": "crayon"}, {"name": "crayon"}]}, "loras"),
    ({"prompt": "a", "colour": "red"}, "colour"),
])
def test_invalid_requests_get_422_naming_the_field(tiny_pipe, tmp_path, registry, body, field):
    app = make_app(tiny_pipe, tmp_path, lora_registry=registry)
    with Running(app) as client:
        r = client.post("/v1/images", json=body)
        assert r.status_code == 422, r.text
        assert [e["field"] for e in r.json()["errors"]] == [field]
        assert r.json()["detail"].startswith(f"{field}: ")
        assert app.state.service.queue == []


def test_lora_registry_lists_names_only_and_a_broken_lora_fails_only_its_job(tiny_pipe, tmp_path, registry):
    with Running(make_app(tiny_pipe, tmp_path, lora_registry=registry)) as client:
        assert client.get("/v1/loras").json() == {"crayon": {"trigger": "crayon style", "description": "test"}}
        bad = submit(client, loras=[{"name": "crayon", "weight": 0.8}])
        status = wait_state(client, bad)
        assert status["state"] == "failed" and "generation failed" in status["reason"]
        assert client.get(f"/v1/jobs/{bad}/image").status_code == 409
        assert wait_state(client, submit(client))["state"] == "succeeded"  # the worker carries on


@pytest.mark.parametrize("prompt, message", [
    ("a star <lora:unknown:0.5>", "unknown LoRA 'unknown'"),
    ("a star <lora:crayon:abc>", "'abc' is not a number"),
    ("a star <lora:crayon:5>", "limit is ±2"),
    ("<lora:crayon:1>", "nothing left to draw"),
])
def test_lora_tags_in_a_prompt_are_checked_like_the_body(tiny_pipe, tmp_path, registry, prompt, message):
    app = make_app(tiny_pipe, tmp_path, lora_registry=registry)
    with Running(app) as client:
        r = client.post("/v1/images", json={"prompt": prompt})
        assert r.status_code == 422 and message in r.json()["detail"], r.text
        twice = client.post("/v1/images", json={"prompt": "a <lora:crayon:1>", "loras": [{"name": "crayon"}]})
        assert twice.status_code == 422 and "named once" in twice.json()["detail"]
        assert app.state.service.queue == []


def test_prompt_lora_tags_are_parsed_as_a1111_writes_them():
    from koclip_lib.serve import prompt_loras

    assert prompt_loras("빨간 별 <lora:ink:0.7>, 수묵화 <lora:crayon>") == ("빨간 별 , 수묵화", [("ink", 0.7), ("crayon", 1.0)])
    assert prompt_loras("no tags here") == ("no tags here", [])
    with pytest.raises(ValueError, match="finite"):
        prompt_loras("<lora:ink:nan>")


def test_every_png_carries_its_generation_parameters(tiny_pipe, tmp_path):
    with Running(make_app(tiny_pipe, tmp_path)) as client:
        job = submit(client, prompt="빨간 별 하나", negative_prompt="흐릿한", seed=7, steps=3, guidance=6.5)
        assert wait_state(client, job)["state"] == "succeeded"
        png = client.get(f"/v1/jobs/{job}/image").content
    text = Image.open(io.BytesIO(png)).info["parameters"]  # where A1111's PNG Info and ComfyUI look
    prompt, negative, fields = text.split("\n")
    assert prompt == "빨간 별 하나" and negative == "Negative prompt: 흐릿한"
    assert fields.startswith("Steps: 3, Sampler: ") and "CFG scale: 6.5, Seed: 7, Size: " in fields
    assert "Model: sd" in fields and "Text encoder: " in fields


def test_full_queue_answers_429_at_once_with_retry_after(tiny_pipe, tmp_path):
    app = make_app(tiny_pipe, tmp_path, max_queue=2)
    service = app.state.service
    with Running(app) as client:
        service.pause()
        service.estimate.s_per_image_step = 1.0  # 2 queued jobs x 2 steps x 1 s: the queue drains in 4 s
        first, second = submit(client), submit(client)
        started = time.time()
        r = client.post("/v1/images", json={"prompt": "one too many"})
        assert r.status_code == 429 and time.time() - started < 1
        assert r.headers["Retry-After"] == "4" and "queue full" in r.json()["detail"]
        assert client.get(f"/v1/jobs/{second}").json()["queue_position"] == 1
        assert 'koclip_rejected_total{code="429",reason="queue_full"} 1.0' in client.get("/metrics").text
        service.estimate.s_per_image_step = 0.01
        service.resume()
        assert wait_state(client, first)["state"] == wait_state(client, second)["state"] == "succeeded"
        assert "koclip_queue_depth 0.0" in client.get("/metrics").text


def test_deadline_that_cannot_be_met_is_refused_at_admission(tiny_pipe, tmp_path):
    app = make_app(tiny_pipe, tmp_path)
    with Running(app) as client:
        app.state.service.estimate.s_per_image_step = 1.0  # 2 steps: about 2 s per image
        r = client.post("/v1/images", json={"prompt": "a red star", "deadline_s": 1})
        assert r.status_code == 503 and "deadline_s=1 cannot be met" in r.json()["detail"]
        assert app.state.service.queue == []
        assert client.post("/v1/images", json={"prompt": "a red star", "deadline_s": 5}).status_code == 202


def test_job_past_its_deadline_before_starting_expires_and_never_runs(tiny_pipe, tmp_path):
    app = make_app(tiny_pipe, tmp_path)
    service = app.state.service
    with Running(app) as client:
        service.pause()
        late = submit(client, deadline_s=0.3)
        cancelled = submit(client)
        assert client.delete(f"/v1/jobs/{cancelled}").json()["state"] == "cancelled"
        assert client.delete(f"/v1/jobs/{cancelled}").status_code == 409
        status = wait_state(client, late, timeout=5)  # expired by the worker while it is paused
        assert status["state"] == "expired" and "before the job started" in status["reason"]
        service.resume()
        time.sleep(0.3)
        status = client.get(f"/v1/jobs/{late}").json()
        assert status["state"] == "expired" and status["attempts"] == 0
        r = client.get(f"/v1/jobs/{late}/image")
        assert r.status_code == 409 and "expired" in r.json()["detail"]
        assert client.get("/v1/jobs/nope/image").status_code == 404
        assert "koclip_jobs_expired_total 1.0" in client.get("/metrics").text


def test_sync_request_returns_the_png_or_504_and_expires_its_job(tiny_pipe, tmp_path):
    app = make_app(tiny_pipe, tmp_path)
    service = app.state.service
    with Running(app) as client:
        r = client.post("/v1/images:sync", json={"prompt": "a blue heart", "seed": 3})
        assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.content.startswith(b"\x89PNG")
        assert client.get(f"/v1/jobs/{r.headers['X-Job-Id']}/image").content == r.content
        service.pause()
        started = time.time()
        r = client.post("/v1/images:sync", json={"prompt": "a blue heart", "deadline_s": 0.5})
        assert r.status_code == 504 and 0.4 < time.time() - started < 3
        status = client.get(f"/v1/jobs/{r.json()['job_id']}").json()
        assert status["state"] == "expired" and status["attempts"] == 0  # not left queued for nobody


def test_compatible_jobs_share_a_batch_in_fifo_order_and_batching_never_changes_an_image(tiny_pipe, tmp_path):
    app = make_app(tiny_pipe, tmp_path, max_batch=2)
    service = app.state.service
    with Running(app) as client:
        service.pause()
        a = submit(client, prompt="a red star", seed=1)
        c = submit(client, prompt="a red star", seed=3, steps=3)  # another batch key
        b = submit(client, prompt="a blue heart", negative_prompt="blurry", seed=2)
        d = submit(client, prompt="a red star", seed=4)
        service.resume()
        sa, sb, sc, sd = (wait_state(client, j) for j in (a, b, c, d))
        assert all(s["state"] == "succeeded" for s in (sa, sb, sc, sd))
        assert sa["batch_id"] == sb["batch_id"] and sa["batch_size"] == 2  # the oldest (a) decides the key
        assert sc["batch_size"] == sd["batch_size"] == 1
        assert sa["batch_id"] < sc["batch_id"] < sd["batch_id"]  # c, older than d, runs before it
        alone_a = wait_state(client, submit(client, prompt="a red star", seed=1))
        alone_b = wait_state(client, submit(client, prompt="a blue heart", negative_prompt="blurry", seed=2))
        assert alone_a["batch_size"] == alone_b["batch_size"] == 1
        image = lambda j: pixels(client.get(f"/v1/jobs/{j}/image").content)  # noqa: E731
        # Same seed, same noise: batched and alone agree up to float32 summation order (a 1e-6 difference can
        # flip one 8-bit level in a rare pixel), while another seed changes the image completely.
        for batched, alone in ((a, alone_a["job_id"]), (b, alone_b["job_id"])):
            diff = np.abs(image(batched) - image(alone))
            assert diff.max() <= 1 and (diff == 0).mean() > 0.99
        assert np.abs(image(a) - image(d)).mean() > 5
        metrics = client.get("/metrics").text
        assert 'koclip_batch_size_bucket{le="1.0"} 4.0' in metrics and "koclip_batch_size_count 5.0" in metrics
        assert 'koclip_prompt_cache_total{result="miss"} 2.0' in metrics  # two distinct (prompt, negative) pairs
        assert 'koclip_prompt_cache_total{result="hit"} 4.0' in metrics  # repeats skip the text encoder


def test_accepted_jobs_survive_a_restart_and_results_last_until_their_ttl(tiny_pipe, tmp_path):
    app1 = make_app(tiny_pipe, tmp_path)
    with Running(app1) as client:
        done = submit(client, seed=7)
        assert wait_state(client, done)["state"] == "succeeded"
        png = client.get(f"/v1/jobs/{done}/image").content
        app1.state.service.pause()
        pending = [submit(client, seed=s) for s in (8, 9, 10)]
    # The process "died" while generating the first of them: it is still marked running in the database.
    db = sqlite3.connect(tmp_path / "jobs.sqlite3")
    with db:
        db.execute("UPDATE jobs SET state='running', attempts=1, started_at=0 WHERE id=?", (pending[0],))
    db.close()
    with Running(make_app(tiny_pipe, tmp_path)) as client:
        statuses = [wait_state(client, j) for j in pending]
        assert [s["state"] for s in statuses] == ["succeeded"] * 3
        assert statuses[0]["attempts"] == 2 and statuses[1]["attempts"] == 1  # same job id, run again from the start
        assert client.get(f"/v1/jobs/{done}/image").content == png
    with Running(make_app(tiny_pipe, tmp_path, result_ttl_s=0)) as client:
        assert client.get(f"/v1/jobs/{done}").status_code == 404  # purged after its TTL


class SlowEngine(PipelineEngine):
    """The real engine with 0.1 s added per denoising step, so a test can act while a batch is running."""

    def generate(self, specs, on_step, should_stop=None):
        return super().generate(specs, lambda step, steps: time.sleep(0.1) or on_step(step, steps), should_stop)


def test_running_jobs_are_interrupted_by_cancel_and_kept_by_a_graceful_stop(tiny_pipe, tmp_path):
    settings = Settings(db_path=str(tmp_path / "jobs.sqlite3"), warmup=False, initial_s_per_image_step=0.01, api_key=None)
    app = create_app(SlowEngine(tiny_pipe), settings)
    with Running(app) as client:
        doomed = submit(client, steps=20)
        wait_state(client, doomed, states=("running",))
        started = time.time()
        assert client.delete(f"/v1/jobs/{doomed}").json()["state"] == "cancelled"
        while app.state.service.batch:  # the pipeline call stops at the next step, not after 20
            time.sleep(0.01)
        assert time.time() - started < 1.5
        kept = submit(client, steps=20)
        wait_state(client, kept, states=("running",))
    # shutdown interrupted the batch: the job is still accepted, queued in the database, and runs after a restart
    with Running(make_app(tiny_pipe, tmp_path)) as client:
        status = wait_state(client, kept)
        assert status["state"] == "succeeded" and status["attempts"] == 2
        assert client.get(f"/v1/jobs/{doomed}").json()["state"] == "cancelled"


def test_api_key_is_required_when_configured(tiny_pipe, tmp_path):
    with Running(make_app(tiny_pipe, tmp_path, api_key="s3cret")) as client:
        assert client.get("/healthz").status_code == 200
        r = client.post("/v1/images", json={"prompt": "a red star"})
        assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
        assert client.post("/v1/images", json={"prompt": "a"}, headers={"Authorization": "Bearer nope"}).status_code == 401
        r = client.post("/v1/images", json={"prompt": "a red star"}, headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 202
        assert client.get(f"/v1/jobs/{r.json()['job_id']}", headers={"X-API-Key": "s3cret"}).status_code == 200
        assert client.get(f"/v1/jobs/{r.json()['job_id']}").status_code == 401


# --- a real uvicorn server on a free loopback port ----------------------------------------------------------------
@pytest.fixture
def live(tiny_pipe, tmp_path, serve_app):
    app = make_app(tiny_pipe, tmp_path, max_queue=3, max_batch=2)
    host, port = serve_app(app)
    return f"http://{host}:{port}", app


def test_events_stream_state_changes_and_every_denoising_step(live):
    import httpx

    url, app = live
    app.state.service.pause()
    with httpx.Client(base_url=url, timeout=10, trust_env=False) as client:
        job = client.post("/v1/images", json={"prompt": "a red star", "steps": 3}).json()["job_id"]
        events = []
        with client.stream("GET", f"/v1/jobs/{job}/events") as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            name = None
            for line in r.iter_lines():
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    data = json.loads(line[6:])
                    events.append((name, data.get("state") if name == "state" else data["step"]))
                    if events == [("state", "queued")]:
                        app.state.service.resume()  # the stream is open: let the job run
    assert events == [("state", "queued"), ("state", "running"), ("progress", 1), ("progress", 2), ("progress", 3),
                      ("state", "succeeded")]


def test_a_subscriber_that_joins_after_the_job_ended_gets_its_progress_then_its_state(live):
    """The page opens its event stream after submitting (and, with a key, after fetching a token): a job that has
    already finished still reports how far it got, before the final state that ends the stream."""
    import httpx

    url, app = live
    with httpx.Client(base_url=url, timeout=10, trust_env=False) as client:
        job = client.post("/v1/images", json={"prompt": "a red star", "steps": 3}).json()["job_id"]
        assert wait_state(client, job)["state"] == "succeeded"
        text = client.get(f"/v1/jobs/{job}/events").text
    events = [(block.split("\n")[0][7:], json.loads(block.split("\n")[1][6:])) for block in text.strip().split("\n\n")]
    assert [(name, data.get("step", data.get("state"))) for name, data in events] == [("progress", 3), ("state", "succeeded")]
    assert events[0][1]["steps"] == 3


def test_loadtest_against_a_live_server_loses_no_job(live, capsys):
    from koclip_lib import loadtest

    url, _ = live
    result = loadtest.main(["--url", url, "--concurrency", "6", "--requests", "18", "--steps", "2",
                            "--retry-cap-s", "0.05", "--max-seconds", "60", "--poll-s", "0.02"])
    assert result["lost"] == 0 and result["image_errors"] == 0 and result["invalid"] == 0
    assert result["accepted"] + result["rejected_429"] + result["rejected_503"] == 18
    assert result["succeeded"] == result["accepted"] > 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["lost"] == 0
    with pytest.raises(SystemExit):
        loadtest.main(["--url", "http://10.0.0.1:8000"])


def test_200_requests_mixing_the_three_apis_lose_no_job_and_429_at_once(live):
    from koclip_lib import loadtest

    url, app = live
    result = loadtest.main(["--url", url, "--concurrency", "32", "--requests", "200", "--steps", "2", "--width", "32",
                            "--height", "32", "--retry-cap-s", "0.05", "--max-seconds", "240", "--poll-s", "0.02",
                            "--apis", "native,a1111,openai"])
    assert result["lost"] == 0 and result["image_errors"] == 0 and result["invalid"] == 0 and result["submit_errors"] == 0
    assert result["accepted"] + result["rejected_429"] + result["rejected_503"] == result["submitted"] == 200
    assert result["succeeded"] == result["accepted"] > 0 and result["rejected_429"] > 0
    assert result["rejected_answer_s"]["max"] < 2.0  # refused at once, never accepted and then timed out
    jobs = app.state.service.store._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
    assert dict(jobs) == {"succeeded": result["accepted"]}  # every accepted job, whatever the API, is in the store


def test_openapi_documents_bodies_errors_and_auth(tiny_pipe, tmp_path):
    app = make_app(tiny_pipe, tmp_path, api_key="s3cret")
    spec = TestClient(app).get("/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert {s["type"] for s in schemes.values()} == {"http", "apiKey"}
    images = spec["paths"]["/v1/images"]["post"]
    assert {"202", "401", "422", "429", "503"} <= set(images["responses"])
    assert images["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ValidationErrorBody")
    assert "Retry-After" in images["responses"]["429"]["headers"]
    assert images["security"]  # the key, where one is set
    sync = spec["paths"]["/v1/images:sync"]["post"]["responses"]
    assert "image/png" in sync["200"]["content"] and "504" in sync
    status = spec["components"]["schemas"]["JobStatus"]
    assert set(status["properties"]["state"]["enum"]) == {"queued", "running", "succeeded", "failed", "cancelled", "expired"}
    assert "/sdapi/v1/txt2img" in spec["paths"] and "/v1/images/generations" in spec["paths"]
    for path, operations in spec["paths"].items():  # every route says what it answers, with a schema or a media type
        for method, op in operations.items():
            ok = op["responses"].get("200") or op["responses"].get("202")
            content = ok.get("content", {})
            assert content and all(("schema" in v and v["schema"]) or media != "application/json"
                                   for media, v in content.items()), (method, path, ok)
    generations = spec["paths"]["/v1/images/generations"]["post"]
    assert "prompt" in generations["requestBody"]["content"]["application/json"]["schema"]["properties"]
    # the documented 422 body is the one sent
    with Running(app, headers={"Authorization": "Bearer s3cret"}) as client:
        body = client.post("/v1/images", json={"prompt": ""}).json()
    schema = spec["components"]["schemas"]["ValidationErrorBody"]
    assert set(body) == set(schema["properties"]) and set(body["errors"][0]) == {"field", "message"}
