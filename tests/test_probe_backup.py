"""The `restic-backup` probe against Debian's real restic and a local repository per test:
the age of the newest matching snapshot, and a backup that is restored and compared by
SHA-256. A missing restic FAILS (never a skip)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import subprocess
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from activities.checks import CheckActivities
from adapters.probes.backup import PROBE_TAG
from cutover.models import CheckInput, CheckResult
from cutover.site import ResticBackupProbe, SiteConfig

PASSWORD = "correct horse battery staple"


def _restic() -> str:
    path = shutil.which("restic")
    if path is None:
        pytest.fail("restic is missing: apt-get install -y restic", pytrace=False)
    return path


class Repo:
    """A restic repository of this test's, its password in a file (the site's reference)."""

    def __init__(self, base: Path, template: Path | None = None) -> None:
        self.binary = _restic()
        self.path = base / "repo"
        self.password_file = base / "restic-password"
        self.password_file.write_text(PASSWORD + "\n")
        if template is None:
            self.restic("init")  # ~3 s (its key derivation): once per module, then copied
        else:
            shutil.copytree(template, self.path)

    def restic(self, *args: str, stdin: bytes | None = None) -> str:
        env = {**os.environ, "RESTIC_PASSWORD": PASSWORD}
        proc = subprocess.run([self.binary, "--repo", str(self.path), *args], input=stdin,
                              capture_output=True, env=env, check=False)  # fmt: skip
        assert proc.returncode == 0, proc.stderr.decode()
        return proc.stdout.decode()

    def backup(self, path: Path, host: str, at: datetime | None = None) -> None:
        extra = ["--time", at.strftime("%Y-%m-%d %H:%M:%S")] if at else []
        self.restic("backup", "--quiet", "--host", host, "--tag", "nightly", *extra, str(path))


@pytest.fixture(scope="module")
def empty_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Repo(tmp_path_factory.mktemp("restic")).path


@pytest.fixture
def repo(tmp_path: Path, empty_repo: Path) -> Repo:
    """An empty repository of this test's own (a copy of the module's)."""
    return Repo(tmp_path, template=empty_repo)


def probe_for(repo: Repo, **over: Any) -> ResticBackupProbe:
    """The probe as a site binds it (through the site model: what YAML gives)."""
    check = {"type": "restic-backup", "repository": str(repo.path),
             "passwordRef": {"file": str(repo.password_file)}, **over}  # fmt: skip
    probe = SiteConfig.model_validate({"checks": {"backup": check}}).checks["backup"]
    assert isinstance(probe, ResticBackupProbe)
    return probe


def run(probe: ResticBackupProbe, name: str = "backup_success_last_24h") -> CheckResult:
    inp = CheckInput(name=name, phase="pre", application="app", probe=probe)
    return asyncio.run(CheckActivities().run_check(inp))


def disk_image(path: Path, size: int = 8 << 20) -> str:
    """A sparse image with scattered data, as a VM disk is; its SHA-256."""
    with path.open("wb") as f:
        f.truncate(size)
        for off in (0, size // 3, size - 65536):
            f.seek(off)
            f.write(os.urandom(65536))
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------- last-snapshot-age


def test_a_fresh_snapshot_of_the_host_passes(repo: Repo, tmp_path: Path) -> None:
    disk_image(tmp_path / "source.img")
    repo.backup(tmp_path / "source.img", host="source-vm")
    res = run(probe_for(repo, mode="last-snapshot-age", host="source-vm", tags=["nightly"]))
    assert res.passed, res.detail
    assert res.measured is not None and res.measured.startswith("age 0.0")
    assert res.threshold == "newest snapshot (host source-vm, tags nightly) younger than 24 h"
    assert f"of {tmp_path / 'source.img'} on source-vm at" in res.detail


def test_a_snapshot_older_than_max_age_fails(repo: Repo, tmp_path: Path) -> None:
    disk_image(tmp_path / "source.img")
    repo.backup(tmp_path / "source.img", host="source-vm", at=datetime.now() - timedelta(hours=30))
    repo.backup(tmp_path / "source.img", host="other-vm")  # fresh, but of another host
    res = run(probe_for(repo, mode="last-snapshot-age", host="source-vm"))
    assert not res.passed
    assert res.measured is not None and res.measured.startswith("age 30.0")
    assert res.detail.startswith("too old: snapshot ") and "(limit 24 h)" in res.detail
    # the same snapshot within a wider limit
    assert run(probe_for(repo, mode="last-snapshot-age", host="source-vm", maxAgeHours=31)).passed


def test_no_matching_snapshot_and_a_wrong_password_fail(repo: Repo, tmp_path: Path) -> None:
    disk_image(tmp_path / "source.img")
    repo.backup(tmp_path / "source.img", host="source-vm")
    res = run(probe_for(repo, mode="last-snapshot-age", host="nobody"))
    assert (res.passed, res.measured) == (False, "no snapshot")
    assert res.detail == f"{repo.path} has no snapshot (host nobody)"
    repo.password_file.write_text("wrong\n")
    res = run(probe_for(repo, mode="last-snapshot-age", host="source-vm"))
    assert (res.passed, res.measured) == (False, "restic snapshots failed")
    assert "wrong password" in res.detail


# ------------------------------------------------------------- backup-and-restore


def test_backup_and_restore_verifies_the_digest(repo: Repo, tmp_path: Path) -> None:
    want = disk_image(tmp_path / "target.qcow2")
    probe = probe_for(repo, mode="backup-and-restore", path=str(tmp_path / "target.qcow2"),
                      host="target-vm", tags=["day-two"], restoreDir=str(tmp_path))  # fmt: skip
    res = run(probe, "backup_job_succeeds")
    assert res.passed, res.detail
    assert res.measured is not None and res.measured.endswith("digests equal")
    assert f"{8 << 20} bytes backed up" in res.measured
    assert res.detail == f"sha256 {want}"
    # a real snapshot of the file, told apart by its tag; the restore was removed
    snaps = repo.restic("snapshots", "--json", "--tag", PROBE_TAG)
    assert str(tmp_path / "target.qcow2") in snaps and "target-vm" in snaps and "day-two" in snaps
    assert not list(tmp_path.glob("cutover-restore-*"))


def test_a_restore_whose_digest_differs_fails(repo: Repo, tmp_path: Path) -> None:
    """restic wrapped by a program that corrupts one byte of what `restore` wrote (a
    storage fault restic would not see): the probe compares, it does not trust."""
    want = disk_image(tmp_path / "target.img")
    argv_log = tmp_path / "argv.log"
    wrapper = tmp_path / "restic-corrupting"
    wrapper.write_text(f"""#!/bin/sh
echo "$@" >> {argv_log}
env | grep -q '^RESTIC_PASSWORD={PASSWORD}$' || echo "no password in env" >> {argv_log}
{repo.binary} "$@" || exit $?
if [ "$3" = restore ]; then
  f=$(find "$6" -type f | head -1)
  printf 'X' | dd of="$f" bs=1 seek=4096 conv=notrunc 2>/dev/null
fi
""")
    wrapper.chmod(0o755)
    probe = probe_for(repo, mode="backup-and-restore", path=str(tmp_path / "target.img"),
                      resticBinary=str(wrapper))  # fmt: skip
    res = run(probe, "target_backup_failure")
    assert not res.passed
    assert res.measured is not None and res.measured.endswith("digests differ")
    assert res.detail.startswith("the restore of snapshot ")
    assert f"backed up {want} ({8 << 20} bytes)" in res.detail
    logged = argv_log.read_text()
    assert "restore" in logged and PASSWORD not in logged  # never on a command line
    assert "no password in env" not in logged


def test_a_backup_that_cannot_run_fails_naming_why(repo: Repo, tmp_path: Path) -> None:
    disk_image(tmp_path / "target.img")
    res = run(probe_for(repo, mode="backup-and-restore", path=str(tmp_path / "missing.img")))
    assert (res.passed, res.measured) == (False, "no source")
    assert "No such file or directory" in res.detail
    shutil.rmtree(repo.path)  # the repository is gone: the target's backup fails
    res = run(probe_for(repo, mode="backup-and-restore", path=str(tmp_path / "target.img")))
    assert (res.passed, res.measured) == (False, "restic backup failed")
    assert res.detail.startswith("exit 1: Fatal: unable to open config file")
    res = run(probe_for(repo, mode="backup-and-restore", path=str(tmp_path / "target.img"),
                        passwordRef={"env": "CUTOVER_TEST_UNSET_PASSWORD"}))  # fmt: skip
    assert (res.passed, res.measured) == (False, "not run")
    assert res.detail == "passwordRef: environment variable CUTOVER_TEST_UNSET_PASSWORD is not set"


def test_site_validation_names_the_field() -> None:
    def problem(**check: Any) -> str:
        base = {"type": "restic-backup", "repository": "/r", "passwordRef": {"env": "P"}}
        with pytest.raises(ValidationError) as caught:
            SiteConfig.model_validate({"checks": {"backup": {**base, **check}}})
        return str(caught.value)

    assert "`path`: mode backup-and-restore needs the file" in problem(mode="backup-and-restore")
    assert "`path`: 'disk.img' must be an absolute path" in problem(
        mode="last-snapshot-age", path="disk.img"
    )
    assert "mode" in problem(mode="restore-only")
    assert "maxAgeHours" in problem(mode="last-snapshot-age", maxAgeHours=0)
    inline = problem(mode="last-snapshot-age", password="hunter2")
    assert "`password`: secrets may not be written in the site config; use `passwordRef`" in inline
