"""Test activities whose side effects live in files, for crash tests across processes.

Each step applies its effect once per workflow (an idempotency marker, as real adapters
check the world before changing it), and logs every execution. `pre_copy` is slow and
heartbeats its offset, resuming from it on retry like the real data path.
Run as a worker: python -m tests.durable_world ADDRESS TASK_QUEUE STATE_DIR
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from temporalio import activity

from cutover.catalog import RUN_CHECK
from cutover.models import CheckInput, CheckResult, StepInput, StepResult
from tests.world import ALL_STEP_NAMES

CHUNKS = 10


class DurableWorld:
    def __init__(self, state: Path) -> None:
        self.state = state
        state.mkdir(parents=True, exist_ok=True)

    def _log(self, file: str, line: str) -> None:
        with (self.state / file).open("a") as f:
            f.write(line + "\n")

    def activities(self) -> list[Callable[..., Any]]:
        return [self._step(n) for n in ALL_STEP_NAMES] + [self._check()]

    def _step(self, name: str) -> Callable[..., Any]:
        async def run(inp: StepInput) -> StepResult:
            info = activity.info()
            self._log("executions", f"{name} attempt={info.attempt}")
            marker = self.state / f"done-{inp.context.workflowId}-{name}-{inp.passNumber}"
            if marker.exists():
                return StepResult(step=name, changed=False, attempt=info.attempt)
            slow = self.state / f"slow-{name}"
            if slow.exists():
                # a step that waits without heartbeating itself (e.g. a guest shutdown):
                # only the worker's keep-alive heartbeat tells Temporal the worker lives
                (self.state / f"{name}_running").touch()
                await asyncio.sleep(float(slow.read_text()))
            if name == "pre_copy":
                start = int(info.heartbeat_details[0]) if info.heartbeat_details else 0
                self._log("resumes", f"{name} from={start}")
                for chunk in range(start, CHUNKS):
                    (self.state / "pre_copy_running").touch()
                    await asyncio.sleep(0.4)
                    self._log("chunks", f"{info.attempt}:{chunk}")
                    activity.heartbeat(chunk + 1)
            self._log("effects", name)
            marker.touch()
            return StepResult(step=name, attempt=info.attempt)

        return activity.defn(name=name)(run)

    def _check(self) -> Callable[..., Any]:
        async def run(inp: CheckInput) -> CheckResult:
            return CheckResult(name=inp.name, phase=inp.phase, passed=True, measured="ok")

        return activity.defn(name=RUN_CHECK)(run)


async def _main(address: str, queue: str, state: str) -> None:
    from cutover.temporal import connect
    from workers.worker import build_worker

    client = await connect(address, "default")
    worker = build_worker(client, queue, activities=DurableWorld(Path(state)).activities())
    (Path(state) / "worker_ready").touch()
    await worker.run()


if __name__ == "__main__":
    asyncio.run(_main(*sys.argv[1:4]))
