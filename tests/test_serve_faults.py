"""The service under its own faults (the reliability review's findings, one test each): a store that is locked, full,
deleted or replaced; a worker that cannot recover; oversize, slow and hostile requests; submit+cancel churn; jobs
whose work or deadline does not fit. Each checks the invariants: no accepted job lost or reported twice, memory never
ahead of the store, no 200 without a body, honest health, bounded storage."""
import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time

import httpx
import pytest

from koclip_lib.run import KERNEL_ENV
from koclip_lib.serve import PipelineEngine, ServiceTime, Settings, create_app, work_units
from test_serve import Running, make_app, submit, wait_state


def db_rows(path) -> dict[str, str]:
    with sqlite3.connect(path) as db:
        return dict(db.execute("SELECT id, state FROM jobs"))


def metric(client, name: str, **labels) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(f"{name}{{{want}}}" if want else f"{name} "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} {labels} not in /metrics")


def until(check, timeout=15.0, what="condition"):
    deadline = time.time() + timeout
    while not check():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# 1. one SQLite error killed the worker for good; memory changed before the store; /image gave an empty 200
def test_store_locked_past_its_timeout_the_worker_survives_and_memory_follows_the_store(tiny_pipe, tmp_path):
    db = str(tmp_path / "jobs.sqlite3")
    app = make_app(tiny_pipe, tmp_path, store_timeout_s=0.2)
    service = app.state.service
    with Running(app) as client:
        service.pause()
        jobs = [submit(client) for _ in range(3)]
        locker = sqlite3.connect(db, isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")  # another process holds the write lock past the store's timeout
        service.resume()
        until(lambda: client.get("/readyz").status_code == 503, what="readyz to report the store")
        assert "job store unavailable" in client.get("/readyz").json()["detail"]
        assert client.get("/healthz").status_code == 200  # the worker is alive and retrying: no restart wanted
        refused = client.post("/v1/images", json={"prompt": "a red star"})
        assert refused.status_code == 503 and "store" in refused.json()["detail"] and refused.headers["Retry-After"]
        time.sleep(0.6)
        for job_id in jobs:  # nothing moved in memory that the store does not hold
            assert client.get(f"/v1/jobs/{job_id}").json()["state"] == "queued"
            assert client.get(f"/v1/jobs/{job_id}/image").status_code == 409
        locker.execute("ROLLBACK")
        locker.close()
        for job_id in jobs:
            assert wait_state(client, job_id)["state"] == "succeeded"
            png = client.get(f"/v1/jobs/{job_id}/image")
            assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
        assert client.get("/readyz").status_code == 200
        assert metric(client, "koclip_errors_total", kind="store") >= 1
        assert metric(client, "koclip_worker_alive") == 1
    assert db_rows(db) == {j: "succeeded" for j in jobs}


def test_a_full_disk_keeps_the_finished_job_running_until_its_image_is_written(tiny_pipe, tmp_path):
    app = make_app(tiny_pipe, tmp_path, store_timeout_s=0.2)
    service = app.state.service
    with Running(app) as client:
        service.pause()
        job_id = submit(client, steps=2, width=128, height=128)  # its PNG needs pages the store does not have
        store = service.store._db
        pages = store.execute("PRAGMA page_count").fetchone()[0]
        store.execute(f"PRAGMA max_page_count = {pages}")  # the disk is full: no new page for the PNG
        service.resume()
        until(lambda: service.batch == [] and service._unsaved, what="the finished job's write to fail")
        status = client.get(f"/v1/jobs/{job_id}").json()
        assert status["state"] == "running"  # the image is not stored, so the job is not reported succeeded
        assert client.get(f"/v1/jobs/{job_id}/image").status_code == 409
        assert db_rows(str(tmp_path / "jobs.sqlite3"))[job_id] == "running"
        assert client.post("/v1/images", json={"prompt": "a red star"}).status_code == 503
        store.execute("PRAGMA max_page_count = 1073741823")  # space again
        assert wait_state(client, job_id)["state"] == "succeeded"
        assert client.get(f"/v1/jobs/{job_id}/image").content[:4] == b"\x89PNG"


# 1. ... and nothing restarted it: now a worker that cannot recover ends the process non-zero
def test_a_worker_that_cannot_recover_exits_non_zero_and_the_restart_loses_no_job(tiny_parts, tmp_path):
    db = str(tmp_path / "jobs.sqlite3")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "koclip_lib.serve", "--pipeline", str(tiny_parts / "sd"), "--db", db, "--port", str(port),
           "--no-warmup", "--store-timeout-s", "0.1", "--worker-give-up-s", "1", "--log-level", "warning"]
    url = f"http://127.0.0.1:{port}"

    # one torch thread, as the notebooks' kernels: beside the other pytest worker, two threads oversubscribe the two
    # cores and can stretch the 100-step job (about 1 s alone) past the wait for exit 70
    env = {**os.environ, **KERNEL_ENV}

    def start():
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        until(lambda: _ready(url), timeout=60, what="the server to start")
        return proc

    proc = start()
    try:
        job_id = httpx.post(f"{url}/v1/images", json={"prompt": "a red star", "steps": 100, "deadline_s": 600}).json()["job_id"]
        locker = sqlite3.connect(db, isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")
        assert proc.wait(timeout=60) == 70, proc.stdout.read()
        locker.execute("ROLLBACK")
        locker.close()
    finally:
        proc.kill()
    proc = start()
    try:
        until(lambda: httpx.get(f"{url}/v1/jobs/{job_id}").json()["state"] == "succeeded", timeout=60,
              what="the accepted job to run after the restart")
    finally:
        proc.terminate()
        proc.wait(10)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


# 2. admission ignored image size; one big job skewed the estimate; deadlines were checked between steps only
def test_admission_counts_pixels_and_steps_and_one_outlier_does_not_move_the_estimate(tiny_pipe, tmp_path):
    from koclip_lib.serve import JobSpec

    small = JobSpec("a", None, 0, 20, 5.0, 32, 32)
    estimate = ServiceTime(0.01, (32, 32), window=15)
    assert estimate.job_seconds(JobSpec("a", None, 0, 20, 5.0, 64, 64)) == pytest.approx(4 * estimate.job_seconds(small))
    for _ in range(10):
        estimate.observe(work_units(small) * 0.5, [small])  # 0.5 s per megapixel-step
    estimate.observe(work_units(small) * 40.0, [small])     # one batch 80x slower (a cold start, another process)
    assert estimate.s_per_unit == pytest.approx(0.5)
    app = create_app(PipelineEngine(tiny_pipe), Settings(db_path=str(tmp_path / "jobs.sqlite3"), warmup=False,
                                                         initial_s_per_image_step=0.01, api_key=None))
    with Running(app) as client:
        too_big = client.post("/v1/images", json={"prompt": "a red star", "width": 128, "height": 128})
        assert too_big.status_code == 422 and "width" in too_big.text  # 2 x the native 32 px is the default limit
        app.state.service.estimate.s_per_image_step = 1.0
        r = client.post("/v1/images", json={"prompt": "a red star", "width": 64, "height": 64, "steps": 10, "deadline_s": 20})
        assert r.status_code == 503 and "own work" in r.json()["detail"]  # 4 x 10 x 1 s = 40 s > 20 s: refused at once


BLOCK_S = 0.8


class SlowBlocks(PipelineEngine):
    """The real engine with BLOCK_S added before each of the UNet's blocks: a step takes seconds, like a big image's."""

    def __init__(self, pipe):
        super().__init__(pipe)
        self.handles = [b.register_forward_pre_hook(lambda *_: time.sleep(BLOCK_S))
                        for b in (*pipe.unet.down_blocks, *pipe.unet.up_blocks)]


def test_a_deadline_stops_generation_inside_a_step(tiny_pipe, tmp_path):
    engine = SlowBlocks(tiny_pipe)
    try:
        app = create_app(engine, Settings(db_path=str(tmp_path / "jobs.sqlite3"), warmup=False,
                                          initial_s_per_image_step=0.001, api_key=None))
        with Running(app) as client:
            job_id = submit(client, steps=3, deadline_s=1.0)
            status = wait_state(client, job_id, timeout=30)
            blocks = len(tiny_pipe.unet.down_blocks) + len(tiny_pipe.unet.up_blocks)
            assert status["state"] == "expired"
            # a step takes blocks x BLOCK_S; stopped within about one block of the deadline, not at the step's end
            assert blocks * BLOCK_S > 1.0 + BLOCK_S + 0.5
            assert status["finished_at"] - status["created_at"] < 1.0 + BLOCK_S + 0.5
            until(lambda: not app.state.service.batch, timeout=2, what="the worker to drop the batch")
    finally:
        for h in engine.handles:
            h.remove()


# 3. blocking store calls ran on the event loop: /healthz took 58 s while the store was locked
def test_a_locked_store_does_not_block_the_event_loop(tiny_pipe, tmp_path, serve_app):
    db = str(tmp_path / "jobs.sqlite3")
    host, port = serve_app(make_app(tiny_pipe, tmp_path, store_timeout_s=3.0))
    url = f"http://{host}:{port}"
    until(lambda: _ready(url), what="ready")
    locker = sqlite3.connect(db, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    results = {}
    waiting = threading.Thread(target=lambda: results.update(
        sync=httpx.post(f"{url}/v1/images:sync", json={"prompt": "a red star"}, timeout=30)))
    waiting.start()
    time.sleep(0.3)  # the sync request is now waiting on the store's lock
    started = time.perf_counter()
    assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
    assert time.perf_counter() - started < 0.5
    waiting.join(30)
    locker.execute("ROLLBACK")
    locker.close()
    assert results["sync"].status_code == 503 and "store" in results["sync"].json()["detail"]


# 4. no body-size limit, no body timeout, no Host check
def _raw(port: int, head: bytes, body_parts=(), pause=0.0, timeout=15.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head)
        for part in body_parts:
            time.sleep(pause)
            try:
                sock.sendall(part)
            except (BrokenPipeError, ConnectionResetError):  # the server answered and closed: read its answer
                break
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def test_oversize_and_slow_bodies_and_foreign_hosts_are_refused(tiny_pipe, tmp_path, serve_app):
    from koclip_lib.serve import header_timeout_protocol

    _, port = serve_app(make_app(tiny_pipe, tmp_path, max_body_bytes=10_000, body_timeout_s=1.0),
                        http=header_timeout_protocol(1.0))
    # headers a line a second: the connection is closed after the header timeout, no request ever starts
    started = time.perf_counter()
    answer = _raw(port, b"GET /healthz HTTP/1.1\r\n", [b"X-Slow-%d: a\r\n" % i for i in range(8)], pause=0.5)
    assert answer == b"" and time.perf_counter() - started < 3
    head = b"POST /v1/images HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    # a declared 50 MB body: refused before a byte of it is read
    started = time.perf_counter()
    answer = _raw(port, head + b"Content-Length: 50000000\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 413") and time.perf_counter() - started < 2
    # chunked, no length: refused once the bytes received pass the limit
    chunk = b"x" * 4096
    answer = _raw(port, head + b"Transfer-Encoding: chunked\r\n\r\n",
                  [b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(4)] + [b"0\r\n\r\n"])
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    # a body that trickles in: 408 after the body timeout
    started = time.perf_counter()
    answer = _raw(port, head + b"Content-Length: 100\r\n\r\n", [b"{", b'"'], pause=0.8)
    assert answer.startswith(b"HTTP/1.1 408") and time.perf_counter() - started < 5, answer[:200]
    # DNS rebinding: a page on another name that resolves here gets 400
    assert httpx.get(f"http://127.0.0.1:{port}/healthz", headers={"Host": "evil.example"}).status_code == 400
    assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
    counts = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    assert 'koclip_http_responses_total{code="413"} 2.0' in counts and 'koclip_http_responses_total{code="408"} 1.0' in counts


# 5. submit+cancel grew storage without bound
def test_a_thousand_submit_cancel_pairs_leave_storage_bounded(tiny_pipe, tmp_path):
    db = str(tmp_path / "jobs.sqlite3")
    app = make_app(tiny_pipe, tmp_path, ended_ttl_s=0.0, purge_interval_s=0.1, max_stored_per_client=50, max_queue=16)
    with Running(app) as client:
        app.state.service.pause()  # every job is cancelled while queued, as the churn probe did
        refused = 0
        for _ in range(1000):
            r = client.post("/v1/images", json={"prompt": "a red star"})
            if r.status_code == 429:
                refused += 1
                assert "jobs stored" in r.json()["detail"] and r.headers["Retry-After"]
                time.sleep(0.1)  # the purge runs every 0.1 s
                continue
            assert r.status_code == 202, r.text
            deleted = client.delete(f"/v1/jobs/{r.json()['job_id']}")
            assert deleted.status_code == 200 and deleted.json()["state"] == "cancelled", deleted.text
            assert len(app.state.service.jobs) <= 50 and len(db_rows(db)) <= 50
        until(lambda: len(db_rows(db)) == 0 and not app.state.service.jobs, what="the cancelled jobs to be purged")
        assert refused < 1000
    with Running(make_app(tiny_pipe, tmp_path, ended_ttl_s=3600, max_stored_per_client=5)) as client:
        client.app.state.service.pause()
        for _ in range(5):
            client.delete(f"/v1/jobs/{submit(client)}")
        r = client.post("/v1/images", json={"prompt": "a red star"})
        assert r.status_code == 429 and "5 jobs stored" in r.json()["detail"]


# 6. job reasons showed server paths; 7. a lone surrogate gave 500
def test_failure_reasons_name_no_server_path_and_a_lone_surrogate_gets_422(tiny_pipe, tmp_path):
    registry = tmp_path / "loras.json"
    registry.write_text(json.dumps({"crayon": {"path": str(tmp_path / "missing" / "crayon"), "trigger": "crayon"}}))
    with Running(make_app(tiny_pipe, tmp_path, lora_registry=str(registry))) as client:
        status = wait_state(client, submit(client, loras=[{"name": "crayon", "weight": 1.0}]))
        assert status["state"] == "failed" and "LoraFileError" in status["reason"]
        assert str(tmp_path) not in status["reason"] and "/missing" not in status["reason"], status["reason"]
        for field in ("prompt", "negative_prompt"):
            body = '{"prompt": "red star", "%s": "red \\ud800 star"}' % field
            r = client.post("/v1/images", content=body, headers={"content-type": "application/json"})
            assert r.status_code == 422 and "surrogate" in r.text and field in r.text, r.text


# 8. a deleted database went unnoticed and a restart lost every accepted job
@pytest.mark.parametrize("fault", ["deleted", "replaced"])
def test_a_deleted_or_replaced_database_is_noticed_and_rebuilt_with_every_job(tiny_pipe, tmp_path, fault):
    db = tmp_path / "jobs.sqlite3"
    app = make_app(tiny_pipe, tmp_path)
    with Running(app) as client:
        done = submit(client)
        png = (wait_state(client, done), client.get(f"/v1/jobs/{done}/image").content)[1]
        app.state.service.pause()
        queued = [submit(client) for _ in range(3)]
        for suffix in ("", "-wal", "-shm"):
            (tmp_path / f"jobs.sqlite3{suffix}").unlink(missing_ok=True)
        if fault == "replaced":
            db.write_bytes(os.urandom(8192))
        def rebuilt():
            try:
                return db_rows(db).keys() >= {done, *queued}
            except sqlite3.Error:  # still the foreign file, or the new one being written
                return False

        until(rebuilt, what="the store to be rebuilt")
        assert metric(client, "koclip_errors_total", kind="store_file") == 1
        if fault == "replaced":
            assert list(tmp_path.glob("jobs.sqlite3.replaced-*"))  # the foreign file is kept aside, not overwritten
    with Running(make_app(tiny_pipe, tmp_path)) as client:  # after a restart: nothing lost
        assert client.get(f"/v1/jobs/{done}/image").content == png
        assert [wait_state(client, j)["state"] for j in queued] == ["succeeded"] * 3


# 9. sync jobs outlived their clients across a restart
def test_sync_jobs_orphaned_by_a_restart_are_cancelled(tiny_pipe, tmp_path):
    from koclip_lib.serve import JobSpec

    app = make_app(tiny_pipe, tmp_path)
    with Running(app) as client:
        service = app.state.service
        service.pause()
        orphan, _, _ = service.submit(JobSpec("a red star", None, 1, 2, 5.0, 32, 32), 60, client="10.0.0.1", sync=True)
        kept = submit(client)
    with Running(make_app(tiny_pipe, tmp_path)) as client:
        status = client.get(f"/v1/jobs/{orphan.id}").json()
        assert status["state"] == "cancelled" and "restart" in status["reason"]
        assert wait_state(client, kept)["state"] == "succeeded"


# 12. `"steps": true` was taken as 1; a truncated body's 422 named a field "14"; no error counters
def test_booleans_are_not_numbers_and_a_truncated_body_names_the_body(tiny_pipe, tmp_path):
    with Running(make_app(tiny_pipe, tmp_path)) as client:
        for field in ("steps", "seed", "width"):
            r = client.post("/v1/images", json={"prompt": "a red star", field: True})
            assert r.status_code == 422 and r.json()["errors"][0]["field"] == field, r.text
        r = client.post("/v1/images", content=b'{"prompt": "a red', headers={"content-type": "application/json"})
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "body", r.text
        assert 'koclip_http_responses_total{code="422"}' in client.get("/metrics").text
        assert metric(client, "koclip_errors_total", kind="generation") == 0
