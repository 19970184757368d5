"""convert_image against real qemu-img: VMDK -> qcow2/raw identical, paths confined."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from temporalio.exceptions import ApplicationError

from activities.convert import ConvertActivities
from adapters.qemu.img import QemuImgConverter, _pump_progress, virt_v2v_available
from cutover.inventory import VM, Disk
from cutover.models import StepContext, StepInput
from cutover.runbook import Runbook
from cutover.site import SiteConfig, StorageMapping
from tests.libvirt_fixtures import make_raw, make_vmdk

SIZE = 8 << 20


def step_input(
    staging: Path, facts: dict[str, str], fmt: str = "qcow2", step: str = "convert_image"
) -> StepInput:
    vm = VM(
        moref="vm-1",
        name="web-1",
        numCpu=1,
        memoryMB=64,
        disks=[Disk(key=2000, capacityBytes=SIZE, datastore="ds1")],
    )
    site = SiteConfig(
        stagingDir=str(staging),
        storageMappings=[StorageMapping(sourceDatastore="ds1", targetPool="pool1", format=fmt)],
    )
    runbook = Runbook(
        application="web",
        wave=1,
        sourcePlatform="vmware-vsphere",
        sourceCluster="c1",
        targetPlatform="kvm-libvirt",
        rollbackWindowMinutes=5,
        cutoverSteps=["convert_image"],
    )
    ctx = StepContext(
        workflowId="wf-1",
        application="web",
        wave="1",
        runbook=runbook,
        site=site,
        facts={**facts, "source_vm.web-1": vm.model_dump_json()},
    )
    return StepInput(step=step, context=ctx)


def tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


@pytest.mark.parametrize("fmt", ["qcow2", "raw"])
def test_vmdk_converts_identical(tmp_path: Path, qemu_img: str, fmt: str) -> None:
    content = make_raw(tmp_path / "src.raw", SIZE)
    staging = tmp_path / "staging"
    staging.mkdir()
    make_vmdk(tmp_path / "src.raw", staging / "web-2000.vmdk")
    beats: list[float] = []

    class Recording(QemuImgConverter):
        pass

    conv = Recording()
    acts = ConvertActivities(converter=conv)
    inp = step_input(staging, {"staging_path.web-1-2000": "web-2000.vmdk"}, fmt)
    orig = conv.convert

    def convert(*a: object, **kw: object) -> None:
        progress = kw.get("progress") or a[4]

        def rec(p: float) -> None:
            beats.append(p)
            progress(p)  # type: ignore[operator]

        orig(a[0], a[1], a[2], a[3], rec)  # type: ignore[arg-type]

    conv.convert = convert  # type: ignore[method-assign]
    result = acts.convert_image(inp)

    out = Path(result.facts["converted_path.web-1-2000"])
    # in the application's own staging dir (`activities.staging`), beside its staged disks
    assert out == staging / "apps" / "web" / f"web-1-2000.converted.{fmt}"
    assert result.facts["converted_format.web-1-2000"] == fmt
    assert result.details["verified"] is True
    info = json.loads(
        subprocess.run(
            [qemu_img, "info", "--output=json", "-f", fmt, str(out)],
            capture_output=True, check=True, text=True,
        ).stdout
    )  # fmt: skip
    assert info["format"] == fmt and info["virtual-size"] == SIZE
    # the bytes the guest sees are the source's, read back independently of the converter
    back = tmp_path / "back.raw"
    subprocess.run([qemu_img, "convert", "-f", fmt, "-O", "raw", str(out), str(back)], check=True)
    assert back.read_bytes() == content
    assert beats and beats[-1] == 100.0
    assert not list(staging.rglob("*.part"))

    # compensation removes it, and a second run is a no-op
    undo = ConvertActivities().remove_converted_image(step_input(staging, inp.context.facts))
    assert undo.changed and not out.exists() and (staging / "web-2000.vmdk").exists()
    again = ConvertActivities().remove_converted_image(step_input(staging, inp.context.facts))
    assert not again.changed


def test_progress_parsing() -> None:
    import io

    seen: list[float] = []
    _pump_progress(
        io.BytesIO(b"    (0.00/100%)\r    (12.50/100%)\r    (100.00/100%)\r"), seen.append
    )
    assert seen == [100.0]  # one read: the latest value wins


def test_verification_catches_a_difference(tmp_path: Path, qemu_img: str) -> None:
    make_raw(tmp_path / "a.raw", SIZE)
    make_raw(tmp_path / "b.raw", SIZE)  # different random blocks
    with pytest.raises(ApplicationError) as err:
        QemuImgConverter().verify(tmp_path / "a.raw", "raw", tmp_path / "b.raw", "raw")
    assert err.value.type == "VerificationFailed" and err.value.non_retryable


def test_convert_failure_is_typed(tmp_path: Path, qemu_img: str) -> None:
    (tmp_path / "bad.vmdk").write_bytes(b"not a vmdk at all")
    with pytest.raises(ApplicationError) as err:
        QemuImgConverter().convert(tmp_path / "bad.vmdk", "vmdk", tmp_path / "o.qcow2", "qcow2")
    assert err.value.type == "ConversionFailed"


@pytest.mark.parametrize(
    ("key", "path"),
    [
        ("web-1-2000", "../outside.raw"),
        ("web-1-2000", "/etc/passwd"),
        ("web-1-2000", "sub/../../outside.raw"),
        ("web-1-2000", "link.raw"),  # a symlink pointing outside
        ("../../x", "web-2000.raw"),
        ("2000;rm -rf /", "web-2000.raw"),
        ("$(touch pwned)", "web-2000.raw"),
        ("a b", "web-2000.raw"),
    ],
)
def test_path_escapes_rejected(tmp_path: Path, key: str, path: str) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    (tmp_path / "outside.raw").write_bytes(b"x" * 512)
    (staging / "web-2000.raw").write_bytes(b"y" * 512)
    (staging / "link.raw").symlink_to(tmp_path / "outside.raw")
    before, before_outer = tree(staging), tree(tmp_path)
    with pytest.raises(ApplicationError) as err:
        ConvertActivities().convert_image(step_input(staging, {f"staging_path.{key}": path}))
    assert err.value.type == "PathRejected" and err.value.non_retryable
    assert tree(staging) == before and tree(tmp_path) == before_outer


def test_missing_staging_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(ApplicationError) as err:
        ConvertActivities().convert_image(step_input(tmp_path, {}))
    assert err.value.type == "NotFound"


def test_virt_v2v_detection_is_boolean() -> None:
    assert isinstance(virt_v2v_available(), bool)
