"""Real vSphere snapshot semantics in our simulator, and a data path that reads the right
point in time: a snapshot puts a vmfsSparse delta on the disk and freezes the base,
removing it consolidates; a pass reads a snapshot's point in time while the guest keeps
writing; a reverse sync writes into the delta. `qemu-img` (QEMU's own VMDK driver) reads
the chains we make, as an independent reader."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import vim

from activities.disks import DiskActivities
from adapters.staging.copy import BLOCK
from adapters.vsphere import disk_source
from adapters.vsphere.client import ClientPool
from adapters.vsphere.disk_sink import vsphere_sinks
from adapters.vsphere.vmdk import Chain, CowdWriter, VmdkError, create_delta, local_fetch
from cutover.lab import disk
from cutover.lab import vcsim as vcsim_mod
from cutover.lab.vcsim import Vcsim
from cutover.models import StepContext, StepInput
from cutover.runbook import Runbook
from cutover.site import SiteConfig, VCenter
from tests.factories import SEED, unique_app
from tests.test_vcsim import first_disk, props, vm_named, wait
from tests.vcsim_fixtures import VcsimFactory

MiB = 1 << 20
BS = vcsim_mod.BLOCK_SIZE
VM = "DC0_C0_H0_VM0"


def seed(sim: Vcsim, size: int, blocks: list[int]) -> None:
    vmdir = sim.datastore_dir / VM
    with (vmdir / "disk1-flat.vmdk").open("wb") as f:
        f.truncate(size)
        for b in blocks:
            os.pwrite(f.fileno(), os.urandom(BS), b * BS)
    vcsim_mod.record_writes(vmdir / "disk1-ctk.json", blocks, capacity=size)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def qemu_view(descriptor: Path, out: Path) -> bytes:
    """The chain as QEMU's VMDK driver reads it (descriptor, parent hints, COWD grains)."""
    subprocess.run(["qemu-img", "convert", "-f", "vmdk", "-O", "raw", str(descriptor), str(out)],
                   check=True, capture_output=True)  # fmt: skip
    return out.read_bytes()


def snapshot(si: Any, vm: Any, name: str) -> Any:
    return wait(si, vm.CreateSnapshot_Task(name=name, description="", memory=False, quiesce=False))


def snaps(si: Any, vm: Any) -> list[str]:
    """The VM's snapshot names (read through the PropertyCollector: vm.snapshot unset
    breaks a direct read)."""
    info = props(si, vm, "snapshot").get("snapshot")
    out, stack = [], list(info.rootSnapshotList if info else [])
    while stack:
        node = stack.pop(0)
        out.append(node.name)
        stack.extend(node.childSnapshotList)
    return out


def chain_names(vm: Any) -> list[str]:
    names, b = [], first_disk(vm).backing
    while b is not None:
        names.append(b.fileName.rsplit("/", 1)[1])
        b = b.parent
    return names


def test_a_snapshot_freezes_the_base_writes_go_to_a_delta_and_removal_consolidates(
    vcsim_factory: VcsimFactory, tmp_path: Path
) -> None:
    sim = vcsim_factory(hosts=1, vms=1)
    size = 4 * MiB
    seed(sim, size, [0, 5])
    vmdir, ds = sim.datastore_dir / VM, sim.datastore_dir
    flat = vmdir / "disk1-flat.vmdk"
    si = SmartConnect(host=sim.host, port=sim.port, user=sim.user, pwd=sim.password,
                      sslContext=sim.ssl_context())  # fmt: skip
    try:
        vm = vm_named(si, VM)
        wait(si, vm.ReconfigVM_Task(vim.vm.ConfigSpec(changeTrackingEnabled=True)))
        key = first_disk(vm).key
        at_snapshot = first_disk(vm).backing.changeId
        base = flat.read_bytes()

        s1 = snapshot(si, vm, "s1")
        assert chain_names(vm) == ["disk1-000001.vmdk", "disk1.vmdk"]
        assert (vmdir / "disk1-000001-delta.vmdk").read_bytes()[:4] == b"COWD"
        [cfg] = [d for d in s1.config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk)]
        frozen: Any = cfg.backing
        assert frozen.fileName.endswith("/disk1.vmdk")  # the snapshot's point in time
        assert frozen.changeId == at_snapshot

        # The guest writes: into the delta (a new block, and over a base block, unaligned).
        disk.write_at(ds, VM, 9 * BS, b"A" * BS)
        disk.write_at(ds, VM, 5 * BS + 100, b"partial sector")
        expected = bytearray(base)
        expected[9 * BS : 10 * BS] = b"A" * BS
        expected[5 * BS + 100 : 5 * BS + 114] = b"partial sector"
        assert flat.read_bytes() == base  # frozen
        assert qemu_view(vmdir / "disk1-000001.vmdk", tmp_path / "q1.raw") == expected
        assert disk.read(ds, VM, 0, size) == expected

        # CBT at the snapshot's point in time: "*" is the base's data only; since the
        # snapshot's change ID, the blocks written after it.
        def areas(change_id: str, snap: Any = None) -> list[tuple[int, int]]:
            info = vm.QueryChangedDiskAreas(snapshot=snap, deviceKey=key, startOffset=0,
                                            changeId=change_id)  # fmt: skip
            return [(a.start, a.length) for a in info.changedArea]

        assert areas("*", s1) == [(0, BS), (5 * BS, BS)]
        assert areas("*") == [(0, BS), (5 * BS, BS), (9 * BS, BS)]
        assert areas(at_snapshot, s1) == [(5 * BS, BS), (9 * BS, BS)]

        # A second snapshot; then the first removed: its delta merges into the base and the
        # second delta sits on the base.
        s2 = snapshot(si, vm, "s2")
        at_s2 = bytes(expected)
        disk.write_at(ds, VM, 20 * BS, b"B" * BS)
        expected[20 * BS : 21 * BS] = b"B" * BS
        assert chain_names(vm) == ["disk1-000002.vmdk", "disk1-000001.vmdk", "disk1.vmdk"]
        wait(si, s1.RemoveSnapshot_Task(removeChildren=False))
        assert chain_names(vm) == ["disk1-000002.vmdk", "disk1.vmdk"]
        assert not (vmdir / "disk1-000001.vmdk").exists()
        assert not (vmdir / "disk1-000001-delta.vmdk").exists()
        assert 'parentFileNameHint="disk1.vmdk"' in (vmdir / "disk1-000002.vmdk").read_text()
        merged = flat.read_bytes()
        assert merged[9 * BS : 10 * BS] == b"A" * BS  # the first delta, consolidated
        assert merged[20 * BS : 21 * BS] != b"B" * BS  # the second is still a delta
        assert qemu_view(vmdir / "disk1-000002.vmdk", tmp_path / "q2.raw") == expected

        # Revert to the newest snapshot: its delta is emptied (the writes since it are gone).
        disk.write_at(ds, VM, 30 * BS, b"C" * BS)
        wait(si, s2.RevertToSnapshot_Task())
        assert disk.read(ds, VM, 0, size) == at_s2

        wait(si, s2.RemoveSnapshot_Task(removeChildren=False))
        assert chain_names(vm) == ["disk1.vmdk"] and snaps(si, vm) == []
        assert flat.read_bytes() == at_s2
        assert sorted(p.name for p in vmdir.glob("disk1-0*")) == []
    finally:
        Disconnect(si)


def vcenter(sim: Vcsim, mounted: bool = False) -> VCenter:
    return VCenter.model_validate({
        "host": sim.host, "port": sim.port, "user": sim.user, "caFile": str(sim.ca_file),
        "passwordRef": {"env": "CUTOVER_TEST_VC_PASSWORD"}, "datacenter": "DC0",
        "datastoreMounts": {"LocalDS_0": str(sim.datastore_dir)} if mounted else {},
    })  # fmt: skip


@contextmanager
def session(sim: Vcsim, tmp_path: Path, mounted: bool = False) -> Iterator[Session]:
    """pyvmomi for the test's own calls, the data path's client pool, and a cutover's step
    context for the simulator's VM (a fresh application name)."""
    pool = ClientPool(password=lambda s: sim.password)
    si = SmartConnect(host=sim.host, port=sim.port, user=sim.user, pwd=sim.password,
                      sslContext=sim.ssl_context())  # fmt: skip
    try:
        app = unique_app("chain")
        rb = Runbook.model_validate({**SEED, "application": app, "vms": [VM]})
        site = SiteConfig(stagingDir=str(tmp_path / "staging"), vcenter=vcenter(sim, mounted))
        ctx = StepContext(workflowId=f"w-{app}", application=app, wave="2", runbook=rb, site=site)
        yield Session(si, pool, ctx, app)
    finally:
        Disconnect(si)
        pool.close()


@dataclass
class Session:
    si: Any
    pool: ClientPool
    ctx: StepContext
    app: str


def test_passes_read_a_snapshots_point_in_time_while_the_guest_writes(
    vcsim_factory: VcsimFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = vcsim_factory(hosts=1, vms=1)
    size = 16 * MiB
    seed(sim, size, [0, 1, 100, 200])
    vmdir, ds = sim.datastore_dir / VM, sim.datastore_dir
    flat = vmdir / "disk1-flat.vmdk"
    seeded = sha(flat)
    with session(sim, tmp_path) as sn:
        si, pool, ctx, app = sn.si, sn.pool, sn.ctx, sn.app
        inp = StepInput(step="pre_copy", context=ctx)
        acts = DiskActivities.for_vsphere(pool)
        vm = vm_named(si, VM)
        snapshot(si, vm, f"cutover-w-{app}")  # the cutover's snapshot (snapshot_source)

        # The guest writes while the pre-copy reads: at its first read, over a block the
        # copy has not read yet. The copy holds the pass snapshot's point in time.
        real_read = disk_source.DatastoreSource.read
        state = {"wrote": False}

        def read_while_writing(self: Any, offset: int, length: int) -> bytes:
            if not state["wrote"]:
                state["wrote"] = True
                disk.write_at(ds, VM, 200 * BS, b"W" * BS)
                assert snaps(si, vm_named(si, VM)) == [f"cutover-w-{app}", f"cutover-w-{app}-pass"]
            return real_read(self, offset, length)

        monkeypatch.setattr(disk_source.DatastoreSource, "read", read_while_writing)
        before = disk.read(ds, VM, 0, size)  # what the disk held when the pass began
        pre = acts.pre_copy(inp)
        monkeypatch.setattr(disk_source.DatastoreSource, "read", real_read)
        name = pre.facts["disks"]
        copy = Path(pre.facts[f"staging_path.{name}"])
        assert state["wrote"]
        assert copy.read_bytes() == before != disk.read(ds, VM, 0, size)
        # the pass snapshot is gone (its delta consolidated into the cutover's), the base
        # untouched since the cutover's snapshot
        vm = vm_named(si, VM)
        assert snaps(si, vm) == [f"cutover-w-{app}"]
        assert chain_names(vm) == ["disk1-000001.vmdk", "disk1.vmdk"]
        assert sha(flat) == seeded

        # The next pass: CBT since the pass snapshot's change ID, read through the chain.
        disk.write_at(ds, VM, 50 * BS, b"X" * BS)
        inc = acts.incremental_sync(inp.model_copy(update={"step": "incremental_sync",
                                                           "passNumber": 1}))  # fmt: skip
        assert inc.details[f"mode.{name}"] == "cbt"
        assert inc.details["bytesRead"] == 2 * BLOCK  # blocks 200 and 50 (1 MiB digest blocks)
        assert copy.read_bytes() == disk.read(ds, VM, 0, size)
        assert sha(flat) == seeded and snaps(si, vm_named(si, VM)) == [f"cutover-w-{app}"]

        # Stopped: the final pass reads the current chain, no pass snapshot.
        wait(si, vm.PowerOffVM_Task())
        disk.write_at(ds, VM, 60 * BS, b"Y" * BS)  # the guest's last write before it stopped
        fin = acts.final_data_sync(inp.model_copy(update={"step": "final_data_sync"}))
        assert fin.details["integrity"] == "source and copy digest maps match"
        assert snaps(si, vm_named(si, VM)) == [f"cutover-w-{app}"]
        assert acts.consistency(ctx)[0].consistent
        assert copy.read_bytes() == disk.read(ds, VM, 0, size)
        assert sha(flat) == seeded


def test_a_pass_snapshot_left_by_a_dead_pass_is_replaced_then_removed(
    vcsim_factory: VcsimFactory, tmp_path: Path
) -> None:
    sim = vcsim_factory(hosts=1, vms=1)
    seed(sim, 4 * MiB, [0])
    with session(sim, tmp_path) as sn:
        si, pool, ctx, app = sn.si, sn.pool, sn.ctx, sn.app
        vm = vm_named(si, VM)
        snapshot(si, vm, f"cutover-w-{app}-pass")  # a pass that died before its cleanup
        sources = disk_source.vsphere_sources(pool)(ctx, True)
        assert snaps(si, vm_named(si, VM)) == [f"cutover-w-{app}-pass"]  # one, a fresh one
        assert chain_names(vm_named(si, VM))[0] == "disk1-000001.vmdk"
        for s in sources:
            s.close()
        assert snaps(si, vm_named(si, VM)) == []
        assert chain_names(vm_named(si, VM)) == ["disk1.vmdk"]


def test_reverse_sync_writes_into_the_delta_of_a_stopped_source(
    vcsim_factory: VcsimFactory, tmp_path: Path
) -> None:
    sim = vcsim_factory(hosts=1, vms=1)
    size = 4 * MiB
    seed(sim, size, [0, 3])
    vmdir = sim.datastore_dir / VM
    flat = vmdir / "disk1-flat.vmdk"
    with session(sim, tmp_path, mounted=True) as sn:
        si, pool, ctx, app = sn.si, sn.pool, sn.ctx, sn.app
        vm = vm_named(si, VM)
        snap = snapshot(si, vm, f"cutover-w-{app}")
        with pytest.raises(Exception, match="powered off"):
            vsphere_sinks(pool)(ctx)  # one writer: never under a running guest
        wait(si, vm.PowerOffVM_Task())
        base = flat.read_bytes()
        [sink] = vsphere_sinks(pool)(ctx)
        assert sink.size == size
        sink.write(7 * 4096, b"T" * 4096)  # what the target wrote (4 KiB overlay clusters)
        sink.flush()
        sink.close()
        assert flat.read_bytes() == base  # into the delta, not the frozen base
        want = bytearray(base)
        want[7 * 4096 : 8 * 4096] = b"T" * 4096
        assert qemu_view(vmdir / "disk1-000001.vmdk", tmp_path / "q.raw") == want
        wait(si, snap.RemoveSnapshot_Task(removeChildren=False))
        assert flat.read_bytes() == want


def test_a_chain_that_is_not_readable_is_refused_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "d-000001.vmdk").write_text(
        'createType="seSparse"\nparentFileNameHint="d.vmdk"\n'
        'RW 8 SESPARSE "d-000001-sesparse.vmdk"\n'
    )
    with pytest.raises(
        VmdkError, match=r"d-000001\.vmdk is a seSparse delta: reading it needs VDDK"
    ):
        Chain(local_fetch(tmp_path), "d-000001.vmdk", 4096)
    (tmp_path / "e-000001.vmdk").write_text(
        'createType="vmfsSparse"\nparentFileNameHint="e-000001.vmdk"\n'
        'RW 8 VMFSSPARSE "e-000001-delta.vmdk"\n'
    )
    (tmp_path / "e-000001-delta.vmdk").write_bytes(b"COWD" + bytes(2044))
    with pytest.raises(VmdkError, match=r"e-000001-delta\.vmdk: inconsistent COWD header"):
        Chain(local_fetch(tmp_path), "e-000001.vmdk", 4096)


@pytest.mark.parametrize("dies_at", range(1, 10))
def test_a_delta_writer_killed_at_any_write_leaves_a_readable_extent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dies_at: int
) -> None:
    """A writer dies after `dies_at` of its writes: a new grain in an existing table (data,
    free sector, table entry), then one needing a new table (zeroed table, free sector,
    directory entry, data, free sector, table entry). The next writer must never hand a
    sector to a second grain (before: the table entry went in before the free sector
    moved, so a death between them let the next grain overwrite the first)."""
    size = 8 << 20
    far = 512 * 4096 * 3  # in the fourth grain table
    (tmp_path / "d.vmdk").write_text("")
    (tmp_path / "d-flat.vmdk").write_bytes(bytes(size))
    create_delta(tmp_path, "d-000001.vmdk", "d.vmdk", size)
    extent = tmp_path / "d-000001-delta.vmdk"
    w = CowdWriter(extent)
    w.write(0, b"A" * 512)  # grain table 0 exists from here on
    w.close()
    real, calls = os.pwrite, [0]

    def dying(fd: int, data: Any, offset: int) -> int:
        calls[0] += 1
        if calls[0] > dies_at:
            raise SystemExit("killed")  # the process is gone: nothing after this runs
        return real(fd, data, offset)

    w = CowdWriter(extent)
    monkeypatch.setattr(os, "pwrite", dying)
    with pytest.raises(SystemExit):
        w.write(512, b"X" * 512)
        w.write(far, b"B" * 512)
        raise SystemExit("not reached")
    monkeypatch.setattr(os, "pwrite", real)
    w.close()
    w = CowdWriter(extent)  # the next writer (a retried reverse sync)
    w.write(1024, b"C" * 512)
    w.write(far + 512, b"D" * 512)
    w.close()
    chain = Chain(local_fetch(tmp_path), "d-000001.vmdk", size)
    assert chain.read(0, 512) == b"A" * 512
    assert chain.read(512, 512) in (bytes(512), b"X" * 512)
    assert chain.read(1024, 512) == b"C" * 512
    assert chain.read(far, 512) in (bytes(512), b"B" * 512)
    assert chain.read(far + 512, 512) == b"D" * 512
