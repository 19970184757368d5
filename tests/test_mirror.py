"""qcow2 targets converted in the warm phase (activities.mirror) on real files, real
`qemu-img` and `qemu-nbd`: pre-converted after pre-copy, caught up after each incremental
pass, written directly by the final pass (the staged raw copy is not), taken by
`convert_image` as a link with no conversion, and read by the consistency check."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from temporalio.exceptions import ApplicationError

from activities.convert import ConvertActivities
from activities.disks import DiskActivities
from adapters.qemu.mirror import TargetMirror
from adapters.qemu.nbd import NbdImage
from adapters.staging.copy import BLOCK
from adapters.staging.layout import StagedDisk
from cutover.models import StepInput
from cutover.site import StorageMapping
from tests.test_disks import MiB, again, local_factory, sparse_disk, step, write_at


def identical(a: Path, fa: str, b: Path, fb: str) -> bool:
    done = subprocess.run(
        ["qemu-img", "compare", "-f", fa, "-F", fb, str(a), str(b)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode in (0, 1), done.stderr
    return done.returncode == 0


def qcow2_step(staging: Path, name: str, fmt: str = "qcow2") -> StepInput:
    mapping = StorageMapping(sourceDatastore="ds1", targetPool="p", format=fmt)
    return step(staging, name, storageMappings=[mapping])


def test_qcow2_target_is_converted_warm_and_the_final_pass_writes_into_it(
    tmp_path: Path,
) -> None:
    src = tmp_path / "disk.raw"
    size = 64 * MiB
    sparse_disk(src, size, [(0, 8 * MiB), (30 * MiB, 4 * MiB)])
    mirror = TargetMirror()
    acts = DiskActivities(local_factory(src), mirror=mirror)
    inp = qcow2_step(tmp_path / "staging", "pre_copy")

    pre = acts.pre_copy(inp)
    staged = StagedDisk.of(inp.context, "disk")
    assert pre.details["image.disk"] == "pre-converted"
    assert identical(src, "raw", staged.mirror, "qcow2")

    # a warm pass: only the changed blocks go into the image
    for off in (1 * MiB + 7, 33 * MiB, 50 * MiB):
        write_at(src, off, os.urandom(4096))
    one = acts.incremental_sync(again(inp, "incremental_sync", 1))
    assert one.details["image.disk"] == "caught up"
    assert one.details["imageBytes.disk"] == 3 * BLOCK
    assert identical(src, "raw", staged.mirror, "qcow2")

    # after quiesce: the final pass writes into the image, not into the staged copy
    changed = [(9 * MiB, 4096), (60 * MiB, 100)]
    for off, n in changed:
        write_at(src, off, os.urandom(n))
    final = acts.final_data_sync(again(inp, "final_data_sync"))
    assert final.details["mode.disk"] == "digest->image"
    assert final.details["bytesWritten"] == 2 * BLOCK
    assert identical(src, "raw", staged.mirror, "qcow2")
    assert not identical(src, "raw", staged.raw, "raw")  # the staged copy was left alone

    # convert_image takes the image as it is: a link, nothing converted in the window
    facts = {"staging_path.disk": str(staged.raw)}
    conv = ConvertActivities(prepared=mirror)
    ctx = inp.context.model_copy(update={"facts": facts})
    converted = conv.convert_image(inp.model_copy(update={"context": ctx}))
    out = Path(converted.facts["converted_path.disk"])
    assert converted.details["method.disk"] == "pre-converted"
    assert converted.details["applied.disk"] == 0
    assert out.stat().st_ino == staged.mirror.stat().st_ino
    assert identical(src, "raw", out, "qcow2")

    # the window's full comparison reads the image (what the target boots)
    [report] = acts.consistency(inp.context)
    assert report.consistent and report.bytesRead == 2 * size
    with NbdImage(staged.mirror, "qcow2") as image:  # one block lost in the image
        image.write(20 * MiB, b"\xff" * 512)
    [report] = acts.consistency(inp.context)
    assert report.mismatched == [20]

    # undo: the converted link, then the staging dir with the image
    conv.remove_converted_image(inp.model_copy(update={"context": ctx}))
    assert not out.exists() and staged.mirror.exists()
    acts.discard_staging(inp)
    assert not staged.mirror.exists()


def test_raw_targets_and_cold_cutovers_get_no_pre_converted_image(tmp_path: Path) -> None:
    src = tmp_path / "disk.raw"
    sparse_disk(src, 16 * MiB, [(0, 2 * MiB)])
    acts = DiskActivities(local_factory(src), mirror=TargetMirror())
    raw = qcow2_step(tmp_path / "raw", "pre_copy", fmt="raw")
    pre = acts.pre_copy(raw)
    assert "image.disk" not in pre.details
    assert not StagedDisk.of(raw.context, "disk").mirror.exists()

    # cold: the final pass is the full copy; convert_image converts in full
    cold = qcow2_step(tmp_path / "cold", "final_data_sync")
    final = acts.final_data_sync(cold)
    assert final.details["cold"] is True
    staged = StagedDisk.of(cold.context, "disk")
    assert not staged.mirror.exists()
    ctx = cold.context.model_copy(update={"facts": {"staging_path.disk": str(staged.raw)}})
    conv = ConvertActivities(prepared=TargetMirror())
    converted = conv.convert_image(cold.model_copy(update={"context": ctx}))
    assert converted.details["method.disk"] == "qemu-img"
    assert identical(src, "raw", Path(converted.facts["converted_path.disk"]), "qcow2")


def test_a_new_pre_copy_discards_an_older_image(tmp_path: Path) -> None:
    src = tmp_path / "disk.raw"
    sparse_disk(src, 16 * MiB, [(0, 2 * MiB)])
    acts = DiskActivities(local_factory(src), mirror=TargetMirror())
    inp = qcow2_step(tmp_path / "staging", "pre_copy")
    acts.pre_copy(inp)
    staged = StagedDisk.of(inp.context, "disk")
    first = staged.mirror.stat().st_ino
    # another workflow for the same application starts over: a new copy, a new image
    other = inp.model_copy(
        update={"context": inp.context.model_copy(update={"workflowId": "cutover-other"})}
    )
    write_at(src, 5 * MiB, os.urandom(MiB))
    acts.pre_copy(other)
    assert staged.mirror.stat().st_ino != first
    assert identical(src, "raw", staged.mirror, "qcow2")


def test_a_corrupt_image_fails_the_conversion_step(tmp_path: Path) -> None:
    src = tmp_path / "disk.raw"
    sparse_disk(src, 16 * MiB, [(0, 2 * MiB)])
    mirror = TargetMirror()
    acts = DiskActivities(local_factory(src), mirror=mirror)
    inp = qcow2_step(tmp_path / "staging", "pre_copy")
    acts.pre_copy(inp)
    acts.final_data_sync(again(inp, "final_data_sync"))
    staged = StagedDisk.of(inp.context, "disk")
    with open(staged.mirror, "r+b") as f:  # break the qcow2 header's magic
        f.write(b"XXXX")
    ctx = inp.context.model_copy(update={"facts": {"staging_path.disk": str(staged.raw)}})
    with pytest.raises(ApplicationError) as err:
        ConvertActivities(prepared=mirror).convert_image(inp.model_copy(update={"context": ctx}))
    assert err.value.type == "VerificationFailed" and err.value.non_retryable
    assert not list(staged.raw.parent.parent.glob("*-target.qcow2*"))
