"""The vSphere source's activities: snapshots, quiesce, power, NICs, migrated marks, and
the vsphere-concerns check. Thin: the work is in `adapters.vsphere` (the only pyvmomi user).

Every activity is idempotent, heartbeats while a vSphere task runs, and raises typed
errors: `VSphereUnavailable` (retryable) or non-retryable `NotFound`, `InvalidState`,
`AuthenticationFailed`, `PermissionDenied`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from temporalio import activity

from activities.common import attempt as _attempt
from adapters.vsphere.client import ClientPool
from adapters.vsphere.source import VSphereSource
from adapters.vsphere.vm import snapshot_name
from cutover import facts as F
from cutover.catalog import Compensation, FinalizeStep, Step, WarmStep
from cutover.concerns import evaluate
from cutover.errors import ErrorKind, error
from cutover.models import CheckInput, CheckResult, StepInput, StepResult
from cutover.policy import device_modes
from cutover.ports import Done, SourcePlatform
from cutover.site import VCenter, VSphereConcernsProbe


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
    """Source-side activities; they drive a `SourcePlatform` (default: vSphere through the
    worker's vCenter connections, `pool`, injected)."""

    pool: ClientPool = field(default_factory=ClientPool)
    source: SourcePlatform | None = None

    def __post_init__(self) -> None:
        if self.source is None:
            self.source = VSphereSource(self.pool)

    def _platform(self) -> SourcePlatform:
        assert self.source is not None  # set in __post_init__
        return self.source

    @staticmethod
    def _vcenter(inp: StepInput) -> VCenter:
        vc = inp.context.resolved_site.vcenter
        if vc is None:
            raise error(ErrorKind.CONFIG_ERROR, "the site config has no `vcenter` section")
        return vc

    def _vm_names(self, inp: StepInput) -> tuple[VCenter, list[str]]:
        vc = self._vcenter(inp)
        names = inp.context.facts.get(F.SOURCE_VMS)
        if names:
            return vc, names.split(",")
        return vc, self._platform().resolve(vc, inp.context.runbook)

    def _each(
        self, inp: StepInput, act: Callable[[VCenter, list[str], str], Done], describe: bool = False
    ) -> StepResult:
        """Apply act(vcenter, names, note) to the application's VMs; it returns the VMs'
        names and those it changed (the rest were already as wanted). With `describe`, also
        publish each VM's inventory model as fact `source_vm.<name>` (what the target's
        domain is built from)."""
        vc, names = self._vm_names(inp)
        vms, changed = act(vc, names, f"workflow {inp.context.workflowId}")
        facts = {F.SOURCE_VMS: ",".join(vms)}
        if describe:
            inv = self._platform().inventory(vc)
            facts.update({F.per_vm(F.SOURCE_VM, v): inv.vm(v).model_dump_json() for v in vms})
        return StepResult(
            step=inp.step,
            changed=bool(changed),
            facts=facts,
            details={"vms": ",".join(vms), "changed": ",".join(changed)},
            attempt=_attempt(),
        )

    @activity.defn(name=WarmStep.SNAPSHOT_SOURCE)
    def snapshot_source(self, inp: StepInput) -> StepResult:
        name = snapshot_name(inp.context.workflowId)
        quiesce = inp.context.runbook.dataSync.quiesceSnapshot
        src = self._platform()
        return self._each(
            inp, lambda vc, vms, note: src.snapshot(vc, vms, name, quiesce, note), describe=True
        )

    @activity.defn(name=FinalizeStep.REMOVE_SOURCE_SNAPSHOT)
    def remove_source_snapshot(self, inp: StepInput) -> StepResult:
        name = snapshot_name(inp.context.workflowId)
        src = self._platform()
        return self._each(inp, lambda vc, vms, note: src.remove_snapshot(vc, vms, name, note))

    @activity.defn(name="revert_source_snapshot")
    def revert_source_snapshot(self, inp: StepInput) -> StepResult:
        """Operator rollback that also discards the source's writes since the snapshot."""
        name = snapshot_name(inp.context.workflowId)
        src = self._platform()
        return self._each(inp, lambda vc, vms, note: src.revert_snapshot(vc, vms, name, note))

    @activity.defn(name=Step.QUIESCE_APPLICATION)
    def quiesce_application(self, inp: StepInput) -> StepResult:
        prior: dict[str, str] = {}
        policy, scope, src = inp.context.runbook.quiesce, _run_scope(inp), self._platform()
        result = self._each(
            inp,
            lambda vc, vms, note: src.shut_down(vc, vms, policy, scope, prior, note),
            describe=True,
        )
        result.details["priorPowerState"] = ",".join(f"{n}={s}" for n, s in prior.items())
        return result

    @activity.defn(name=Compensation.RESTART_SOURCE)
    def restart_source(self, inp: StepInput) -> StepResult:
        """Back to the power state quiesce recorded: on only what was on before the cutover.
        A VM without a record was never changed by quiesce (it records first): left as is."""
        found: dict[str, str] = {}
        src = self._platform()
        result = self._each(inp, lambda vc, vms, note: src.restore_power(vc, vms, found, note))
        result.details["priorPowerState"] = ",".join(f"{n}={s}" for n, s in found.items())
        return result

    def _set_nics(self, inp: StepInput, connected: bool) -> StepResult:
        src = self._platform()
        return self._each(inp, lambda vc, vms, note: src.set_nics(vc, vms, connected, note))

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
        src = self._platform()
        return self._each(inp, lambda vc, vms, note: src.mark_migrated(vc, vms, values, note))

    @activity.defn(name="verify_not_migrated")
    def verify_not_migrated(self, inp: StepInput) -> StepResult:
        """Whether the application's source VMs carry migrated marks, with the evidence.
        Only reads: the workflow decides (a deliberate re-migration names its reason)."""
        vc, names = self._vm_names(inp)
        marked, evidence = self._platform().migrated(vc, names)
        # The VMs' GPU / SR-IOV device modes, for workload policies' gpuScheduling (read
        # here: the guard is the one step before anything changes).
        modes = ""
        site = inp.context.resolved_site
        inv = None
        if any(p.spec.gpuScheduling for p in site.workloadPolicies):
            inv = self._platform().inventory(vc)
            modes = ";".join(f"{v}:{'+'.join(device_modes(inv.vm(v)))}" for v in names)
        placement: dict[str, str] = {}
        if site.fleet is not None:
            # where the VMs run and their disks lie: the fleet's placement and copy limits
            inv = inv or self._platform().inventory(vc)
            vms = [inv.vm(v) for v in names]
            placement = {
                "esxiHosts": ",".join(sorted({vm.host for vm in vms if vm.host})),
                "datastores": ",".join(
                    sorted({d.datastore for vm in vms for d in vm.disks if d.datastore})
                ),
            }
        return StepResult(
            step=inp.step,
            changed=False,
            details={
                "migrated": bool(marked),
                "evidence": evidence,
                "vms": ",".join(names),
                "marked": ",".join(marked),
                **({"deviceModes": modes} if modes else {}),
                **placement,
            },
            attempt=_attempt(),
        )

    def concerns_check(self, inp: CheckInput, probe: VSphereConcernsProbe) -> CheckResult:
        """The application's VMs' pre-migration concerns as a check result."""
        if inp.runbook is None or inp.vcenter is None:
            raise error(
                ErrorKind.CONFIG_ERROR, "a vsphere-concerns check needs the runbook and vCenter"
            )
        names = self._platform().resolve(inp.vcenter, inp.runbook)
        inv = self._platform().inventory(inp.vcenter)
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
