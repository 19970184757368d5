"""Pre-migration concerns: what in a vSphere VM stands in the way of (or changes) its cutover.

Plain, deterministic functions of the inventory model (`cutover.inventory`): no I/O, so they
give the same answer for an inventory read live from vCenter and for one imported from a
file, and they can run inside the workflow's pre-checks.

Each rule has a stable id, a fixed severity and a "what we do" text, registered in `RULES`.
Severities mean, for an *automated* cutover:

- ``critical``: the cutover would fail, corrupt data or silently lose something the
  application needs. A critical concern fails the cutover's pre-checks with its message
  (`blocking`); a person has to change the source (or the target limits) first.
- ``warning``: the cutover works, but something is lost, slower or different on the target,
  and a person should decide whether that is acceptable before the downtime window.
- ``info``: worth knowing; nothing to do for most VMs.

The rules cover what Forklift/MTV's VMware validation flags (its
``validation/policies/io/konveyor/forklift/vmware/*.rego``), with severities chosen for an
unattended cutover to libvirt/KVM rather than copied, plus a few of our own (templates,
suspended VMs, latency sensitivity, secure boot, VMware Tools, vGPU, generic guest OS ids).
"""

from __future__ import annotations

# The rule modules register their rules when imported: this order is `RULES`' evaluation
# order, which is part of the contract (tests/test_concerns.py).
from cutover.concerns import datapath, devices  # noqa: F401  isort: skip
from cutover.concerns import configuration, guest  # noqa: F401  isort: skip
from cutover.concerns.engine import blocking, dns_label, evaluate, evaluate_all
from cutover.concerns.model import (
    RULES,
    SEVERITIES,
    Check,
    Concern,
    Hit,
    MiB,
    Rule,
    Severity,
    TargetLimits,
)

__all__ = [
    "RULES",
    "SEVERITIES",
    "Check",
    "Concern",
    "Hit",
    "MiB",
    "Rule",
    "Severity",
    "TargetLimits",
    "blocking",
    "dns_label",
    "evaluate",
    "evaluate_all",
]
