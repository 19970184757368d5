"""Who may do what, decided inside the workflows (issue 13): signed operator actions, the
site's access policy (RBAC/ABAC) and its workload policies.

Pure and deterministic (no I/O, the time is the workflow's): the keys and policies come from
the worker's own site, resolved by reference; the request's signature binds the workflow ID,
the action, its arguments and a time. A refusal is one line that names what to fix; raised
from an update validator it never enters the history.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from pydantic import BaseModel

    from cutover import policy as pol
    from cutover import signing
    from cutover.policy_check import target_zones
    from cutover.runbook import Runbook
    from cutover.site import SiteConfig


@dataclass(frozen=True)
class Verdict:
    """Who asked (the verified signer, or the name an unsigned request gives where the
    site allows those), or why the request is refused."""

    signer: str | None
    refusal: str | None = None


def app_attributes(site: SiteConfig, runbook: Runbook) -> tuple[dict[str, str], list[str]]:
    """The application's attributes and tags, from the worker's site (never the input)."""
    known = site.applications.get(runbook.application)
    labels = dict(known.labels) if known is not None else {}
    tags = list(known.tags) if known is not None else []
    return pol.application_attributes(runbook.application, labels, runbook.wave), tags


def _no_access(site: SiteConfig) -> str:
    return (
        f"site '{site.name}' has no access policy: every operator action is signed and "
        "checked against one; add `access:` (or `accessFile:`) to the site config with the "
        "operators' public keys (`cutover keys create NAME`) and roles"
    )


def check_request(
    site: SiteConfig,
    workflow_id: str,
    action: pol.Action,
    req: BaseModel,
    *,
    named: str | None,
    apps: list[Mapping[str, str]],
    now: datetime,
    seen: Collection[str],
    started_by: str | None = None,
    args: Mapping[str, Any] | None = None,
    max_age: timedelta = signing.DEFAULT_MAX_AGE,
) -> Verdict:
    """A request's signature checked against the site's keys, its signer against the
    request's own name for them (`named`), and the access policy over every application
    it acts on (`apps`: one for a cutover, each of a wave's)."""
    access = site.access
    if access is None:
        return Verdict(None, _no_access(site))
    sig: signing.Signature | None = getattr(req, "signature", None)
    if sig is None and not access.requireSignatures:
        return Verdict(named)  # the site's own choice (access.requireSignatures: false)
    if args is None:
        args = req.model_dump(mode="json", exclude={"signature"})
    why = signing.verify(
        sig, workflow_id, action, args, pol.public_keys(access), now, seen, max_age=max_age
    )
    if why is not None:
        return Verdict(None, why)
    assert sig is not None
    if named is not None and sig.signer != named:
        return Verdict(
            None,
            f"signed by '{sig.signer}' but the request names '{named}': sign it with the key of "
            f"{named}, or name {sig.signer}",
        )
    why = pol.authorize_all(access, sig.signer, action, apps, started_by=started_by)
    return Verdict(sig.signer, why)


def start_args(received: BaseModel) -> dict[str, Any]:
    """What a start signature covers: the digest of the input as sent (site by reference)."""
    return {"input": signing.digest(received.model_dump(mode="json", exclude={"signature"}))}


def policy_problems(
    site: SiteConfig, runbook: Runbook, vm_devices: Mapping[str, list[str]] | None = None
) -> list[str]:
    """The site's workload policies against this runbook: its target platform, its pools'
    zones and (once the source VMs were read) their devices. Approval is not a problem
    here: the workflow holds the gate whenever a policy requires it."""
    app, tags = app_attributes(site, runbook)
    governed = pol.governing(site.workloadPolicies, app, tags)
    if not governed:
        return []
    return pol.workload_violations(
        governed,
        application=runbook.application,
        app=app,
        tags=tags,
        target_platform=runbook.targetPlatform,
        approval_required=True,
        target_zones=target_zones(site, None),
        vm_devices={k: list(v) for k, v in (vm_devices or {}).items()},
    )


def requires_approval(site: SiteConfig, runbook: Runbook) -> bool:
    app, tags = app_attributes(site, runbook)
    return runbook.approval.required or pol.requires_approval(site.workloadPolicies, app, tags)


def immutable_audit_log(site: SiteConfig, runbook: Runbook) -> bool:
    app, tags = app_attributes(site, runbook)
    return pol.immutable_audit_log(site.workloadPolicies, app, tags)


def gpu_checked(site: SiteConfig, runbook: Runbook) -> bool:
    """Whether a governing policy limits device modes (then the VMs' devices are read)."""
    app, tags = app_attributes(site, runbook)
    return any(
        p.spec.gpuScheduling is not None for p in pol.governing(site.workloadPolicies, app, tags)
    )
