"""A workflow that appends its audit record as the cutover's and the wave's will (tests
only): a step, optionally a child and a continue-as-new first, then `append_audit_record`."""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel
from temporalio import activity, workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from cutover.catalog import APPEND_AUDIT_RECORD
    from cutover.models import AuditAppend, AuditAppended

LEDGER_TEST_STEP = "ledger_test_step"


class LedgerPlan(BaseModel):
    kind: str = "cutover"
    outcome: str = "COMPLETED"
    #: runs before this one (continue-as-new) still to go
    continues: int = 0
    child: bool = False
    #: the child still runs when the record is appended (it finishes after)
    child_running: bool = False
    #: seconds to wait (a timer) before the second step
    wait: float = 0
    append: bool = True


@activity.defn(name=LEDGER_TEST_STEP)
async def ledger_test_step(name: str) -> str:
    return f"did {name}"


@workflow.defn(name="LedgerTest")
class LedgerTestWorkflow:
    @workflow.run
    async def run(self, plan: LedgerPlan) -> AuditAppended | None:
        await workflow.execute_activity(
            LEDGER_TEST_STEP, "step", start_to_close_timeout=timedelta(seconds=30)
        )
        if plan.continues > 0:
            workflow.continue_as_new(plan.model_copy(update={"continues": plan.continues - 1}))
        if plan.wait:
            await workflow.sleep(plan.wait)
            await workflow.execute_activity(
                LEDGER_TEST_STEP, "after", start_to_close_timeout=timedelta(seconds=30)
            )
        child = None
        if plan.child or plan.child_running:
            child = await workflow.start_child_workflow(
                LedgerTestWorkflow.run,
                LedgerPlan(append=False, wait=2 if plan.child_running else 0),
                id=f"{workflow.info().workflow_id}-child",
            )
            if not plan.child_running:
                await child
        if not plan.append:
            return None
        appended: AuditAppended = await workflow.execute_activity(
            APPEND_AUDIT_RECORD,
            AuditAppend(kind="wave" if plan.kind == "wave" else "cutover", outcome=plan.outcome),
            result_type=AuditAppended,
            start_to_close_timeout=timedelta(seconds=60),
            retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=100)),
        )
        if child is not None:
            await child
        return appended
