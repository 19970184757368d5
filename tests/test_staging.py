"""The staging dir's namespace (`activities.staging`) on real files: an application named
like anything the staging dir holds cannot discard another application's staging or the
target pools; staging an older worker began at the pre-upgrade path is used and discarded
there, file by file. One test creates the pool with a real libvirtd (run it under
`flock /tmp/cutover-libvirt.lock`)."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from typing import Any

import libvirt
import pytest

from activities.convert import ConvertActivities
from activities.disks import DiskActivities
from activities.libvirt_target import LibvirtTarget
from adapters.localdisk import LocalFileSource
from cutover.inventory import VM, Disk
from cutover.models import StepContext, StepInput
from cutover.ports import DiskSource
from cutover.runbook import Runbook
from cutover.site import Libvirt, SiteConfig, StorageMapping
from tests.factories import SEED
from tests.libvirt_fixtures import TEST_POOL_PREFIX, make_raw

SIZE = 4 << 20
DISK = "web-1-2000"  # disk_id("web-1", 2000): the name every step uses for the VM's disk
#: Every name the staging dir holds at its top level (`activities.staging.INTERNAL`).
INTERNAL_NAMES = ["apps", "pools"]


def the_site(staging: Path, pool: str = "p1", uri: str | None = None) -> SiteConfig:
    return SiteConfig(
        stagingDir=str(staging),
        libvirt=Libvirt(uri=uri) if uri else None,
        storageMappings=[StorageMapping(sourceDatastore="ds1", targetPool=pool, format="raw")],
    )


def step(site: SiteConfig, app: str, name: str, facts: dict[str, str] | None = None) -> StepInput:
    vm = VM(moref="vm-1", name="web-1", numCpu=1, memoryMB=64,
            disks=[Disk(key=2000, capacityBytes=SIZE, datastore="ds1")])  # fmt: skip
    ctx = StepContext(
        workflowId=f"cutover-{app}",
        application=app,
        wave="1",
        runbook=Runbook.model_validate({**SEED, "application": app}),
        site=site,
        facts={**(facts or {}), f"source_vm.{vm.name}": vm.model_dump_json()},
    )
    return StepInput(step=name, context=ctx, passNumber=1)


def disks(src: Path) -> DiskActivities:
    def make(ctx: StepContext, precopy: bool) -> list[DiskSource]:
        return [LocalFileSource(src, name=DISK)]

    return DiskActivities(make)


def stage_and_convert(site: SiteConfig, app: str, src: Path) -> dict[str, str]:
    """What the warm phase and convert_image leave for an application: its facts."""
    facts = disks(src).pre_copy(step(site, app, "pre_copy")).facts
    facts |= ConvertActivities().convert_image(step(site, app, "convert_image", facts)).facts
    return facts


def undo(site: SiteConfig, app: str, src: Path, facts: dict[str, str]) -> None:
    """The compensations that remove what stage_and_convert made."""
    ConvertActivities().remove_converted_image(step(site, app, "remove_converted_image", facts))
    disks(src).discard_staging(step(site, app, "discard_staging", facts))


def tree(root: Path) -> dict[str, str]:
    """Every file under `root` and a digest of its bytes."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# ------------------------------------------------------------------ collisions


def test_application_named_like_an_internal_dir_discards_only_its_own_staging_with_a_real_pool(
    tmp_path: Path, libvirtd_uri: str
) -> None:
    """`web` is converted and attached (the default pool root, a pool libvirtd creates);
    then applications named `apps` and `pools` stage, convert and are undone: `web`'s
    staging, its converted image, the pool's directory and its volume stay."""
    staging = tmp_path / "staging"
    src = tmp_path / "src.raw"
    content = make_raw(src, SIZE)
    pool = f"{TEST_POOL_PREFIX}-{uuid.uuid4().hex[:8]}"
    site = the_site(staging, pool, libvirtd_uri)
    target = LibvirtTarget()  # pool_root unset: `<stagingDir>/pools`
    try:
        facts = stage_and_convert(site, "web", src)
        facts |= target.attach_target_storage_profile(
            step(site, "web", "attach_target_storage_profile", facts)
        ).facts
        volume = Path(facts[f"target_base.{DISK}"])  # under the overlay the domain boots
        assert volume.parent == staging / "pools" / pool
        kept = tree(staging)
        assert str(Path(facts[f"staging_path.{DISK}"]).relative_to(staging)) in kept
        for name in INTERNAL_NAMES:
            other = stage_and_convert(site, name, src)
            undo(site, name, src, other)
            assert tree(staging) == kept, name
        assert volume.read_bytes() == content
        conn = libvirt.open(libvirtd_uri)
        try:
            lv_pool = conn.storagePoolLookupByName(pool)
            lv_pool.refresh(0)
            assert lv_pool.isActive()
            assert lv_pool.storageVolLookupByName(volume.name).path() == str(volume)
        finally:
            conn.close()
        target.detach_target_storage(step(site, "web", "detach_target_storage", facts))
        undo(site, "web", src, facts)
        assert not volume.exists() and not (staging / "apps" / "web").exists()
    finally:
        target.close()


@pytest.mark.parametrize("name", INTERNAL_NAMES)
def test_discarding_an_application_named_like_an_internal_dir_leaves_others_and_pools(
    tmp_path: Path, name: str
) -> None:
    """The same without libvirt: a pool directory where the target creates pools."""
    staging = tmp_path / "staging"
    src = tmp_path / "src.raw"
    make_raw(src, SIZE)
    site = the_site(staging)
    stage_and_convert(site, "web", src)
    vol = staging / "pools" / "p1" / "web.web-1-2000.target.raw"
    vol.parent.mkdir(parents=True)
    vol.write_bytes(b"serving")
    kept = tree(staging)
    facts = stage_and_convert(site, name, src)
    undo(site, name, src, facts)
    assert tree(staging) == kept


# ------------------------------------------------------------------ upgrade


def old_layout(staging: Path, app: str) -> Path:
    """Move an application's staging where a worker before the namespace kept it."""
    old = staging / app
    tmp = staging / f".moving-{app}"
    (staging / "apps" / app).rename(tmp)
    if not any((staging / "apps").iterdir()):
        (staging / "apps").rmdir()
    tmp.rename(old)
    return old


def test_a_warm_copy_staged_before_the_upgrade_is_used_and_discarded_where_it_is(
    tmp_path: Path,
) -> None:
    """A worker upgraded between pre-copy and the final sync: the passes continue the copy
    at the old path (no cold copy in the downtime), convert links it there, the undo
    removes it; another workflow's old staging is neither used nor removed."""
    staging = tmp_path / "staging"
    src = tmp_path / "src.raw"
    make_raw(src, SIZE)
    site = the_site(staging)
    acts = disks(src)
    facts = acts.pre_copy(step(site, "web", "pre_copy")).facts
    old = old_layout(staging, "web")
    inc = acts.incremental_sync(step(site, "web", "incremental_sync", facts))
    assert inc.details[f"mode.{DISK}"] in ("cbt", "digest")
    final = acts.final_data_sync(step(site, "web", "final_data_sync", facts))
    assert final.details["cold"] is False
    assert final.facts[f"staging_path.{DISK}"] == str(old / f"{DISK}.raw")
    facts |= final.facts
    conv = ConvertActivities().convert_image(step(site, "web", "convert_image", facts))
    assert Path(conv.facts[f"converted_path.{DISK}"]).parent == old
    assert not (staging / "apps").exists()
    # another workflow's old staging of the same application name: not this one's
    stranger = step(site, "web", "pre_copy").context.model_copy(update={"workflowId": "other"})
    assert not acts.discard_staging(StepInput(step="discard_staging", context=stranger)).changed
    assert old.is_dir()
    undo(site, "web", src, facts | conv.facts)
    assert not old.exists() and tree(staging) == {}


def test_old_staging_of_an_application_named_pools_is_discarded_file_by_file(
    tmp_path: Path,
) -> None:
    """Before the namespace an application named `pools` staged inside the pool root; its
    undo after the upgrade removes its disk's files there and nothing else."""
    staging = tmp_path / "staging"
    src = tmp_path / "src.raw"
    make_raw(src, SIZE)
    site = the_site(staging)
    facts = disks(src).pre_copy(step(site, "pools", "pre_copy")).facts
    old_layout(staging, "pools")
    vol = staging / "pools" / "p1" / "web.web-1-2000.target.raw"
    vol.parent.mkdir()
    vol.write_bytes(b"serving")
    (staging / "pools" / "notes.txt").write_text("someone else's")
    undo(site, "pools", src, facts)
    assert sorted(tree(staging)) == ["pools/notes.txt", "pools/p1/web.web-1-2000.target.raw"]
    assert vol.read_bytes() == b"serving"


def test_staging_paths_come_from_one_function(tmp_path: Path) -> None:
    """Staged disk, digest maps, pre-converted and converted images of one application all
    lie in `application_dir`; pools in `pools_root`."""
    from adapters.staging import layout as ns
    from adapters.staging.layout import StagedDisk, converted_path

    site = the_site(tmp_path)
    ctx = step(site, "web", "pre_copy").context
    here = ns.application_dir(site, "web", ctx.workflowId)
    assert here == tmp_path / "apps" / "web"
    staged = StagedDisk.of(ctx, DISK)
    paths: list[Any] = [*staged.__dict__.values(), converted_path(ctx, DISK, "qcow2")]
    assert {p.parent for p in paths} == {here}
    assert ns.pools_root(site) == tmp_path / "pools"
    assert set(ns.INTERNAL) == set(INTERNAL_NAMES)
