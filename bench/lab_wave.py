"""A wave of small applications through the lab, under a concurrency cap (issue 6).

    .venv/bin/python -m bench.lab_wave [--apps 20] [--concurrency 4] [--disk-mib 16]
                                       [--window-minutes 0.1] [--json]

Brings the lab up with `--apps` applications (all meant to complete), starts the shipped
worker, runs the wave through `cutover wave run --wait`, and reports: lab-up seconds, wave
wall time, applications per minute, and the per-application downtime distribution (median,
p95, max), warm phase and window seconds, from the cutovers' results (their histories).
Then `lab down`. Every real component takes part: the simulator's datastore reads, QEMU
domains (KVM here), HAProxy, BIND. Stop a lab you have up first (`cutover lab down`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cutover.lab import stack as lab
from cutover.lab.demo import phases
from cutover.models import CutoverResult
from cutover.temporal import connect

CUTOVER = str(Path(sys.executable).parent / "cutover")


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


async def results(names: list[str]) -> list[CutoverResult]:
    client = await connect(f"127.0.0.1:{lab.TEMPORAL_PORT}", "default", wait_seconds=10)
    out = []
    for n in names:
        h = client.get_workflow_handle(f"cutover-{n}", result_type=CutoverResult)
        out.append(await h.result())
    return out


def run(apps: int, concurrency: int, disk_mib: int, window: float) -> dict[str, Any]:
    names = [lab.App(f"app{i:02d}", i, "completes") for i in range(apps)]
    t0 = time.monotonic()
    state = lab.up(
        names, disk_mib=disk_mib, concurrency=concurrency, window_minutes=window, day_two=False
    )  # the wave only: no landing zone
    t_up = time.monotonic() - t0
    log = lab.LAB / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen([CUTOVER, "worker"], stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)  # fmt: skip
    try:
        while b"worker started" not in log.read_bytes():
            time.sleep(0.1)
        t1 = time.monotonic()
        proc = subprocess.run(
            [CUTOVER, "wave", "run", str(lab.LAB / "wave.yaml"), "--site", state["site"],
             "--wait", "--json"], capture_output=True, text=True,
        )  # fmt: skip
        wall = time.monotonic() - t1
        if proc.returncode not in (0, 1):
            raise RuntimeError(f"wave run failed: {proc.stderr}")
        res = asyncio.run(results([a.name for a in names]))
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(30)
        lab.down(quiet=True)
    ph = [phases(r) for r in res]
    down = [p["downtime"] for p in ph]
    outcomes: dict[str, int] = {}
    for r in res:
        outcomes[r.outcome.value] = outcomes.get(r.outcome.value, 0) + 1
    return {
        "apps": apps,
        "concurrency": concurrency,
        "diskMiB": disk_mib,
        "windowMinutes": window,
        "labUpSeconds": round(t_up, 1),
        "waveSeconds": round(wall, 1),
        "appsPerMinute": round(apps / wall * 60, 2),
        "outcomes": outcomes,
        "downtimeSeconds": {"median": round(statistics.median(down), 2),
                            "p95": round(pct(down, 0.95), 2), "max": round(max(down), 2)},
        "warmSecondsMedian": round(statistics.median(p["warm"] for p in ph), 2),
        "windowSecondsMedian": round(statistics.median(p["window"] for p in ph), 2),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--apps", type=int, default=20)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--disk-mib", type=int, default=64)
    ap.add_argument("--window-minutes", type=float, default=0.1)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    out = run(a.apps, a.concurrency, a.disk_mib, a.window_minutes)
    print(json.dumps(out, indent=2) if a.json else "\n".join(f"{k:22} {v}" for k, v in out.items()))


if __name__ == "__main__":
    main()
