"""`cutover plan` (Wave 0) on generated RVTools exports and dependency CSVs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from cutover.cli import main
from cutover.config import ConfigError
from cutover.plan.inputs import read_dependencies, read_mapping
from cutover.plan.model import PlanPolicy, PlanResult
from cutover.plan.planner import make_plan
from cutover.plan.render import write_plan
from cutover.plan.rvtools import RvToolsError, read_rvtools
from cutover.plan.structure import wave_structure
from cutover.runbook import Runbook
from cutover.site import SiteConfig
from cutover.wave import load_wave
from tests.factories import site
from tests.rvtools_fixtures import (
    GenDisk,
    GenVM,
    Variant,
    export,
    random_dependencies,
    world,
    write_azure_dependencies,
    write_plain_dependencies,
)


def plan_of(
    tmp: Path,
    vms: list[GenVM],
    deps: list[tuple[str, str, int, str | None]] | None = None,
    variant: Variant = "current",
    **policy: Any,
) -> PlanResult:
    xlsx = export(vms, tmp / f"rv-{variant}.xlsx", variant=variant)
    imported = read_rvtools(xlsx)
    files = [str(write_plain_dependencies(tmp / "deps.csv", deps))] if deps else []
    read = read_dependencies(files, imported.inventory)
    return make_plan(imported.inventory, read, PlanPolicy(**policy), None, imported.missingSheets)


def wave_of(result: PlanResult) -> dict[str, str]:
    return {a.name: a.wave for a in result.plan.applications}


def the_site() -> SiteConfig:
    return site(
        loadBalancer={"socket": "/tmp/x.sock"},
        vcenter={"host": "127.0.0.1", "user": "svc", "passwordRef": {"env": "UNUSED"}},
    )


@pytest.fixture(scope="module")
def estate(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[GenVM], Path, Path]:
    tmp = tmp_path_factory.mktemp("estate")
    vms = world(600, 200)
    xlsx = export(vms, tmp / "rv.xlsx")
    deps = write_plain_dependencies(tmp / "deps.csv", random_dependencies(vms, 1500))
    return vms, xlsx, deps


def run_plan(xlsx: Path, deps: Path, out: Path, *extra: str) -> int:
    return main(["plan", "--rvtools", str(xlsx), "--dependencies", str(deps), "-o", str(out),
                 *extra])  # fmt: skip


def test_every_non_template_vm_is_planned_or_unplanned_exactly_once_and_templates_never(
    estate: tuple[list[GenVM], Path, Path], tmp_path: Path
) -> None:
    vms, xlsx, deps = estate
    assert run_plan(xlsx, deps, tmp_path / "out") == 0
    plan = json.loads((tmp_path / "out" / "plan.json").read_text())
    planned = [vm for a in plan["applications"] for vm in a["vms"]]
    unplanned = [u["vm"] for u in plan["unplanned"]]
    seen = planned + unplanned
    assert len(seen) == len(set(seen))
    templates = {v.name for v in vms if v.template}
    assert templates and set(seen) == {v.name for v in vms} - templates
    assert {e["vm"] for e in plan["excluded"]} == templates
    assert all(u["reasons"] for u in plan["unplanned"])
    assert all(a["reasons"] for a in plan["applications"])
    # the waves list every planned application once, in the order they run
    in_waves = [n for w in plan["waves"] for n in w["applications"]]
    assert sorted(in_waves) == sorted(a["name"] for a in plan["applications"])
    assert [w["name"][0] for w in plan["waves"]] == sorted(w["name"][0] for w in plan["waves"])


def test_special_workloads_databases_and_high_criticality_never_in_wave_1(
    tmp_path: Path,
) -> None:
    vms = [
        GenVM("web-1", "web", env="dev", criticality="low"),
        GenVM("db-1", "db", env="dev", criticality="low"),
        GenVM("hot-1", "hot", env="dev", criticality="high"),
        GenVM("lat-1", "lat", env="dev", criticality="low", latency="high"),
        GenVM("sriov-1", "sriov", env="dev", criticality="low", adapter="SR-IOV passthrough"),
        GenVM("rdm-1", "rdm", env="dev", criticality="low", disks=[GenDisk(1024, raw=True)]),
        GenVM("ft-1", "ft", env="dev", criticality="low", ft=True),
        GenVM("mw-1", "mw", env="dev", criticality="low",
              disks=[GenDisk(1024), GenDisk(1024, sharing="sharingMultiWriter")]),
        GenVM("ind-1", "ind", env="dev", criticality="low",
              disks=[GenDisk(1024, mode="independent_persistent")]),
        GenVM("bsd-1", "bsd", env="dev", criticality="low", os="FreeBSD 13 (64-bit)"),
        GenVM("data-1", "data", env="dev", criticality="low",
              disks=[GenDisk(1024), GenDisk(2048)]),
    ]  # fmt: skip
    result = plan_of(tmp_path, vms, [("web-1", "db-1", 5432, None)])
    waves = wave_of(result)
    assert waves["web"] == "1"
    assert waves["db"] == "2" and waves["hot"] == "2" and waves["data"] == "2"
    assert waves["lat"] == "3" and waves["sriov"] == "3"
    db = next(a for a in result.plan.applications if a.name == "db")
    assert db.stateful and any("database postgres" in r for r in db.reasons)
    unplanned = {u.vm: u.reasons for u in result.plan.unplanned}
    for vm, rule in [("rdm-1", "disk.rdm"), ("ft-1", "vm.fault_tolerance"),
                     ("mw-1", "disk.shared"), ("ind-1", "disk.independent"),
                     ("bsd-1", "guest_os.unsupported")]:  # fmt: skip
        assert any(rule in r for r in unplanned[vm]), (vm, unplanned[vm])
    report = (write_plan(result, tmp_path / "out"), (tmp_path / "out" / "report.md").read_text())
    for rule in ("disk.rdm", "vm.latency_sensitivity_high", "nic.sriov"):
        assert rule in report[1]


def test_a_dependency_cycle_moves_in_one_wave_and_dependsOn_follows_the_dependencies(
    tmp_path: Path,
) -> None:
    vms = [
        GenVM("a-1", "a", env="dev", criticality="low"),
        GenVM("b-1", "b", env="prod", criticality="high"),
        GenVM("c-1", "c", env="dev", criticality="low"),
        GenVM("d-1", "d", env="dev", criticality="low"),
    ]
    # a -> b -> a is a cycle (a alone would be wave 1); c depends on d
    deps: list[tuple[str, str, int, str | None]] = [
        ("a-1", "b-1", 443, None), ("b-1", "a-1", 443, None), ("c-1", "d-1", 80, None)
    ]  # fmt: skip
    result = plan_of(tmp_path, vms, deps)
    waves = wave_of(result)
    assert waves["a"] == waves["b"] == "2"
    apps = {a.name: a for a in result.plan.applications}
    assert apps["a"].dependsOn == [] and apps["b"].dependsOn == []
    assert any("dependency cycle with b" in r for r in apps["a"].reasons)
    assert waves["c"] == waves["d"] == "1" and apps["c"].dependsOn == ["d"]
    out = tmp_path / "out"
    write_plan(result, out)
    w = load_wave(out / "waves" / "1.yaml", the_site(), "site.yaml")
    assert [a.application for a in w.apps] == ["d", "c"]  # what c depends on first


def test_waves_split_at_the_caps_in_order(tmp_path: Path) -> None:
    vms = [GenVM(f"vm-{i}", f"app-{i:02d}", env="dev", criticality="low",
                 disks=[GenDisk(300 * 1024)]) for i in range(12)]  # fmt: skip
    result = plan_of(tmp_path, vms, maxWaveApps=5)
    assert [(w.name, len(w.applications)) for w in result.plan.waves] == [
        ("1-1", 5), ("1-2", 5), ("1-3", 2)
    ]  # fmt: skip
    result = plan_of(tmp_path, vms, maxWaveTiB=1.0)  # 300 GiB each: 3 per TiB
    assert [len(w.applications) for w in result.plan.waves] == [3, 3, 3, 3]
    assert all(w.dataTiB <= 1.0 for w in result.plan.waves)


def test_the_same_inputs_give_byte_identical_outputs(
    estate: tuple[list[GenVM], Path, Path], tmp_path: Path
) -> None:
    _, xlsx, deps = estate
    assert run_plan(xlsx, deps, tmp_path / "one") == 0
    assert run_plan(xlsx, deps, tmp_path / "two") == 0
    one = {p.relative_to(tmp_path / "one"): p.read_bytes() for p in (tmp_path / "one").rglob("*")
           if p.is_file()}  # fmt: skip
    two = {p.relative_to(tmp_path / "two"): p.read_bytes() for p in (tmp_path / "two").rglob("*")
           if p.is_file()}  # fmt: skip
    assert one.keys() == two.keys() and Path("plan.json") in one
    assert [k for k in one if one[k] != two[k]] == []


def test_both_rvtools_header_variants_give_the_same_plan(tmp_path: Path) -> None:
    vms = world(300, 100, seed=3)
    deps = random_dependencies(vms, 400)
    current = plan_of(tmp_path, vms, deps, "current")
    legacy = plan_of(tmp_path, vms, deps, "legacy")
    assert read_rvtools(tmp_path / "rv-legacy.xlsx").headerVariant == "legacy"
    assert current.plan == legacy.plan
    assert current.summary.dataTiB == legacy.summary.dataTiB > 0


def test_wave_files_and_runbooks_validate(
    estate: tuple[list[GenVM], Path, Path], tmp_path: Path
) -> None:
    _, xlsx, deps = estate
    assert run_plan(xlsx, deps, tmp_path / "out", "--max-wave-apps", "20") == 0
    plan = json.loads((tmp_path / "out" / "plan.json").read_text())
    s = the_site()
    total = 0
    for w in plan["waves"]:
        inp = load_wave(tmp_path / "out" / "waves" / f"{w['name']}.yaml", s, "site.yaml")
        assert [a.application for a in inp.apps] != [] and inp.name == w["name"]
        assert sorted(a.application for a in inp.apps) == sorted(w["applications"])
        total += len(inp.apps)
    assert total == len(plan["applications"])
    templates = set()
    for path in (tmp_path / "out" / "runbooks").glob("*.yaml"):
        rb = Runbook.model_validate(yaml.safe_load(path.read_text()))
        templates.add((rb.dataSync.warm, "smoke_test" in rb.cutoverSteps))
    assert templates == {(True, True), (False, False)}  # warm (stateless, stateful), cold


def test_a_missing_optional_sheet_is_tolerated_and_named(tmp_path: Path) -> None:
    vms = [GenVM("web-1", "web", env="dev", criticality="low")]
    xlsx = export(vms, tmp_path / "rv.xlsx", sheets=("vInfo", "vDisk", "vNetwork"))
    deps = write_plain_dependencies(tmp_path / "d.csv", [])
    assert run_plan(xlsx, deps, tmp_path / "out") == 0
    md = (tmp_path / "out" / "report.md").read_text()
    assert "vPartition, vUSB, vSnapshot, vTools, vCluster, vHost, vDatastore" in md


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda p: export([GenVM("a", "x")], p, rename={"vInfo": "Sheet1"}),
         "no sheet 'vInfo' (sheets: Sheet1"),
        (lambda p: export([GenVM("a", "x")], p, drop={"vInfo": "Powerstate"}),
         "sheet vInfo: missing column 'Powerstate'"),
        (lambda p: export([GenVM("a", "x")], p, drop={"vDisk": "Capacity MiB"}),
         "sheet vDisk: missing column 'Capacity MiB' (or 'Capacity MB')"),
        (lambda p: p.write_bytes(b"this is not a zip") and p, "not a readable xlsx workbook"),
    ],
    ids=["wrong-sheet", "missing-column", "missing-legacy-aware-column", "unreadable"],
)  # fmt: skip
def test_bad_rvtools_files_give_clear_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make: Any, expected: str
) -> None:
    path = tmp_path / "rv.xlsx"
    make(path)
    with pytest.raises(RvToolsError, match=r".*") as exc:
        read_rvtools(path)
    assert expected in str(exc.value) and str(path) in str(exc.value)
    assert main(["plan", "--rvtools", str(path), "-o", str(tmp_path / "out")]) == 2
    assert expected in capsys.readouterr().err


def test_dependency_rows_naming_unknown_servers_are_counted_and_listed_not_fatal(
    tmp_path: Path,
) -> None:
    vms = [GenVM("web-1", "web", env="dev", ip="10.0.0.1"),
           GenVM("db-1", "db", env="dev", ip="10.0.0.2")]  # fmt: skip
    xlsx = export(vms, tmp_path / "rv.xlsx")
    deps = write_plain_dependencies(
        tmp_path / "d.csv",
        [("web-1", "db-1", 5432, None), ("ghost", "db-1", 5432, None),
         ("web-1", "10.9.9.9", 80, None), ("ghost", "web-1", 80, None)],
    )  # fmt: skip
    out = tmp_path / "out"
    assert run_plan(xlsx, deps, out) == 0
    inv = read_rvtools(xlsx).inventory
    read = read_dependencies([str(deps)], inv)
    assert (read.rows, read.unknownRows, len(read.edges)) == (4, 3, 1)
    assert [(u.name, u.rows) for u in read.unknown] == [("ghost", 2), ("10.9.9.9", 1)]
    md = (out / "report.md").read_text()
    assert "| ghost | 2 |" in md and "| 10.9.9.9 | 1 |" in md


def test_azure_migrate_export_matches_by_name_then_ip_and_names_databases(
    tmp_path: Path,
) -> None:
    vms = [GenVM("web-1", "web", env="dev", ip="10.0.0.1"),
           GenVM("sql-1", "erp", env="dev", ip="10.0.0.2"),
           GenVM("app-1", "api", env="dev", ip="10.0.0.3")]  # fmt: skip
    xlsx = export(vms, tmp_path / "rv.xlsx")
    azure = write_azure_dependencies(
        tmp_path / "azure.csv",
        [("WEB-1.corp.example.com", "10.0.0.1", "nginx", "", "10.0.0.2", "sqlservr.exe", 1433),
         ("", "10.0.0.3", "java", "web-1", "", "nginx", 443),
         ("stranger", "192.0.2.7", "curl", "web-1", "10.0.0.1", "nginx", 443)],
    )  # fmt: skip
    imported = read_rvtools(xlsx)
    read = read_dependencies([str(azure)], imported.inventory)
    assert [(e.source, e.destination, e.port) for e in read.edges] == [
        ("vm-1000", "vm-1001", 1433), ("vm-1002", "vm-1000", 443)
    ]  # fmt: skip
    assert [u.name for u in read.unknown] == ["stranger"]
    result = make_plan(imported.inventory, read, PlanPolicy())
    apps = {a.name: a for a in result.apps}
    assert apps["erp"].databases == ["sqlserver"] and apps["erp"].stateful
    assert apps["erp"].licensing == ["SQL Server (sql-1)"]
    assert apps["erp"].wave == "3"  # licensing-sensitive: a holdout
    assert apps["api"].calls == {"web": 1} and apps["api"].callPorts == {"web": [443]}


def test_application_from_attribute_else_pattern_else_mapping_else_unplanned(
    tmp_path: Path,
) -> None:
    vms = [GenVM("shop-web-01", None, env="dev"), GenVM("odd", None, env=""),
           GenVM("misc", "billing", env="dev"), GenVM("loner", None, env="dev")]  # fmt: skip
    xlsx = export(vms, tmp_path / "rv.xlsx")
    mapping = tmp_path / "map.csv"
    mapping.write_text("vm,application,owner,criticality,environment\n"
                       "odd,Legacy App,ops,high,prod\nshop-web-01,ignored,,,\n")  # fmt: skip
    imported = read_rvtools(xlsx)
    result = make_plan(
        imported.inventory,
        read_dependencies([], imported.inventory),
        PlanPolicy(appPattern=r"^(?P<app>[a-z]+)-web-\d+$"),
        read_mapping(str(mapping)),
    )
    apps = {a.name: a for a in result.apps}
    assert apps["shop"].vms == ["shop-web-01"]
    assert apps["billing"].vms == ["misc"]
    legacy = apps["legacy-app"]
    assert (legacy.vms, legacy.criticality, legacy.environment) == (["odd"], "high", "prod")
    assert [(u.vm, u.reasons) for u in result.plan.unplanned] == [
        ("loner", ["no application: no custom attribute or tag 'app', no match of "
                   "--app-pattern, not in the mapping CSV"])
    ]  # fmt: skip


def test_missing_criticality_defaults_by_environment(tmp_path: Path) -> None:
    vms = [GenVM("p-1", "p", env="prod", criticality=None),
           GenVM("d-1", "d", env="dev", criticality=None)]  # fmt: skip
    apps = {a.name: a for a in plan_of(tmp_path, vms).apps}
    assert apps["p"].criticality == "medium" and apps["d"].criticality == "low"


def test_the_report_is_one_self_contained_page_with_the_graph(
    estate: tuple[list[GenVM], Path, Path], tmp_path: Path
) -> None:
    _, xlsx, deps = estate
    assert run_plan(xlsx, deps, tmp_path / "out") == 0
    page = (tmp_path / "out" / "report.html").read_text()
    assert page.count("<svg") == 2  # the timeline and the dependency graph
    for section in ("Inventory", "Waves on a timeline", "Dependency graph",
                    "Special workloads and why", "Unplanned VMs", "Ownership"):  # fmt: skip
        assert f"<h2>{section}" in page
    # nothing fetched: the only URLs are the SVG namespace
    assert "<script" not in page and "src=" not in page and "href=" not in page
    assert page.replace("http://www.w3.org/2000/svg", "").count("http") == 0


def test_concerns_reads_an_rvtools_export(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    vms = [GenVM("rdm-1", "x", disks=[GenDisk(1024, raw=True)]), GenVM("ok-1", "x", ip="10.1.1.1")]
    xlsx = export(vms, tmp_path / "rv.xlsx")
    assert main(["concerns", "--rvtools", str(xlsx), "--vm", "ok-1"]) == 0
    capsys.readouterr()
    assert main(["concerns", "--rvtools", str(xlsx), "--json"]) == 1
    found = json.loads(capsys.readouterr().out)
    assert [c["id"] for c in found["rdm-1"] if c["severity"] == "critical"] == ["disk.rdm"]
    assert [c for c in found["ok-1"] if c["severity"] != "info"] == []


def test_the_report_lists_application_dependencies_with_ports_and_databases(
    tmp_path: Path,
) -> None:
    vms = [GenVM("web-1", "web", env="dev"), GenVM("web-2", "web", env="dev"),
           GenVM("db-1", "db", env="dev")]  # fmt: skip
    deps: list[tuple[str, str, int, str | None]] = [
        ("web-1", "db-1", 5432, None), ("web-2", "db-1", 5432, None), ("web-1", "db-1", 9100, None)
    ]  # fmt: skip
    result = plan_of(tmp_path, vms, deps)
    write_plan(result, tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| web | db | 3 | 5432, 9100 | postgres |" in md
    assert (
        "<td>web</td><td>db</td><td>3</td><td>5432, 9100</td><td>postgres</td>"
        in (tmp_path / "out" / "report.html").read_text()
    )


def test_a_policy_file_and_flags_shape_the_plan(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    vms = [GenVM(f"vm-{i}", f"app-{i}", env="prod", criticality="medium") for i in range(4)]
    xlsx = export(vms, tmp_path / "rv.xlsx")
    policy = tmp_path / "policy.yaml"
    policy.write_text("maxWaveApps: 3\napprovers: [cab]\nwaveConcurrency: 2\n")
    out = tmp_path / "out"
    argv = ["plan", "--rvtools", str(xlsx), "--policy", str(policy), "-o", str(out)]
    assert main([*argv, "--max-wave-apps", "2"]) == 0  # the flag wins over the file
    plan = json.loads((out / "plan.json").read_text())
    assert [len(w["applications"]) for w in plan["waves"]] == [2, 2]
    wave = yaml.safe_load((out / "waves" / "2-1.yaml").read_text())
    assert wave["approval"] == {"required": True, "approvers": ["cab"]}
    assert wave["concurrency"] == 2
    policy.write_text("maxWaveApps: 0\n")
    assert main(argv) == 2
    assert "maxWaveApps" in capsys.readouterr().err
    assert main(["plan", "--rvtools", str(xlsx), "--app-pattern", "vm-(\\d+)", "-o",
                 str(out)]) == 2  # fmt: skip
    assert "named group (?P<app>...)" in capsys.readouterr().err


def test_wave_files_check_for_structure_without_a_site(
    estate: tuple[list[GenVM], Path, Path], tmp_path: Path
) -> None:
    _, xlsx, deps = estate
    assert run_plan(xlsx, deps, tmp_path / "out") == 0
    plan = json.loads((tmp_path / "out" / "plan.json").read_text())
    for w in plan["waves"]:
        name, apps = wave_structure(tmp_path / "out" / "waves" / f"{w['name']}.yaml")
        assert name == w["name"] and sorted(apps) == sorted(w["applications"])
    # and it names what is wrong
    first = plan["waves"][0]["name"]
    doc = yaml.safe_load((tmp_path / "out" / "waves" / f"{first}.yaml").read_text())
    doc["applications"][0]["dependsOn"] = ["nowhere"]
    doc["concurrency"] = 0
    (tmp_path / "out" / "waves" / "bad.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError) as exc:
        wave_structure(tmp_path / "out" / "waves" / "bad.yaml")
    assert "concurrency" in str(exc.value)
    del doc["concurrency"]
    (tmp_path / "out" / "waves" / "bad.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError) as exc:
        wave_structure(tmp_path / "out" / "waves" / "bad.yaml")
    assert "applications[0].dependsOn[0]: unknown application 'nowhere'" in str(exc.value)


def test_cutover_wave_validate_without_a_site_checks_structure_only(
    estate: tuple[list[GenVM], Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, xlsx, deps = estate
    assert run_plan(xlsx, deps, tmp_path / "out") == 0
    first = json.loads((tmp_path / "out" / "plan.json").read_text())["waves"][0]["name"]
    wave = tmp_path / "out" / "waves" / f"{first}.yaml"
    capsys.readouterr()
    assert main(["wave", "validate", str(wave)]) == 0
    assert "structurally valid (no site checked)" in capsys.readouterr().out
    doc = yaml.safe_load(wave.read_text())
    doc["applications"][0]["dependsOn"] = ["nowhere"]
    bad = wave.with_name("bad.yaml")  # beside it: runbook paths are relative
    bad.write_text(yaml.safe_dump(doc))
    assert main(["wave", "validate", str(bad)]) != 0
    assert "unknown application 'nowhere'" in capsys.readouterr().err
