"""Before a cutover: `cutover validate`, `inventory`, `concerns`, `lower-ttl`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pydantic import ValidationError

from cutover.cli.common import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, Group, emit
from cutover.config import ConfigError
from cutover.inventory import Inventory
from cutover.site import SiteConfig, load_runbook, load_site


def cmd_validate(args: argparse.Namespace) -> int:
    problems: list[str] = []
    site = None
    if args.site:
        try:
            site = load_site(args.site)
        except ConfigError as exc:
            problems += [str(p) for p in exc.problems]
    valid: list[str] = []
    for path in args.runbooks:
        try:
            load_runbook(path, site, args.site or "")
            valid.append(path)
        except ConfigError as exc:
            problems += [str(p) for p in exc.problems]
    for p in problems:
        print(p, file=sys.stderr)
    if args.json:
        print(json.dumps({"valid": valid, "problems": problems}, indent=2))
    elif not problems:
        print(f"{len(valid)} runbook(s) valid")
    return EXIT_BAD_INPUT if problems else EXIT_OK


def _read_inventory(site_file: str, tags: bool) -> Inventory:
    """The inventory of the site's vCenter, read now."""
    # pyVmomi: slow to import
    from adapters.vsphere.client import ClientPool
    from adapters.vsphere.inventory import read_inventory
    from adapters.vsphere.tagging import Tagging

    site: SiteConfig = load_site(site_file)
    if site.vcenter is None:
        raise ValueError(f"{site_file}: vcenter: the site config has no vCenter to read")
    client = ClientPool().get(site.vcenter)
    try:
        return read_inventory(client, Tagging(client).tags_by_vm() if tags else {})
    finally:
        client.close()


def cmd_inventory(args: argparse.Namespace) -> int:
    inv = _read_inventory(args.site, args.tags)
    if args.json:
        print(inv.model_dump_json(indent=2))
        return EXIT_OK
    print(
        f"{inv.source}: {len(inv.datacenters)} datacenter(s), {len(inv.clusters)} cluster(s), "
        f"{len(inv.hosts)} host(s), {len(inv.datastores)} datastore(s), "
        f"{len(inv.networks)} network(s), {len(inv.vms)} VM(s); "
        f"{inv.roundTrips} PropertyCollector round trips"
    )
    print(f"{'VM':<28} {'power':<11} {'cpu':>3} {'mem MiB':>8} {'disks':>5} {'GiB':>7}  host")
    for vm in sorted(inv.vms, key=lambda v: v.name):
        gib = sum(d.capacityBytes for d in vm.disks) / (1 << 30)
        print(
            f"{vm.name:<28} {vm.powerState or '-':<11} {vm.numCpu:>3} {vm.memoryMB:>8} "
            f"{len(vm.disks):>5} {gib:>7.1f}  {vm.host or '-'}"
        )
    return EXIT_OK


def cmd_concerns(args: argparse.Namespace) -> int:
    from cutover.concerns import evaluate  # a thousand lines of rules: slow to import

    if args.rvtools:
        from cutover.plan.rvtools import read_rvtools

        inv = read_rvtools(args.rvtools).inventory
    elif args.inventory:
        try:
            inv = Inventory.model_validate_json(Path(args.inventory).read_bytes())
        except OSError as exc:
            raise ValueError(f"{args.inventory}: cannot read file: {exc.strerror}") from None
        except ValidationError as exc:
            e = exc.errors()[0]
            loc = ".".join(str(p) for p in e["loc"]) or "(document)"
            raise ValueError(
                f"{args.inventory}: {loc}: {e['msg']} (an inventory JSON from "
                "`cutover inventory --json` was expected)"
            ) from None
    else:
        inv = _read_inventory(args.site, tags=False)
    missing = [n for n in args.vm if n not in {v.name for v in inv.vms}]
    if missing:
        raise ValueError(f"--vm: no VM named {', '.join(missing)} in {inv.source}")
    vms = [inv.vm(n) for n in args.vm] if args.vm else inv.vms
    found = {vm.name: evaluate(inv, vm) for vm in vms}
    if args.json:
        print(json.dumps({n: [c.model_dump() for c in cs] for n, cs in found.items()}, indent=2))
    else:
        for name, concerns in found.items():
            for c in concerns:
                where = f" ({c.disk})" if c.disk else ""
                print(f"{c.severity:<8} {name}{where}: {c.id}: {c.message}")
    critical = any(c.severity == "critical" for cs in found.values() for c in cs)
    return EXIT_FAILED if critical else EXIT_OK


def cmd_lower_ttl(args: argparse.Namespace) -> int:
    """The optional preparation step: lower the application's DNS TTL ahead of its wave."""
    from adapters.dns.records import lower_ttl  # dnspython: slow to import

    site = load_site(args.site)
    runbook = load_runbook(args.runbook, site, args.site)
    if site.dns is None or runbook.endpoint.dns is None:
        raise ValueError(
            f"{args.runbook}: endpoint.dns and {args.site}: dns are both needed to lower a TTL"
        )
    ttl = min(runbook.endpoint.dns.ttl, site.dns.ttlThresholdSeconds)
    done = lower_ttl(site.dns, runbook.endpoint.dns.name, ttl)
    msg = (
        f"{done.name}: TTL {done.previous_ttl}s -> {done.ttl}s; dns_ttl_lowered passes once "
        f"the old TTL has passed ({done.previous_ttl}s)"
        if done.changed
        else f"{done.name}: TTL already {done.ttl}s, nothing changed"
    )
    emit({"name": done.name, "ttl": done.ttl, "previousTtl": done.previous_ttl,
          "changed": done.changed}, args.json, msg)  # fmt: skip
    return EXIT_OK


def register(cli: Group) -> None:
    sp = cli.command(
        "validate",
        "Check runbooks (and optionally a site config) without running anything.",
        cmd_validate,
    )
    sp.add_argument("runbooks", nargs="+", metavar="RUNBOOK", help="runbook YAML file(s)")
    sp.add_argument("--site", help="site config: also checks every named check is bound")

    sp = cli.command("inventory", "Read the vCenter inventory named in a site config.",
                     cmd_inventory, site=True)  # fmt: skip
    sp.add_argument("--no-tags", dest="tags", action="store_false", help="skip the tagging API")

    sp = cli.command(
        "concerns", "Pre-migration concerns of VMs; exit 1 when any is critical.", cmd_concerns
    )
    src = sp.add_mutually_exclusive_group(required=True)
    src.add_argument("--site", help="read the inventory from this site config's vCenter")
    src.add_argument("--inventory", help="an inventory JSON file (`cutover inventory --json`)")
    src.add_argument("--rvtools", metavar="FILE.xlsx", help="an RVTools export (all tabs)")
    sp.add_argument("--vm", action="append", default=[], help="only this VM (repeatable)")

    sp = cli.command("lower-ttl", "Lower an application's DNS TTL ahead of its wave (preparation).",
                     cmd_lower_ttl, site=True)  # fmt: skip
    sp.add_argument("runbook", metavar="RUNBOOK", help="runbook YAML file (its endpoint.dns)")
