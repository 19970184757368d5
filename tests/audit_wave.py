"""A minimal parent workflow for the audit tests: one AppCutover child per run, chained by
continue-as-new. It stands in for the real wave workflow (built separately) only to give
the audit a history with children and several runs; it is never registered in production."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from cutover.models import CutoverInput, CutoverResult
    from workflows.cutover import AppCutoverWorkflow, workflow_id_for


@workflow.defn(name="AuditTestWave")
class AuditTestWave:
    @workflow.run
    async def run(self, inputs: list[CutoverInput], done: list[str]) -> list[str]:
        inp = inputs[0]
        result: CutoverResult = await workflow.execute_child_workflow(
            AppCutoverWorkflow.run,
            inp,
            id=workflow_id_for(inp.runbook.application),
            task_queue=workflow.info().task_queue,
        )
        done = [*done, f"{result.application}: {result.outcome.value}"]
        if len(inputs) > 1:
            workflow.continue_as_new(args=[inputs[1:], done])
        return done
