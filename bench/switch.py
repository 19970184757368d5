"""Traffic switch latency and requests lost, through a real HAProxy under load.

    .venv/bin/python -m bench.switch [--rounds 10] [--threads 4] [--json]

Starts the test lab (tests/haproxy_fixtures.py: `haproxy -W` in master-worker mode, a
backend with a `source` and a `target` Python HTTP server, health checks every 200 ms, rise
2), puts a steady load through the frontend (`--threads` keep-alive clients, each sending
its next request when the last is answered), and runs `--rounds` times: the switch
(`update_load_balancer`), then the rollback (`restore_load_balancer`), each timed as the
activity call's wall time. Reports median, p95 (nearest rank) and max per operation, the
requests sent and lost (target: 0), and request latency during switches against the rest.

`--control` also measures what the procedure protects against: a naive `set server state
ready` of a target whose address has nothing listening, under the same load. HAProxy marks
a server leaving maintenance UP before any check ran, so it gets traffic until the first
check fails.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

from activities.loadbalancer import LoadBalancerActivities
from cutover.catalog import Compensation, Step
from tests.haproxy_fixtures import APP, HAProxyLab, LoadGen, Sample, start_lab


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _ms(samples: list[Sample]) -> dict[str, float]:
    lat = [(s.done - s.sent) * 1000 for s in samples]
    if not lat:
        return {"p50_ms": 0.0, "p99_ms": 0.0}
    return {"p50_ms": round(_p(lat, 0.5), 2), "p99_ms": round(_p(lat, 0.99), 2)}


def control(lab: HAProxyLab, threads: int) -> dict[str, Any]:
    """A naive switch to a dead address: `state ready` alone, under load."""
    rt = lab.runtime()
    host, port = lab.placeholder.rsplit(":", 1)
    with LoadGen(lab.frontend_port, threads=threads, max_seconds=10) as load:
        load.wait_for(200)
        rt.command(f"set server {APP}/target addr {host} port {port}")
        rt.command(f"set server {APP}/target state ready")
        time.sleep(0.5)
        rt.command(f"set server {APP}/target state maint")
        load.wait_for(200)
    failed = [s for s in load.samples if s.served_by is None]
    return {"requests": len(load.samples), "lost": len(failed)}


def measure(rounds: int, threads: int, with_control: bool) -> dict[str, Any]:
    acts = LoadBalancerActivities()
    with tempfile.TemporaryDirectory(prefix="bench-switch-") as d, start_lab(Path(d)) as lab:
        switch_s: list[float] = []
        rollback_s: list[float] = []
        health_s: list[float] = []
        windows: list[tuple[float, float]] = []
        bound = {"max_requests": 2000 + 5000 * rounds, "max_seconds": 60 + 5 * rounds}
        with LoadGen(lab.frontend_port, threads=threads, **bound) as load:
            load.wait_for(300)
            for _ in range(rounds):
                inp = lab.step_input(Step.UPDATE_LOAD_BALANCER, target_address=lab.target.address)
                t0 = time.monotonic()
                res = acts.update_load_balancer(inp)
                t1 = time.monotonic()
                assert res.changed, res
                switch_s.append(t1 - t0)
                health_s.append(float(res.details["health_wait_s"]))
                windows.append((t0, t1))
                load.wait_for(200)
                inp = lab.step_input(Compensation.RESTORE_LOAD_BALANCER)
                t0 = time.monotonic()
                res = acts.restore_load_balancer(inp)
                t1 = time.monotonic()
                assert res.changed, res
                rollback_s.append(t1 - t0)
                windows.append((t0, t1))
                load.wait_for(200)
        samples = load.samples
        during = [s for s in samples if any(a <= s.sent <= b for a, b in windows)]
        steady = [s for s in samples if not any(a <= s.sent <= b for a, b in windows)]
        span = samples[-1].done - samples[0].sent
        out: dict[str, Any] = {
            "rounds": rounds,
            "threads": threads,
            "ops": {
                name: {
                    "median_s": round(statistics.median(v), 3),
                    "p95_s": round(_p(v, 0.95), 3),
                    "max_s": round(max(v), 3),
                }
                for name, v in (
                    ("switch", switch_s),
                    ("rollback", rollback_s),
                    ("switch health wait", health_s),
                )
            },
            "requests": len(samples),
            "requests_during_switches": len(during),
            "lost": sum(1 for s in samples if s.served_by is None),
            "errors": sorted({s.error or "" for s in samples if s.served_by is None})[:5],
            "rps": round(len(samples) / span, 1),
            "latency_steady": _ms(steady),
            "latency_during_switches": _ms(during),
        }
        if with_control:
            out["control_naive_ready_to_dead_target"] = control(lab, threads)
        return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--control", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)  # unwinds: the lab stops HAProxy by its PID

    signal.signal(signal.SIGTERM, stop)
    r = measure(args.rounds, args.threads, args.control)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0 if r["lost"] == 0 else 1
    print(f"{r['rounds']} rounds, {r['threads']} load threads, {r['rps']} req/s through HAProxy")
    print("| operation | median s | p95 s | max s |")
    print("|---|---|---|---|")
    for name, v in r["ops"].items():
        print(f"| {name} | {v['median_s']} | {v['p95_s']} | {v['max_s']} |")
    print(
        f"requests: {r['requests']} ({r['requests_during_switches']} sent during a switch), "
        f"lost: {r['lost']} (target 0) {r['errors'] or ''}"
    )
    s, d = r["latency_steady"], r["latency_during_switches"]
    print(
        f"request latency p50/p99 ms: steady {s['p50_ms']}/{s['p99_ms']}, "
        f"during switches {d['p50_ms']}/{d['p99_ms']}"
    )
    if "control_naive_ready_to_dead_target" in r:
        c = r["control_naive_ready_to_dead_target"]
        print(
            f"control, naive `state ready` to a dead target: {c['lost']} of {c['requests']} "
            "requests lost"
        )
    return 0 if r["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
