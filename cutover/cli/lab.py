"""`cutover lab up|down|status|knob|break|fix`: the local lab (cutover.lab.stack), and the
lab's site as the default --site. The only product module that imports the lab."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path

from cutover.cli.common import EXIT_FAILED, EXIT_OK, Group


def default_site() -> str:
    """$CUTOVER_SITE, else the site `cutover lab up` wrote; else a clear error."""
    env = os.environ.get("CUTOVER_SITE")
    if env:
        return env
    from cutover.lab import stack  # the lab apart: loaded only when its site is the default

    if (stack.LAB / "site.yaml").is_file() and stack.state_file().is_file():
        return str(stack.LAB / "site.yaml")
    raise ValueError("no site config: pass --site FILE, set CUTOVER_SITE, or `cutover lab up`")


def lab_worker_files(sites: Sequence[str]) -> tuple[Path, Path] | None:
    """The lab worker's key and audit log (`cutover lab up` made them) when the lab is up
    and this worker serves its site: the defaults of `cutover worker --key/--audit-log`."""
    from cutover.lab import stack

    lab_site = stack.LAB / "site.yaml"
    if not (stack.state_file().is_file() and lab_site.is_file()):
        return None
    if not any(Path(s).resolve() == lab_site.resolve() for s in sites):
        return None
    return stack.key_file(stack.WORKER), stack.audit_log_file()


def cmd_lab(args: argparse.Namespace) -> int:
    from cutover.lab import stack  # the lab apart: loaded only by `cutover lab ...`

    try:
        if args.lab_command == "up":
            state = stack.up(
                disk_mib=args.disk_mib, libvirt_uri=args.libvirt_uri, data_hosts=args.data_hosts
            )
            print(f"lab up: Temporal UI http://127.0.0.1:{stack.UI_PORT}, site {state['site']}")
            for a in state["apps"]:
                print(f"  {a['name']:<10} VM {a['vm']:<16} {a['url']}  ({a['scenario']})")
            day = state.get("dayTwo")
            op, ok, wk = (_rel(stack.key_file(n)) for n in (stack.OPERATOR, stack.APPROVER,
                                                           stack.WORKER))  # fmt: skip
            if day:
                seed = stack.SEED_RUNBOOK.relative_to(stack.ROOT)
                print(f"  {day['name']} VM {day['vm']} {day['url']}: the seed's runbook, "
                      f"as written: cutover run {seed} --key {op}")  # fmt: skip
            print(f"  keys: {op} starts and steers (--key, or export CUTOVER_KEY={op}), "
                  f"{ok} approves; {wk} signs the worker's audit log "
                  f"{_rel(stack.audit_log_file())}")  # fmt: skip
            for h in state.get("dataHosts") or []:
                print(f"  data host {h}: cutover worker --role data --data-host {h} "
                      f"--staging-dir {_rel(stack.data_host_staging(h))}")  # fmt: skip
            return EXIT_OK
        if args.lab_command in ("break", "fix"):
            print(stack.day_two_knob(args.knob, broken=args.lab_command == "break"))
            return EXIT_OK
        if args.lab_command == "down":
            stack.down()
            return EXIT_OK
        if args.lab_command == "status":
            st = stack.status()
            if args.json:
                print(json.dumps(st, indent=2))
            elif not st["up"] and "processes" not in st:
                print("lab: down")
            else:
                print(f"lab: {'up' if st['up'] else 'DEGRADED'}; UI {st['ui']}; site {st['site']}")
                for name, ok in st["processes"].items():
                    print(f"  {name:<10} {'running' if ok else 'NOT RUNNING'}")
            return EXIT_OK if st["up"] else EXIT_FAILED
        knobs = stack.set_knob(args.app, args.side, latencyMs=args.latency_ms,
                               failing=args.failing, unhealthy=args.unhealthy)  # fmt: skip
        print(json.dumps(knobs.get(args.app, {})))
        return EXIT_OK
    except stack.LabError as exc:
        print(f"cutover lab {args.lab_command}: {exc}")
        return EXIT_FAILED


def _rel(path: Path) -> str:
    """A lab path as the operator types it from the checkout (absolute elsewhere)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def register(cli: Group) -> None:
    lab = cli.group("lab", "The local lab: every component on loopback.", "lab_command", "ACTION",
                    description="The local lab: every component a cutover touches, on loopback, "
                    "as plain processes.")  # fmt: skip
    up = lab.command("up", "start the lab (cleaning a crashed one's leftovers first)", cmd_lab,
                     json_flag=False)  # fmt: skip
    up.add_argument("--disk-mib", type=int, default=128, help="size of each source VM's disk")
    up.add_argument("--libvirt-uri", help="use this libvirtd instead of starting one")
    up.add_argument("--data-hosts", type=int, default=0, metavar="N",
                    help="the site names N data hosts (lab-data-1, ...): run `cutover worker "
                    "--role orchestration` and, for each, `cutover worker --role data "
                    "--data-host lab-data-I --staging-dir /var/lib/cutover/lab/hosts/lab-data-I/"
                    "staging` (default 0: one `--role all` worker does everything)")  # fmt: skip
    lab.command("down", "remove what cutovers made, stop what `up` started (by PID)", cmd_lab,
                json_flag=False)  # fmt: skip
    lab.command("status", "which lab processes run, where things are", cmd_lab)
    kn = lab.command("knob", "make an application's source or target misbehave", cmd_lab,
                     json_flag=False)  # fmt: skip
    kn.add_argument("app", metavar="APP", help="application name")
    kn.add_argument("side", choices=["source", "target"])
    kn.add_argument("--latency-ms", type=int, default=0, help="delay every answer")
    kn.add_argument("--failing", action="store_true", help="answer 500 to data requests")
    kn.add_argument("--unhealthy", action="store_true", help="answer 503 to /health")
    from cutover.lab.landing import KNOBS  # names only; the lab's services stay unloaded

    for action, what in (("break", "make"), ("fix", "stop making")):
        cmd = lab.command(action, f"{what} the seed application's day-two checks fail on "
                          "purpose", cmd_lab, json_flag=False)  # fmt: skip
        cmd.add_argument("knob", choices=sorted(KNOBS), help="; ".join(
            f"{k}: {v}" for k, v in sorted(KNOBS.items())))  # fmt: skip
