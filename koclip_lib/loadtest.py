"""Load test for the image service (koclip_lib.serve), loopback only.

    python -m koclip_lib.loadtest --url http://127.0.0.1:8000 --concurrency 32 --requests 200
        [--deadline-s 120] [--steps 4] [--width 32 --height 32] [--max-seconds 600]

`concurrency` clients share `requests` submissions. Each client submits (POST /v1/images), polls its job to a
terminal state and fetches the PNG, then takes the next request. `--apis native,a1111,openai` rotates the requests
between that and the two synchronous compatible APIs (POST /sdapi/v1/txt2img, POST /v1/images/generations), whose
answer is the outcome: 200 with an image (succeeded), 504 (expired), 500 (failed). A 429 is counted and not retried: the client
waits the Retry-After (capped by --retry-cap-s) before its next request, as a polite client would. Connection
errors while polling or fetching the PNG (e.g. the server restarting) are retried until --max-seconds.

Prints a table, then one JSON line: latency percentiles of succeeded jobs (submit -> terminal state seen by
polling), throughput, 429/503 counts and how fast they were answered, failures, expirations and `lost` (accepted,
yet never seen in a terminal state, or reported unknown by the server: must be 0).

`service_check(pipeline, ...)` runs the issue's two service checks from code: it starts the real server
(`python -m koclip_lib.serve`) on a fresh SQLite file and a free port, runs this load test against it and, with
`kill_after_s`, kills the server with SIGKILL that many seconds in and restarts it on the same --db and port while
the load test rides it out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import math
import os
import random
import re
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import httpx

from .cli import CliParser

PROMPTS = ["a red star on the left", "a blue heart in the middle", "왼쪽에 빨간 별", "가운데 파란 하트",
           "a green circle on the right", "오른쪽에 초록 동그라미", "a yellow square", "노란 네모"]
TERMINAL = {"succeeded", "failed", "cancelled", "expired"}


@dataclass
class Tally:
    submitted: int = 0
    accepted: int = 0
    rejected_429: int = 0
    rejected_503: int = 0
    invalid: int = 0
    submit_errors: int = 0
    states: dict = field(default_factory=lambda: {s: 0 for s in sorted(TERMINAL)})
    lost: int = 0
    lost_ids: list = field(default_factory=list)
    image_errors: int = 0
    latencies: list = field(default_factory=list)  # succeeded jobs, seconds
    retry_after: list = field(default_factory=list)
    reject_latencies: list = field(default_factory=list)  # seconds from submit to the 429/503 answer
    poll_errors: int = 0
    oversize_refused: int = 0   # --oversize-frac requests answered 422 (the size limit)
    oversize_accepted: int = 0  # ... or admitted (a server without a size limit)
    cancels: int = 0            # --cancel-frac jobs the client cancelled right after their 202


def check_loopback(url: str) -> None:
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise SystemExit(f"refusing {url!r}: the load test only targets loopback addresses (127.0.0.1, ::1, localhost)")


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


async def wait_ready(client: httpx.AsyncClient, until: float) -> None:
    while time.monotonic() < until:
        try:
            if (await client.get("/readyz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.25)
    raise SystemExit("the server never became ready (/readyz)")


async def get_through_restarts(client: httpx.AsyncClient, path: str, until: float, tally: Tally,
                               poll_s: float) -> httpx.Response | None:
    """GET `path`, a dropped connection (e.g. the server restarting) counted and retried until `until`; None if no
    answer came by then."""
    while time.monotonic() < until:
        try:
            return await client.get(path)
        except httpx.TransportError:
            tally.poll_errors += 1
            await asyncio.sleep(min(1.0, poll_s * 4))
    return None


async def follow(client: httpx.AsyncClient, job_id: str, submitted: float, until: float, tally: Tally, poll_s: float):
    """Poll one accepted job to a terminal state (riding out server restarts), then fetch its image."""
    while time.monotonic() < until:
        r = await get_through_restarts(client, f"/v1/jobs/{job_id}", until, tally, poll_s)
        if r is None or r.status_code == 404:
            break  # never answered in time, or the server forgot an accepted job: lost
        if r.status_code != 200:
            tally.poll_errors += 1
            await asyncio.sleep(poll_s)
            continue
        state = r.json()["state"]
        if state in TERMINAL:
            tally.states[state] += 1
            if state == "succeeded":
                tally.latencies.append(time.monotonic() - submitted)
                if not await fetch_image(client, job_id, until, tally, poll_s):
                    tally.image_errors += 1
            return
        await asyncio.sleep(poll_s)
    tally.lost += 1
    tally.lost_ids.append(job_id)


async def fetch_image(client: httpx.AsyncClient, job_id: str, until: float, tally: Tally, poll_s: float) -> bool:
    """Fetch a succeeded job's PNG; True when it came. A dropped connection (the server restarting between the poll
    and the fetch) and a 503 (the store unreadable for now) are retried until `until`, as polling is."""
    while (img := await get_through_restarts(client, f"/v1/jobs/{job_id}/image", until, tally, poll_s)) is not None:
        if img.status_code != 503:
            return img.status_code == 200 and img.content.startswith(b"\x89PNG")
        tally.poll_errors += 1
        await asyncio.sleep(min(float(img.headers.get("Retry-After", 1)), 1.0))
    return False


def compatible_request(api: str, i: int, args) -> tuple[str, dict]:
    """(path, body) of request i through A1111's or OpenAI's API (synchronous: the answer carries the image)."""
    prompt = PROMPTS[i % len(PROMPTS)]
    if api == "a1111":
        body = {"prompt": prompt, "seed": i, "steps": args.steps, "cfg_scale": 5.0}
        return "/sdapi/v1/txt2img", body | {k: v for k, v in (("width", args.width), ("height", args.height)) if v}
    body = {"prompt": prompt, "n": 1, "response_format": "b64_json"}
    if args.width and args.height:
        body["size"] = f"{args.width}x{args.height}"
    return "/v1/images/generations", body


def sync_outcome(r: httpx.Response, submitted: float, tally: Tally) -> bool:
    """Count a synchronous API's answer; False when it was not an outcome (a refusal or an invalid request)."""
    if r.status_code == 200:
        tally.accepted += 1
        payload = r.json()
        images = payload.get("images") or [d.get("b64_json") for d in payload.get("data", [])]
        if not images or not all(images):
            tally.image_errors += 1
        tally.states["succeeded"] += 1
        tally.latencies.append(time.monotonic() - submitted)
        return True
    if r.status_code in (500, 504):
        tally.accepted += 1
        tally.states["failed" if r.status_code == 500 else "expired"] += 1
        return True
    return False


async def client_loop(client: httpx.AsyncClient, counter, args, until: float, tally: Tally) -> None:
    while time.monotonic() < until:
        try:
            i = next(counter)
        except StopIteration:
            return
        api = args.apis[i % len(args.apis)]
        # request i's fate, the same in every run: an oversize image, a cancel right after admission, or neither
        draw = random.Random(i).random()
        oversize = api == "native" and draw < args.oversize_frac
        cancel = api == "native" and not oversize and draw < args.oversize_frac + args.cancel_frac
        body = {"prompt": PROMPTS[i % len(PROMPTS)], "seed": i, "steps": args.steps, "deadline_s": args.deadline_s}
        if args.width:
            body["width"] = args.width
        if args.height:
            body["height"] = args.height
        if oversize:
            body["width"] = body["height"] = args.oversize_side
        path = "/v1/images"
        if api != "native":
            path, body = compatible_request(api, i, args)
        submitted = time.monotonic()
        tally.submitted += 1
        try:
            r = await client.post(path, json=body, timeout=None if api != "native" else 30)
        except httpx.TransportError:
            if api != "native":  # a synchronous request cut off: its job's outcome was never seen
                tally.lost += 1
                tally.lost_ids.append(f"{api} request {i}")
                continue
            tally.submit_errors += 1  # never accepted, so not lost; the client backs off (server restarting?)
            await asyncio.sleep(args.error_backoff_s)
            continue
        if api != "native" and sync_outcome(r, submitted, tally):
            continue
        if oversize and r.status_code == 422:
            tally.oversize_refused += 1
            continue
        if r.status_code == 202:
            tally.accepted += 1
            tally.oversize_accepted += oversize
            if cancel:
                with contextlib.suppress(httpx.TransportError):  # if the cancel is lost, the job just runs
                    await client.delete(f"/v1/jobs/{r.json()['job_id']}")
                    tally.cancels += 1
            await follow(client, r.json()["job_id"], submitted, until, tally, args.poll_s)
        elif r.status_code in (429, 503):
            tally.reject_latencies.append(time.monotonic() - submitted)
            if r.status_code == 429:
                tally.rejected_429 += 1
            else:
                tally.rejected_503 += 1
            retry = float(r.headers.get("Retry-After", 1))
            tally.retry_after.append(retry)
            await asyncio.sleep(min(retry, args.retry_cap_s))
        else:
            tally.invalid += 1
            print(f"unexpected {r.status_code}: {r.text[:200]}", file=sys.stderr)


async def run(args) -> dict:
    headers = {}
    if os.environ.get("KOCLIP_API_KEY"):
        headers["Authorization"] = f"Bearer {os.environ['KOCLIP_API_KEY']}"
    limits = httpx.Limits(max_connections=args.concurrency + 4)
    async with httpx.AsyncClient(base_url=args.url, headers=headers, timeout=30, limits=limits, trust_env=False) as client:
        started = time.monotonic()
        until = started + args.max_seconds
        await wait_ready(client, until)
        tally, counter = Tally(), iter(range(args.requests))
        t0 = time.monotonic()
        await asyncio.gather(*(client_loop(client, counter, args, until, tally) for _ in range(args.concurrency)))
        wall = time.monotonic() - t0
    finished = sum(tally.states.values())
    lat, rej = tally.latencies, tally.reject_latencies
    return {
        "requests": args.requests, "submitted": tally.submitted, "accepted": tally.accepted,
        "rejected_429": tally.rejected_429, "rejected_503": tally.rejected_503, "invalid": tally.invalid,
        "submit_errors": tally.submit_errors, **tally.states, "finished": finished, "lost": tally.lost,
        "lost_ids": tally.lost_ids[:20], "image_errors": tally.image_errors, "poll_errors": tally.poll_errors,
        "latency_s": {f"p{q}": round(percentile(lat, q), 3) if lat else None for q in (50, 95, 99)},
        "latency_max_s": round(max(lat), 3) if lat else None,
        "throughput_images_per_s": round(tally.states["succeeded"] / wall, 3) if wall else None,
        "retry_after_s": {"min": min(tally.retry_after, default=None), "max": max(tally.retry_after, default=None)},
        "rejected_answer_s": {"p50": round(percentile(rej, 50), 4) if rej else None,
                              "max": round(max(rej), 4) if rej else None},
        "wall_s": round(wall, 2), "concurrency": args.concurrency, "steps": args.steps,
        "size": [args.width, args.height], "deadline_s": args.deadline_s, "apis": args.apis,
        "oversize_refused": tally.oversize_refused, "oversize_accepted": tally.oversize_accepted, "cancels": tally.cancels,
    }


def print_table(result: dict) -> None:
    rows = [("requests / submitted", f"{result['requests']} / {result['submitted']}"),
            ("accepted (202)", result["accepted"]), ("rejected 429 (queue full)", result["rejected_429"]),
            ("rejected 503 (deadline)", result["rejected_503"]), ("submit errors (connection)", result["submit_errors"]),
            ("succeeded", result["succeeded"]), ("failed", result["failed"]), ("expired", result["expired"]),
            ("cancelled", result["cancelled"]), ("LOST (accepted, no terminal state)", result["lost"]),
            ("oversize refused / admitted", f"{result['oversize_refused']} / {result['oversize_accepted']}"),
            ("cancelled by the client after 202", result["cancels"]),
            ("image fetch errors", result["image_errors"]),
            ("latency p50 / p95 / p99 s", " / ".join(str(result["latency_s"][k]) for k in ("p50", "p95", "p99"))),
            ("throughput images/s", result["throughput_images_per_s"]),
            ("Retry-After min..max s", f"{result['retry_after_s']['min']}..{result['retry_after_s']['max']}"),
            ("429/503 answered in p50 / max s", f"{result['rejected_answer_s']['p50']} / {result['rejected_answer_s']['max']}"),
            ("wall s", result["wall_s"])]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = CliParser(prog="python -m koclip_lib.loadtest", description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--deadline-s", type=float, default=120.0)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--width", type=int)
    ap.add_argument("--height", type=int)
    ap.add_argument("--poll-s", type=float, default=0.2)
    ap.add_argument("--retry-cap-s", type=float, default=5.0, help="longest Retry-After a client honours")
    ap.add_argument("--error-backoff-s", type=float, default=2.0, help="pause after a connection error on submit")
    ap.add_argument("--max-seconds", type=float, default=600.0, help="hard bound on the whole run")
    ap.add_argument("--oversize-frac", type=float, default=0.0,
                    help="share of native requests asking for --oversize-side pixels a side (a size limit answers 422)")
    ap.add_argument("--oversize-side", type=int, default=2048)
    ap.add_argument("--cancel-frac", type=float, default=0.0, help="share of native requests cancelled right after their 202")
    ap.add_argument("--apis", default="native", help="comma-separated, requests rotate between them: native "
                                                      "(POST /v1/images + polling), a1111 (/sdapi/v1/txt2img), openai (/v1/images/generations)")
    args = ap.parse_args(argv)
    args.apis = [a.strip() for a in args.apis.split(",") if a.strip()]
    if not args.apis or set(args.apis) - {"native", "a1111", "openai"}:
        ap.error(f"--apis {','.join(args.apis)}: choose from native, a1111, openai")
    check_loopback(args.url)
    if not (1 <= args.concurrency <= 256 and 1 <= args.requests <= 10000):
        ap.error("--concurrency must be 1..256 and --requests 1..10000")
    return args


def main(argv: list[str] | None = None) -> dict:
    result = asyncio.run(run(parse_args(argv)))
    print_table(result)
    print(json.dumps(result, ensure_ascii=False))
    return result


# ---------------------------------------------------------------------------------------------------------------
# The service checks, re-runnable from code: a real server process, the load test, a kill -9 and a restart
# ---------------------------------------------------------------------------------------------------------------
class ServerProcess:
    """`python -m koclip_lib.serve` as a subprocess (one torch thread), its log in a file; restartable on one port."""

    def __init__(self, pipeline, db: Path, port: int, log_dir: Path, server_args: list[str] = ()):
        self.command = [sys.executable, "-m", "koclip_lib.serve", "--pipeline", str(Path(pipeline).resolve()),
                        "--db", str(db), "--port", str(port), *server_args]
        self.url, self.log_dir = f"http://127.0.0.1:{port}", log_dir
        self.proc: subprocess.Popen | None = None
        self.logs: list[Path] = []

    def start(self, timeout_s: float) -> float:
        """Start the server and wait for /readyz; returns the seconds it took."""
        log = self.log_dir / f"server-{len(self.logs) + 1}.log"
        self.logs.append(log)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT, env=env)
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.log_tail()}")
            if (self.readyz() or {}).get("ready"):
                return time.monotonic() - started
            time.sleep(0.25)
        raise RuntimeError(f"the server was not ready after {timeout_s:.0f} s:\n{self.log_tail()}")

    def readyz(self) -> dict | None:
        try:
            return httpx.get(self.url + "/readyz", timeout=2, trust_env=False).json()
        except (httpx.HTTPError, ValueError):
            return None

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, the worker dies mid-batch."""
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_tail(self, chars: int = 3000) -> str:
        return self.logs[-1].read_text(encoding="utf-8", errors="replace")[-chars:] if self.logs else ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def service_check(pipeline, requests: int = 200, concurrency: int = 32, steps: int = 4, deadline_s: float = 120.0,
                  kill_after_s: float | None = None, server_args: list[str] = (), loadtest_args: list[str] = (),
                  startup_timeout_s: float = 180.0) -> dict:
    """Start the service on `pipeline` (fresh SQLite job store, free port), load-test it and return the load test's
    result (`lost` must be 0) with a `server` entry, and a `restart` entry when `kill_after_s` is set: the server is
    killed with SIGKILL that many seconds into the load test (its /readyz queue and running counts read just before),
    restarted on the same --db and port, and the load test finishes against the new process; `resumed` is what the
    restarted server's log says it resumed ("resumed N accepted job(s)"). `db_states` counts the job store's rows by
    state after the run (`rerun` = jobs whose generation started more than once). The server is always stopped."""
    with tempfile.TemporaryDirectory(prefix="koclip-service-check-") as tmp:
        tmp = Path(tmp)
        server = ServerProcess(pipeline, tmp / "jobs.sqlite3", free_port(), tmp, list(server_args))
        args = parse_args(["--url", server.url, "--requests", str(requests), "--concurrency", str(concurrency),
                           "--steps", str(steps), "--deadline-s", str(deadline_s), *loadtest_args])
        try:
            ready_s = server.start(startup_timeout_s)
            pids = [server.proc.pid]
            outcome: dict = {}
            finished = threading.Event()

            def load_test():  # in a thread: asyncio.run needs a thread without a running loop (a notebook has one)
                try:
                    outcome["result"] = asyncio.run(run(args))
                except BaseException as exc:  # noqa: BLE001 - re-raised below, in the caller's thread
                    outcome["error"] = exc
                finally:
                    finished.set()

            thread = threading.Thread(target=load_test, name="loadtest", daemon=True)
            started = time.monotonic()
            thread.start()
            restart = None
            if kill_after_s is not None:
                restart = {"killed_after_s": None}  # stays None when the load test ends before the kill is due
                if not finished.wait(kill_after_s):
                    before = server.readyz() or {}
                    server.kill()
                    restart["killed_after_s"] = round(time.monotonic() - started, 2)
                    restart.update(queued_at_kill=before.get("queue"), running_at_kill=before.get("running"))
                    restart["restart_ready_s"] = round(server.start(startup_timeout_s), 2)  # same --db, same port
                    pids.append(server.proc.pid)
            thread.join()
            if "error" in outcome:
                raise outcome["error"]
            result = outcome["result"]
            if restart is not None:
                if restart["killed_after_s"] is not None:
                    log = server.logs[-1].read_text(encoding="utf-8", errors="replace")
                    found = re.search(r"resumed (\d+) accepted job", log)
                    restart["resumed"] = int(found.group(1)) if found else 0
                result["restart"] = restart
        finally:
            server.stop()
        with contextlib.closing(sqlite3.connect(tmp / "jobs.sqlite3")) as db:
            states = dict(db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())
            states["rerun"] = db.execute("SELECT COUNT(*) FROM jobs WHERE attempts > 1").fetchone()[0]
        result["db_states"] = states
        result["server"] = {"pids": pids, "ready_s": round(ready_s, 2), "command": " ".join(["python", *server.command[1:]])}
        return result


if __name__ == "__main__":
    main(sys.argv[1:])
