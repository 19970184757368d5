"""`cutover exit-report`: what still depends on vCenter, with a verdict."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cutover.cli import main
from tests.rvtools_fixtures import GenVM, export

ATTRS = ("app", "env", "criticality", "owner", "cutover.migratedTo")


def migrated(name: str, power: str = "poweredOff") -> GenVM:
    return GenVM(name, "x", power=power, extra={"cutover.migratedTo": f"libvirt:{name}"})


def report(
    tmp: Path, vms: list[GenVM], capsys: pytest.CaptureFixture[str], declared: str = ""
) -> tuple[int, dict[str, Any]]:
    xlsx = export(vms, tmp / "rv.xlsx", attributes=ATTRS)
    argv = ["exit-report", "--rvtools", str(xlsx), "--json"]
    if declared:
        (tmp / "declared.csv").write_text(declared)
        argv += ["--declared", str(tmp / "declared.csv")]
    capsys.readouterr()
    code = main(argv)
    return code, json.loads(capsys.readouterr().out)


def test_exit_report_names_everything_that_still_depends_on_vcenter(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tpl = GenVM("golden", None, template=True, power="poweredOff")
    vms = [migrated("done-1"), migrated("zombie-1", power="poweredOn"), GenVM("left-1", "y"), tpl]
    declared = (
        "name,kind,status,note\nveeam,backup,active,image-level backups\n"
        "vrops,monitoring,retired,\n"
    )
    code, r = report(tmp_path, vms, capsys, declared)
    assert code == 1 and r["verdict"] == "NOT_READY"
    assert [v["vm"] for v in r["notMigrated"]] == ["left-1"]
    assert [v["vm"] for v in r["migratedRunning"]] == ["zombie-1"]
    assert [v["vm"] for v in r["templates"]] == ["golden"]
    assert r["migrated"] == 2
    assert r["blockers"] == [
        "1 VM(s) not migrated",
        "1 migrated source VM(s) still powered on",
        "1 template(s) still on vSphere",
        "1 datastore(s) hold VMs that are not retired sources",
        "1 declared VMware-bound system(s) active: veeam (backup)",
    ]


def test_exit_report_is_ready_once_only_retired_sources_remain(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, r = report(tmp_path, [migrated("a-1"), migrated("b-1")], capsys,
                     "veeam,backup,retired\n")  # fmt: skip
    assert code == 0 and r["verdict"] == "READY" and r["blockers"] == []
    assert r["datastores"] == [
        {"datastore": "ds-01", "vms": 2, "migratedVms": 2, "usedGiB": 80.0, "blocking": False}
    ]


def test_a_bad_declared_file_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    xlsx = export([migrated("a-1")], tmp_path / "rv.xlsx", attributes=ATTRS)
    (tmp_path / "d.csv").write_text("veeam,backup,maybe\n")
    assert main(["exit-report", "--rvtools", str(xlsx), "--declared",
                 str(tmp_path / "d.csv")]) == 2  # fmt: skip
    assert "d.csv: line 1: status 'maybe' is not active or retired" in capsys.readouterr().err
