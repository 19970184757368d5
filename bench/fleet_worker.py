"""A worker process of bench.fleet: the product's worker roles, data steps simulated.

    python -m bench.fleet_worker --address A --task-queue Q --site FILE --role ROLE
        [--data-host NAME --staging-dir DIR [--max-copies N]] --sizes FILE
        [--copy-mbps 400] [--convert-mbps 2000] [--events FILE] --ready FILE

Assembled as `cutover worker` assembles it (cutover/cli/service.py): a role other than
`data` runs `build_worker` with `for_role(activities, role)` on the task queue; with
`--data-host` it also runs `build_data_worker` (its own queue, staging dir and copy limit)
and `workers.fleet.clean_staging` at start and every CLEAN_EVERY. The workflows, the fleet
ledger, routing, permits, site resolution and the interceptors are the product's.

The activities are not: the light steps and checks are `tests.world.World`'s (instant), the
data steps (`cutover.fleet.DATA_STEPS`) are `SimData`'s. A simulated copy behaves like one
on the outside: it takes time proportional to the application's size (`--sizes`: MB per
application) at `--copy-mbps` per copy, heartbeating, and grows a sparse file in the
worker's own staging dir at the product's path (`<staging>/apps/<app>/disk0.raw`, via
`adapters.staging.layout`); the conversion writes `disk0.qcow2` beside it; the later
steps refuse to run on a host that lacks what the earlier ones wrote (a step routed to the
wrong host fails the cutover); the staging undos delete the files as the real ones do.
No byte is read from a source: apparent sizes only (no disk I/O beyond metadata).
Each data step's start and end (after the worker's copy limit) go to `--events` (JSON lines).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from adapters.staging.layout import application_dir
from cutover import facts as F
from cutover.catalog import VERIFY_NOT_MIGRATED, Compensation, Step, WarmStep
from cutover.fleet import DATA_STEPS
from cutover.models import StepInput, StepResult
from tests.world import World

MB = 1 << 20
DISK = "disk0"
#: What an incremental pass and the final sync copy: the blocks changed since the last pass.
INCREMENTAL_SHARE = 0.10
FINAL_SHARE = 0.05
#: How often a copy advances its file (and heartbeats).
TICK_S = 0.2
#: Datastores the simulated VMs sit on (`verify_not_migrated` reports them: limits).
DATASTORES = 3


def _event(path: Path | None, **fields: Any) -> None:
    if path is None:
        return
    line = json.dumps({"t": time.time(), "pid": os.getpid(), **fields}) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())  # one write per line: lines of processes never interleave
    finally:
        os.close(fd)


def _refuse(msg: str) -> ApplicationError:
    return ApplicationError(msg, type="InvalidState", non_retryable=True)


class SimData:
    """The data steps of one host (or of an `all` worker)."""

    def __init__(
        self,
        host: str,
        sizes_mb: dict[str, int],
        copy_mbps: float,
        convert_mbps: float,
        events: Path | None,
    ) -> None:
        self.host, self.sizes = host, sizes_mb
        self.copy_mbps, self.convert_mbps = copy_mbps, convert_mbps
        self.events = events

    def activities(self) -> list[Callable[..., Any]]:
        return [
            self._copy(WarmStep.PRE_COPY, 1.0, fresh=True),
            self._copy(WarmStep.INCREMENTAL_SYNC, INCREMENTAL_SHARE, fresh=False),
            self._copy(Step.FINAL_DATA_SYNC, FINAL_SHARE, fresh=False),
            self._convert(),
            self._attach(),
            self._discard_staging(),
            self._remove_converted(),
        ]

    def _dir(self, inp: StepInput) -> Path:
        # the worker's own staging dir: build_data_worker's SiteInterceptor put it in the site
        return application_dir(inp.context.resolved_site, inp.context.application)

    async def _move(self, inp: StepInput, name: str, path: Path, mb: float, mbps: float) -> int:
        """Grow `path` to `mb` at `mbps`, heartbeating; the bytes moved."""
        app = inp.context.application
        info = activity.info()
        ev = {"host": self.host, "app": app, "step": name, "attempt": info.attempt}
        _event(self.events, ev="start", **ev)
        outcome = "error"
        total = int(mb * MB)
        try:
            done = 0
            start = time.monotonic()
            with path.open("r+b" if path.exists() else "w+b") as f:
                while done < total:
                    await asyncio.sleep(TICK_S)
                    done = min(total, int((time.monotonic() - start) * mbps * MB))
                    if f.seek(0, os.SEEK_END) < done:
                        f.truncate(done)  # sparse: the apparent size of what is copied
                    activity.heartbeat(done)
            outcome = "ok"
            return total
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            _event(self.events, ev="end", outcome=outcome, bytes=total, **ev)

    def _copy(self, name: str, share: float, fresh: bool) -> Callable[..., Any]:
        async def run(inp: StepInput) -> StepResult:
            d = self._dir(inp)
            staged = d / f"{DISK}.raw"
            if fresh:
                d.mkdir(parents=True, exist_ok=True)
                staged.unlink(missing_ok=True)  # a retry copies again from the start
            elif not staged.is_file():
                app = inp.context.application
                raise _refuse(f"{name}: nothing staged for {app} on {self.host}")
            size = self.sizes.get(inp.context.application, 1024)
            moved = await self._move(inp, name, staged, size * share, self.copy_mbps)
            if not fresh:
                # a pass rewrites changed blocks in place: the file keeps the disk's size
                moved = int(size * share * MB)
            return StepResult(
                step=name,
                facts={F.per_disk(F.STAGING_PATH, DISK): str(staged)},
                details={"bytesMoved": moved, "dataHost": self.host},
                attempt=activity.info().attempt,
            )

        return activity.defn(name=name)(run)

    def _convert(self) -> Callable[..., Any]:
        async def run(inp: StepInput) -> StepResult:
            d = self._dir(inp)
            staged = d / f"{DISK}.raw"
            if not staged.is_file():
                raise _refuse(f"convert_image: nothing staged on {self.host}")
            part, out = d / f"{DISK}.qcow2.part", d / f"{DISK}.qcow2"
            part.unlink(missing_ok=True)
            mb = staged.stat().st_size / MB
            await self._move(inp, Step.CONVERT_IMAGE, part, mb, self.convert_mbps)
            os.replace(part, out)
            return StepResult(
                step=Step.CONVERT_IMAGE,
                facts={
                    F.per_disk(F.CONVERTED_PATH, DISK): str(out),
                    F.per_disk(F.CONVERTED_FORMAT, DISK): "qcow2",
                },
                details={"dataHost": self.host},
                attempt=activity.info().attempt,
            )

        return activity.defn(name=Step.CONVERT_IMAGE)(run)

    def _attach(self) -> Callable[..., Any]:
        async def run(inp: StepInput) -> StepResult:
            out = self._dir(inp) / f"{DISK}.qcow2"
            if not out.is_file():
                raise _refuse(f"attach_target_storage_profile: no converted image on {self.host}")
            _event(self.events, ev="mark", host=self.host, app=inp.context.application,
                   step=Step.ATTACH_TARGET_STORAGE_PROFILE)  # fmt: skip
            return StepResult(step=Step.ATTACH_TARGET_STORAGE_PROFILE,
                              attempt=activity.info().attempt)  # fmt: skip

        return activity.defn(name=Step.ATTACH_TARGET_STORAGE_PROFILE)(run)

    def _discard_staging(self) -> Callable[..., Any]:
        async def run(inp: StepInput) -> StepResult:
            d = self._dir(inp)
            existed = d.exists()
            shutil.rmtree(d, ignore_errors=True)  # as activities/disks.py: the whole app dir
            _event(self.events, ev="mark", host=self.host, app=inp.context.application,
                   step=Compensation.DISCARD_STAGING, removed=existed)  # fmt: skip
            return StepResult(step=Compensation.DISCARD_STAGING, changed=existed,
                              attempt=activity.info().attempt)  # fmt: skip

        return activity.defn(name=Compensation.DISCARD_STAGING)(run)

    def _remove_converted(self) -> Callable[..., Any]:
        async def run(inp: StepInput) -> StepResult:
            d = self._dir(inp)
            removed = False
            for p in (d / f"{DISK}.qcow2", d / f"{DISK}.qcow2.part"):
                if p.is_file():
                    p.unlink()
                    removed = True
            return StepResult(step=Compensation.REMOVE_CONVERTED_IMAGE, changed=removed,
                              attempt=activity.info().attempt)  # fmt: skip

        return activity.defn(name=Compensation.REMOVE_CONVERTED_IMAGE)(run)


def _guard(sizes: dict[str, int]) -> Callable[..., Any]:
    """`verify_not_migrated`: not migrated; the VM's ESXi host and datastore (placement and
    the per-ESXi-host and per-datastore limits read them)."""
    order = {app: i for i, app in enumerate(sorted(sizes))}

    async def run(inp: StepInput) -> StepResult:
        i = order.get(inp.context.application, 0) % DATASTORES
        return StepResult(
            step=VERIFY_NOT_MIGRATED,
            changed=False,
            details={"migrated": False, "esxiHosts": f"esx-{i}", "datastores": f"ds-{i}"},
        )

    return activity.defn(name=VERIFY_NOT_MIGRATED)(run)


def sim_activities(
    host: str, sizes: dict[str, int], copy_mbps: float, convert_mbps: float, events: Path | None
) -> list[Callable[..., Any]]:
    """World's instant light steps and checks; SimData's data steps; the guard."""
    light = [
        a
        for a in World().activities()
        if getattr(a, "__temporal_activity_definition").name
        not in DATA_STEPS | {VERIFY_NOT_MIGRATED}
    ]
    data = SimData(host, sizes, copy_mbps, convert_mbps, events).activities()
    return [*light, *data, _guard(sizes)]


async def _main(a: argparse.Namespace) -> None:
    # imported here: a module-level import of the worker stack would slow `--help`
    from bench.orchestration import connect_when_ready, logs_to_stderr
    from workers.fleet import build_data_worker, clean_forever, for_role
    from workers.sites import SiteStore, default_archive
    from workers.worker import build_worker

    logs_to_stderr(a.log_level)
    client = await connect_when_ready(a.address, timeout=120)
    store = SiteStore(default_archive())
    store.load([a.site])
    sizes = {str(k): int(v) for k, v in json.loads(Path(a.sizes).read_text()).items()}
    events = Path(a.events) if a.events else None
    acts = sim_activities(a.data_host or "-", sizes, a.copy_mbps, a.convert_mbps, events)
    workers: list[Worker] = []
    if a.role != "data":
        workers.append(build_worker(client, a.task_queue, activities=for_role(acts, a.role),
                                    sites=store))  # fmt: skip
    cleaner: asyncio.Task[None] | None = None
    if a.data_host is not None:
        staging = Path(a.staging_dir).resolve()
        host: str = a.data_host
        workers.append(build_data_worker(client, a.task_queue, host, acts, store, staging,
                                         a.max_copies))  # fmt: skip

        def record(removed: list[Path]) -> None:
            _event(events, ev="cleaned", host=host, removed=[p.name for p in removed])

        cleaner = asyncio.ensure_future(clean_forever(client, staging, host, record))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with contextlib.AsyncExitStack() as stack:
        for w in workers:
            await stack.enter_async_context(w)
        Path(a.ready).touch()
        await stop.wait()
        if cleaner is not None:
            cleaner.cancel()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.fleet_worker", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--address", required=True)
    p.add_argument("--task-queue", required=True)
    p.add_argument("--site", required=True, help="the site file (fleet.dataHosts)")
    p.add_argument("--role", choices=("all", "orchestration", "data"), required=True)
    p.add_argument("--data-host")
    p.add_argument("--staging-dir")
    p.add_argument("--max-copies", type=int)
    p.add_argument("--sizes", required=True, help="JSON: application -> size in MB")
    p.add_argument("--copy-mbps", type=float, default=400.0)
    p.add_argument("--convert-mbps", type=float, default=2000.0)
    p.add_argument("--events", help="JSON lines: each data step's start and end")
    p.add_argument("--ready", required=True, help="touched once the workers poll")
    p.add_argument("--log-level", default="WARNING")
    a = p.parse_args()
    if (a.role == "data") != (a.data_host is not None) and a.role != "all":
        p.error("--role data needs --data-host; --role orchestration takes none")
    if a.data_host is not None and a.staging_dir is None:
        p.error("--data-host needs --staging-dir")
    asyncio.run(_main(a))


if __name__ == "__main__":
    main()
