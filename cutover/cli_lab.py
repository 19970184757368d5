"""`cutover lab up|down|status|knob`: the local lab (see cutover/lab.py)."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
SITE_HELP = "site config YAML file (default: $CUTOVER_SITE, else the lab's when it is up)"


def default_site() -> str:
    """$CUTOVER_SITE, else the site `cutover lab up` wrote; else a clear error."""
    from cutover import lab

    env = os.environ.get("CUTOVER_SITE")
    if env:
        return env
    if (lab.LAB / "site.yaml").is_file() and lab.state_file().is_file():
        return str(lab.LAB / "site.yaml")
    raise ValueError("no site config: pass --site FILE, set CUTOVER_SITE, or `cutover lab up`")


def add_parser(sub: Any) -> None:
    lab = sub.add_parser("lab", help="The local lab: every component on loopback.",
                         description="The local lab: every component a cutover touches, "
                         "on loopback, as plain processes.")  # fmt: skip
    lsub = lab.add_subparsers(dest="lab_command", required=True, metavar="ACTION")
    up = lsub.add_parser("up", help="start the lab (cleaning a crashed one's leftovers first)")
    up.add_argument("--disk-mib", type=int, default=128, help="size of each source VM's disk")
    up.add_argument("--libvirt-uri", help="use this libvirtd instead of starting one")
    lsub.add_parser("down", help="remove what cutovers made, stop what `up` started (by PID)")
    st = lsub.add_parser("status", help="which lab processes run, where things are")
    st.add_argument("--json", action="store_true", help="print machine-readable JSON")
    kn = lsub.add_parser("knob", help="make an application's source or target misbehave")
    kn.add_argument("app", metavar="APP", help="application name")
    kn.add_argument("side", choices=["source", "target"])
    kn.add_argument("--latency-ms", type=int, default=0, help="delay every answer")
    kn.add_argument("--failing", action="store_true", help="answer 500 to data requests")
    kn.add_argument("--unhealthy", action="store_true", help="answer 503 to /health")


def cmd_lab(args: argparse.Namespace) -> int:
    from cutover import lab

    try:
        if args.lab_command == "up":
            state = lab.up(disk_mib=args.disk_mib, libvirt_uri=args.libvirt_uri)
            print(f"lab up: Temporal UI http://127.0.0.1:{lab.UI_PORT}, site {state['site']}")
            for a in state["apps"]:
                print(f"  {a['name']:<10} VM {a['vm']:<16} {a['url']}  ({a['scenario']})")
            return EXIT_OK
        if args.lab_command == "down":
            lab.down()
            return EXIT_OK
        if args.lab_command == "status":
            st = lab.status()
            if args.json:
                print(json.dumps(st, indent=2))
            elif not st["up"] and "processes" not in st:
                print("lab: down")
            else:
                print(f"lab: {'up' if st['up'] else 'DEGRADED'}; UI {st['ui']}; site {st['site']}")
                for name, ok in st["processes"].items():
                    print(f"  {name:<10} {'running' if ok else 'NOT RUNNING'}")
            return EXIT_OK if st["up"] else EXIT_FAILED
        knobs = lab.set_knob(args.app, args.side, latencyMs=args.latency_ms,
                             failing=args.failing, unhealthy=args.unhealthy)  # fmt: skip
        print(json.dumps(knobs.get(args.app, {})))
        return EXIT_OK
    except lab.LabError as exc:
        print(f"cutover lab {args.lab_command}: {exc}")
        return EXIT_FAILED
