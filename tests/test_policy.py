"""WorkloadPolicy (the seed's change guardrails) and the access policy file: loading, every
rule, selection, the devices read from the inventory; and `cutover validate` / `cutover wave
validate` with `--policy`. Pure logic and the CLI: no services."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from cutover.config import ConfigError
from cutover.inventory import VM, Disk, Inventory, Nic, PciDevice
from cutover.policy import (
    GPU_MODES,
    TARGET_PLATFORMS,
    AccessPolicy,
    WorkloadPolicy,
    allowed_targets,
    application_attributes,
    device_modes,
    governing,
    immutable_audit_log,
    is_mig_profile,
    load_access_policy,
    load_workload_policies,
    requires_approval,
    workload_violations,
)
from cutover.policy_check import check_runbook
from cutover.runbook import Runbook
from cutover.site import SiteConfig
from tests.factories import SEED

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "policy"
CUTOVER = Path(sys.executable).parent / "cutover"

#: The seed's "Policy YAML (change guardrails)", verbatim.
SEED_POLICY = """\
apiVersion: policy.virtualmachine.space/v1
kind: WorkloadPolicy
metadata:
  name: regulated-tier-policy
spec:
  requiresApproval: true
  allowedPlatforms:
    - vmware
    - pextra
    - nutanix
    - openstack
  gpuScheduling:
    allowModes: [passthrough, sriov, vgpu, mig]
  compliance:
    residency: [zone-a, zone-b]
    immutableAuditLog: true
"""


def wp(name: str = "p", **spec: Any) -> WorkloadPolicy:
    return WorkloadPolicy.model_validate(
        {
            "apiVersion": "policy.virtualmachine.space/v1",
            "kind": "WorkloadPolicy",
            "metadata": {"name": name},
            "spec": spec,
        }
    )


def violations(policies: list[WorkloadPolicy], **kw: Any) -> list[str]:
    args: dict[str, Any] = {
        "application": "shop",
        "app": application_attributes("shop", {"tenant": "retail"}, 1),
        "tags": [],
        "target_platform": "pextra-cloud",
        "approval_required": True,
        "target_zones": {"pool-a": "zone-a"},
        "vm_devices": {},
    }
    return workload_violations(policies, **(args | kw))


@pytest.fixture
def seed_policy(tmp_path: Path) -> WorkloadPolicy:
    path = tmp_path / "policy.yaml"
    path.write_text(SEED_POLICY, encoding="utf-8")
    [policy] = load_workload_policies(path)
    return policy


# ------------------------------------------------------------------ loading


def test_the_seeds_policy_loads_verbatim(seed_policy: WorkloadPolicy) -> None:
    spec = seed_policy.spec
    assert seed_policy.name == "regulated-tier-policy"
    assert spec.requiresApproval is True
    assert spec.allowedPlatforms == ["vmware", "pextra", "nutanix", "openstack"]
    assert spec.gpuScheduling is not None
    assert spec.gpuScheduling.allowModes == ["passthrough", "sriov", "vgpu", "mig"]
    assert spec.compliance.residency == ["zone-a", "zone-b"]
    assert spec.compliance.immutableAuditLog is True
    assert spec.selector is None  # governs every application


def test_the_examples_load() -> None:
    names = [p.name for p in load_workload_policies(EXAMPLES / "workload-policies.yaml")]
    assert names == ["regulated-tier-policy", "standard-tier-policy", "critical-needs-approval"]
    assert set(load_access_policy(EXAMPLES / "access.yaml").principals) >= {"ops-lead", "alice"}


def test_loading_errors_name_the_file_the_document_and_the_field(tmp_path: Path) -> None:
    path = tmp_path / "policies.yaml"
    path.write_text(
        SEED_POLICY
        + "---\n"
        + SEED_POLICY.replace("v1", "v2")
        .replace("vmware", "vmwar")
        .replace("sriov, vgpu", "sriov, cuda")
        .replace("compliance:", "complience:")
        + "---\n"  # an empty document: skipped
        + "---\n"
        + SEED_POLICY,
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as exc:
        load_workload_policies(path)
    found = {(p.file, p.path, p.line) for p in exc.value.problems}
    doc1 = SEED_POLICY.count("\n") + 2  # the second document's first line
    assert found == {
        (str(path), "documents[1].apiVersion", doc1),
        (str(path), "documents[1].spec.allowedPlatforms[0]", doc1 + 7),
        (str(path), "documents[1].spec.gpuScheduling.allowModes[2]", doc1 + 12),
        (str(path), "documents[1].spec.complience", doc1 + 13),
        (str(path), "documents[3].metadata.name", 2 * doc1 + 3),
    }
    text = str(exc.value)
    assert "unknown platform 'vmwar'; families: vmware, pextra" in text
    assert "did you mean 'compliance'?" in text
    assert "policy 'regulated-tier-policy' is defined twice (first in documents[0])" in text


@pytest.mark.parametrize(
    ("text", "path", "message"),
    [
        ("apiVersion: [\n", "", "invalid YAML"),
        ("- just\n- a list\n", "documents[0]", "expected a mapping"),
        ("a: &a [1, 1]\nb: &b [*a, *a]\nc: &c [*b, *b]\n" * 1, "documents[0]", "metadata"),
        ("kind: WorkloadPolicy\nkind: WorkloadPolicy\n", "", "duplicate key 'kind'"),
    ],
)
def test_bad_yaml_is_one_problem_naming_the_file(
    tmp_path: Path, text: str, path: str, message: str
) -> None:
    file = tmp_path / "p.yaml"
    file.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_workload_policies(file)
    assert all(p.file == str(file) for p in exc.value.problems)
    assert any(p.path.startswith(path) and message in str(p) for p in exc.value.problems)


def test_an_alias_bomb_spread_over_documents_is_refused(tmp_path: Path) -> None:
    doc = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n" for p, c in zip("abcd", "bcde", strict=True)
    )
    file = tmp_path / "bomb.yaml"
    file.write_text("---\n".join([doc] * 20), encoding="utf-8")  # 20 x 111,111 values
    with pytest.raises(ConfigError, match=r"refused: .* alias uses expanding"):
        load_workload_policies(file)


def test_an_empty_file_has_no_policies(tmp_path: Path) -> None:
    (tmp_path / "empty.yaml").write_text("# nothing yet\n", encoding="utf-8")
    assert load_workload_policies(tmp_path / "empty.yaml") == []


def test_access_policy_errors_name_each_field(tmp_path: Path) -> None:
    path = tmp_path / "access.yaml"
    path.write_text(
        """\
access:
  separationOfDuty: true
  principals:
    alice: {roles: [oprator], tenant: retail}
    bob: {publicKey: "ed25519:AAAA", roles: [approver]}
  rules:
    - {effect: allow, actions: [start, delete], principal: {tenant: "$ap.tenant"}}
    - {effect: allow, actions: [start], application: {tenant: "$app.tenant"}}
""",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as exc:
        load_access_policy(path)
    found = {(p.path, p.line) for p in exc.value.problems}
    assert found == {
        ("access.separationOfDuty", 2),
        ("access.principals.bob.publicKey", 5),
        ("access.rules[0].actions[1]", 7),
        ("access.rules[0].principal.tenant", 7),  # one value: no index
        ("access.rules[1].application.tenant", 8),
    }, exc.value
    # the cross references, once the fields are right
    text = path.read_text().replace("separationOfDuty", "separationOfDuties")
    text = text.replace('"ed25519:AAAA"', '"ed25519:' + "A" * 43 + '="')
    text = (
        text.replace(", delete", "")
        .replace("$ap.", "$app.")
        .replace('tenant: "$app.tenant"}}\n', "tenant: retail}}\n")
    )
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_access_policy(path)
    found = {(p.path, p.line) for p in exc.value.problems}
    alice = "access.principals.alice"
    assert found == {(f"{alice}.publicKey", 4), (f"{alice}.roles[0]", 4)}
    assert "unknown role 'oprator'; roles: operator, approver, auditor, wave-runner" in str(
        exc.value
    )


def test_written_roles_replace_the_defaults() -> None:
    p = AccessPolicy.model_validate({"roles": {"deployer": ["start"]}, "requireSignatures": False})
    assert p.roles == {"deployer": ["start"]}


# ------------------------------------------------------------------ the rules


def test_allowed_platforms_map_families_to_runbook_targets(seed_policy: WorkloadPolicy) -> None:
    assert allowed_targets(["vmware", "nutanix", "hyperv"]) == []
    assert allowed_targets(["kvm"]) == ["kvm-libvirt", "libvirt"]
    assert allowed_targets(["pextra", "proxmox", "openstack"]) == [
        "proxmox",
        "pextra-cloud",
        "openstack",
    ]
    # exact targetPlatform names too
    assert allowed_targets(["libvirt"]) == ["libvirt"]
    for target in TARGET_PLATFORMS:
        found = violations([seed_policy], target_platform=target)
        if target in ("pextra-cloud", "openstack"):
            assert found == []
        else:
            assert found == [
                f"shop: policy 'regulated-tier-policy' spec.allowedPlatforms: runbook "
                f"targetPlatform '{target}' is not allowed (allowed: pextra-cloud, openstack, "
                "from vmware, pextra, nutanix, openstack); target an allowed platform"
            ]


def test_requires_approval(seed_policy: WorkloadPolicy) -> None:
    [msg] = violations([seed_policy], approval_required=False)
    assert "policy 'regulated-tier-policy' spec.requiresApproval" in msg
    assert "approval.required is false" in msg
    assert violations([seed_policy], approval_required=True) == []
    assert violations([wp(requiresApproval=False)], approval_required=False) == []
    app = application_attributes("shop", {}, 1)
    assert requires_approval([seed_policy], app, [])
    assert not requires_approval([wp(requiresApproval=False)], app, [])
    assert not requires_approval([], app, [])


def test_residency_limits_the_target_pools_to_zones(seed_policy: WorkloadPolicy) -> None:
    assert violations([seed_policy], target_zones={"a": "zone-a", "b": "zone-b"}) == []
    found = violations([seed_policy], target_zones={"a": "zone-a", "c": "zone-c", "x": None})
    assert found == [
        "shop: policy 'regulated-tier-policy' spec.compliance.residency: target pool 'c' is in "
        "zone 'zone-c', not in zone-a, zone-b; map the application's disks to a pool in an "
        "allowed zone",
        "shop: policy 'regulated-tier-policy' spec.compliance.residency: target pool 'x' has no "
        "zone (the site gives none), not in zone-a, zone-b; map the application's disks to a "
        "pool in an allowed zone",
    ]
    assert violations([wp()], target_zones={"x": None}) == []  # no residency: any pool


@pytest.mark.parametrize("mode", GPU_MODES)
def test_each_gpu_mode_is_checked_against_allow_modes(mode: str) -> None:
    others = [m for m in GPU_MODES if m != mode]
    refusing = wp("no-" + mode, gpuScheduling={"allowModes": others})
    devices = {"vm-1": [mode], "vm-2": others}
    assert violations([refusing], vm_devices=devices) == [
        f"shop: policy 'no-{mode}' spec.gpuScheduling.allowModes: VM 'vm-1' has a {mode} device "
        f"(allowed: {', '.join(others)}); remove the device, or govern the application by a "
        "policy that allows it"
    ]
    assert violations([wp(gpuScheduling={"allowModes": list(GPU_MODES)})], vm_devices=devices) == []
    assert violations([wp()], vm_devices=devices) == []  # no gpuScheduling: no limit
    none = violations([wp(gpuScheduling={"allowModes": []})], vm_devices={"vm-1": [mode]})
    assert len(none) == 1 and "(allowed: none)" in none[0]


def test_immutable_audit_log(seed_policy: WorkloadPolicy) -> None:
    app = application_attributes("shop", {}, 1)
    assert immutable_audit_log([seed_policy], app, [])
    assert not immutable_audit_log([wp()], app, [])
    scoped = wp("s", selector={"tags": ["pci"]}, compliance={"immutableAuditLog": True})
    assert not immutable_audit_log([scoped], app, [])
    assert immutable_audit_log([scoped], app, ["pci", "web"])


def test_selectors_choose_the_applications_a_policy_governs() -> None:
    everyone, empty = wp("everyone"), wp("empty", selector={})
    labels = wp("labels", selector={"matchLabels": {"tier": "regulated", "tenant": "finance"}})
    tags = wp("tags", selector={"tags": ["pci", "gdpr"]})
    crit = wp("crit", selector={"criticality": ["critical", "high"]})
    both = wp("both", selector={"matchLabels": {"tier": "regulated"}, "criticality": ["high"]})
    policies = [everyone, empty, labels, tags, crit, both]

    def names(labels: dict[str, str], tags: list[str]) -> list[str]:
        app = application_attributes("shop", labels, 1)
        return [p.name for p in governing(policies, app, tags)]

    assert names({}, []) == ["everyone", "empty"]
    assert names({"tier": "regulated"}, []) == ["everyone", "empty"]
    assert names({"tier": "regulated", "tenant": "finance"}, []) == ["everyone", "empty", "labels"]
    assert names({}, ["pci"]) == ["everyone", "empty"]
    assert names({}, ["gdpr", "pci", "web"]) == ["everyone", "empty", "tags"]
    assert names({"criticality": "high"}, []) == ["everyone", "empty", "crit"]
    assert names({"criticality": "low"}, []) == ["everyone", "empty"]
    high = names({"criticality": "high", "tier": "regulated"}, [])
    assert high == ["everyone", "empty", "crit", "both"]
    # ... and only a governing policy's rules apply
    finance = application_attributes("shop", {"tier": "regulated", "tenant": "finance"}, 1)
    strict = wp(
        "strict", selector={"matchLabels": {"tenant": "finance"}}, allowedPlatforms=["openstack"]
    )
    assert violations([strict], app=finance, target_platform="proxmox") != []
    assert violations([strict], target_platform="proxmox") == []


def test_every_governing_policy_must_hold() -> None:
    a = wp("a", allowedPlatforms=["kvm", "pextra"])
    b = wp("b", allowedPlatforms=["pextra", "openstack"])
    assert violations([a, b], target_platform="pextra-cloud") == []
    [msg] = violations([a, b], target_platform="kvm-libvirt")
    assert "policy 'b'" in msg


# ------------------------------------------------------------------ devices


def vm(name: str, *pci: tuple[str, str], sriov: bool = False, stores: tuple[str, ...] = ()) -> VM:
    return VM(
        moref=f"vm-{name}",
        name=name,
        pciDevices=[
            PciDevice(key=13000 + i, label=f"PCI device {i}", kind=kind, detail=detail)
            for i, (kind, detail) in enumerate(pci)
        ],
        nics=[Nic(key=4000, sriov=sriov)],
        disks=[
            Disk(key=2000 + i, capacityBytes=1 << 30, datastore=s) for i, s in enumerate(stores)
        ],
    )


@pytest.mark.parametrize(
    ("profile", "mig"),
    [
        ("grid_a100-1-5c", True),
        ("grid_a100-3-20c", True),
        ("grid_a100-7-40c", True),
        ("GRID_A100-2-10C", True),
        ("nvidia_h100-1-10c", True),
        ("grid_a30-mig-1-6c", True),
        ("grid_a100-40c", False),
        ("grid_a100-4c", False),
        ("grid_t4-16q", False),
        ("grid_p40-1q", False),
        ("grid_rtx8000p-12q", False),
        ("", False),
    ],
)
def test_mig_profiles_are_told_from_time_sliced_ones(profile: str, mig: bool) -> None:
    assert is_mig_profile(profile) is mig
    assert device_modes(vm("g", ("vgpu", profile))) == ["mig" if mig else "vgpu"]


def test_device_modes_from_the_inventory() -> None:
    assert device_modes(vm("plain")) == []
    assert device_modes(vm("p", ("passthrough", "10de:1eb8"))) == ["passthrough"]
    assert device_modes(vm("d", ("dynamic-passthrough", ""))) == ["passthrough"]
    assert device_modes(vm("s", sriov=True)) == ["sriov"]
    gpus = [("vgpu", "grid_a100-1-5c"), ("vgpu", "grid_t4-16q"), ("passthrough", "")]
    every = vm("all", *gpus, sriov=True)
    assert device_modes(every) == ["passthrough", "sriov", "vgpu", "mig"]


# ------------------------------------------------------------------ a runbook at a site


def site(**data: Any) -> SiteConfig:
    return SiteConfig.model_validate({"name": "test", **data})


def inventory(*vms: VM) -> Inventory:
    return Inventory(
        source="vc.example", collectedAt=datetime(2026, 1, 1, tzinfo=UTC), vms=list(vms)
    )


def test_check_runbook_reads_labels_tags_pools_and_devices(seed_policy: WorkloadPolicy) -> None:
    runbook = Runbook.model_validate({**SEED, "targetPlatform": "proxmox", "vms": ["db-1", "gone"]})
    data = yaml.safe_load(SEED_POLICY)
    data["spec"]["selector"] = {"matchLabels": {"tier": "regulated"}, "tags": ["pci"]}
    data["spec"]["gpuScheduling"]["allowModes"] = ["sriov"]
    regulated = WorkloadPolicy.model_validate(data)
    at = site(
        applications={"customer-analytics-api": {"labels": {"tier": "regulated"}, "tags": ["pci"]}},
        storageMappings=[
            {"sourceDatastore": "ds-1", "targetPool": "fast"},
            {"sourceDatastore": "ds-2", "targetPool": "slow"},
        ],
    )
    inv = inventory(vm("db-1", ("vgpu", "grid_a100-1-5c"), stores=("ds-1",)), vm("web-1"))
    check = check_runbook([regulated], runbook, at, inventory=inv)
    assert [(v.rule, v.field, v.subject) for v in check.violations] == [
        ("spec.requiresApproval", "approval", ""),
        ("spec.allowedPlatforms", "targetPlatform", "proxmox"),
        ("spec.compliance.residency", "pool", "fast"),  # only the pool db-1's disks go to
        ("spec.gpuScheduling.allowModes", "vm", "db-1"),
    ]
    assert check.notes == [
        "customer-analytics-api: VM 'gone' is not in the inventory vc.example: its devices and "
        "disks are not checked"
    ]
    # without the inventory: every mapped pool, and a note that devices went unchecked
    check = check_runbook([regulated], runbook, at)
    assert [v.subject for v in check.violations if v.field == "pool"] == ["fast", "slow"]
    assert check.notes == [
        "customer-analytics-api: spec.gpuScheduling of regulated-tier-policy not checked: no "
        "inventory to read the VMs' devices from"
    ]
    # a wave's approval counts as the runbook's; an application the selector does not
    # choose is not governed
    waved = check_runbook([regulated], runbook, at, inventory=inv, wave_approval=True)
    assert "spec.requiresApproval" not in [v.rule for v in waved.violations]
    assert check_runbook([regulated], runbook, site(), inventory=inv).violations == []


# ------------------------------------------------------------------ the CLI


def write_yaml(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def cli_site(path: Path, **apps: dict[str, Any]) -> Path:
    from cutover.catalog import BUILTIN_CHECKS

    return write_yaml(
        path,
        {
            "name": "lab",
            "checks": {n: {"type": "command", "argv": ["true"]} for n in sorted(BUILTIN_CHECKS)},
            "loadBalancer": {"socket": "/run/haproxy/admin.sock"},
            "vcenter": {"host": "vc.example", "user": "svc", "passwordRef": {"env": "VC_PW"}},
            "storageMappings": [{"sourceDatastore": "ds-1", "targetPool": "fast"}],
            "applications": apps,
        },
    )


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    from cutover.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def problem_lines(stderr: str) -> list[tuple[str, str, str]]:
    """(file, field path, message) of each stderr line: each is one problem."""
    out = []
    for line in stderr.splitlines():
        file, path, message = line.split(": ", 2)
        assert " " not in path, line
        out.append((file, path, message))
    return out


REGULATED = {"labels": {"tier": "regulated"}}


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    """The seed's policy for regulated applications, without residency (the site's pools
    carry no zone yet), GPU modes limited to SR-IOV."""
    data = yaml.safe_load(SEED_POLICY)
    data["spec"]["selector"] = {"matchLabels": {"tier": "regulated"}}
    data["spec"]["gpuScheduling"]["allowModes"] = ["sriov"]
    del data["spec"]["compliance"]["residency"]
    return write_yaml(tmp_path / "policies.yaml", data)


def test_validate_policy_reports_each_violation_at_its_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], policy_file: Path
) -> None:
    site_file = cli_site(tmp_path / "site.yaml", **{"customer-analytics-api": REGULATED})
    runbook = write_yaml(tmp_path / "rb.yaml", {**SEED, "targetPlatform": "kvm-libvirt"})
    code, out, err = run_cli(
        capsys, "validate", runbook, "--site", site_file, "--policy", policy_file
    )
    assert code == 2
    assert problem_lines(err) == [
        (str(runbook), "approval.required",
         "customer-analytics-api: policy 'regulated-tier-policy' spec.requiresApproval: the "
         "runbook's approval.required is false; require approval (approval.required: true, with "
         "approvers): the workflow runs the approval gate anyway"),
        (str(runbook), "targetPlatform",
         "customer-analytics-api: policy 'regulated-tier-policy' spec.allowedPlatforms: runbook "
         "targetPlatform 'kvm-libvirt' is not allowed (allowed: pextra-cloud, openstack, from "
         "vmware, pextra, nutanix, openstack); target an allowed platform"),
    ]  # fmt: skip
    assert "spec.gpuScheduling of regulated-tier-policy not checked: no inventory" in out

    # fixed: approval required, an allowed platform
    good = {**SEED, "approval": {"required": True, "approvers": ["ops-lead"]}}
    write_yaml(runbook, good)
    code, out, err = run_cli(
        capsys, "validate", runbook, "--site", site_file, "--policy", policy_file
    )
    assert (code, err) == (0, "")
    assert (
        out.splitlines()[-1] == f"1 runbook(s) valid under the workload policies of {policy_file}"
    )

    # an application the policy does not select is not governed
    other = cli_site(tmp_path / "other.yaml")
    write_yaml(runbook, {**SEED, "targetPlatform": "kvm-libvirt"})
    code, _, err = run_cli(capsys, "validate", runbook, "--site", other, "--policy", policy_file)
    assert (code, err) == (0, "")


def test_validate_policy_checks_devices_and_pools_from_an_inventory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], policy_file: Path
) -> None:
    site_file = cli_site(tmp_path / "site.yaml", **{"customer-analytics-api": REGULATED})
    data = yaml.safe_load(policy_file.read_text())
    data["spec"]["compliance"]["residency"] = ["zone-a"]
    write_yaml(policy_file, data)
    approved = {"required": True, "approvers": ["ops-lead"]}
    runbook = write_yaml(
        tmp_path / "rb.yaml", {**SEED, "approval": approved, "vms": ["web-1", "gpu-1"]}
    )
    inv = inventory(
        vm("web-1", sriov=True, stores=("ds-1",)), vm("gpu-1", ("vgpu", "grid_a100-2-10c"))
    )
    inv_file = tmp_path / "inventory.json"
    inv_file.write_text(inv.model_dump_json(), encoding="utf-8")
    args = ("validate", runbook, "--site", site_file, "--policy", policy_file)
    code, out, err = run_cli(capsys, *args, "--inventory", inv_file, "--json")
    assert code == 2
    report = json.loads(out)
    assert report["valid"] == [] and report["notes"] == []
    assert [p[:2] for p in problem_lines(err)] == [
        (str(site_file), "storageMappings[0].targetPool"),  # pool `fast` has no zone
        (str(runbook), "vms[1]"),  # gpu-1's MIG vGPU; web-1's SR-IOV NIC is allowed
    ]
    assert "VM 'gpu-1' has a mig device (allowed: sriov)" in err
    assert "target pool 'fast' has no zone (the site gives none), not in zone-a" in err


@pytest.mark.parametrize(
    "command",
    [
        ["validate", str(ROOT / "examples/customer-analytics-api.yaml")],
        ["wave", "validate", str(ROOT / "examples/wave-1.yaml")],
    ],
)
def test_policy_needs_a_site(
    capsys: pytest.CaptureFixture[str], policy_file: Path, command: list[str]
) -> None:
    code, out, err = run_cli(capsys, *command, "--policy", policy_file)
    assert code == 2 and out == ""
    assert "--policy needs --site: the applications' labels, tags and target pools" in err


def test_a_bad_policy_file_is_reported_like_a_bad_runbook(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "policies.yaml"
    bad.write_text(SEED_POLICY + "---\n" + SEED_POLICY.replace("nutanix", "nutanixx"), "utf-8")
    site_file = cli_site(tmp_path / "site.yaml")
    example = ROOT / "examples" / "customer-analytics-api.yaml"
    code, out, err = run_cli(capsys, "validate", example, "--site", site_file, "--policy", bad)
    assert code == 2 and out == ""
    [(file, path, message)] = problem_lines(err)
    assert (file, path) == (str(bad), "documents[1].spec.allowedPlatforms[2]")
    assert message.startswith("unknown platform 'nutanixx'") and message.endswith("(line 27)")


def test_wave_validate_policy_names_each_runbooks_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], policy_file: Path
) -> None:
    site_file = cli_site(
        tmp_path / "site.yaml", **{"customer-analytics-api": REGULATED, "shop": REGULATED}
    )
    runbook = write_yaml(tmp_path / "rb.yaml", {**SEED, "targetPlatform": "kvm-libvirt"})
    inline = {
        "application": "shop",
        "sourcePlatform": "vmware-vsphere",
        "sourceCluster": "c",
        "targetPlatform": "kvm-libvirt",
        "rollbackWindowMinutes": 5,
        "vms": ["vm-1"],
        "cutoverSteps": ["quiesce_application", "final_data_sync", "convert_image",
                         "attach_target_storage_profile", "power_on_target"],
    }  # fmt: skip
    wave = {"wave": 2, "applications": [{"runbook": "rb.yaml"}, {"runbook": inline}]}
    wave_file = write_yaml(tmp_path / "wave.yaml", wave)
    args = ("wave", "validate", wave_file, "--site", site_file, "--policy", policy_file)
    code, out, err = run_cli(capsys, *args)
    assert code == 2 and out == ""
    assert [p[:2] for p in problem_lines(err)] == [
        (str(runbook), "approval.required"),
        (str(runbook), "targetPlatform"),
        (str(wave_file), "applications[1].runbook.approval.required"),
        (str(wave_file), "applications[1].runbook.targetPlatform"),
    ]
    # a wave that requires approval approves its cutovers; allowed platforms
    write_yaml(runbook, SEED)
    inline["targetPlatform"] = "openstack"
    wave["approval"] = {"required": True, "approvers": ["ops-lead"]}
    write_yaml(wave_file, wave)
    data = yaml.safe_load(site_file.read_text())
    data["targetPlatforms"] = {
        p: {"type": "libvirt", "uri": "qemu:///system"} for p in ("pextra-cloud", "openstack")
    }
    write_yaml(site_file, data)
    code, out, err = run_cli(capsys, *args, "--json")
    assert (code, err) == (0, "")
    unchecked = "spec.gpuScheduling of regulated-tier-policy not checked: no inventory to read "
    assert json.loads(out) == {
        "wave": "2",
        "applications": ["customer-analytics-api", "shop"],
        "notes": [
            f"{a}: {unchecked}the VMs' devices from" for a in ("customer-analytics-api", "shop")
        ],
    }
