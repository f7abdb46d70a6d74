"""Load test for the image service (koclip_lib.serve), loopback only.

    python -m koclip_lib.loadtest --url http://127.0.0.1:8000 --concurrency 32 --requests 200
        [--deadline-s 120] [--steps 4] [--width 32 --height 32] [--max-seconds 600]

`concurrency` clients share `requests` submissions. Each client submits (POST /v1/images), polls its job to a
terminal state and fetches the PNG, then takes the next request. A 429 is counted and not retried: the client
waits the Retry-After (capped by --retry-cap-s) before its next request, as a polite client would. Connection
errors while polling (e.g. the server restarting) are retried until --max-seconds.

Prints a table, then one JSON line: latency percentiles of succeeded jobs (submit -> terminal state seen by
polling), throughput, 429/503 counts, failures, expirations and `lost` (accepted, yet never seen in a terminal
state, or reported unknown by the server: must be 0).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from urllib.parse import urlparse

import httpx

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
    poll_errors: int = 0


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


async def follow(client: httpx.AsyncClient, job_id: str, submitted: float, until: float, tally: Tally, poll_s: float):
    """Poll one accepted job to a terminal state (riding out server restarts), then fetch its image."""
    while time.monotonic() < until:
        try:
            r = await client.get(f"/v1/jobs/{job_id}")
        except httpx.TransportError:
            tally.poll_errors += 1
            await asyncio.sleep(min(1.0, poll_s * 4))
            continue
        if r.status_code == 404:
            break  # the server forgot an accepted job: lost
        if r.status_code != 200:
            tally.poll_errors += 1
            await asyncio.sleep(poll_s)
            continue
        state = r.json()["state"]
        if state in TERMINAL:
            tally.states[state] += 1
            if state == "succeeded":
                tally.latencies.append(time.monotonic() - submitted)
                try:
                    img = await client.get(f"/v1/jobs/{job_id}/image")
                    if img.status_code != 200 or not img.content.startswith(b"\x89PNG"):
                        tally.image_errors += 1
                except httpx.TransportError:
                    tally.image_errors += 1
            return
        await asyncio.sleep(poll_s)
    tally.lost += 1
    tally.lost_ids.append(job_id)


async def client_loop(client: httpx.AsyncClient, counter, args, until: float, tally: Tally) -> None:
    while time.monotonic() < until:
        try:
            i = next(counter)
        except StopIteration:
            return
        body = {"prompt": PROMPTS[i % len(PROMPTS)], "seed": i, "steps": args.steps, "deadline_s": args.deadline_s}
        if args.width:
            body["width"] = args.width
        if args.height:
            body["height"] = args.height
        submitted = time.monotonic()
        tally.submitted += 1
        try:
            r = await client.post("/v1/images", json=body)
        except httpx.TransportError:
            tally.submit_errors += 1  # never accepted, so not lost; the client backs off (server restarting?)
            await asyncio.sleep(args.error_backoff_s)
            continue
        if r.status_code == 202:
            tally.accepted += 1
            await follow(client, r.json()["job_id"], submitted, until, tally, args.poll_s)
        elif r.status_code in (429, 503):
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
    lat = tally.latencies
    return {
        "requests": args.requests, "submitted": tally.submitted, "accepted": tally.accepted,
        "rejected_429": tally.rejected_429, "rejected_503": tally.rejected_503, "invalid": tally.invalid,
        "submit_errors": tally.submit_errors, **tally.states, "finished": finished, "lost": tally.lost,
        "lost_ids": tally.lost_ids[:20], "image_errors": tally.image_errors, "poll_errors": tally.poll_errors,
        "latency_s": {f"p{q}": round(percentile(lat, q), 3) if lat else None for q in (50, 95, 99)},
        "latency_max_s": round(max(lat), 3) if lat else None,
        "throughput_images_per_s": round(tally.states["succeeded"] / wall, 3) if wall else None,
        "retry_after_s": {"min": min(tally.retry_after, default=None), "max": max(tally.retry_after, default=None)},
        "wall_s": round(wall, 2), "concurrency": args.concurrency, "steps": args.steps,
        "size": [args.width, args.height], "deadline_s": args.deadline_s,
    }


def print_table(result: dict) -> None:
    rows = [("requests / submitted", f"{result['requests']} / {result['submitted']}"),
            ("accepted (202)", result["accepted"]), ("rejected 429 (queue full)", result["rejected_429"]),
            ("rejected 503 (deadline)", result["rejected_503"]), ("submit errors (connection)", result["submit_errors"]),
            ("succeeded", result["succeeded"]), ("failed", result["failed"]), ("expired", result["expired"]),
            ("cancelled", result["cancelled"]), ("LOST (accepted, no terminal state)", result["lost"]),
            ("image fetch errors", result["image_errors"]),
            ("latency p50 / p95 / p99 s", " / ".join(str(result["latency_s"][k]) for k in ("p50", "p95", "p99"))),
            ("throughput images/s", result["throughput_images_per_s"]),
            ("Retry-After min..max s", f"{result['retry_after_s']['min']}..{result['retry_after_s']['max']}"),
            ("wall s", result["wall_s"])]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m koclip_lib.loadtest", description=__doc__.split("\n\n")[0])
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
    args = ap.parse_args(argv)
    check_loopback(args.url)
    if not (1 <= args.concurrency <= 256 and 1 <= args.requests <= 10000):
        ap.error("--concurrency must be 1..256 and --requests 1..10000")
    result = asyncio.run(run(args))
    print_table(result)
    print(json.dumps(result, ensure_ascii=False))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
