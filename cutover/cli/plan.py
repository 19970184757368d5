"""`cutover plan`: Wave 0, from an inventory (RVTools export or the live vCenter) and its
dependencies to waves, runbooks and a report (cutover/plan/)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pydantic import ValidationError

from cutover.cli.common import EXIT_FAILED, EXIT_OK, Group, emit
from cutover.config import load_file
from cutover.inventory import Inventory


def cmd_plan(args: argparse.Namespace) -> int:
    from cutover.plan.inputs import read_dependencies, read_mapping
    from cutover.plan.model import PlanPolicy
    from cutover.plan.planner import make_plan
    from cutover.plan.render import write_plan

    policy = load_file(PlanPolicy, args.policy) if args.policy else PlanPolicy()
    flags = {
        "appAttribute": args.app_attribute,
        "appPattern": args.app_pattern,
        "criticalityAttribute": args.criticality_attribute,
        "environmentAttributes": [args.environment_attribute]
        if args.environment_attribute
        else None,
        "ownerAttribute": args.owner_attribute,
        "maxWaveApps": args.max_wave_apps,
        "maxWaveTiB": args.max_wave_tib,
        "transferMbps": args.transfer_mbps,
    }
    try:
        policy = PlanPolicy.model_validate(
            policy.model_dump() | {k: v for k, v in flags.items() if v is not None}
        )
    except ValidationError as exc:
        e = exc.errors()[0]
        raise ValueError(f"--{'.'.join(str(p) for p in e['loc'])}: {e['msg']}") from None
    if policy.appPattern is not None:
        import re

        try:
            if "app" not in re.compile(policy.appPattern).groupindex:
                raise ValueError("--app-pattern: the regex needs a named group (?P<app>...)")
        except re.error as exc:
            raise ValueError(f"--app-pattern: not a regex ({exc})") from None
    missing: list[str] = []
    if args.rvtools:
        from cutover.plan.rvtools import read_rvtools

        imported = read_rvtools(args.rvtools)
        inventory, missing = imported.inventory, imported.missingSheets
    else:
        from cutover.cli.prepare import _read_inventory

        inventory = _read_inventory(args.site, tags=True)
    mapping = read_mapping(args.mapping) if args.mapping else None
    deps = read_dependencies(args.dependencies, inventory)
    result = make_plan(inventory, deps, policy, mapping, missing)
    out = Path(args.output)
    written = write_plan(result, out)
    violations = _policy_findings(args.site, written, inventory)
    p = result.plan
    text = (
        f"{len(p.applications)} application(s) in {len(p.waves)} wave(s) "
        f"({', '.join(w.name for w in p.waves) or 'none'}); {len(p.unplanned)} VM(s) "
        f"unplanned, {len(p.excluded)} template(s) excluded; "
        f"{deps.unknownRows} dependency row(s) name servers not in the inventory"
        + (f"; missing sheets: {', '.join(missing)}" if missing else "")
        + f"\nwrote {out}/plan.json, report.html, report.md, waves/ and runbooks/"
        + "".join(f"\nworkload policy: {v}" for v in violations)
    )
    emit(
        {
            "applications": len(p.applications),
            "waves": [w.name for w in p.waves],
            "unplanned": len(p.unplanned),
            "excluded": len(p.excluded),
            "unknownDependencyRows": deps.unknownRows,
            "missingSheets": missing,
            "files": [str(f) for f in written],
            "workloadPolicyViolations": violations,
        },
        args.json,
        text,
    )
    return EXIT_OK


def _policy_findings(site_file: str | None, written: list[Path], inventory: Inventory) -> list[str]:
    """The planned runbooks under the site's workload policies (what `validate` and the
    workflow will refuse), with the inventory's devices: each as `FILE: violation`."""
    if not site_file:
        return []
    from cutover.policy_check import check_runbook
    from cutover.runbook import Runbook
    from cutover.site import load_site

    site = load_site(site_file)
    if not site.workloadPolicies:
        return []
    found: list[str] = []
    for path in written:
        if path.parent.name != "runbooks" or path.suffix not in (".yaml", ".yml"):
            continue
        runbook = load_file(Runbook, path)
        check = check_runbook(site.workloadPolicies, runbook, site, inventory=inventory)
        found += [f"{path}: {v.message}" for v in check.violations]
    return found


def cmd_exit_report(args: argparse.Namespace) -> int:
    from cutover.plan.exit import exit_report, exit_text, read_declared

    if args.rvtools:
        from cutover.plan.rvtools import read_rvtools

        inventory = read_rvtools(args.rvtools).inventory
    else:
        from cutover.cli.prepare import _read_inventory

        inventory = _read_inventory(args.site, tags=False)
    report = exit_report(inventory, read_declared(args.declared) if args.declared else [])
    emit(report, args.json, exit_text(report))
    return EXIT_OK if report.verdict == "READY" else EXIT_FAILED


def cmd_baseline(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from adapters.vsphere.client import ClientPool  # pyVmomi: slow to import
    from adapters.vsphere.performance import read_counters
    from cutover.plan.baseline import store, summarise
    from cutover.site import load_site

    if not 1 <= args.minutes <= 60:
        raise ValueError("--minutes: between 1 and 60 (vCenter keeps realtime samples an hour)")
    site = load_site(args.site)
    if site.vcenter is None:
        raise ValueError(f"{args.site}: vcenter: the site config has no vCenter to read")
    path = Path(args.output or f".cutover/baselines/{site.name}.json")
    client = ClientPool().get(site.vcenter)
    try:
        series = read_counters(client, args.vm, samples=args.minutes * 3)
    finally:
        client.close()
    now = datetime.now(UTC).replace(microsecond=0)
    taken = [summarise(s, now) for s in series]
    store(path, site.name, taken)

    def pct(v: object) -> str:
        return "-" if v is None else f"{v:.2f}"

    lines = [
        f"{'VM':<28} {'samples':>7} {'ready% avg':>10} {'p95':>6} {'disk ms p95':>11} "
        f"{'drop% p95':>9}"
    ]
    for b in taken:
        lines.append(
            f"{b.vm:<28} {b.samples:>7} "
            f"{pct(b.cpuReadyPercent.avg if b.cpuReadyPercent else None):>10} "
            f"{pct(b.cpuReadyPercent.p95 if b.cpuReadyPercent else None):>6} "
            f"{pct(b.diskLatencyMs.p95 if b.diskLatencyMs else None):>11} "
            f"{pct(b.netDropPercent.p95 if b.netDropPercent else None):>9}"
        )
    lines.append(f"stored {len(taken)} baseline(s) in {path}")
    emit(
        {"file": str(path), "vms": [b.model_dump(mode="json") for b in taken]},
        args.json,
        "\n".join(lines),
    )
    return EXIT_OK


def register(cli: Group) -> None:
    sp = cli.command(
        "plan",
        "Wave 0: plan waves, runbooks and a report from an RVTools export or the vCenter.",
        cmd_plan,
    )
    src = sp.add_mutually_exclusive_group(required=True)
    src.add_argument("--rvtools", metavar="FILE.xlsx", help="an RVTools export (all tabs)")
    src.add_argument("--site", help="read the inventory from this site config's vCenter")
    sp.add_argument(
        "--dependencies",
        action="append",
        default=[],
        metavar="CSV",
        help="Azure Migrate dependency export or source,destination,port[,kind] CSV (repeatable)",
    )
    sp.add_argument(
        "--mapping", metavar="CSV", help="vm,application[,owner,criticality,environment]"
    )
    sp.add_argument(
        "--app-attribute",
        metavar="NAME",
        help="custom attribute or tag category naming the application (app)",
    )
    sp.add_argument(
        "--app-pattern", metavar="REGEX", help="regex over VM names with a named group `app`"
    )
    sp.add_argument("--criticality-attribute", metavar="NAME", help="(default criticality)")
    sp.add_argument(
        "--environment-attribute", metavar="NAME", help="(default env, then environment)"
    )
    sp.add_argument("--owner-attribute", metavar="NAME", help="(default owner)")
    sp.add_argument("--policy", metavar="FILE", help="planning policy YAML (PlanPolicy)")
    sp.add_argument("--max-wave-apps", type=int, metavar="N", help="(default 50)")
    sp.add_argument("--max-wave-tib", type=float, metavar="N", help="(default 20)")
    sp.add_argument("--transfer-mbps", type=float, metavar="N", help="(default 1000)")
    sp.add_argument("-o", "--output", required=True, metavar="DIR", help="output directory")

    sp = cli.command(
        "exit-report",
        "What still depends on vCenter (VMs, running sources, templates, datastores, declared "
        "systems), with a verdict; exit 1 unless READY.",
        cmd_exit_report,
    )
    src = sp.add_mutually_exclusive_group(required=True)
    src.add_argument("--site", help="read the inventory from this site config's vCenter")
    src.add_argument("--rvtools", metavar="FILE.xlsx", help="an RVTools export (all tabs)")
    sp.add_argument(
        "--declared",
        metavar="CSV",
        help="VMware-bound systems: name,kind[,status[,note]] (status active or retired)",
    )

    sp = cli.command(
        "baseline",
        "Read VMs' CPU ready, storage latency and network drops from vCenter's performance "
        "counters and store them as the pre-migration baseline.",
        cmd_baseline,
        site=True,
    )
    sp.add_argument("--vm", action="append", default=[], help="only this VM (repeatable)")
    sp.add_argument("--minutes", type=int, default=60, help="realtime history to read (<= 60)")
    sp.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="baseline file, merged per VM (default .cutover/baselines/SITE.json)",
    )
