"""Before a cutover: `cutover validate`, `inventory`, `concerns`, `lower-ttl`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from cutover.cli.common import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, Group, emit
from cutover.config import ConfigError, Problem, format_path, parse_yaml, read_text
from cutover.inventory import Inventory
from cutover.policy import WorkloadPolicy, load_workload_policies
from cutover.policy_check import check_runbook
from cutover.runbook import Runbook
from cutover.site import SiteConfig, load_runbook, load_site


def _policy_args(args: argparse.Namespace) -> None:
    """`--policy` reads the applications' labels, tags and pools from the site."""
    if args.policy and not args.site:
        raise ValueError(
            "--policy needs --site: the applications' labels, tags and target pools that "
            "workload policies select and limit are the site's"
        )
    if args.inventory and not args.site:
        raise ValueError(
            "--inventory is read for the workload policies (the VMs' devices and datastores) "
            "of --site"
        )


def policy_problems(
    policies: Sequence[WorkloadPolicy],
    site: SiteConfig,
    site_file: str,
    runbooks: Sequence[tuple[Runbook, str, str]],
    *,
    inventory: Inventory | None = None,
    wave_approval: bool = False,
) -> tuple[list[Problem], list[str]]:
    """The early WorkloadPolicy check of `cutover validate` and `cutover wave validate`
    (`cutover.policy_check.check_runbook`, which the workflow runs too), as problems and notes.
    `runbooks`: each with the file that holds it and the field path prefix it has there
    (an inline runbook of a wave file: `applications[i].runbook.`). A violation is reported
    at the runbook's field (approval.required, targetPlatform, vms[i]) or, for a target
    pool outside the policy's zones, at the site's storage mapping."""
    problems: list[Problem] = []
    notes: list[str] = []
    pools = {m.targetPool: i for i, m in reversed(list(enumerate(site.storageMappings)))}
    for runbook, file, prefix in runbooks:
        check = check_runbook(
            policies, runbook, site, inventory=inventory, wave_approval=wave_approval
        )
        notes += check.notes
        for v in check.violations:
            if v.field == "pool":
                at = (
                    f"storageMappings[{pools[v.subject]}].targetPool"
                    if v.subject in pools
                    else "storageMappings"
                )
                problems.append(Problem(site_file, at, v.message))
                continue
            if v.field == "vm":
                listed = runbook.vms or []
                at = f"vms[{listed.index(v.subject)}]" if v.subject in listed else "vmSelector"
            else:
                at = "approval.required" if v.field == "approval" else "targetPlatform"
            problems.append(Problem(file, prefix + at, v.message))
    return problems, notes


def cmd_validate(args: argparse.Namespace) -> int:
    _policy_args(args)
    problems: list[str] = []
    site = None
    if args.site:
        try:
            site = load_site(args.site)
        except ConfigError as exc:
            problems += [str(p) for p in exc.problems]
    policies: list[WorkloadPolicy] | None = None
    if args.policy:
        try:
            policies = load_workload_policies(args.policy)
        except ConfigError as exc:
            problems += [str(p) for p in exc.problems]
    if site is not None and site.workloadPolicies:
        # the site's own policies, as the workflow enforces them; --policy adds to them
        policies = [*site.workloadPolicies, *(policies or [])]
    inventory = read_inventory_json(args.inventory) if args.inventory else None
    valid: list[str] = []
    notes: list[str] = []
    for path in args.runbooks:
        try:
            runbook = load_runbook(path, site, args.site or "")
        except ConfigError as exc:
            problems += [str(p) for p in exc.problems]
            continue
        if policies is not None and site is not None:
            found, more = policy_problems(
                policies, site, args.site, [(runbook, path, "")], inventory=inventory
            )
            notes += more
            if found:
                problems += [str(p) for p in found]
                continue
        valid.append(path)
    for p in problems:
        print(p, file=sys.stderr)
    if args.json:
        report: dict[str, list[str]] = {"valid": valid, "problems": problems}
        if policies:
            report["notes"] = notes
        print(json.dumps(report, indent=2))
        return EXIT_BAD_INPUT if problems else EXIT_OK
    for note in notes:
        print(f"note: {note}")
    if not problems:
        against = f" under the workload policies of {args.policy or args.site}" if policies else ""
        print(f"{len(valid)} runbook(s) valid{against}")
    return EXIT_BAD_INPUT if problems else EXIT_OK


def wave_policy_check(
    args: argparse.Namespace, runbooks: Sequence[Runbook], wave_approval: bool
) -> list[str]:
    """`cutover wave validate --policy`: the wave's runbooks (in the wave file's order)
    under the workload policies; ConfigError naming each violation at its runbook file (or
    the wave file, for an inline runbook), else the notes (what was not checked)."""
    _policy_args(args)
    if not args.site:
        return []
    site = load_site(args.site)
    # the site's own policies, as the workflow enforces them; --policy adds to them
    policies = [
        *site.workloadPolicies,
        *(load_workload_policies(args.policy) if args.policy else []),
    ]
    if not policies:
        return []
    inventory = read_inventory_json(args.inventory) if args.inventory else None
    wave_file = str(args.wave)
    data, _ = parse_yaml(read_text(wave_file), wave_file)
    entries = data.get("applications", []) if isinstance(data, dict) else []
    located: list[tuple[Runbook, str, str]] = []
    for i, runbook in enumerate(runbooks):
        ref = (
            entries[i].get("runbook") if i < len(entries) and isinstance(entries[i], dict) else None
        )
        if isinstance(ref, str):
            located.append((runbook, str(Path(wave_file).parent / ref), ""))
        else:
            located.append((runbook, wave_file, format_path(["applications", i, "runbook"]) + "."))
    problems, notes = policy_problems(
        policies, site, args.site, located, inventory=inventory, wave_approval=wave_approval
    )
    if problems:
        raise ConfigError(problems)
    return notes


def read_inventory_json(path: str) -> Inventory:
    """An inventory JSON file (`cutover inventory --json`); ValueError naming what is wrong."""
    try:
        return Inventory.model_validate_json(Path(path).read_bytes())
    except OSError as exc:
        raise ValueError(f"{path}: cannot read file: {exc.strerror}") from None
    except ValidationError as exc:
        e = exc.errors()[0]
        loc = ".".join(str(p) for p in e["loc"]) or "(document)"
        raise ValueError(
            f"{path}: {loc}: {e['msg']} (an inventory JSON from `cutover inventory --json` "
            "was expected)"
        ) from None


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
        inv = read_inventory_json(args.inventory)
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


def add_policy_arguments(sp: argparse.ArgumentParser) -> None:
    """`--policy` and `--inventory` of `validate` and `wave validate`."""
    sp.add_argument(
        "--policy",
        metavar="FILE",
        help="workload policies YAML (WorkloadPolicy documents): also check the runbooks "
        "against the policies that govern them (needs --site)",
    )
    sp.add_argument(
        "--inventory",
        metavar="FILE",
        help="an inventory JSON (`cutover inventory --json`) for --policy: the VMs' GPU and "
        "SR-IOV devices, and the datastores that choose their target pools",
    )


def register(cli: Group) -> None:
    sp = cli.command(
        "validate",
        "Check runbooks (and optionally a site config) without running anything.",
        cmd_validate,
    )
    sp.add_argument("runbooks", nargs="+", metavar="RUNBOOK", help="runbook YAML file(s)")
    sp.add_argument("--site", help="site config: also checks every named check is bound")
    add_policy_arguments(sp)

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
