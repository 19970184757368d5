"""Evaluating the registered rules: `evaluate`, `evaluate_all`, `blocking`, `dns_label`."""

from __future__ import annotations

import re
from collections.abc import Iterable

from cutover.concerns.model import _RULES, SEVERITIES, Concern, TargetLimits
from cutover.inventory import VM, Inventory


def evaluate(inventory: Inventory, vm: VM, target: TargetLimits | None = None) -> list[Concern]:
    """Every concern about `vm`: most severe first, then in `RULES` order, then by disk."""
    limits = target if target is not None else TargetLimits()
    concerns = [
        Concern(
            id=rule_id,
            severity=rule.severity,
            vm=vm.name or vm.moref,
            disk=hit.disk,
            message=hit.message,
            action=rule.action,
        )
        for rule_id, rule in _RULES.items()
        for hit in rule.check(inventory, vm, limits)
    ]
    return sorted(concerns, key=lambda c: SEVERITIES.index(c.severity))


def evaluate_all(
    inventory: Inventory, target: TargetLimits | None = None
) -> dict[str, list[Concern]]:
    """Concerns for every VM in the inventory, keyed by VM MoRef (unique; names may repeat
    across datacenters). Every VM has a key, with an empty list when nothing is wrong."""
    return {vm.moref: evaluate(inventory, vm, target) for vm in inventory.vms}


def blocking(concerns: Iterable[Concern]) -> list[Concern]:
    """The critical concerns, in order: any of them fails the cutover's pre-checks."""
    return [c for c in concerns if c.severity == "critical"]


def dns_label(name: str) -> str:
    """`name` as a DNS-1123 label: lower-cased, each run of other characters replaced by '-',
    trimmed of '-' and cut to 63 characters. Empty when nothing usable is left."""
    label = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    return label[:63].rstrip("-")
