"""The warm data path on real files: pre-copy, CBT and digest incremental passes, the final
sync's integrity check, resuming after a worker is killed, path confinement.

Also a worker for the crash test: python -m tests.test_disks ADDRESS QUEUE STATE_DIR SOURCE
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio import workflow
from temporalio.client import Client
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from activities.disks import DiskActivities
from adapters.localdisk import LocalFileSource
from adapters.staging.copy import BLOCK, data_consistency_confirmed
from adapters.vsphere.client import ClientPool
from cutover.catalog import WarmStep
from cutover.lab import vcsim as vcsim_mod
from cutover.models import StepContext, StepInput, StepResult
from cutover.ports import DiskSource
from cutover.runbook import Runbook
from cutover.site import SiteConfig, VCenter
from tests import procs
from tests.factories import SEED, unique_app
from tests.procs import kill9
from tests.vcsim_fixtures import VcsimFactory

MiB = 1 << 20


# ---------------------------------------------------------------- helpers


def local_factory(*paths: Path) -> Any:
    def make(ctx: StepContext, precopy: bool) -> list[DiskSource]:
        return [LocalFileSource(p) for p in paths]

    return make


def step(
    staging: Path, step_name: str, app: str | None = None, n: int = 0, **site: Any
) -> StepInput:
    app = app or unique_app("disk")
    rb = Runbook.model_validate({**SEED, "application": app, "vms": ["vm1"]})
    ctx = StepContext(
        workflowId=f"cutover-{app}",
        application=app,
        wave="2",
        runbook=rb,
        site=SiteConfig(stagingDir=str(staging), **site),
    )
    return StepInput(step=step_name, context=ctx, passNumber=n)


def again(inp: StepInput, step_name: str, n: int = 0) -> StepInput:
    return inp.model_copy(update={"step": step_name, "passNumber": n})


def same_bytes(a: Path, b: Path) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(16 * MiB), fb.read(16 * MiB)
            if x != y:
                return False
            if not x:
                return True


def write_at(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def touched_blocks(writes: list[tuple[int, int]], block: int = BLOCK) -> int:
    return len({i for off, n in writes for i in range(off // block, (off + n - 1) // block + 1)})


def sparse_disk(path: Path, size: int, extents: list[tuple[int, int]]) -> None:
    with open(path, "wb") as f:
        f.truncate(size)
        for off, n in extents:
            f.seek(off)
            f.write(os.urandom(n))


# ---------------------------------------------------------------- pre-copy + digest fallback


def test_precopy_sparse_then_digest_incremental_and_final(tmp_path: Path) -> None:
    src = tmp_path / "src" / "db01_disk1.raw"
    src.parent.mkdir()
    data = [
        (0, 4 * MiB),
        (100 * MiB + 12345, 3 * MiB),
        (700 * MiB, 8 * MiB),
        ((1 << 30) - MiB, MiB),
    ]
    sparse_disk(src, 1 << 30, data)
    staging = tmp_path / "staging"
    acts = DiskActivities(local_factory(src))
    inp = step(staging, "pre_copy")

    t0 = time.monotonic()
    res = acts.pre_copy(inp)
    copy = Path(res.facts["staging_path.db01_disk1"])
    assert copy == staging / "apps" / inp.context.application / "db01_disk1.raw"
    assert same_bytes(src, copy)
    # holes stay holes: the copy allocates no more than the source (1 GiB apparent)
    assert os.stat(copy).st_blocks <= os.stat(src).st_blocks + 2 * BLOCK // 512
    assert os.stat(copy).st_blocks * 512 < 32 * MiB
    assert res.details["mode.db01_disk1"] == "full" and res.details["passes.db01_disk1"] == 1
    assert int(res.details["bytesMoved"]) <= touched_blocks(data) * BLOCK
    assert time.monotonic() - t0 < 15

    # scattered writes: inside data, across a block boundary, into a hole, zeros over data
    writes = [(5000, 100), (101 * MiB - 10, 20), (300 * MiB + 7, 4096), (703 * MiB, 64 * 1024)]
    for off, n in writes:
        write_at(src, off, os.urandom(n))
    write_at(src, 704 * MiB, bytes(MiB))  # a whole data block zeroed
    writes.append((704 * MiB, MiB))
    res1 = acts.incremental_sync(again(inp, "incremental_sync", 1))
    assert res1.details["mode.db01_disk1"] == "digest"  # a local file has no CBT
    changed = touched_blocks(writes) * BLOCK
    assert 0 < int(res1.details["bytesMoved"]) <= changed
    assert res1.details["passes.db01_disk1"] == 2
    assert same_bytes(src, copy)
    # a re-run of the same pass (a lost result) copies nothing
    assert acts.incremental_sync(again(inp, "incremental_sync", 1)).changed is False

    write_at(src, 900 * MiB, b"late write")
    fin = acts.final_data_sync(again(inp, "final_data_sync"))
    assert fin.details["bytesMoved"] == BLOCK
    assert fin.details["integrity"] == "source and copy digest maps match"
    assert "digest_root.db01_disk1" in fin.facts
    assert same_bytes(src, copy)

    with _open(src) as source:
        report = data_consistency_confirmed(source, copy)
        assert report.consistent and report.mismatched == []
        write_at(copy, 500 * MiB + 3, b"corrupt")  # a target-side corruption CBT never sees
        report = data_consistency_confirmed(source, copy)
        assert not report.consistent and report.mismatched == [500]


class _open:
    """LocalFileSource as a context manager (closed at exit)."""

    def __init__(self, path: Path) -> None:
        self.src = LocalFileSource(path)

    def __enter__(self) -> LocalFileSource:
        return self.src

    def __exit__(self, *exc: object) -> None:
        self.src.close()


def test_final_sync_integrity_mismatch_is_non_retryable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "disk.raw"
    sparse_disk(src, 32 * MiB, [(0, 32 * MiB)])
    acts = DiskActivities(local_factory(src))
    inp = step(tmp_path / "staging", "pre_copy")
    acts.pre_copy(inp)
    write_at(src, 3 * MiB, os.urandom(MiB))
    import adapters.staging.copy as disks

    real = disks._write_block

    def lossy(fd: int, data: Any, offset: int) -> None:
        if offset != 3 * MiB:  # a write the storage acknowledged but lost
            real(fd, data, offset)

    monkeypatch.setattr(disks, "_write_block", lossy)
    # A warm pass reads its writes back: the lost one lands in the copy map...
    acts.incremental_sync(again(inp, "incremental_sync", 1))
    monkeypatch.setattr(disks, "_write_block", real)
    # ...and the final sync (which does not touch block 3 again) refuses to go on.
    with pytest.raises(ApplicationError) as err:
        acts.final_data_sync(again(inp, "final_data_sync"))
    assert err.value.type == "IntegrityError" and err.value.non_retryable
    assert "disk: 1 block(s) differ (3)" in err.value.message


def test_a_write_lost_in_the_final_pass_is_caught_by_the_full_comparison(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The final pass does not read back (the downtime's I/O stays the changed bytes once
    read and once written); the window's full digest comparison catches what it lost."""
    src = tmp_path / "disk.raw"
    sparse_disk(src, 32 * MiB, [(0, 32 * MiB)])
    acts = DiskActivities(local_factory(src))
    inp = step(tmp_path / "staging", "pre_copy")
    acts.pre_copy(inp)
    write_at(src, 5 * MiB, os.urandom(MiB))
    import adapters.staging.copy as disks

    real = disks._write_block
    monkeypatch.setattr(
        disks, "_write_block", lambda fd, data, off: None if off == 5 * MiB else real(fd, data, off)
    )
    final = acts.final_data_sync(again(inp, "final_data_sync"))
    assert final.details["bytesVerified"] == 0
    [report] = acts.consistency(inp.context)
    assert not report.consistent and report.mismatched == [5]


# ---------------------------------------------------------------- CBT against the simulator


def test_cbt_incremental_against_the_simulator(vcsim_factory: VcsimFactory, tmp_path: Path) -> None:
    sim = vcsim_factory(hosts=1, vms=1)
    vm = "DC0_C0_H0_VM0"
    vmdir = sim.datastore_dir / vm
    flat, ctk = vmdir / "disk1-flat.vmdk", vmdir / "disk1-ctk.json"
    size, bs = 64 * MiB, vcsim_mod.BLOCK_SIZE
    data = [(0, 2 * MiB), (40 * MiB, 3 * MiB)]
    sparse_disk(flat, size, data)
    vcsim_mod.record_writes(ctk, [b for off, n in data for b in range(off // bs, (off + n) // bs)],
                            capacity=size)  # fmt: skip
    vc = VCenter.model_validate(
        {
            "host": sim.host,
            "port": sim.port,
            "user": sim.user,
            "caFile": str(sim.ca_file),
            "passwordRef": {"env": "CUTOVER_TEST_VC_PASSWORD"},
            "datacenter": "DC0",
        }
    )
    pool = ClientPool(password=lambda s: sim.password)
    try:
        acts = DiskActivities.for_vsphere(pool)
        app = unique_app("cbt")
        rb = Runbook.model_validate({**SEED, "application": app, "vms": [vm]})
        site = SiteConfig(stagingDir=str(tmp_path / "staging"), vcenter=vc)
        ctx = StepContext(workflowId=f"w-{app}", application=app, wave="2", runbook=rb, site=site)
        inp = StepInput(step="pre_copy", context=ctx)

        pre = acts.pre_copy(inp)  # enables CBT on the VM, reads only the allocated extents
        name = pre.facts["disks"]
        assert name.startswith(f"{vm}-")  # <VM>-<device key>
        copy = Path(pre.facts[f"staging_path.{name}"])
        assert same_bytes(flat, copy)
        assert pre.details["bytesRead"] == 5 * MiB  # holes were never read over HTTP
        assert pre.facts[f"change_id.{name}"].endswith("/1")

        writes = [(10 * MiB + 3 * bs, bs), (41 * MiB, 2 * bs), (60 * MiB, bs)]
        for off, n in writes:
            write_at(flat, off, os.urandom(n))
        cid = vcsim_mod.record_writes(
            ctk, [off // bs + k for off, n in writes for k in range(n // bs)]
        )
        res = acts.incremental_sync(again(inp, "incremental_sync", 1))
        assert res.details[f"mode.{name}"] == "cbt"
        changed = touched_blocks(writes) * BLOCK
        assert res.details["bytesMoved"] == changed == 3 * MiB
        assert res.details["bytesRead"] == changed  # only the changed blocks were read
        assert res.facts[f"change_id.{name}"] == cid
        assert same_bytes(flat, copy)

        fin = acts.final_data_sync(again(inp, "final_data_sync"))  # nothing changed since
        assert fin.details["bytesMoved"] == 0 and fin.details[f"mode.{name}"] == "cbt"
        assert fin.details[f"passes.{name}"] == 3
        assert acts.consistency(ctx)[0].consistent
    finally:
        pool.close()


# ---------------------------------------------------------------- paths and compensation


@pytest.mark.parametrize(
    "disk", ["../escape", "/etc/passwd", "a/../../b", "x;rm -rf ~", "$(id)", "a b", ".hidden", ""]
)
def test_disk_names_that_escape_are_rejected(tmp_path: Path, disk: str) -> None:
    class Named(LocalFileSource):
        pass

    src = tmp_path / "d.raw"
    sparse_disk(src, MiB, [(0, 4096)])

    def factory(ctx: StepContext, precopy: bool) -> list[DiskSource]:
        s = Named(src)
        s.name = disk
        return [s]

    staging = tmp_path / "staging"
    with pytest.raises(ApplicationError) as err:
        DiskActivities(factory).pre_copy(step(staging, "pre_copy"))
    assert err.value.type == "ConfigError" and "not allowed in a staging path" in err.value.message
    assert not staging.exists()  # nothing touched


@pytest.mark.parametrize("app", ["../up", "/abs", "a;b", "x/../../y"])
def test_application_names_that_escape_are_rejected(tmp_path: Path, app: str) -> None:
    src = tmp_path / "d.raw"
    sparse_disk(src, MiB, [(0, 4096)])
    inp = step(tmp_path / "staging", "pre_copy")
    bad = inp.model_copy(update={"context": inp.context.model_copy(update={"application": app})})
    acts = DiskActivities(local_factory(src))
    for fn in (acts.pre_copy, acts.discard_staging):
        with pytest.raises(ApplicationError) as err:
            fn(bad)
        assert err.value.type == "ConfigError"
    assert not (tmp_path / "staging").exists()


def test_symlinked_app_dir_and_missing_staging_dir_are_rejected(tmp_path: Path) -> None:
    src = tmp_path / "d.raw"
    sparse_disk(src, MiB, [(0, 4096)])
    acts = DiskActivities(local_factory(src))
    inp = step(tmp_path / "staging", "pre_copy")
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "staging" / "apps").mkdir(parents=True)
    (tmp_path / "staging" / "apps" / inp.context.application).symlink_to(outside)
    with pytest.raises(ApplicationError) as err:
        acts.pre_copy(inp)
    assert err.value.type == "ConfigError" and "outside the staging dir" in err.value.message
    # the applications' directory itself leading out
    (tmp_path / "staging" / "apps" / inp.context.application).unlink()
    (tmp_path / "staging" / "apps").rmdir()
    (tmp_path / "staging" / "apps").symlink_to(outside)
    for fn in (acts.pre_copy, acts.discard_staging):
        with pytest.raises(ApplicationError) as err:
            fn(inp)
        assert err.value.type == "ConfigError" and "symlink" in err.value.message
    assert list(outside.iterdir()) == []
    unset = inp.model_copy(
        update={"context": inp.context.model_copy(update={"site": SiteConfig()})}
    )
    with pytest.raises(ApplicationError, match="stagingDir"):
        acts.pre_copy(unset)


def test_discard_staging_is_idempotent(tmp_path: Path) -> None:
    src = tmp_path / "d.raw"
    sparse_disk(src, 4 * MiB, [(0, MiB)])
    acts = DiskActivities(local_factory(src))
    staging = tmp_path / "staging"
    inp = step(staging, "pre_copy")
    other = staging / "apps" / "other-app"
    other.mkdir(parents=True)
    acts.pre_copy(inp)
    first = acts.discard_staging(again(inp, "discard_staging"))
    assert first.changed and not (staging / "apps" / inp.context.application).exists()
    assert acts.discard_staging(again(inp, "discard_staging")).changed is False
    assert other.is_dir()  # other applications' staging untouched


# ---------------------------------------------------------------- kill -9 mid pass


@workflow.defn(name="DiskPreCopyTest")
class DiskPreCopyWorkflow:
    @workflow.run
    async def run(self, inp: StepInput) -> StepResult:
        result: StepResult = await workflow.execute_activity(
            str(WarmStep.PRE_COPY),
            inp,
            result_type=StepResult,
            start_to_close_timeout=timedelta(minutes=3),
            heartbeat_timeout=timedelta(seconds=2),
            retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=200)),
        )
        return result


class SlowSource(LocalFileSource):
    """Logs each read (pid, offset) and is slow enough to be killed mid-copy."""

    def __init__(self, path: Path, log: Path) -> None:
        super().__init__(path)
        self.log = log

    def read(self, offset: int, length: int) -> bytes:
        with self.log.open("a") as f:
            f.write(f"{os.getpid()} {offset}\n")
        time.sleep(0.25)
        return super().read(offset, length)


async def _worker_main(address: str, queue: str, state: str, source: str) -> None:
    from cutover.temporal import connect

    client = await connect(address, "default")

    def factory(ctx: StepContext, precopy: bool) -> list[DiskSource]:
        return [SlowSource(Path(source), Path(state) / "reads")]

    worker = Worker(
        client,
        task_queue=queue,
        workflows=[DiskPreCopyWorkflow],
        activities=DiskActivities(factory).activities(),
        activity_executor=ThreadPoolExecutor(max_workers=4),
        workflow_runner=UnsandboxedWorkflowRunner(),
    )
    (Path(state) / "worker_ready").touch()
    await worker.run()


def spawn(address: str, queue: str, state: Path, source: Path) -> subprocess.Popen[bytes]:
    return procs.spawn_worker(
        "tests.test_disks", address, queue, str(state), str(source), state=state
    )


def reads(state: Path) -> list[tuple[int, int]]:
    path = state / "reads"
    if not path.exists():
        return []
    return [(int(a), int(b)) for a, b in (ln.split() for ln in path.read_text().splitlines())]


async def test_precopy_resumes_from_heartbeat_after_worker_kill9(
    client: Client, temporal_server: Any, tmp_path: Path
) -> None:
    from tests.conftest import DevServer

    assert isinstance(temporal_server, DevServer)
    src = tmp_path / "disk.raw"
    sparse_disk(src, 256 * MiB, [(0, 256 * MiB)])  # 16 chunks of 16 MiB, 0.25 s each
    state = tmp_path / "state"
    state.mkdir()
    queue = f"disks-{uuid.uuid4().hex[:8]}"
    inp = step(tmp_path / "staging", "pre_copy")
    worker = spawn(temporal_server.address, queue, state, src)
    try:
        handle = await client.start_workflow(
            "DiskPreCopyTest", inp, id=f"disks-{uuid.uuid4().hex[:8]}", task_queue=queue,
            result_type=StepResult,
        )  # fmt: skip
        async with asyncio.timeout(30):
            while len(reads(state)) < 8:
                await asyncio.sleep(0.05)
        first_pid = worker.pid
        kill9(worker)
        worker = spawn(temporal_server.address, queue, state, src)
        async with asyncio.timeout(60):
            result = await handle.result()
    finally:
        kill9(worker)
    log = reads(state)
    before = [off for pid, off in log if pid == first_pid]
    after = [off for pid, off in log if pid != first_pid]
    resumed = int(result.details["resumedFrom.disk"])
    assert resumed > 0, "the retry started over instead of resuming from its heartbeat"
    assert after and after[0] == resumed and 0 not in after
    assert resumed <= max(before) + 16 * MiB
    assert sorted(set(before) | set(after)) == list(range(0, 256 * MiB, 16 * MiB))
    assert same_bytes(src, Path(result.facts["staging_path.disk"]))
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    assert (
        hashlib.sha256(Path(result.facts["staging_path.disk"]).read_bytes()).hexdigest() == digest
    )


if __name__ == "__main__":
    asyncio.run(_worker_main(*sys.argv[1:5]))


def test_local_change_tracking_file_drives_incremental_passes(tmp_path: Path) -> None:
    """A local source with a change-tracking file beside it (the simulator's format) gets
    CBT passes: only the recorded blocks are read, and a reset tracking file (new uuid)
    falls back to the digest comparison rather than trusting a stale change ID."""
    src = tmp_path / "disk-flat.vmdk"
    size = 64 * MiB
    sparse_disk(src, size, [(0, 16 * MiB)])
    ctk = tmp_path / "disk-ctk.json"
    vcsim_mod.record_writes(ctk, range(0, 16 * MiB // vcsim_mod.BLOCK_SIZE), capacity=size)
    acts = DiskActivities(local_factory(src))
    inp = step(tmp_path / "staging", "pre_copy")
    acts.pre_copy(inp)
    changed = [(5 * MiB, 64 << 10), (40 * MiB, 128 << 10)]
    for off, n in changed:
        write_at(src, off, os.urandom(n))
    bs = vcsim_mod.BLOCK_SIZE
    vcsim_mod.record_writes(
        ctk, [b for off, n in changed for b in range(off // bs, (off + n) // bs)]
    )
    one = acts.incremental_sync(again(inp, "incremental_sync", 1))
    assert one.details["mode.disk-flat"] == "cbt"
    assert one.details["bytesRead"] == 2 * MiB  # two 1 MiB digest blocks, nothing else
    ctk.unlink()
    vcsim_mod.record_writes(ctk, [], capacity=size)  # a reset: another uuid
    two = acts.incremental_sync(again(inp, "incremental_sync", 2))
    assert two.details["mode.disk-flat"] == "digest"
    final = acts.final_data_sync(again(inp, "final_data_sync"))
    assert same_bytes(src, Path(final.facts["staging_path.disk-flat"]))
