"""The application cutover: a saga with a rollback window, on Temporal.

Pre-checks -> warm sync (source serving) -> approval -> cutover steps (each registering its
compensation first) -> rollback window (durable timer; post-checks and rollback criteria on
an interval) -> finalize. Any failure, fired criterion or operator rollback unwinds the
registered compensations in reverse, shielded from cancellation.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, ParamSpec, TypeVar, cast

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeUpdate
from temporalio.exceptions import ActivityError, ApplicationError

from workflows import trust
from workflows.cutover_bounds import NON_RETRYABLE, activity_bounds
from workflows.cutover_fleet import DATA_HOST, WARM_DATA, CutoverFleet, HostLost
from workflows.cutover_text import RollbackNow as _RollbackNow
from workflows.cutover_text import cause as _cause
from workflows.cutover_text import (
    details_markdown,
    problems,
    read_input,
    snapshot_warning,
    workflow_id_for,
)
from workflows.cutover_text import refuse as _refuse
from workflows.cutover_text import wall_clock as _wall_clock
from workflows.cutover_undo import CutoverUndo
from workflows.cutover_v1 import CutoverV1
from workflows.cutover_window import CutoverWindow

with workflow.unsafe.imports_passed_through():
    from pydantic import BaseModel, ValidationError

    from cutover import search_attributes as sa
    from cutover import signing
    from cutover.catalog import (
        APPEND_AUDIT_RECORD,
        COMPENSATIONS,
        RESOLVE_SITE,
        RUN_CHECK,
        TRAFFIC_STEPS,
        VERIFY_NOT_MIGRATED,
        Compensation,
        FinalizeStep,
        Step,
        WarmStep,
    )
    from cutover.errors import ErrorKind
    from cutover.fleet import SIGNAL_GRANT, STAGING_UNDOS, FleetGrant
    from cutover.metrics import BYTES_MOVED, CUTOVERS, DOWNTIME, TARGET_WRITTEN
    from cutover.models import (
        ApprovalRequest,
        AuditAppend,
        AuditAppended,
        CheckInput,
        CheckPhase,
        CheckResult,
        CutoverInput,
        CutoverResult,
        CutoverStatus,
        ExtendRequest,
        FinalizeRequest,
        Outcome,
        Phase,
        ResumeRequest,
        RollbackRequest,
        SiteLookup,
        StepContext,
        StepInput,
        StepKind,
        StepRecord,
        StepResult,
        WorkflowInput,
    )
    from cutover.policy import Action
    from cutover.site import (
        DataConsistencyProbe,
        DnsProbe,
        PerformanceBaselineProbe,
        SiteConfig,
        VSphereConcernsProbe,
    )
    from cutover.templating import expand, values_for

# Importable from here too (the CLI, the wave workflow, tests and benches use them).
__all__ = ["NON_RETRYABLE", "AppCutoverWorkflow", "_cause", "workflow_id_for"]

R = TypeVar("R", bound=BaseModel)
P = ParamSpec("P")
T = TypeVar("T")


def _async_update(
    description: str,
) -> Callable[[Callable[P, Awaitable[T]]], workflow.UpdateMethodMultiParam[P, T]]:
    """`workflow.update(description=...)` typed for an async handler: the SDK's keyword
    overload types it as returning its coroutine, so callers' `execute_update` would too."""
    return cast(
        Callable[[Callable[P, Awaitable[T]]], workflow.UpdateMethodMultiParam[P, T]],
        workflow.update(description=description),
    )


#: An approval gate with no timeout of its own closes after a day: the warm snapshot's
#: delta grows on the production datastore while it waits.
DEFAULT_APPROVAL_MINUTES = 24 * 60


@workflow.defn(name="AppCutover")
class AppCutoverWorkflow(CutoverWindow, CutoverUndo, CutoverV1, CutoverFleet):
    @workflow.init
    def __init__(self, inp: WorkflowInput) -> None:
        inp, self._input_error, self._platform_error = read_input(inp)
        rb = inp.runbook
        self._inp = inp
        self._id = workflow.info().workflow_id
        self._phase = Phase.PENDING
        self._outcome = Outcome.RUNNING
        self._records: list[StepRecord] = []
        self._checks: dict[str, CheckResult] = {}
        self._streaks: dict[str, int] = {}
        self._compensations: list[str] = []
        self._facts: dict[str, str] = {}
        self._current: str | None = None
        self._approved_by: str | None = None
        self._rollback: RollbackRequest | None = None
        self._finalize: FinalizeRequest | None = None
        self._window = timedelta(minutes=rb.rollbackWindowMinutes)
        self._deadline: datetime | None = None
        self._wake = False
        self._down_from: datetime | None = None
        self._down_to: datetime | None = None
        self._target_fenced = False
        self._target_written: int | None = None
        self._target_writes: str | None = None
        self._discarded_by: str | None = None
        self._moved_back: set[str] = set()
        #: traffic undos that failed without saying the traffic stayed on the target (their
        #: change may have landed): the paths they own are not surely on the target
        self._traffic_unsure: set[str] = set()
        self._rollback_reason: str | None = None
        self._reason = ""
        self._bytes_moved = 0
        self._v2 = False
        self._cancel_requested = False
        self._next_eval: datetime | None = None
        self._rounds = 0
        self._last_round: list[StepRecord] = []
        self._finalize_verdict: tuple[bool, str] | None = None
        self._resume: ResumeRequest | None = None
        self._left: list[str] = []
        self._snapshot_at: datetime | None = None
        self._once = False
        # Runs started before issue 13 carry their site: their steps get it without its check
        # catalog (checks travel in CheckInput). Newer steps carry only `siteRef`.
        self._step_site = None if inp.site is None else inp.site.model_copy(update={"checks": {}})
        #: the site came from the worker's own config (`siteRef`), not from the input
        self._by_ref = False
        # Issue 13: a run whose input names its site (every run started since) takes only
        # signed, authorized operator requests; runs started before replay as they ran.
        self._signed = inp.site is None
        #: nonces of the signed requests accepted (a replayed one is refused), by time
        self._nonces: dict[str, datetime] = {}
        self._started_by: str | None = None
        #: a workload policy holds the approval gate / wants the audit record before finalize
        self._policy_approval = False
        self._immutable_audit = False
        self._vm_devices: dict[str, list[str]] | None = None
        # issue 17, a fleet: grants received, hosts that did not take their steps, the
        # requests' counter, and where the VMs run and their disks lie (ESXi, datastores)
        self._grants: dict[str, FleetGrant] = {}
        self._dead_hosts: list[str] = []
        self._fleet_seq = 0
        self._placement: tuple[list[str], list[str]] = ([], [])

    # ----------------------------------------------------------------- run

    @workflow.run
    async def run(self, _: WorkflowInput) -> CutoverResult:
        if self._input_error is not None:
            raise ApplicationError(
                self._input_error, type=ErrorKind.CONFIG_ERROR.value, non_retryable=True
            )
        # --- issue 15, target platforms (begin) ---
        # A new cutover to a platform its site does not bind fails before any step, never
        # runs elsewhere. A continued window (carry) started before the rule: it goes on.
        if (
            self._platform_error is not None
            and self._inp.carry is None
            and workflow.patched("target-platform-bound")
        ):
            raise ApplicationError(
                self._platform_error, type=ErrorKind.CONFIG_ERROR.value, non_retryable=True
            )
        # --- issue 15, target platforms (end) ---
        # Everything issue 11 changed (the remigration guard, undo preconditions and blocked
        # rollbacks, bounded steps, cancellation, finalize on fresh evidence, bounded
        # windows) is one patch: cutovers started before it replay exactly as they ran.
        self._v2 = workflow.patched("safety-v2")
        rb = self._inp.runbook
        expected_id = workflow_id_for(rb.application)
        # The workflow ID is what keeps two cutovers of one application apart; the UI's start
        # form takes any ID (it even offers a random one). Patched: runs that started under
        # another ID before this check replay unchanged.
        if self._id != expected_id and workflow.patched("workflow-id-is-application"):
            raise ApplicationError(
                f"this cutover must run as workflow ID {expected_id}, not {self._id}: one "
                f"workflow ID per application keeps two cutovers of {rb.application} from "
                "running at once; start it again with that ID",
                type=ErrorKind.CONFIG_ERROR.value,
                non_retryable=True,
            )
        if not self._v2:
            return await self._run_v1()
        # Issue 13: the site comes from the worker's own configuration, by name and digest.
        if workflow.patched("site-by-reference"):
            await self._resolve_site()
        result = await self._until_done(asyncio.ensure_future(self._run_v2()))
        if self._by_ref:
            await self._fleet_done()  # the data host and any permit go back to the fleet
            why = await self._audit_record(result.outcome.value)
            if why is not None:
                result.leftWhere.append(f"the audit log has no record of this cutover: {why}")
        return result

    async def _audit_record(self, outcome: str) -> str | None:
        """Append this cutover's record (from its own history, up to this request) to the
        worker's hash-chained audit log; None once written, else why not (bounded)."""
        try:
            await workflow.execute_activity(
                APPEND_AUDIT_RECORD,
                AuditAppend(
                    kind="cutover",
                    outcome=outcome,
                    application=self._inp.runbook.application,
                    wave=self._inp.runbook.wave_name,
                ),
                result_type=AuditAppended,
                start_to_close_timeout=timedelta(minutes=2),
                heartbeat_timeout=timedelta(seconds=self._inp.tuning.heartbeatSeconds),
                schedule_to_close_timeout=timedelta(minutes=30),
                retry_policy=RetryPolicy(maximum_interval=timedelta(minutes=1)),
                summary=f"audit record ({outcome})",
            )
        except ActivityError as err:
            return _cause(err)
        return None

    async def _resolve_site(self) -> None:
        """Replace the input's site reference by the worker's own site, or fail the cutover
        before any step: an input never brings the site (probes, secrets' references,
        staging, endpoints) its steps act on."""
        inp = self._inp
        if inp.site is not None:
            if inp.carry is not None:
                return  # the window of a run started before this rule: it ends as it began
            raise ApplicationError(
                "the workflow input carries a site body (`site`): workers act only on their "
                "own site configs. Name the site instead, with `siteRef: {name, digest}` "
                "(`cutover run --print-input` writes it)",
                type=ErrorKind.CONFIG_ERROR.value,
                non_retryable=True,
            )
        assert inp.siteRef is not None  # CutoverInput requires one of the two
        try:
            site = await workflow.execute_activity(
                RESOLVE_SITE,
                SiteLookup(
                    siteRef=inp.siteRef,
                    application=inp.runbook.application,
                    wave=inp.runbook.wave_name,
                ),
                result_type=SiteConfig,
                start_to_close_timeout=timedelta(seconds=30),
                heartbeat_timeout=timedelta(seconds=inp.tuning.heartbeatSeconds),
                schedule_to_close_timeout=timedelta(minutes=5),
                retry_policy=RetryPolicy(
                    maximum_attempts=3, non_retryable_error_types=list(NON_RETRYABLE)
                ),
                summary=f"site {inp.siteRef}",
            )
        except ActivityError as err:
            raise ApplicationError(
                f"site {inp.siteRef.name}: {_cause(err)}",
                type=ErrorKind.CONFIG_ERROR.value,
                non_retryable=True,
            ) from None
        try:
            full = CutoverInput.model_validate(
                {**inp.model_dump(mode="json", exclude={"site"}), "site": site}
            )
        except ValidationError as exc:
            raise ApplicationError(
                f"invalid cutover input against site {inp.siteRef}: {problems(exc)}",
                type=ErrorKind.CONFIG_ERROR.value,
                non_retryable=True,
            ) from None
        self._inp, self._step_site, self._by_ref = full, None, True
        site, rb = full.resolved_site, full.runbook
        app, _ = trust.app_attributes(site, rb)
        if inp.carry is None and workflow.info().parent is None:
            verdict = trust.check_request(
                site,
                workflow_id_for(rb.application),  # = this run's ID (checked above)
                "start",
                inp,
                named=None,
                apps=[app],
                now=workflow.now(),
                seen=(),
                args=trust.start_args(inp),
            )
            if verdict.refusal is not None:
                raise ApplicationError(
                    f"start refused: {verdict.refusal}",
                    type=ErrorKind.REFUSED.value,
                    non_retryable=True,
                )
            self._started_by = verdict.signer or inp.requestedBy
        else:  # a wave's child: the wave verified and authorized its start
            self._started_by = inp.requestedBy
        violations = trust.policy_problems(site, rb)
        if violations:
            raise ApplicationError(
                "refused by workload policy: " + "; ".join(violations),
                type=ErrorKind.CONFIG_ERROR.value,
                non_retryable=True,
            )
        self._policy_approval = trust.requires_approval(site, rb)
        self._immutable_audit = trust.immutable_audit_log(site, rb)

    async def _until_done(self, task: asyncio.Future[CutoverResult]) -> CutoverResult:
        """Await the cutover in its own task, so that a cancel request from Temporal can
        never abandon a step, an undo or finalize half-way: it becomes a rollback request
        (acted on at the next step boundary, or at once in the window), or is noted once
        rollback is no longer possible. The cutover then ends with its result as usual."""
        while True:
            try:
                return await asyncio.shield(task)
            except asyncio.CancelledError:
                if task.done():
                    raise
                self._cancel_requested = True
                self._wake = True
                late = (
                    Phase.ROLLING_BACK,
                    Phase.ROLLBACK_BLOCKED,
                    Phase.FINALIZING,
                    Phase.FINALIZE_BLOCKED,
                )
                if self._rollback is None and self._phase not in (*late, Phase.DONE):
                    self._rollback = RollbackRequest(
                        reason="the workflow was cancelled (a Temporal cancel request)",
                        requestedBy="a Temporal cancel request",
                    )
                self._log(logging.WARNING, "cancel requested", phase=self._phase.value)

    async def _run_v2(self) -> CutoverResult:
        inp = self._inp
        rb = inp.runbook
        if inp.carry is not None:
            self._restore(inp.carry)
            return await self._window_then_finalize()
        self._set_phase(
            Phase.PRE_CHECKS,
            sa.WAVE.value_set(rb.wave_name),
            sa.APPLICATION.value_set(rb.application),
            sa.OUTCOME.value_set(Outcome.RUNNING.value),
        )
        self._log(logging.INFO, "cutover started", requested_by=inp.requestedBy)
        refused = await self._guard_remigration()
        if refused is not None:
            return refused
        if self._by_ref and trust.gpu_checked(self._inp.resolved_site, rb):
            violations = (
                ["the source VMs' devices were not read (the guard step gave no deviceModes)"]
                if self._vm_devices is None
                else trust.policy_problems(self._inp.resolved_site, rb, self._vm_devices)
            )
            if violations:
                return self._finish(
                    Outcome.FAILED,
                    "refused by workload policy: " + "; ".join(violations),
                    ["nothing was changed: the source still serves"],
                )
        failed = [r for r in await self._run_checks(rb.preChecks, "pre") if not r.passed]
        if failed:
            return self._finish(
                Outcome.FAILED,
                "pre-check failed: " + "; ".join(r.describe() for r in failed),
                ["nothing was changed: the source still serves"],
            )
        if self._rollback:
            return self._finish(
                Outcome.ROLLED_BACK,
                f"cancelled before any change by {self._rollback.requestedBy}: "
                f"{self._rollback.reason}",
                ["nothing was changed: the source still serves"],
            )
        try:
            if rb.dataSync.warm and Step.FINAL_DATA_SYNC in rb.cutoverSteps:
                await self._warm_phase()
            if rb.approval.required or self._policy_approval:
                await self._await_approval()
            await self._cutover_steps()
        except _RollbackNow as rollback:
            return await self._roll_back(rollback.reason)
        except ActivityError as err:
            return await self._roll_back(f"step {self._current} failed: {_cause(err)}")
        return await self._window_then_finalize()

    async def _window_then_finalize(self) -> CutoverResult:
        reason = await self._rollback_window()
        if reason is not None:
            return await self._roll_back(reason)
        if self._immutable_audit:
            # A workload policy's immutableAuditLog: no finalize before the record is
            # written; if it cannot be, the source still serves, so roll back.
            why = await self._audit_record("FINALIZING")
            if why is not None:
                return await self._roll_back(
                    f"the audit log could not record the cutover before finalize "
                    f"(a workload policy wants immutableAuditLog): {why}"
                )
        return await self._finalize_cutover()

    async def _guard_remigration(self) -> CutoverResult | None:
        """First, before anything changes and whatever the input says: an application whose
        source is marked migrated is not cut over again without an explicit reason."""
        rb = self._inp.runbook
        try:
            res = await self._step(VERIFY_NOT_MIGRATED, "guard")
        except ActivityError as err:
            return self._finish(
                Outcome.FAILED,
                f"could not verify that {rb.application} is not already migrated: {_cause(err)}",
                ["nothing was changed: the source still serves"],
            )
        modes = res.details.get("deviceModes")
        if isinstance(modes, str) and modes:
            # "vm:mode+mode;vm:" -> {vm: [modes]}: what a workload policy's GPU rule reads
            self._vm_devices = {
                vm: [m for m in ms.split("+") if m]
                for vm, _, ms in (part.partition(":") for part in modes.split(";"))
            }
        hosts, stores = (str(res.details.get(k) or "") for k in ("esxiHosts", "datastores"))
        self._placement = ([h for h in hosts.split(",") if h], [d for d in stores.split(",") if d])
        if res.details.get("migrated") is not True:
            return None
        evidence = str(res.details.get("evidence") or "its source is marked migrated")
        if self._inp.remigrate is None:
            return self._finish(
                Outcome.FAILED,
                f"refused: {rb.application} was already migrated ({evidence}); cutting it "
                "over again would copy the retired source over what the target wrote since. "
                "A deliberate re-migration needs a recorded reason: "
                "`cutover run --remigrate REASON` (input field `remigrate`)",
                ["nothing was changed"],
            )
        self._log(
            logging.WARNING,
            "re-migrating an application already migrated",
            reason=self._inp.remigrate,
            evidence=evidence,
        )
        return None

    # --------------------------------------------------------------- phases

    async def _warm_phase(self) -> None:
        self._set_phase(Phase.WARM_SYNC)
        self._register_for(WarmStep.SNAPSHOT_SOURCE)
        await self._step(WarmStep.SNAPSHOT_SOURCE, "warm")
        self._snapshot_at = workflow.now()
        self._raise_if_rollback()
        while True:
            try:
                self._register_for(WarmStep.PRE_COPY)
                await self._step(WarmStep.PRE_COPY, "warm")
                self._raise_if_rollback()
                for n in range(1, self._inp.runbook.dataSync.incrementalPasses + 1):
                    await self._step(WarmStep.INCREMENTAL_SYNC, "warm", pass_number=n)
                    self._raise_if_rollback()
                return
            except HostLost as lost:
                if lost.step not in WARM_DATA:
                    raise
                # the source still serves: copy again, from the pre-copy, on another host
                self._log(logging.WARNING, "data host lost", host=lost.host, reason=lost.reason)
                await self._move_host(lost)

    async def _await_approval(self) -> None:
        if self._approved_by is None:
            self._set_phase(Phase.AWAITING_APPROVAL)
            timeout = self._inp.runbook.approval.timeoutMinutes
            if timeout is None and self._v2:
                timeout = DEFAULT_APPROVAL_MINUTES
            try:
                await workflow.wait_condition(
                    lambda: self._approved_by is not None or self._rollback is not None,
                    timeout=timedelta(minutes=timeout) if timeout else None,
                    timeout_summary="approval timeout",
                )
            except TimeoutError:
                raise _RollbackNow(f"no approval within {timeout:g} minutes") from None
        self._raise_if_rollback()

    async def _cutover_steps(self) -> None:
        rb = self._inp.runbook
        self._set_phase(Phase.CUTOVER)
        self._down_from = workflow.now()
        fence: bool | None = None
        reverse = False
        for step in rb.cutoverSteps:
            self._raise_if_rollback()
            if step in TRAFFIC_STEPS and Step.QUIESCE_APPLICATION in rb.cutoverSteps:
                # Undoing a switch needs a live source to switch back to: register
                # "restart the source" above the traffic undo, so it unwinds first; and
                # above that, fence the target, so that while traffic moves back path by
                # path (LB, then DNS) only one side takes writes.
                self._register_for(step)
                self._register(Compensation.RESTART_SOURCE, again=True)
                if fence is None:
                    fence = self._v2 and workflow.patched("fence-target-before-source-restart")
                    # what the target writes once users reach it goes back to the source
                    # (between the fence and the source's start) unless the runbook says no
                    reverse = (
                        fence
                        and rb.rollback.reverseSync
                        and workflow.patched("reverse-sync-target-writes")
                    )
                if fence:
                    if reverse:
                        self._register(Compensation.REVERSE_SYNC, again=True)
                    self._register(Compensation.FENCE_TARGET, again=True)
            else:
                self._register_for(step)
            await self._step(step, "step")
        self._down_to = workflow.now()

    async def _rollback_window(self) -> str | None:
        """Hold rollback open; return why to roll back, or None to finalize."""
        if self._v2:
            return await self._window_v2()
        return await self._window_v1()

    def _dns_configured(self) -> bool:
        return (
            self._inp.runbook.endpoint.dns is not None and self._inp.resolved_site.dns is not None
        )

    async def _finalize_cutover(self) -> CutoverResult:
        rb = self._inp.runbook
        self._set_phase(Phase.FINALIZING)
        steps: list[str] = []
        retire_lb = Step.UPDATE_LOAD_BALANCER in rb.cutoverSteps
        # Retire the source from the LB before its NICs go: should a reload have put traffic
        # back on the source, retiring re-applies the switch first. Patched so that
        # cutovers already finalizing in the old order replay unchanged.
        lb_first = workflow.patched("retire-lb-before-nics")
        if retire_lb and lb_first:
            steps.append(FinalizeStep.RETIRE_SOURCE_FROM_LOAD_BALANCER)
        if self._v2 and self._dns_configured():
            steps.append(FinalizeStep.RESTORE_DNS_TTL)
        if Compensation.REMOVE_SOURCE_SNAPSHOT in self._compensations:
            steps.append(FinalizeStep.REMOVE_SOURCE_SNAPSHOT)
        if Step.QUIESCE_APPLICATION in rb.cutoverSteps:
            steps.append(FinalizeStep.DISCONNECT_SOURCE_NICS)
        steps.append(FinalizeStep.MARK_SOURCE_MIGRATED)
        if retire_lb and not lb_first:
            steps.append(FinalizeStep.RETIRE_SOURCE_FROM_LOAD_BALANCER)
        # The staged copies and converted images served the window (rollback, the
        # consistency check); the target's volumes are their own files: no debt left.
        leftovers = [
            c
            for c in (Compensation.REMOVE_CONVERTED_IMAGE, Compensation.DISCARD_STAGING)
            if c in self._compensations
        ]
        if leftovers and workflow.patched("discard-staging-at-finalize"):
            steps += leftovers
        if (
            self._v2
            and Step.POWER_ON_TARGET in rb.cutoverSteps
            and rb.finalize.targetOverlay == "commit"
            and workflow.patched("commit-target-overlay")
        ):
            # last: the source is retired first; the target's chain is its own matter
            steps.append(FinalizeStep.COMMIT_TARGET_OVERLAY)
        if self._v2:
            if workflow.patched("mark-migrated-first"):
                # Marked first: a finalize that blocks (and is never resumed) still leaves
                # the source marked, so the remigration guard refuses a second cutover.
                steps.remove(FinalizeStep.MARK_SOURCE_MIGRATED)
                steps.insert(0, FinalizeStep.MARK_SOURCE_MIGRATED)
            return await self._finalize_steps(steps)
        return await self._finalize_v1(steps)

    async def _roll_back(self, reason: str) -> CutoverResult:
        self._rollback_reason = reason
        self._set_phase(Phase.ROLLING_BACK)
        self._log(logging.WARNING, "rolling back", reason=reason)
        if self._v2:
            return await self._unwind(reason)
        return await self._roll_back_v1(reason)

    # -------------------------------------------------------------- helpers

    def _register_for(self, step: str) -> None:
        comp = COMPENSATIONS.get(step)
        if comp is None and step == Step.FINAL_DATA_SYNC:
            comp = Compensation.DISCARD_STAGING
        if comp is not None:
            self._register(comp)

    def _register(self, comp: str, again: bool = False) -> None:
        if again or comp not in self._compensations:
            self._compensations.append(comp)

    def _raise_if_rollback(self) -> None:
        if self._rollback is not None:
            raise _RollbackNow(
                f"rollback requested by {self._rollback.requestedBy}: {self._rollback.reason}"
            )

    def _context(self) -> StepContext:
        return StepContext(
            workflowId=self._id,
            application=self._inp.runbook.application,
            wave=self._inp.runbook.wave_name,
            runbook=self._inp.runbook,
            site=self._step_site,
            siteRef=None if self._step_site is not None else self._inp.siteRef,
            facts=dict(self._facts),
        )

    async def _step(self, name: str, kind: StepKind, pass_number: int = 0) -> StepResult:
        inp = StepInput(step=name, context=self._context(), passNumber=pass_number, kind=kind)
        attempts = (
            self._inp.tuning.compensationAttempts
            if kind == "compensation"
            else self._inp.tuning.maxAttempts
        )
        label = f"{name} #{pass_number}" if pass_number else name
        result = await self._activity(label, kind, name, inp, StepResult, attempts)
        self._facts.update(result.facts)
        moved = result.details.get("bytesMoved")
        if isinstance(moved, int | float) and not isinstance(moved, bool):
            self._bytes_moved += int(moved)
        return result

    async def _activity(
        self,
        label: str,
        kind: StepKind,
        name: str,
        arg: Any,
        result_type: type[R],
        attempts: int,
        on_data_host: bool = False,
    ) -> R:
        t = self._inp.tuning
        start_to_close, heartbeat = activity_bounds(name, arg, self._inp, self._v2)
        # issue 17: a data step of a site with a fleet (or a check reading its staging)
        route = await self._route(name, on_data_host)
        if route is None and name in STAGING_UNDOS and self._fleet() is not None:
            # no data host was ever assigned: nothing was staged anywhere
            return cast(R, StepResult(step=name, changed=False, details={"dataHost": "none"}))
        if (
            route is not None
            and name in STAGING_UNDOS
            and route[0] in self._dead_hosts
            and workflow.patched("fleet-lost-host-report")
        ):
            # its host is gone for this cutover: waiting on it again would only hold the
            # rollback (and, before the source's restart, the downtime)
            now = workflow.now()
            self._records.append(
                StepRecord(
                    name=label,
                    kind=kind,
                    startedAt=now,
                    endedAt=now,
                    outcome="skipped",
                    host=route[0],
                    error=f"data host {route[0]} was lost; left to its staging cleanup",
                )
            )
            self._log(logging.WARNING, "staging undo left", step=label, host=route[0])
            return cast(R, StepResult(step=name, changed=False, details={"leftTo": route[0]}))
        permit = await self._permits(name, label) if route is not None else None
        record = StepRecord(
            name=label,
            kind=kind,
            startedAt=workflow.now(),
            host=route[0] if route is not None else None,
        )
        self._records.append(record)
        self._current = label
        self._details()
        try:
            result: R = await workflow.execute_activity(
                name,
                arg,
                result_type=result_type,
                start_to_close_timeout=start_to_close,
                heartbeat_timeout=heartbeat,
                retry_policy=RetryPolicy(
                    initial_interval=timedelta(seconds=t.initialRetrySeconds),
                    maximum_interval=timedelta(seconds=t.maxRetrySeconds),
                    maximum_attempts=attempts,
                    non_retryable_error_types=NON_RETRYABLE,
                ),
                summary=f"{kind} {label} for {self._inp.runbook.application}"
                + (f" on {route[0]}" if route is not None else ""),
                task_queue=route[1] if route is not None else None,
                schedule_to_start_timeout=route[2] if route is not None else None,
            )
        except ActivityError as err:
            record.endedAt, record.outcome, record.error = workflow.now(), "failed", _cause(err)
            lost = self._lost(err, route, name, label) if route is not None else None
            if lost is not None and name == RUN_CHECK:
                record.error = lost.reason  # a check that could not run: it fails
            elif lost is not None:
                record.error = lost.reason
                if name in STAGING_UNDOS:
                    # only staging on a host that is gone: its cleanup removes it at its start
                    record.outcome = "skipped"
                    record.error = f"{lost.reason}; left to {lost.host}'s staging cleanup"
                    self._log(logging.WARNING, "staging undo left", step=label, host=lost.host)
                    await self._host_lost(lost.host)
                    return cast(
                        R,
                        StepResult(step=name, changed=False, details={"leftTo": lost.host}),
                    )
                self._log(logging.WARNING, "data host lost", step=label, host=lost.host)
                await self._host_lost(lost.host)
                raise lost from None
            self._log(logging.WARNING, "step failed", step=label, kind=kind, error=record.error)
            raise
        else:
            # stamped before the permit goes back: the next holder's record starts after it
            record.endedAt, record.outcome = workflow.now(), "ok"
        finally:
            if permit is not None:
                await self._release(permit)
        if isinstance(result, StepResult):
            record.attempts, record.changed = result.attempt, result.changed
            moved = result.details.get("bytesMoved")
            if isinstance(moved, int) and not isinstance(moved, bool):
                record.bytesMoved = moved
        return result

    async def _run_checks(self, names: list[str], phase: CheckPhase) -> list[CheckResult]:
        async def one(name: str) -> CheckResult:
            probe = expand(
                self._inp.resolved_site.checks[name], values_for(self._inp.runbook, self._facts)
            )
            about_vms = isinstance(probe, VSphereConcernsProbe)
            inp = CheckInput(
                name=name,
                phase=phase,
                application=self._inp.runbook.application,
                probe=probe,
                runbook=self._inp.runbook if about_vms else None,
                vcenter=self._inp.resolved_site.vcenter if about_vms else None,
                dns=self._inp.resolved_site.dns if isinstance(probe, DnsProbe) else None,
                context=self._context()
                if isinstance(probe, DataConsistencyProbe | PerformanceBaselineProbe)
                else None,
            )
            try:
                res = await self._activity(
                    name,
                    "check",
                    RUN_CHECK,
                    inp,
                    CheckResult,
                    3,
                    on_data_host=isinstance(probe, DataConsistencyProbe),
                )
            except ActivityError as err:
                res = CheckResult(name=name, phase=phase, passed=False, detail=_cause(err))
            res.at = workflow.now()
            self._checks[name] = res
            if phase == "pre":
                self._facts.update(res.facts)
            return res

        return list(await asyncio.gather(*(one(n) for n in names)))

    def _set_phase(self, phase: Phase, *more: SearchAttributeUpdate[Any]) -> None:
        self._phase = phase
        workflow.upsert_search_attributes([sa.PHASE.value_set(phase.value), *more])
        self._details()

    def _details(self) -> None:
        """What the Temporal UI shows as the workflow's current details (markdown).

        Served by the SDK's metadata query: no command, no history event, so changing the
        text never affects replay.
        """
        text = details_markdown(
            inp=self._inp,
            workflow_id=self._id,
            phase=self._phase,
            outcome=self._outcome,
            reason=self._reason,
            current=self._current,
            deadline=self._deadline,
            checks=self._checks,
            left=self._left,
            rollback_reason=self._rollback_reason,
            warning=self._snapshot_warning(),
        )
        workflow.set_current_details(text)

    def _snapshot_warning(self, now: datetime | None = None) -> str | None:
        limit = self._inp.runbook.dataSync.maxSnapshotAgeHours
        return snapshot_warning(self._snapshot_at, self._phase, limit, now or workflow.now())

    def _finish(
        self, outcome: Outcome, reason: str, left: list[str], failures: list[str] | None = None
    ) -> CutoverResult:
        self._outcome = outcome
        self._reason = reason
        self._current = None
        self._set_phase(Phase.DONE, sa.OUTCOME.value_set(outcome.value))
        downtime = None
        if self._down_from is not None:
            end = self._down_to or workflow.now()
            downtime = (end - self._down_from).total_seconds()
        self._log(
            logging.INFO,
            "cutover finished",
            outcome=outcome.value,
            reason=reason,
            downtime_seconds=downtime,
            bytes_moved=self._bytes_moved,
        )
        self._record_metrics(outcome, downtime)
        rb = self._inp.runbook
        return CutoverResult(
            workflowId=self._id,
            application=rb.application,
            wave=rb.wave_name,
            outcome=outcome,
            reason=reason,
            leftWhere=left,
            approvedBy=self._approved_by,
            downtimeSeconds=downtime,
            steps=self._records,
            checks=list(self._checks.values()),
            compensationFailures=failures or [],
            remigrate=self._inp.remigrate,
            checkRounds=self._rounds,
            targetWrittenBytes=self._target_written,
            targetWrites=self._target_writes,
            dataHost=self._facts.get(DATA_HOST),
        )

    def _log(self, level: int, msg: str, **fields: Any) -> None:
        """workflow.logger (silent during replay), bound to the application and wave."""
        rb = self._inp.runbook
        extra = {"application": rb.application, "wave": rb.wave_name, **fields}
        if self._current is not None:
            extra.setdefault("step", self._current)
        workflow.logger.log(level, msg, extra=extra)

    def _record_metrics(self, outcome: Outcome, downtime: float | None) -> None:
        """Our metrics, once per cutover. workflow.metric_meter() records nothing during
        replay and adds no command to the history, so this needs no patch."""
        meter = workflow.metric_meter().with_additional_attributes(
            {"wave": self._inp.runbook.wave_name}
        )
        meter.create_counter(CUTOVERS, "Cutovers ended, by outcome").add(
            1, {"outcome": outcome.value}
        )
        if downtime is not None:
            meter.create_histogram_float(
                DOWNTIME, "Downtime taken per cutover (quiesce to traffic switched)", "s"
            ).record(downtime, {"outcome": outcome.value})
        meter.create_counter(BYTES_MOVED, "Disk bytes moved to targets", "By").add(
            self._bytes_moved, {"outcome": outcome.value}
        )
        if self._target_written is not None and self._target_writes is not None:
            meter.create_counter(
                TARGET_WRITTEN, "What targets wrote in their windows (overlays)", "By"
            ).add(
                self._target_written,
                {"outcome": outcome.value, "fate": self._target_writes.split(":")[0]},
            )

    # ------------------------------------------------- queries and updates

    def _check_request(self, action: Action, req: BaseModel, named: str | None) -> None:
        """Refuse (never entering the history) a request that is not signed by a known key
        or that the access policy does not allow the signer (issue 13)."""
        if not self._signed or not self._by_ref:
            return  # before issue 13: as it began; before the site is known: `_late_check`
        app, _ = trust.app_attributes(self._inp.resolved_site, self._inp.runbook)
        verdict = trust.check_request(
            self._inp.resolved_site,
            self._id,
            action,
            req,
            named=named,
            apps=[app],
            now=workflow.now(),
            seen=self._nonces.keys(),
            started_by=self._started_by,
        )
        if verdict.refusal is not None:
            _refuse(f"{action} refused: {verdict.refusal}")

    async def _late_check(self, action: Action, req: BaseModel, named: str | None) -> None:
        """A request that came before the worker's site was resolved (the first instant of
        a run): checked once it is; refused then as a failed update."""
        if self._signed and not self._by_ref:
            await workflow.wait_condition(lambda: self._by_ref or self._outcome != Outcome.RUNNING)
            if not self._by_ref:
                _refuse(f"{action} refused: the cutover ended before its site was resolved")
            self._check_request(action, req, named)

    def _accept(self, req: BaseModel) -> None:
        """Remember an accepted signature's nonce (a replay is refused) for as long as the
        signature could be fresh; older ones are forgotten."""
        sig = getattr(req, "signature", None)
        if sig is None:
            return
        if sig.nonce in self._nonces:  # two copies passed validation in one task
            _refuse(f"replayed: the signature by '{sig.signer}' (nonce {sig.nonce}) was used")
        now = workflow.now()
        horizon = signing.DEFAULT_MAX_AGE + signing.DEFAULT_MAX_SKEW
        self._nonces = {n: t for n, t in self._nonces.items() if now - t <= horizon}
        self._nonces[sig.nonce] = now

    @workflow.signal(name=SIGNAL_GRANT)
    def fleet_grant(self, grant: FleetGrant) -> None:
        """The fleet workflow's answer to this cutover's request (issue 17)."""
        if grant.token.startswith(f"{workflow.info().run_id}/"):  # one this run asked for
            self._grants[grant.token] = grant

    @workflow.query(
        description="Phase, steps, checks and registered compensations (`cutover status`)."
    )
    def status(self) -> CutoverStatus:
        rb = self._inp.runbook
        return CutoverStatus(
            workflowId=self._id,
            application=rb.application,
            wave=rb.wave_name,
            phase=self._phase,
            outcome=self._outcome,
            currentStep=self._current,
            approvedBy=self._approved_by,
            windowClosesAt=self._deadline,
            rollbackReason=self._rollback_reason,
            steps=self._records,
            checks=list(self._checks.values()),
            compensationsRegistered=list(self._compensations),
            leftWhere=list(self._left),
            snapshotTakenAt=self._snapshot_at,
            snapshotWarning=self._snapshot_warning(_wall_clock()),
            checkRounds=self._rounds,
            targetWrittenBytes=self._target_written,
            targetWrites=self._target_writes,
            dataHost=self._facts.get(DATA_HOST),
        )

    @_async_update(
        description='Approve the cutover at its approval gate. Input: {"approver": "NAME", '
        '"comment": "optional"}; NAME must be on the runbook\'s approvers list.'
    )
    async def approve(self, req: ApprovalRequest) -> str:
        await self._late_check("approve", req, req.approver)
        self._accept(req)
        self._approved_by = req.approver
        self._log(logging.INFO, "approved", approver=req.approver)
        return f"approved by {req.approver}"

    @approve.validator
    def _validate_approve(self, req: ApprovalRequest) -> None:
        self._check_request("approve", req, req.approver)
        policy = self._inp.runbook.approval
        if not policy.required and not self._policy_approval:
            _refuse("this cutover's runbook does not require approval")
        if self._approved_by is not None:
            _refuse(f"already approved by {self._approved_by}")
        if self._phase not in (
            Phase.PENDING,
            Phase.PRE_CHECKS,
            Phase.WARM_SYNC,
            Phase.AWAITING_APPROVAL,
        ):
            _refuse(f"nothing to approve in phase {self._phase.value}")
        # A gate held by a workload policy alone: the access policy says who approves.
        if req.approver not in policy.approvers and (policy.required or policy.approvers):
            _refuse(
                f"'{req.approver}' is not an allowed approver for "
                f"{self._inp.runbook.application} (allowed: {', '.join(policy.approvers)})"
            )

    @_async_update(
        description='Roll back to the source now. Input: {"reason": "why", "requestedBy": '
        '"NAME"}. Refused once finalizing has begun.'
    )
    async def rollback(self, req: RollbackRequest) -> str:
        await self._late_check("rollback", req, req.requestedBy)
        self._accept(req)
        self._rollback = req
        self._wake = True
        return f"rollback requested by {req.requestedBy}"

    @rollback.validator
    def _validate_rollback(self, req: RollbackRequest) -> None:
        self._check_request("rollback", req, req.requestedBy)
        if self._phase in (Phase.FINALIZING, Phase.DONE):
            _refuse(
                f"rollback refused: the cutover is {self._phase.value.lower()} "
                f"({self._outcome.value}); after finalize the source is retired"
            )
        if self._phase in (Phase.ROLLING_BACK, Phase.ROLLBACK_BLOCKED):
            _refuse(
                "already rolling back"
                + (": blocked, send `resume` once the cause is fixed" if self._left else "")
            )
        if self._phase == Phase.FINALIZE_BLOCKED:
            _refuse("rollback refused: finalizing has begun (blocked: send `resume`)")

    @_async_update(
        description='Extend the rollback window. Input: {"minutes": 30, "requestedBy": "NAME"}.'
    )
    async def extend(self, req: ExtendRequest) -> str:
        await self._late_check("extend", req, req.requestedBy)
        self._accept(req)
        self._window += timedelta(minutes=req.minutes)
        if self._deadline is not None:
            self._deadline += timedelta(minutes=req.minutes)
        self._wake = True
        self._details()
        return f"rollback window extended by {req.minutes:g} minutes"

    @extend.validator
    def _validate_extend(self, req: ExtendRequest) -> None:
        self._check_request("extend", req, req.requestedBy)
        if self._phase != Phase.ROLLBACK_WINDOW and self._phase in (
            Phase.FINALIZING,
            Phase.DONE,
            Phase.ROLLING_BACK,
            Phase.ROLLBACK_BLOCKED,
            Phase.FINALIZE_BLOCKED,
        ):
            _refuse(f"cannot extend: the cutover is in phase {self._phase.value}")

    @_async_update(
        description='Finalize before the rollback window closes. Input: {"requestedBy": "NAME"} '
        "or {}. Only in the window, when the runbook allows it and post-checks pass."
    )
    async def finalize(self, req: FinalizeRequest) -> str:
        await self._late_check("finalize", req, req.requestedBy)
        self._accept(req)
        self._finalize = req
        self._wake = True
        if not self._v2:
            return f"finalize requested by {req.requestedBy}"
        # Answered once a check round that started after this request decided it.
        self._finalize_verdict = None
        await workflow.wait_condition(lambda: self._finalize_verdict is not None)
        assert self._finalize_verdict is not None
        accepted, message = self._finalize_verdict
        if not accepted:
            _refuse(message)
        return f"{message} (requested by {req.requestedBy})"

    @finalize.validator
    def _validate_finalize(self, req: FinalizeRequest) -> None:
        self._check_request("finalize", req, req.requestedBy)
        if self._phase != Phase.ROLLBACK_WINDOW:
            _refuse(f"finalize is possible only in the rollback window (phase {self._phase.value})")
        if not self._inp.runbook.approval.allowEarlyFinalize:
            _refuse("this runbook does not allow finalizing before the window closes")
        if self._finalize is not None:
            _refuse("a finalize request is already being decided by a check round")
        failing = [
            n
            for n in self._inp.runbook.postChecks
            if n not in self._checks or not self._checks[n].passed
        ]
        if failing:
            _refuse("post-checks not passing yet: " + ", ".join(failing))

    @_async_update(
        description="Go on with a blocked rollback or finalize once its cause is fixed. Input: "
        '{"requestedBy": "NAME", "reason": "what was fixed"}.'
    )
    async def resume(self, req: ResumeRequest) -> str:
        await self._late_check("resume", req, req.requestedBy)
        self._accept(req)
        self._resume = req
        self._log(logging.INFO, "resume requested", requested_by=req.requestedBy)
        return f"{self._phase.value.lower().replace('_', ' ')}: resumed by {req.requestedBy}"

    @resume.validator
    def _validate_resume(self, req: ResumeRequest) -> None:
        self._check_request("resume", req, req.requestedBy)
        if self._phase not in (Phase.ROLLBACK_BLOCKED, Phase.FINALIZE_BLOCKED):
            _refuse(f"nothing to resume: the cutover is in phase {self._phase.value}")
        if self._resume is not None:
            _refuse("already resumed")
