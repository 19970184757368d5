"""The vSphere API simulator works through the real clients: pyvmomi over verified TLS,
the vAPI REST tagging API, datastore file serving and changed-block tracking."""

from __future__ import annotations

import base64
import http.client
import json
import os
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import vim, vmodl

from cutover.lab.vcsim import BUILD_SCRIPT, ROOT, Vcsim, record_writes
from tests.vcsim_fixtures import SMALL, VcsimFactory

BS = 65536


@contextmanager
def connect(sim: Vcsim) -> Iterator[Any]:
    """pyvmomi session, TLS verified against the simulator's own certificate."""
    si = SmartConnect(
        host=sim.host,
        port=sim.port,
        user=sim.user,
        pwd=sim.password,
        sslContext=sim.ssl_context(),
    )
    try:
        yield si
    finally:
        Disconnect(si)


def objects(si: Any, kind: Any) -> list[Any]:
    content = si.RetrieveContent()
    view = content.viewManager.CreateContainerView(content.rootFolder, [kind], True)
    try:
        return list(view.view)
    finally:
        view.Destroy()


def props(si: Any, obj: Any, *paths: str) -> dict[str, Any]:
    """Read properties through the PropertyCollector: unset ones are simply absent
    (reading an unset property such as vm.snapshot directly can break the connection)."""
    pc = si.RetrieveContent().propertyCollector
    spec = vmodl.query.PropertyCollector.FilterSpec(
        objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=obj)],
        propSet=[vmodl.query.PropertyCollector.PropertySpec(type=type(obj), pathSet=list(paths))],
    )
    result = pc.RetrievePropertiesEx([spec], vmodl.query.PropertyCollector.RetrieveOptions())
    return {p.name: p.val for p in result.objects[0].propSet} if result else {}


def wait(si: Any, task: Any, timeout: float = 30) -> Any:
    """Poll a task's info.state/error/result through the PropertyCollector: pyvmomi 9's
    WaitForTask, and even task.info, raise TypeError on the simulator's remove-snapshot
    task (its info.entity is a snapshot, not a ManagedEntity)."""
    deadline = time.monotonic() + timeout
    while True:
        info = props(si, task, "info.state", "info.error", "info.result")
        if info["info.state"] == "success":
            return info.get("info.result")
        if info["info.state"] == "error":
            raise info["info.error"]
        assert time.monotonic() < deadline, f"task still {info['info.state']}"
        time.sleep(0.02)


def vm_named(si: Any, name: str) -> Any:
    vm = si.RetrieveContent().searchIndex.FindByInventoryPath(f"DC0/vm/{name}")
    assert vm is not None, name
    return vm


def first_disk(vm: Any) -> Any:
    return next(d for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk))


# ---- inventory and TLS ----


def test_inventory_counts_match_flags(vcsim: Vcsim) -> None:
    dcs, clusters, hosts = SMALL["datacenters"], SMALL["clusters"], SMALL["hosts"]
    standalone, per_host = SMALL["standalone_hosts"], SMALL["vms"]
    with connect(vcsim) as si:
        assert len(objects(si, vim.Datacenter)) == dcs
        assert len(objects(si, vim.ClusterComputeResource)) == dcs * clusters
        all_hosts = objects(si, vim.HostSystem)
        assert len(all_hosts) == dcs * (clusters * hosts + standalone)
        vms = objects(si, vim.VirtualMachine)
        assert len(vms) == len(all_hosts) * per_host
        for host in all_hosts:  # -vm is per host, placed exactly
            assert sorted(vm.name for vm in host.vm) == [
                f"{host.name}_VM{i}" for i in range(per_host)
            ]
        assert [ds.name for ds in objects(si, vim.Datastore)] == ["LocalDS_0"]

        vm = vm_named(si, "DC0_C0_H0_VM0")
        assert vm.runtime.powerState == "poweredOn"
        disk = first_disk(vm)
        assert disk.backing.fileName == "[LocalDS_0] DC0_C0_H0_VM0/disk1.vmdk"
        # The datastore is a real directory with the VM's (empty) disk files in it.
        vmdir = vcsim.datastore_dir / "DC0_C0_H0_VM0"
        assert (vmdir / "disk1.vmdk").is_file()
        assert (vmdir / "disk1-flat.vmdk").is_file()
        assert (vcsim.datastore_dir / "DC0_H0_VM1" / "disk1.vmdk").is_file()


def test_tls_is_verified_against_our_certificate(vcsim: Vcsim) -> None:
    conn = http.client.HTTPSConnection(vcsim.host, vcsim.port, context=ssl.create_default_context())
    with pytest.raises(ssl.SSLCertVerificationError):
        conn.request("GET", "/about")
    conn.close()
    conn = http.client.HTTPSConnection("localhost", vcsim.port, context=vcsim.ssl_context())
    conn.request("GET", "/about")  # SAN covers localhost too
    assert conn.getresponse().status == 200
    conn.close()


def test_thousand_vms(vcsim_factory: VcsimFactory) -> None:
    t0 = time.monotonic()
    sim = vcsim_factory(clusters=2, hosts=5, vms=100)
    started = time.monotonic() - t0
    with connect(sim) as si:
        assert len(objects(si, vim.HostSystem)) == 10
        assert len(objects(si, vim.VirtualMachine)) == 1000
    assert started < 60, f"1,000-VM simulator took {started:.1f}s to start"


def test_several_datacenters_and_standalone_hosts(vcsim_factory: VcsimFactory) -> None:
    sim = vcsim_factory(datacenters=2, clusters=1, hosts=1, vms=3, standalone_hosts=2)
    assert set(sim.datastores) == {"DC0", "DC1"}
    assert sim.datastores["DC1"]["LocalDS_0"] != sim.datastore_dir
    with connect(sim) as si:
        assert len(objects(si, vim.HostSystem)) == 6
        assert len(objects(si, vim.VirtualMachine)) == 18
    assert (sim.datastores["DC1"]["LocalDS_0"] / "DC1_H1_VM2" / "disk1.vmdk").is_file()


# ---- REST tagging (vAPI) ----


def rest(
    sim: Vcsim, method: str, path: str, body: Any = None, session: str | None = None
) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if session:
        headers["vmware-api-session-id"] = session
    req = urllib.request.Request(
        f"{sim.base_url}/rest{path}",
        method=method,
        headers=headers,
        data=None if body is None else json.dumps(body).encode(),
    )
    try:
        with urllib.request.urlopen(req, context=sim.ssl_context(), timeout=10) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw)["value"] if raw else None
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def rest_login(sim: Vcsim) -> str:
    """POST /rest/com/vmware/cis/session with Basic auth: the value is the session ID."""
    basic = base64.b64encode(f"{sim.user}:{sim.password}".encode()).decode()
    req = urllib.request.Request(
        f"{sim.base_url}/rest/com/vmware/cis/session",
        method="POST",
        headers={"Authorization": f"Basic {basic}"},
    )
    with urllib.request.urlopen(req, context=sim.ssl_context(), timeout=10) as resp:
        session: str = json.loads(resp.read())["value"]
    return session


def test_rest_tagging(vcsim: Vcsim) -> None:
    tagging = "/com/vmware/cis/tagging"
    assert rest(vcsim, "GET", f"{tagging}/category")[0] == 401  # no session
    s = rest_login(vcsim)

    status, cat = rest(
        vcsim,
        "POST",
        f"{tagging}/category",
        {
            "create_spec": {
                "name": "wave",
                "description": "migration wave",
                "cardinality": "SINGLE",
                "associable_types": ["VirtualMachine"],
            }
        },
        s,
    )
    assert status == 200 and cat.startswith("urn:vmomi:InventoryServiceCategory:")
    assert rest(vcsim, "GET", f"{tagging}/category", session=s) == (200, [cat])
    status, info = rest(vcsim, "GET", f"{tagging}/category/id:{cat}", session=s)
    assert info["name"] == "wave" and info["cardinality"] == "SINGLE"

    status, tag = rest(
        vcsim,
        "POST",
        f"{tagging}/tag",
        {"create_spec": {"name": "wave-1", "description": "", "category_id": cat}},
        s,
    )
    assert status == 200 and tag.startswith("urn:vmomi:InventoryServiceTag:")
    assert rest(vcsim, "POST", f"{tagging}/tag/id:{cat}?~action=list-tags-for-category", {}, s) == (
        200,
        [tag],
    )

    with connect(vcsim) as si:
        vm = vm_named(si, "DC0_C0_H1_VM1")
    obj = {"type": "VirtualMachine", "id": vm._moId}
    assoc = f"{tagging}/tag-association"
    assert rest(vcsim, "POST", f"{assoc}/id:{tag}?~action=attach", {"object_id": obj}, s)[0] == 200
    assert rest(vcsim, "POST", f"{assoc}/id:{tag}?~action=list-attached-objects", {}, s) == (
        200,
        [obj],
    )
    assert rest(vcsim, "POST", f"{assoc}?~action=list-attached-tags", {"object_id": obj}, s) == (
        200,
        [tag],
    )
    assert rest(vcsim, "POST", f"{assoc}/id:{tag}?~action=detach", {"object_id": obj}, s)[0] == 200
    assert rest(vcsim, "POST", f"{assoc}/id:{tag}?~action=list-attached-objects", {}, s) == (
        200,
        None,
    )
    assert rest(vcsim, "DELETE", "/com/vmware/cis/session", session=s)[0] == 200


# ---- snapshots ----


def test_snapshot_create_and_remove(vcsim: Vcsim) -> None:
    with connect(vcsim) as si:
        vm = vm_named(si, "DC0_C0_H1_VM0")
        assert "snapshot" not in props(si, vm, "snapshot")
        snap = wait(si, vm.CreateSnapshot_Task("pre-cutover", "before the switch", False, True))
        tree = props(si, vm, "snapshot")["snapshot"]
        assert tree.currentSnapshot == snap
        assert [s.name for s in tree.rootSnapshotList] == ["pre-cutover"]
        assert tree.rootSnapshotList[0].quiesced is True

        wait(si, snap.RemoveSnapshot_Task(removeChildren=False))
        assert "snapshot" not in props(si, vm, "snapshot")
        assert vm.name == "DC0_C0_H1_VM0"  # the connection still works


# ---- datastore files over HTTP ----


def test_folder_serves_datastore_files_with_ranges(vcsim: Vcsim) -> None:
    data = os.urandom(300_000)
    (vcsim.datastore_dir / "DC0_C0_H0_VM1" / "blob.bin").write_bytes(data)
    path = "/folder/DC0_C0_H0_VM1/blob.bin?dcPath=DC0&dsName=LocalDS_0"
    assert vcsim.folder_url("DC0_C0_H0_VM1/blob.bin").endswith(path)
    conn = http.client.HTTPSConnection(vcsim.host, vcsim.port, context=vcsim.ssl_context())
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read() == data

        conn.request("GET", path, headers={"Range": "bytes=65536-131071"})
        resp = conn.getresponse()
        assert resp.status == 206
        assert resp.getheader("Content-Range") == f"bytes 65536-131071/{len(data)}"
        assert resp.read() == data[65536:131072]

        conn.request("GET", "/folder/DC0_C0_H0_VM1/missing.bin?dcPath=DC0&dsName=LocalDS_0")
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 404
    finally:
        conn.close()


# ---- changed-block tracking ----


def qcda(
    vm: Any, key: int, change_id: str, start: int = 0
) -> tuple[int, int, list[tuple[int, int]]]:
    info = vm.QueryChangedDiskAreas(
        snapshot=None, deviceKey=key, startOffset=start, changeId=change_id
    )
    return info.startOffset, info.length, [(a.start, a.length) for a in info.changedArea]


def test_changed_block_tracking(vcsim: Vcsim) -> None:
    vmdir = vcsim.datastore_dir / "DC0_H0_VM0"
    ctk, flat = vmdir / "disk1-ctk.json", vmdir / "disk1-flat.vmdk"
    cap = 16 * BS
    with connect(vcsim) as si:
        vm = vm_named(si, "DC0_H0_VM0")
        key = first_disk(vm).key

        # CBT off: a FileFault, as on a real host.
        with pytest.raises(vim.fault.FileFault):
            qcda(vm, key, "*")
        wait(si, vm.ReconfigVM_Task(vim.vm.ConfigSpec(changeTrackingEnabled=True)))
        assert vm.config.changeTrackingEnabled is True
        assert not first_disk(vm).backing.changeId  # nothing tracked yet

        # A full copy: "*" lists the flat file's data extents (holes skipped).
        with open(flat, "r+b") as f:
            f.truncate(cap)
            f.seek(1 * BS + 10)
            f.write(b"a" * 100)  # inside block 1
            f.seek(5 * BS)
            f.write(b"b" * (2 * BS))  # blocks 5-6
        c1 = record_writes(ctk, [1, 5, 6], capacity=cap)
        assert first_disk(vm).backing.changeId == c1
        assert qcda(vm, key, "*") == (0, cap, [(1 * BS, BS), (5 * BS, 2 * BS)])

        # Two incremental batches; quick same-size rewrites must be seen at once.
        c2 = record_writes(ctk, [6, 7, 10])
        c3 = record_writes(ctk, [15])
        assert first_disk(vm).backing.changeId == c3
        assert c1.rsplit("/", 1)[0] == c3.rsplit("/", 1)[0]
        assert qcda(vm, key, c1) == (0, cap, [(6 * BS, 2 * BS), (10 * BS, BS), (15 * BS, BS)])
        assert qcda(vm, key, c2) == (0, cap, [(15 * BS, BS)])
        assert qcda(vm, key, c3) == (0, cap, [])
        # A backup reads at a snapshot; the simulator accepts it (no delta disks).
        snap = wait(si, vm.CreateSnapshot_Task("backup", "", False, False))
        info = vm.QueryChangedDiskAreas(snapshot=snap, deviceKey=key, startOffset=0, changeId=c2)
        assert [(a.start, a.length) for a in info.changedArea] == [(15 * BS, BS)]
        wait(si, snap.RemoveSnapshot_Task(removeChildren=False))
        # From a start offset inside block 7: clipped, length counts from there.
        start = 7 * BS + 4096
        assert qcda(vm, key, c1, start) == (
            start,
            cap - start,
            [(start, BS - 4096), (10 * BS, BS), (15 * BS, BS)],
        )

        # Another epoch's ID, or garbage: InvalidArgument.
        with pytest.raises(vmodl.fault.InvalidArgument) as err:
            qcda(vm, key, "other-uuid/1")
        assert "changeId" in err.value.msg
        with pytest.raises(vmodl.fault.InvalidArgument):
            qcda(vm, key, "garbage")
        with pytest.raises(vmodl.fault.InvalidArgument):
            qcda(vm, 424242, "*")

        # Without a flat file "*" falls back to every block in the change map.
        flat.unlink()
        assert qcda(vm, key, "*") == (
            0,
            cap,
            [(BS, BS), (5 * BS, 3 * BS), (10 * BS, BS), (15 * BS, BS)],
        )

        # CBT off again: the backing no longer shows a change ID.
        wait(si, vm.ReconfigVM_Task(vim.vm.ConfigSpec(changeTrackingEnabled=False)))
        assert not first_disk(vm).backing.changeId


def test_query_changed_disk_areas_needs_a_session(vcsim: Vcsim) -> None:
    with connect(vcsim) as si:
        vm = vm_named(si, "DC0_H0_VM1")
        key = first_disk(vm).key
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">'
        '<soapenv:Body><QueryChangedDiskAreas xmlns="urn:vim25">'
        f'<_this type="VirtualMachine">{vm._moId}</_this><deviceKey>{key}</deviceKey>'
        "<startOffset>0</startOffset><changeId>*</changeId>"
        "</QueryChangedDiskAreas></soapenv:Body></soapenv:Envelope>"
    )
    conn = http.client.HTTPSConnection(vcsim.host, vcsim.port, context=vcsim.ssl_context())
    conn.request("POST", "/sdk", body, {"Content-Type": "text/xml", "SOAPAction": "urn:vim25/8.0"})
    resp = conn.getresponse()
    text = resp.read().decode()
    conn.close()
    assert resp.status == 500 and "NotAuthenticatedFault" in text


# ---- lifecycle and build ----


def test_clean_shutdown_on_sigterm(vcsim_factory: VcsimFactory) -> None:
    sim = vcsim_factory(hosts=1, vms=1)
    with connect(sim) as si:
        assert len(objects(si, vim.VirtualMachine)) == 1
    t0 = time.monotonic()
    assert sim.stop() == 0
    assert time.monotonic() - t0 < 3
    assert sim.datastore_dir.is_dir()  # the caller's files stay
    with pytest.raises(OSError):
        http.client.HTTPSConnection(sim.host, sim.port, timeout=2).connect()


def test_build_script_is_silent_when_up_to_date(vcsim_binary: Path) -> None:
    t0 = time.monotonic()
    proc = subprocess.run(
        [str(BUILD_SCRIPT)], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    assert time.monotonic() - t0 < 5
    assert Path(vcsim_binary).stat().st_mtime >= (ROOT / "lab/vcsim/main.go").stat().st_mtime
