"""Smoke test overhead: our SLO sampler against a bare loop sending the same requests.

    .venv/bin/python -m bench.smoke [--n 1000] [--concurrency 1,4] [--rounds 3] [--json]

Starts a local HTTP backend in a child process (http.server, threaded, Nagle off, answers
`ok` at once; killed by its PID at the end), so the server's work does not share this
process's GIL. For each concurrency it times, `--rounds` times, the order sampler, bare,
activity, activity, bare, sampler (mirrored, so a linear drift cancels):

- sampler: `activities.checks.sample_http` with N samples (what `smoke_test` and the SLO
  probes run): per-request deadline, latency and error bookkeeping, percentiles;
- bare: the same N GETs (fresh connection each, same headers, body read), from the same
  number of threads, keeping nothing;
- activity: the `smoke_test` activity itself (`SmokeActivities().smoke_test`, in a
  temporalio ActivityEnvironment) with `smokeTest.samples = N`.

Reported per side: total wall seconds, requests/s, and this (client) process's CPU time per
request, which other load on the machine disturbs less than wall time; then the sampler/bare
and activity/bare wall-time ratios and the sampler/bare CPU ratio (1.00 = no overhead).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import http.server
import itertools
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from temporalio.testing import ActivityEnvironment

from activities.smoke import SmokeActivities
from adapters.probes.http import sample_http
from cutover.models import StepContext, StepInput
from cutover.runbook import Runbook
from cutover.site import SiteConfig


class _Handler(http.server.BaseHTTPRequestHandler):
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512


def serve() -> None:
    """The backend (child process): print the port, serve until killed."""
    srv = _Server(("127.0.0.1", 0), _Handler)
    print(srv.server_address[1], flush=True)
    srv.serve_forever()


def bare(host: str, port: int, path: str, n: int, concurrency: int) -> None:
    """The same GETs as the sampler sends, keeping nothing."""
    counter = itertools.count()

    def worker() -> None:
        while next(counter) < n:
            conn = http.client.HTTPConnection(host, port, timeout=10)
            conn.request("GET", path, headers={"Connection": "close", "Accept": "*/*"})
            resp = conn.getresponse()
            resp.read()
            conn.close()

    if concurrency == 1:
        worker()  # as the sampler does: no thread for one worker
        return
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def smoke_input(address: str, n: int, concurrency: int) -> StepInput:
    rb = Runbook.model_validate(
        {
            "application": "bench",
            "wave": 0,
            "sourcePlatform": "vmware-vsphere",
            "sourceCluster": "c",
            "targetPlatform": "kvm-libvirt",
            "rollbackWindowMinutes": 1,
            "cutoverSteps": ["quiesce_application"],
            "smokeTest": {"path": "/", "samples": n, "concurrency": concurrency},
        }
    )
    ctx = StepContext(
        workflowId="cutover-bench",
        application="bench",
        wave="0",
        runbook=rb,
        site=SiteConfig(),
        facts={"target_address": address},
    )
    return StepInput(step="smoke_test", context=ctx)


def timed(fn: Callable[[], Any]) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds, all threads; the backend is a child)."""
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - start, time.process_time() - cpu


def measure(port: int, n: int, concurrency: int, rounds: int) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}/"
    wall: dict[str, float] = {"sampler": 0.0, "bare": 0.0, "activity": 0.0}
    cpu: dict[str, float] = dict.fromkeys(wall, 0.0)
    p95s: list[float] = []

    def sampler() -> None:
        s = sample_http(url, samples=n, concurrency=concurrency, timeout=10)
        if s.errors:
            raise SystemExit(f"the backend failed {s.errors} requests: {s.describe_errors()}")
        if s.p95 is not None:
            p95s.append(s.p95)

    inp = smoke_input(f"127.0.0.1:{port}", n, concurrency)
    env = ActivityEnvironment()

    def activity() -> None:
        asyncio.run(env.run(SmokeActivities().smoke_test, inp))

    # warm-up (imports, thread creation, the backend's first connections)
    sample_http(url, samples=min(n, 50), concurrency=concurrency, timeout=10)
    sides: dict[str, Callable[[], Any]] = {
        "sampler": sampler,
        "bare": lambda: bare("127.0.0.1", port, "/", n, concurrency),
        "activity": activity,
    }
    # Mirrored order, so each side's mean position is the same and a linear drift cancels.
    order = ["sampler", "bare", "activity", "activity", "bare", "sampler"]
    for _ in range(rounds):
        for side in order:
            w, c = timed(sides[side])
            wall[side] += w
            cpu[side] += c
    runs = {side: 2 * rounds for side in wall}
    return {
        "concurrency": concurrency,
        "requests_per_run": n,
        "sides": {
            side: {
                "runs": runs[side],
                "wall_s": round(wall[side], 3),
                "per_run_s": round(wall[side] / runs[side], 4),
                "requests_per_s": round(n * runs[side] / wall[side], 1),
                "client_cpu_us_per_request": round(cpu[side] / (n * runs[side]) * 1e6, 1),
            }
            for side in wall
        },
        "sampler_over_bare": round(
            (wall["sampler"] / runs["sampler"]) / (wall["bare"] / runs["bare"]), 3
        ),
        "sampler_over_bare_cpu": round(cpu["sampler"] / cpu["bare"], 3),
        "activity_over_bare": round(
            (wall["activity"] / runs["activity"]) / (wall["bare"] / runs["bare"]), 3
        ),
        "sampler_p95_ms_median": round(sorted(p95s)[len(p95s) // 2], 2) if p95s else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--n", type=int, default=1000, help="requests per run (default 1000)")
    ap.add_argument("--concurrency", default="1,4", help="comma-separated (default 1,4)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of 2 runs per side")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve()
        return
    child = subprocess.Popen(
        [sys.executable, "-m", "bench.smoke", "--serve"],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        results = [measure(port, args.n, int(c), args.rounds) for c in args.concurrency.split(",")]
    finally:
        os.kill(child.pid, signal.SIGTERM)
        child.wait()
    report = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "results": results,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(
        f"smoke test overhead, {args.n} requests per run, Python {report['python']}, "
        f"{report['cpus']} CPUs, {args.rounds} rounds"
    )
    for r in results:
        print(f"\nconcurrency {r['concurrency']}:")
        print(
            f"  {'side':<9} {'runs':>4} {'wall s':>8} {'per run s':>10} {'req/s':>9} "
            f"{'client CPU us/req':>18}"
        )
        for side, m in r["sides"].items():
            print(
                f"  {side:<9} {m['runs']:>4} {m['wall_s']:>8.3f} {m['per_run_s']:>10.4f} "
                f"{m['requests_per_s']:>9.1f} {m['client_cpu_us_per_request']:>18.1f}"
            )
        print(f"  sampler/bare time ratio: {r['sampler_over_bare']:.3f}")
        print(f"  sampler/bare client CPU ratio: {r['sampler_over_bare_cpu']:.3f}")
        print(f"  activity/bare time ratio: {r['activity_over_bare']:.3f}")
        print(f"  sampler p95 (median run): {r['sampler_p95_ms_median']} ms")


if __name__ == "__main__":
    main()
