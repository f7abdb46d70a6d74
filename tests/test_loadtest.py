"""loadtest.service_check: the issue's two service checks as code, against the real server process (python -m
koclip_lib.serve) on the tiny pipeline: a plain load test with a small queue, and a kill -9 mid-run with a restart on
the same job store that completes every accepted job. About 20 s, most of it starting server processes; and the
client's PNG fetch riding out a restart, against a small stdlib server."""
import asyncio
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from koclip_lib.loadtest import Tally, fetch_image, service_check

FAST_CLIENTS = ["--retry-cap-s", "0.2", "--poll-s", "0.05", "--error-backoff-s", "0.5", "--max-seconds", "90"]


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_over_capacity_requests_get_429_and_no_accepted_job_is_lost(tiny_parts):
    r = service_check(tiny_parts / "sd", requests=30, concurrency=8, steps=20, server_args=["--max-queue", "2"],
                      loadtest_args=FAST_CLIENTS)
    assert r["lost"] == 0 and r["invalid"] == 0 and r["image_errors"] == 0, r
    assert r["accepted"] + r["rejected_429"] + r["rejected_503"] == 30
    assert r["rejected_429"] > 0 and r["retry_after_s"]["min"] >= 1, r  # a queue of 2 for 8 clients: 429 + Retry-After
    assert r["succeeded"] == r["accepted"] == r["db_states"]["succeeded"] > 0, r
    assert "restart" not in r and len(r["server"]["pids"]) == 1
    assert _gone(r["server"]["pids"][0])  # stopped at the end


def test_kill_9_mid_run_with_oversize_and_cancelled_requests_loses_no_job(tiny_parts):
    # 32 clients, 10% oversize images, 10% cancelled right after their 202, one image per batch at 20 steps (a queue
    # builds up for the kill to interrupt), SIGKILL 1 s in, a restart on the same job store
    deadline = 60.0
    r = service_check(tiny_parts / "sd", requests=80, concurrency=32, steps=20, kill_after_s=1.0, deadline_s=deadline,
                      server_args=["--max-batch", "1"],
                      loadtest_args=[*FAST_CLIENTS, "--oversize-frac", "0.1", "--cancel-frac", "0.1"])
    restart = r["restart"]
    assert restart["killed_after_s"] is not None, restart  # the kill happened while the load test ran
    pids = r["server"]["pids"]
    assert len(pids) == 2 and pids[0] != pids[1] and all(_gone(p) for p in pids)
    assert restart["resumed"] >= 1, restart  # the restarted server picked up what the killed one had accepted
    assert r["lost"] == 0 and r["invalid"] == 0 and r["image_errors"] == 0, r
    assert r["oversize_refused"] >= 1 and r["oversize_accepted"] == 0, r  # 2048 px against a 32 px pipeline: 422
    assert r["cancels"] >= 1 and r["cancelled"] >= 1, r
    assert r["succeeded"] + r["cancelled"] == r["accepted"] > 0, r
    if r["rejected_429"]:  # over capacity: answered at once
        assert r["rejected_answer_s"]["max"] < 1.0, r
    assert r["latency_s"]["p99"] < deadline, r
    # a submission the kill cut off after its job was stored but before the 202 went out is a submit error to the
    # client and a job to the server: the restarted server runs it too, so the store may hold up to that many more
    stored = r["db_states"].get("succeeded", 0) + r["db_states"].get("cancelled", 0)
    assert r["accepted"] <= stored <= r["accepted"] + r["submit_errors"], r
    assert set(r["db_states"]) <= {"succeeded", "cancelled", "rerun"}, r


def test_a_server_that_cannot_start_is_reported_with_its_log(tmp_path):
    with pytest.raises(RuntimeError, match="exited"):
        service_check(tmp_path / "no-such-pipeline", requests=1, concurrency=1, startup_timeout_s=60)


def test_image_fetch_rides_out_a_dropped_connection_and_a_503():
    # the kill can land between the poll that sees `succeeded` and the PNG's fetch: the fetch retries as polling does
    answers = iter(["drop", "503", "png"])

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            answer = next(answers)
            if answer == "drop":
                self.close_connection = True
                self.connection.shutdown(2)  # the server dies before answering
                return
            status, body = (503, b"{}") if answer == "503" else (200, b"\x89PNG\r\n\x1a\n")
            self.send_response(status)
            if status == 503:
                self.send_header("Retry-After", "0")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    async def fetch():
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.server_port}", trust_env=False) as client:
            tally = Tally()
            ok = await fetch_image(client, "job", time.monotonic() + 10, tally, poll_s=0.01)
            return ok, tally

    try:
        ok, tally = asyncio.run(fetch())
    finally:
        server.shutdown()
    assert ok and tally.poll_errors == 2
    assert next(answers, None) is None  # exactly three requests
