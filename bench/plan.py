"""`cutover plan` at the seed's scale: time and peak memory (issue 14).

    .venv/bin/python -m bench.plan [--vms 5000] [--apps 1800] [--rows 20000] [--runs 2]

Generates an RVTools export (tests/rvtools_fixtures.py: every sheet the reader uses, the
current header variant) and the dependency rows, half as an Azure Migrate export (matched
by name and IP) and half as a plain CSV; then runs `cutover plan` end to end in a fresh
process per run (so its peak RSS is the command's own, imports included): wall time, peak
RSS, and each phase's time. It also checks the runs wrote byte-identical plan.json files.
Goal: under 10 s and 500 MiB.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.rvtools_fixtures import (
    export,
    random_dependencies,
    world,
    write_azure_dependencies,
    write_plain_dependencies,
)

GOAL_SECONDS, GOAL_MIB = 10.0, 500.0

_CHILD = """
import json, resource, sys, time
t0 = time.perf_counter()
from cutover.plan.inputs import read_dependencies
from cutover.plan.model import PlanPolicy
from cutover.plan.planner import make_plan
from cutover.plan.render import write_plan
from cutover.plan.rvtools import read_rvtools
from pathlib import Path
t1 = time.perf_counter()
imported = read_rvtools(sys.argv[1])
t2 = time.perf_counter()
deps = read_dependencies(sys.argv[2:4], imported.inventory)
t3 = time.perf_counter()
result = make_plan(imported.inventory, deps, PlanPolicy(), None, imported.missingSheets)
t4 = time.perf_counter()
files = write_plan(result, Path(sys.argv[4]))
t5 = time.perf_counter()
print(json.dumps({
    "import": t1 - t0, "read": t2 - t1, "dependencies": t3 - t2, "plan": t4 - t3,
    "write": t5 - t4, "files": len(files), "apps": len(result.plan.applications),
    "waves": len(result.plan.waves), "unplanned": len(result.plan.unplanned),
    "edges": len(deps.edges), "rows": deps.rows,
    "peakMiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vms", type=int, default=5000)
    ap.add_argument("--apps", type=int, default=1800)
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        t = time.perf_counter()
        vms = world(args.vms, args.apps)
        xlsx = export(vms, tmp / "rvtools.xlsx")
        rows = random_dependencies(vms, args.rows)
        ip = {v.name: v.ip for v in vms}
        half = len(rows) // 2
        azure = write_azure_dependencies(
            tmp / "azure.csv",
            [
                (s, ip[s], "java", d, ip[d], "postgres" if p == 5432 else "nginx", p)
                for s, d, p, _ in rows[:half]
            ],
        )
        plain = write_plain_dependencies(tmp / "plain.csv", rows[half:])
        print(
            f"generated {args.vms} VMs, {args.apps} applications, {args.rows} dependency "
            f"rows ({xlsx.stat().st_size / 1e6:.1f} MB xlsx) in {time.perf_counter() - t:.1f} s"
        )
        digests, worst_s, worst_mib = set(), 0.0, 0.0
        for run in range(1, args.runs + 1):
            out = tmp / f"out{run}"
            t = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-c", _CHILD, str(xlsx), str(azure), str(plain), str(out)],
                check=True,
                capture_output=True,
                text=True,
            )
            wall = time.perf_counter() - t
            m = json.loads(proc.stdout)
            phases = ", ".join(
                f"{k} {m[k]:.2f}" for k in ("import", "read", "dependencies", "plan", "write")
            )
            print(
                f"run {run}: {wall:.2f} s wall, peak RSS {m['peakMiB']:.0f} MiB ({phases} s); "
                f"{m['apps']} applications in {m['waves']} waves, {m['unplanned']} VMs "
                f"unplanned, {m['edges']}/{m['rows']} dependency rows resolved, "
                f"{m['files']} files"
            )
            digests.add(hashlib.sha256((out / "plan.json").read_bytes()).hexdigest())
            worst_s, worst_mib = max(worst_s, wall), max(worst_mib, m["peakMiB"])
        children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        ok = worst_s < GOAL_SECONDS and worst_mib < GOAL_MIB and len(digests) == 1
        print(
            f"worst {worst_s:.2f} s, {worst_mib:.0f} MiB (children max RSS {children:.0f} "
            f"MiB); plan.json identical across runs: {len(digests) == 1}; goal < "
            f"{GOAL_SECONDS:g} s and < {GOAL_MIB:g} MiB: {'PASS' if ok else 'FAIL'}"
        )
        if not ok:
            sys.exit(1)


if __name__ == "__main__":
    main()
