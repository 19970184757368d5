"""The vSphere source's activities: snapshots, quiesce, power, NICs, migrated marks, and
the vsphere-concerns check. Thin: the work is in `adapters.vsphere` (the only pyvmomi user).

Every activity is idempotent, heartbeats while a vSphere task runs, and raises typed
errors: `VSphereUnavailable` (retryable) or non-retryable `NotFound`, `InvalidState`,
`AuthenticationFailed`, `PermissionDenied`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from temporalio import activity

from activities.common import attempt as _attempt
from adapters.vsphere import vm as vm_ops
from adapters.vsphere.client import ClientPool, VSphereClient
from adapters.vsphere.inventory import find_vms, read_inventory, resolve_vms
from adapters.vsphere.vm import migrated_marks, migration_evidence, post_event
from cutover import facts as F
from cutover.catalog import Compensation, FinalizeStep, Step, WarmStep
from cutover.concerns import evaluate
from cutover.errors import ErrorKind, error
from cutover.models import CheckInput, CheckResult, StepInput, StepResult
from cutover.site import VSphereConcernsProbe


def _run_scope(inp: StepInput) -> str:
    """Which run a prior-power-state mark belongs to: a retry of the same run keeps its mark,
    a later cutover of the same application (a new run) records afresh."""
    if activity.in_activity():
        info = activity.info()
        return f"{info.workflow_id}/{info.workflow_run_id}"
    return inp.context.workflowId


# ------------------------------------------------------------------------- activities


@dataclass
class VSphereActivities:
    """Source-side activities; they hold the worker's vCenter connections (injected)."""

    pool: ClientPool = field(default_factory=ClientPool)

    def _client(self, inp: StepInput) -> VSphereClient:
        vc = inp.context.site.vcenter
        if vc is None:
            raise error(ErrorKind.CONFIG_ERROR, "the site config has no `vcenter` section")
        return self.pool.get(vc)

    def _vm_names(self, inp: StepInput) -> tuple[VSphereClient, list[str]]:
        client = self._client(inp)
        names = inp.context.facts.get(F.SOURCE_VMS)
        return client, names.split(",") if names else resolve_vms(client, inp.context.runbook)

    def _vms(self, inp: StepInput) -> tuple[VSphereClient, list[Any]]:
        client, vm_names = self._vm_names(inp)
        return client, find_vms(client, vm_names)

    def _each(
        self, inp: StepInput, what: str, act: Callable[[Any, Any], bool], describe: bool = False
    ) -> StepResult:
        """Apply act(vm, service_instance) to each of the application's VMs; it returns
        whether it changed anything (False: already as wanted). With `describe`, also
        publish each VM's inventory model as fact `source_vm.<name>` (what the target's
        domain is built from)."""
        client, vms = self._vms(inp)
        changed: list[str] = []
        for vm in vms:
            name: str = vm.name
            if client.call(f"{what} {name}", partial(act, vm)):
                changed.append(name)
                note = f"{what} {name} (workflow {inp.context.workflowId})"
                client.call("posting an event", partial(post_event, vm=vm, message=note))
        facts = {F.SOURCE_VMS: ",".join(v.name for v in vms)}
        if describe:
            inv = read_inventory(client)
            facts.update(
                {F.per_vm(F.SOURCE_VM, v.name): inv.vm(v.name).model_dump_json() for v in vms}
            )
        return StepResult(
            step=inp.step,
            changed=bool(changed),
            facts=facts,
            details={"vms": ",".join(v.name for v in vms), "changed": ",".join(changed)},
            attempt=_attempt(),
        )

    @activity.defn(name=WarmStep.SNAPSHOT_SOURCE)
    def snapshot_source(self, inp: StepInput) -> StepResult:
        act = partial(
            vm_ops.create_snapshot,
            name=vm_ops.snapshot_name(inp.context.workflowId),
            quiesce=inp.context.runbook.dataSync.quiesceSnapshot,
        )
        return self._each(inp, "snapshot", act, describe=True)

    @activity.defn(name=FinalizeStep.REMOVE_SOURCE_SNAPSHOT)
    def remove_source_snapshot(self, inp: StepInput) -> StepResult:
        name = vm_ops.snapshot_name(inp.context.workflowId)
        return self._each(inp, "remove snapshot of", partial(vm_ops.remove_snapshot, name=name))

    @activity.defn(name="revert_source_snapshot")
    def revert_source_snapshot(self, inp: StepInput) -> StepResult:
        """Operator rollback that also discards the source's writes since the snapshot."""
        name = vm_ops.snapshot_name(inp.context.workflowId)
        return self._each(inp, "revert to snapshot", partial(vm_ops.revert_to_snapshot, name=name))

    @activity.defn(name=Step.QUIESCE_APPLICATION)
    def quiesce_application(self, inp: StepInput) -> StepResult:
        prior: dict[str, str] = {}
        act = partial(
            vm_ops.shut_down, policy=inp.context.runbook.quiesce, scope=_run_scope(inp), prior=prior
        )
        result = self._each(inp, "quiesce", act, describe=True)
        result.details["priorPowerState"] = ",".join(f"{n}={s}" for n, s in prior.items())
        return result

    @activity.defn(name=Compensation.RESTART_SOURCE)
    def restart_source(self, inp: StepInput) -> StepResult:
        """Back to the power state quiesce recorded: on only what was on before the cutover.
        A VM without a record was never changed by quiesce (it records first): left as is."""
        found: dict[str, str] = {}
        result = self._each(
            inp, "restore power state of", partial(vm_ops.restore_power, found=found)
        )
        result.details["priorPowerState"] = ",".join(f"{n}={s}" for n, s in found.items())
        return result

    def _set_nics(self, inp: StepInput, connected: bool) -> StepResult:
        what = "connect NICs of" if connected else "disconnect NICs of"
        return self._each(inp, what, partial(vm_ops.set_nics, connected=connected))

    @activity.defn(name=FinalizeStep.DISCONNECT_SOURCE_NICS)
    def disconnect_source_nics(self, inp: StepInput) -> StepResult:
        return self._set_nics(inp, False)

    @activity.defn(name="reconnect_source_nics")
    def reconnect_source_nics(self, inp: StepInput) -> StepResult:
        return self._set_nics(inp, True)

    @activity.defn(name=FinalizeStep.MARK_SOURCE_MIGRATED)
    def mark_source_migrated(self, inp: StepInput) -> StepResult:
        ctx = inp.context
        target = ctx.facts.get(F.TARGET_ADDRESS) or ctx.runbook.targetPlatform
        values = {
            "cutover.migratedTo": f"{ctx.runbook.targetPlatform}:{ctx.application} ({target})",
            "cutover.workflowId": ctx.workflowId,
        }
        return self._each(inp, "mark migrated", partial(vm_ops.mark_migrated, values=values))

    @activity.defn(name="verify_not_migrated")
    def verify_not_migrated(self, inp: StepInput) -> StepResult:
        """Whether the application's source VMs carry migrated marks, with the evidence.
        Only reads: the workflow decides (a deliberate re-migration names its reason)."""
        client, names = self._vm_names(inp)
        marks = migrated_marks(client, names)
        return StepResult(
            step=inp.step,
            changed=False,
            details={
                "migrated": bool(marks),
                "evidence": migration_evidence(names, marks),
                "vms": ",".join(names),
                "marked": ",".join(m.vm for m in marks),
            },
            attempt=_attempt(),
        )

    def concerns_check(self, inp: CheckInput, probe: VSphereConcernsProbe) -> CheckResult:
        """The application's VMs' pre-migration concerns as a check result."""
        if inp.runbook is None or inp.vcenter is None:
            raise error(
                ErrorKind.CONFIG_ERROR, "a vsphere-concerns check needs the runbook and vCenter"
            )
        client = self.pool.get(inp.vcenter)
        names = resolve_vms(client, inp.runbook)
        inv = read_inventory(client)
        levels = ("critical",) if probe.failOn == "critical" else ("critical", "warning")
        found = [c for n in names for c in evaluate(inv, inv.vm(n))]
        failing = [c for c in found if c.severity in levels and c.id not in probe.ignore]
        counts = {
            lvl: sum(1 for c in found if c.severity == lvl)
            for lvl in ("critical", "warning", "info")
        }
        return CheckResult(
            name=inp.name,
            phase=inp.phase,
            passed=not failing,
            measured=", ".join(f"{n} {lvl}" for lvl, n in counts.items())
            + f" on {', '.join(names)}",
            threshold=f"no {' or '.join(levels)} concern"
            + (f" (accepted: {', '.join(probe.ignore)})" if probe.ignore else ""),
            detail="; ".join(f"[{c.severity}] {c.vm}: {c.id}: {c.message}" for c in failing)[:4000],
        )

    def activities(self) -> list[Callable[..., Any]]:
        return [
            self.verify_not_migrated,
            self.snapshot_source,
            self.remove_source_snapshot,
            self.revert_source_snapshot,
            self.quiesce_application,
            self.restart_source,
            self.disconnect_source_nics,
            self.reconnect_source_nics,
            self.mark_source_migrated,
        ]
