"""`cutover plan --site`: the live vCenter (our simulator) through the inventory reader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from cutover.cli import main
from cutover.lab.vcsim import Vcsim
from cutover.wave import load_wave
from tests.factories import site


def test_plan_from_the_live_vcenter_places_every_vm(
    vcsim: Vcsim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vcenter = {"host": vcsim.host, "port": vcsim.port, "user": vcsim.user,
               "passwordRef": {"env": "CUTOVER_TEST_VC_PASSWORD"},
               "caFile": str(vcsim.ca_file), "datacenter": "DC0"}  # fmt: skip
    (tmp_path / "site.yaml").write_text(yaml.safe_dump({"name": "plan", "vcenter": vcenter}))
    monkeypatch.setenv("CUTOVER_TEST_VC_PASSWORD", vcsim.password)
    out = tmp_path / "out"
    code = main(["plan", "--site", str(tmp_path / "site.yaml"), "-o", str(out),
                 "--app-pattern", r"^(?P<app>DC0_(C0_)?H\d+)_VM\d+$"])  # fmt: skip
    assert code == 0
    plan = json.loads((out / "plan.json").read_text())
    placed = [vm for a in plan["applications"] for vm in a["vms"]]
    placed += [u["vm"] for u in plan["unplanned"]]
    assert len(placed) == len(set(placed)) == 6  # the session simulator's VMs
    # no owner attribute in the simulator: every application is a holdout, and says why
    assert {a["name"]: a["wave"] for a in plan["applications"]} == {
        "dc0-c0-h0": "3", "dc0-c0-h1": "3", "dc0-h0": "3"
    }  # fmt: skip
    assert all("no owner recorded" in " ".join(a["reasons"]) for a in plan["applications"])
    s = site(vcenter=vcenter)
    for w in plan["waves"]:
        assert load_wave(out / "waves" / f"{w['name']}.yaml", s, "site.yaml").apps


def test_exit_report_from_the_live_vcenter_lists_the_vms_not_migrated(
    vcsim: Vcsim,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    vcenter = {"host": vcsim.host, "port": vcsim.port, "user": vcsim.user,
               "passwordRef": {"env": "CUTOVER_TEST_VC_PASSWORD"},
               "caFile": str(vcsim.ca_file), "datacenter": "DC0"}  # fmt: skip
    (tmp_path / "site.yaml").write_text(yaml.safe_dump({"name": "exit", "vcenter": vcenter}))
    monkeypatch.setenv("CUTOVER_TEST_VC_PASSWORD", vcsim.password)
    capsys.readouterr()
    assert main(["exit-report", "--site", str(tmp_path / "site.yaml"), "--json"]) == 1
    r = json.loads(capsys.readouterr().out)
    # the session simulator is shared: other tests may have marked some VMs migrated
    assert r["verdict"] == "NOT_READY" and len(r["notMigrated"]) + r["migrated"] == 6


def test_plan_reports_what_the_sites_workload_policies_would_refuse(
    vcsim: Vcsim,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Planning under the site's WorkloadPolicy (issue 13): each planned runbook that
    `validate` and the workflow would refuse is named with the rule, before any wave runs."""
    vcenter = {"host": vcsim.host, "port": vcsim.port, "user": vcsim.user,
               "passwordRef": {"env": "CUTOVER_TEST_VC_PASSWORD"},
               "caFile": str(vcsim.ca_file), "datacenter": "DC0"}  # fmt: skip
    policy = {
        "apiVersion": "policy.virtualmachine.space/v1",
        "kind": "WorkloadPolicy",
        "metadata": {"name": "openstack-only"},
        "spec": {"allowedPlatforms": ["openstack"]},
    }
    doc = {"name": "plan", "vcenter": vcenter, "workloadPolicies": [policy]}
    (tmp_path / "site.yaml").write_text(yaml.safe_dump(doc))
    monkeypatch.setenv("CUTOVER_TEST_VC_PASSWORD", vcsim.password)
    out = tmp_path / "out"
    capsys.readouterr()
    code = main(["plan", "--site", str(tmp_path / "site.yaml"), "-o", str(out), "--json",
                 "--app-pattern", r"^(?P<app>DC0_(C0_)?H\d+)_VM\d+$"])  # fmt: skip
    assert code == 0  # a plan is a report: written, with what would be refused
    found = json.loads(capsys.readouterr().out)["workloadPolicyViolations"]
    runbooks = sorted((out / "runbooks").glob("*.yaml"))
    assert runbooks and len(found) == len(runbooks)
    for line, path in zip(sorted(found), runbooks, strict=True):
        assert line.startswith(f"{path}: ") and "openstack-only" in line
        assert "spec.allowedPlatforms" in line
