"""Worker kill -9s during a wave through the lab's real components (issue 11, the lab run).

    flock /tmp/cutover-libvirt.lock .venv/bin/python -m bench.lab_chaos
        [--apps 20] [--concurrency 4] [--kills 8] [--smoke-fail 2] [--window-unhealthy 2]
        [--window-minutes 0.25] [--disk-mib 16] [--seed 1] [--out .cutover/lab-chaos.json]

Brings the lab up with `--apps` applications, starts the shipped worker (`cutover worker`,
its own process group), runs them as one wave (`cutover wave run`, cap `--concurrency`) and,
while cutovers run, kill -9s the worker `--kills` times at random instants (6-18 s apart),
starting a new one at once. Lab knobs on a few applications: `--smoke-fail` targets answer
500 from the start (smoke test fails -> rollback), `--window-unhealthy` targets turn
unhealthy once their rollback window opens (HAProxy takes them out, the criterion
`served_through_load_balancer` fails -> rollback). The rest are meant to complete.

At the end, per cutover: outcome (and whether it is the expected one), seconds from its start
to its final state, the kills it lived through, and the lab's world (`check_world`: HAProxy
sends traffic to exactly the side the outcome names, DNS answers that side's address, users
get HTTP 200 from that side with the source disk's data, the source disk is unchanged).
Per kill: the cutovers with an activity or workflow task in flight, and how long each waited
for the dead worker: from the kill to the next activity start in its history (or its close).
Prints a table, writes JSON, then `lab down`. Stop a lab you have up first (`cutover lab down`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio.api.enums.v1 import EventType, PendingActivityState
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle

from cutover.lab import stack as lab
from cutover.lab.demo import check_world
from cutover.models import CutoverResult, CutoverStatus
from cutover.temporal import connect

CUTOVER = str(Path(sys.executable).parent / "cutover")
ROOT = Path(__file__).resolve().parents[1]
ENV = {
    **os.environ,
    "PYTHONPATH": str(ROOT),  # the worker runs this checkout's code
    "TEMPORAL_ADDRESS": f"127.0.0.1:{lab.TEMPORAL_PORT}",
}
#: Seconds between kills (the first after the same): random in this range.
KILL_GAP = (6.0, 18.0)
#: The wave gives up after this long; what is still open then is STUCK.
WAVE_LIMIT = 420.0
#: The wave workflow's key beside the applications' names.
WAVE = "(wave)"
FINAL = {
    WorkflowExecutionStatus.COMPLETED,
    WorkflowExecutionStatus.FAILED,
    WorkflowExecutionStatus.CANCELED,
    WorkflowExecutionStatus.TERMINATED,
    WorkflowExecutionStatus.TIMED_OUT,
}


def start_worker(log: Path) -> tuple[subprocess.Popen[bytes], float]:
    """The shipped worker in its own process group; returns once it polls (and when)."""
    before = log.read_bytes().count(b"worker started") if log.exists() else 0
    with log.open("ab") as out:
        proc = subprocess.Popen([CUTOVER, "worker"], stdout=out, stderr=subprocess.STDOUT,
                                env=ENV, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 60
    while log.read_bytes().count(b"worker started") <= before:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the worker did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)
    return proc, time.time()


async def in_flight(handles: dict[str, WorkflowHandle[Any, Any]],
                    open_: set[str]) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Per open workflow: its phase and what the worker about to die holds (activities, a
    workflow task), with the start times of the attempts running (an attempt a later kill
    ends never reaches the history: only the last attempt's start is recorded)."""

    async def one(name: str) -> tuple[str, dict[str, Any]]:
        h = handles[name]
        try:
            d = (await h.describe(rpc_timeout=timedelta(seconds=3))).raw_description
        except Exception as exc:
            return name, {"held": [f"describe failed: {type(exc).__name__}"], "starts": []}
        phase = None
        if name != WAVE:
            with contextlib.suppress(Exception):
                st = await h.query("status", result_type=CutoverStatus,
                                   rpc_timeout=timedelta(seconds=2))  # fmt: skip
                phase = st.phase.value
        running = [pa for pa in d.pending_activities
                   if pa.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED]  # fmt: skip
        held = [f"{pa.activity_type.name}#{pa.attempt}" + ("" if pa in running else "(queued)")
                for pa in d.pending_activities]  # fmt: skip
        if d.HasField("pending_workflow_task"):
            held.append("workflow-task")
        starts = [pa.last_started_time.ToMicroseconds() / 1e6 for pa in running]
        return name, {"phase": phase, "held": held, "starts": starts}

    got = await asyncio.gather(*(one(n) for n in sorted(open_)))
    return dict(got)


async def history_times(handle: WorkflowHandle[Any, Any]) -> dict[str, Any]:
    """From a history: activity start times (the attempt recorded: the last), workflow task
    start times, and the close time."""
    acts, tasks, closed = [], [], None
    async for ev in handle.fetch_history_events():
        t = ev.event_time.ToMicroseconds() / 1e6
        if ev.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            acts.append(t)
        elif ev.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED:
            tasks.append(t)
        elif ev.event_type in (
            EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED,
            EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED,
            EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED,
            EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED,
            EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TIMED_OUT,
        ):
            closed = t
    return {"activities": sorted(acts), "tasks": sorted(tasks), "closed": closed}


async def drive(state: dict[str, Any], names: list[str], kills: int, unhealthy: set[str],
                rng: random.Random, log: Path) -> dict[str, Any]:  # fmt: skip
    worker, _ = start_worker(log)
    started = await asyncio.to_thread(
        subprocess.run,
        [CUTOVER, "wave", "run", str(lab.LAB / "wave.yaml"), "--site", state["site"], "--json"],
        capture_output=True, text=True, env=ENV, check=False,
    )  # fmt: skip
    if started.returncode != 0:
        raise RuntimeError(f"cutover wave run failed: {started.stderr or started.stdout}")
    wave_id = json.loads(started.stdout)["workflowId"]
    t0 = time.time()
    client: Client = await connect(f"127.0.0.1:{lab.TEMPORAL_PORT}", "default", wait_seconds=10)
    handles: dict[str, WorkflowHandle[Any, Any]] = {
        n: client.get_workflow_handle(f"cutover-{n}", result_type=CutoverResult) for n in names
    }
    watched = {**handles, WAVE: client.get_workflow_handle(wave_id)}
    seen: dict[str, dict[str, float | None]] = {}  # name -> start / close (epoch s)
    knobbed: set[str] = set()
    kill_log: list[dict[str, Any]] = []
    next_kill = time.monotonic() + rng.uniform(*KILL_GAP)
    try:
        while time.time() - t0 < WAVE_LIMIT:
            open_: set[str] = set()
            for n, h in handles.items():
                if n in seen and seen[n]["close"] is not None:
                    continue
                try:
                    d = await h.describe(rpc_timeout=timedelta(seconds=3))
                except Exception:
                    continue  # not started by the wave yet
                seen[n] = {
                    "start": d.start_time.timestamp(),
                    "close": d.close_time.timestamp() if d.status in FINAL and d.close_time
                    else None,
                }  # fmt: skip
                if seen[n]["close"] is None:
                    open_.add(n)
                    if n in unhealthy and n not in knobbed:
                        try:
                            st = await h.query("status", result_type=CutoverStatus,
                                               rpc_timeout=timedelta(seconds=2))  # fmt: skip
                        except Exception:
                            continue  # no worker to answer a query right now
                        if st.phase.value == "ROLLBACK_WINDOW":
                            lab.set_knob(n, "target", unhealthy=True)
                            knobbed.add(n)
            if len(seen) == len(names) and all(s["close"] is not None for s in seen.values()):
                break
            if len(kill_log) < kills and open_ and time.monotonic() >= next_kill:
                held = await in_flight(watched, open_ | {WAVE})
                os.killpg(worker.pid, signal.SIGKILL)
                killed_at = time.time()
                worker.wait()
                worker, back = start_worker(log)
                kill_log.append({"at": killed_at, "sinceWaveStart": round(killed_at - t0, 1),
                                 "newWorkerPolling": round(back - killed_at, 1),
                                 "open": sorted(open_), "inFlight": held})  # fmt: skip
                busy = {n: h["held"] for n, h in held.items() if h["held"]}
                print(f"  [{killed_at - t0:5.0f}s] kill -9 #{len(kill_log)}: "
                      f"{len(open_)} open, in flight: {busy}", flush=True)  # fmt: skip
                next_kill = time.monotonic() + rng.uniform(*KILL_GAP)
            await asyncio.sleep(1)
        wave = client.get_workflow_handle(wave_id)
        with contextlib.suppress(Exception):  # the wave ends once its last child has
            await asyncio.wait_for(wave.result(), 60)
        wave_desc = await wave.describe()
        wave_status = wave_desc.status.name if wave_desc.status else "?"
        results: dict[str, CutoverResult | None] = {}
        for n, h in handles.items():
            if n in seen and seen[n]["close"] is not None:
                try:
                    results[n] = await h.result()
                except Exception:
                    results[n] = None
        histories = {n: await history_times(watched[n]) for n in [*seen, WAVE]}
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(30)
    return {"waveId": wave_id, "waveStatus": wave_status, "t0": t0, "seen": seen,
            "results": results, "histories": histories, "kills": kill_log,
            "knobbed": sorted(knobbed)}  # fmt: skip


def waits(run: dict[str, Any]) -> list[dict[str, Any]]:
    """Per kill and workflow with something in flight, seconds the dead worker cost it: with
    an activity held, from the kill to its next activity start (from the history, or seen
    running at a later kill); with only a workflow task held, to the next workflow task
    start (a new worker took it). Or to its close, when nothing started before it."""
    out = []
    for i, k in enumerate(run["kills"]):
        for n, snap in k["inFlight"].items():
            if not snap["held"]:
                continue
            h = run["histories"].get(n, {"activities": [], "tasks": [], "closed": None})
            if snap["held"] == ["workflow-task"]:
                kind, starts = "workflow task start", h["tasks"]
            else:
                later = [t for k2 in run["kills"][i + 1 :]
                         for t in k2["inFlight"].get(n, {}).get("starts", [])]  # fmt: skip
                kind, starts = "activity start", [*h["activities"], *later]
            nxt = min((t for t in starts if t > k["at"]), default=None)
            end = nxt if nxt is not None else h["closed"]
            out.append({"kill": i + 1, "workflow": run["waveId"] if n == WAVE else f"cutover-{n}",
                        "phase": snap.get("phase"), "inFlight": snap["held"],
                        "next": kind if nxt else "close",
                        "seconds": round(end - k["at"], 1) if end else None})  # fmt: skip
    return out


def run(apps: int, concurrency: int, kills: int, smoke_fail: int, window_unhealthy: int,
        window: float, disk_mib: int, seed: int) -> dict[str, Any]:  # fmt: skip
    rng = random.Random(seed)
    # the worker runs the work tree: name its commit and what is uncommitted in it
    code = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                          capture_output=True, text=True, check=False).stdout.strip()  # fmt: skip
    dirty = subprocess.run(["git", "-C", str(ROOT), "diff", "--name-only", "HEAD"],
                           capture_output=True, text=True, check=False).stdout.split()  # fmt: skip
    lab_apps = [lab.App(f"app{i:02d}", i, "completes") for i in range(apps)]
    names = [a.name for a in lab_apps]
    picked = rng.sample(names, smoke_fail + window_unhealthy)
    failing, unhealthy = set(picked[:smoke_fail]), set(picked[smoke_fail:])
    expected = {n: "ROLLED_BACK" if n in failing | unhealthy else "COMPLETED" for n in names}
    log = Path(tempfile.mkdtemp(prefix="lab-chaos-")) / "worker.log"
    t_start = time.monotonic()
    state = lab.up(
        lab_apps, disk_mib=disk_mib, concurrency=concurrency, window_minutes=window, day_two=False
    )  # the wave only: no landing zone
    try:
        for n in failing:
            lab.set_knob(n, "target", failing=True)
        r = asyncio.run(drive(state, names, kills, unhealthy, rng, log))
        outcomes = {n: (res.outcome.value if res else "?") for n, res in r["results"].items()}
        for n in names:
            outcomes.setdefault(n, "STUCK")
        # the world is judged as users see it: knobs off (a rolled-back target no longer runs)
        for n in failing | unhealthy:
            lab.set_knob(n, "target")
        problems = check_world(state, outcomes, {a["name"]: a["seedDigest"] for a in state["apps"]})
    finally:
        lab.down(quiet=True)
    total = time.monotonic() - t_start
    per: list[dict[str, Any]] = []
    for n in names:
        s = r["seen"].get(n, {})
        start, close = s.get("start"), s.get("close")
        res = r["results"].get(n)
        lived = [i + 1 for i, k in enumerate(r["kills"]) if n in k["open"]]
        per.append({
            "cutover": f"cutover-{n}",
            "knob": "smoke 500" if n in failing else "window unhealthy" if n in unhealthy else "",
            "expected": expected[n], "outcome": outcomes[n],
            "secondsToFinal": round(close - start, 1) if start and close else None,
            "killsLived": lived,
            "reason": res.reason if res else None,
            "world": [p for p in problems if p.startswith(f"{n}:")],
        })  # fmt: skip
    w = waits(r)
    known = [x for x in w if x["seconds"] is not None]
    longest = max(known, key=lambda x: x["seconds"]) if known else None
    counts: dict[str, int] = {}
    for p in per:
        counts[p["outcome"]] = counts.get(p["outcome"], 0) + 1
    secs = sorted(p["secondsToFinal"] for p in per if p["secondsToFinal"] is not None)
    return {
        "code": code, "uncommitted": dirty,
        "apps": apps, "concurrency": concurrency, "seed": seed, "windowMinutes": window,
        "diskMiB": disk_mib, "runSeconds": round(total, 1), "waveId": r["waveId"],
        "waveStatus": r["waveStatus"], "workerLog": str(log),
        "outcomes": counts,
        "unexpectedOutcomes": [p["cutover"] for p in per if p["outcome"] != p["expected"]],
        "worldViolations": [x for p in per for x in p["world"]],
        "unattributedWorldProblems": [x for x in problems
                                      if not any(x.startswith(f"{n}:") for n in names)],
        "secondsToFinal": {"median": secs[len(secs) // 2] if secs else None,
                           "max": secs[-1] if secs else None},
        "kills": [{k: v for k, v in k.items() if k != "open"} for k in r["kills"]],
        "deadWorkerWaits": w,
        "longestDeadWorkerWait": longest,
        "cutovers": per,
    }  # fmt: skip


def table(out: dict[str, Any]) -> str:
    rows = ["| cutover | knob | expected | outcome | s to final | kills lived | world |",
            "|---|---|---|---|---|---|---|"]  # fmt: skip
    for p in out["cutovers"]:
        rows.append(
            f"| {p['cutover']} | {p['knob']} | {p['expected']} | {p['outcome']} | "
            f"{p['secondsToFinal']} | {','.join(map(str, p['killsLived'])) or '-'} | "
            f"{'; '.join(x.split(': ', 1)[1] for x in p['world']) or 'ok'} |"
        )
    return "\n".join(rows)


def kill_table(out: dict[str, Any]) -> str:
    rows = ["| kill | s into wave | worker back after | in flight | longest wait |",
            "|---|---|---|---|---|"]  # fmt: skip
    for i, k in enumerate(out["kills"], 1):
        ws = [w for w in out["deadWorkerWaits"] if w["kill"] == i and w["seconds"] is not None]
        held = "; ".join(f"{n}: {', '.join(h['held'])}" for n, h in k["inFlight"].items()
                         if h["held"])  # fmt: skip
        phases = sorted({h["phase"] for h in k["inFlight"].values() if h.get("phase")})
        longest = max(ws, key=lambda w: w["seconds"]) if ws else None
        rows.append(
            f"| {i} | {k['sinceWaveStart']} | {k['newWorkerPolling']} s | "
            f"{held or 'nothing (' + ', '.join(phases) + ')'} | "
            + (f"{longest['seconds']} s ({longest['workflow']})" if longest else "-")
            + " |"
        )
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--apps", type=int, default=20)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--kills", type=int, default=8)
    ap.add_argument("--smoke-fail", type=int, default=2)
    ap.add_argument("--window-unhealthy", type=int, default=2)
    ap.add_argument("--window-minutes", type=float, default=0.25)
    ap.add_argument("--disk-mib", type=int, default=64)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=lab.LAB.parent / "lab-chaos.json")
    a = ap.parse_args()
    out = run(a.apps, a.concurrency, a.kills, a.smoke_fail, a.window_unhealthy,
              a.window_minutes, a.disk_mib, a.seed)  # fmt: skip
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=2, default=str))
    print(table(out) + "\n\n" + kill_table(out) + "\n")
    for k in ("runSeconds", "waveId", "waveStatus", "outcomes", "unexpectedOutcomes",
              "worldViolations", "unattributedWorldProblems", "secondsToFinal",
              "longestDeadWorkerWait"):  # fmt: skip
        print(f"{k:26} {out[k]}")
    print(f"{'kills':26} {len(out['kills'])}; JSON: {a.out}")


if __name__ == "__main__":
    main()
