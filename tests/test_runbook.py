"""Runbook and site-config validation: pure unit tests (no Temporal).

Every bad input must surface as a `ConfigError` whose Problems name the file, the field
(`Problem.path`) and, where the YAML tells us, the line; never as any other exception.
"""

from __future__ import annotations

import copy
import math
import string
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from cutover.catalog import BUILTIN_CHECKS, TARGET_STEPS, Step, ordering_errors
from cutover.config import ConfigError, Problem
from cutover.runbook import Runbook
from cutover.site import SiteConfig, load_runbook, load_site
from tests.factories import SEED

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "customer-analytics-api.yaml"
_DROP = object()


# ------------------------------------------------------------------ helpers


def seed(**changes: Any) -> dict[str, Any]:
    """A deep copy of the seed runbook with some keys changed (or dropped with `_DROP`)."""
    data = copy.deepcopy(SEED)
    for key, value in changes.items():
        if value is _DROP:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def dump(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False)


def write(tmp_path: Path, content: str | bytes | dict[str, Any], name: str = "rb.yaml") -> Path:
    path = tmp_path / name
    if isinstance(content, dict):
        content = dump(content)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def line_of(text: str, needle: str) -> int:
    """1-based line of the first line that (stripped) starts with `needle`."""
    for i, line in enumerate(text.splitlines(), start=1):
        if line.strip().startswith(needle):
            return i
    raise AssertionError(f"{needle!r} not in the YAML text")


def problems_of(path: Path, site: SiteConfig | None = None, site_file: str = "") -> list[Problem]:
    with pytest.raises(ConfigError) as info:
        load_runbook(path, site, site_file)
    problems = info.value.problems
    assert problems, "a ConfigError must carry at least one Problem"
    for p in problems:
        assert p.file == str(path)
        assert p.message
    return problems


def only(problems: list[Problem]) -> Problem:
    assert len(problems) == 1, [str(p) for p in problems]
    return problems[0]


def site_data(checks: set[str] | frozenset[str] = BUILTIN_CHECKS, **extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "lab",
        "checks": {name: {"type": "command", "argv": ["true"]} for name in sorted(checks)},
        "loadBalancer": {"socket": "/run/haproxy/admin.sock"},
        "vcenter": {"host": "vc.example", "user": "svc", "passwordRef": {"env": "VC_PW"}},
    }
    data.update(extra)
    return data


# ------------------------------------------------------------- 1. the seed


def test_seed_file_is_the_seed_verbatim() -> None:
    assert yaml.safe_load(EXAMPLE.read_text(encoding="utf-8")) == SEED


def test_seed_file_loads() -> None:
    rb = load_runbook(EXAMPLE)
    assert rb.application == "customer-analytics-api"
    assert rb.wave == 2
    assert rb.wave_name == "2"
    assert rb.sourcePlatform == "vmware-vsphere"
    assert rb.sourceCluster == "prod-cluster-03"
    assert rb.targetPlatform == "pextra-cloud"
    assert rb.rollbackWindowMinutes == 90
    assert rb.preChecks == SEED["preChecks"]
    assert rb.cutoverSteps == SEED["cutoverSteps"]
    assert rb.postChecks == SEED["postChecks"]
    assert rb.rollbackCriteria == SEED["rollbackCriteria"]
    # Everything beyond the seed's shape takes its default.
    assert rb.vms is None and rb.vmSelector is None
    assert rb.selector.tag == "customer-analytics-api"
    assert rb.approval.required is False and rb.approval.approvers == []
    assert rb.endpoint.dns is None
    assert rb.lb_backend == "customer-analytics-api"
    assert rb.dataSync.warm is True and rb.dataSync.incrementalPasses == 1
    assert rb.checkIntervalSeconds == 60
    assert rb.checks == [*SEED["preChecks"], *SEED["postChecks"], *SEED["rollbackCriteria"]]
    assert rb == Runbook.model_validate(SEED)


def test_seed_file_loads_against_a_site_binding_every_builtin_check(tmp_path: Path) -> None:
    site = load_site(write(tmp_path, site_data(), "site.yaml"))
    assert load_runbook(EXAMPLE, site, "site.yaml") == load_runbook(EXAMPLE)


def test_traffic_steps_need_their_site_section(tmp_path: Path) -> None:
    no_lb = {k: v for k, v in site_data().items() if k != "loadBalancer"}
    site = load_site(write(tmp_path, no_lb, "site.yaml"))
    with pytest.raises(ConfigError) as info:
        load_runbook(EXAMPLE, site, "site.yaml")
    [problem] = info.value.problems
    assert problem.path == "cutoverSteps[7]"
    assert "update_load_balancer" in problem.message and "loadBalancer" in problem.message


def test_quiesce_needs_a_vcenter(tmp_path: Path) -> None:
    no_vc = {k: v for k, v in site_data().items() if k != "vcenter"}
    site = load_site(write(tmp_path, no_vc, "site.yaml"))
    with pytest.raises(ConfigError) as info:
        load_runbook(EXAMPLE, site, "site.yaml")
    [problem] = info.value.problems
    assert problem.path == "cutoverSteps[0]" and "`vcenter`" in problem.message


def test_seed_ordering_is_sane() -> None:
    assert ordering_errors(SEED["cutoverSteps"]) == []


# --------------------------------------------------- 2. each rule, one by one


@pytest.mark.parametrize(
    "name",
    ["Customer-Analytics-API", "customer_analytics_api", "a" * 64, "-api", "api-", "api\n", ""],
    ids=[
        "uppercase",
        "underscore",
        "64-chars",
        "leading-dash",
        "trailing-dash",
        "newline",
        "empty",
    ],
)
def test_application_must_be_a_dns_1123_label(tmp_path: Path, name: str) -> None:
    text = dump(seed(application=name))
    p = only(problems_of(write(tmp_path, text)))
    assert p.path == "application"
    assert "DNS-1123 label" in p.message
    assert p.line == line_of(text, "application:")


@pytest.mark.parametrize("name", ["a", "a" * 63, "0api", "customer-analytics-api-2"])
def test_application_accepts_dns_1123_labels(tmp_path: Path, name: str) -> None:
    assert load_runbook(write(tmp_path, seed(application=name))).application == name


def test_application_must_be_a_string(tmp_path: Path) -> None:
    p = only(problems_of(write(tmp_path, seed(application=42))))
    assert p.path == "application"
    assert "string" in p.message


@pytest.mark.parametrize(
    "raw",
    ["0", "-1", "-0.5", '"90"', "true", ".nan", ".inf", "-.inf", "43201", "~", "[90]"],
)
def test_rollback_window_must_be_a_finite_positive_number(tmp_path: Path, raw: str) -> None:
    text = dump(SEED).replace("rollbackWindowMinutes: 90", f"rollbackWindowMinutes: {raw}")
    assert f"rollbackWindowMinutes: {raw}" in text
    problems = problems_of(write(tmp_path, text))
    # Union members (float | int) must not leak into the path as `.float` / `.int`.
    assert {p.path for p in problems} == {"rollbackWindowMinutes"}
    assert {p.line for p in problems} == {line_of(text, "rollbackWindowMinutes:")}


@pytest.mark.parametrize("value", [0.05, 1, 90.5, 60 * 24 * 30])
def test_rollback_window_accepts_positive_numbers(tmp_path: Path, value: float) -> None:
    rb = load_runbook(write(tmp_path, seed(rollbackWindowMinutes=value)))
    assert rb.rollbackWindowMinutes == value


def test_wave_errors_name_the_field_only(tmp_path: Path) -> None:
    text = dump(seed(wave="Wave 2"))
    problems = problems_of(write(tmp_path, text))
    assert {p.path for p in problems} == {"wave"}
    assert any("DNS-1123" in p.message for p in problems)
    assert load_runbook(write(tmp_path, seed(wave="wave-2"))).wave_name == "wave-2"


def test_unknown_step(tmp_path: Path) -> None:
    steps = list(SEED["cutoverSteps"])
    steps.insert(2, "reboot_everything")
    text = dump(seed(cutoverSteps=steps))
    p = only(problems_of(write(tmp_path, text)))
    assert p.path == "cutoverSteps[2]"
    assert "unknown step 'reboot_everything'" in p.message
    assert "convert_image" in p.message  # lists the known steps
    assert p.line == line_of(text, "- reboot_everything")


@pytest.mark.parametrize("field", ["preChecks", "postChecks", "rollbackCriteria"])
def test_unknown_check(tmp_path: Path, field: str) -> None:
    checks = [*SEED[field], "made_up_check"]
    text = dump(seed(**{field: checks}))
    p = only(problems_of(write(tmp_path, text)))
    assert p.path == f"{field}[{len(checks) - 1}]"
    assert "unknown check 'made_up_check'" in p.message
    assert "`checks`" in p.message  # says how to define one
    assert p.line == line_of(text, "- made_up_check")


def test_unknown_top_level_key(tmp_path: Path) -> None:
    text = dump(seed(colour="blue"))
    p = only(problems_of(write(tmp_path, text)))
    assert p.path == "colour"
    assert "unknown key" in p.message
    assert p.line == line_of(text, "colour:")


def test_misspelt_top_level_key_gets_a_hint(tmp_path: Path) -> None:
    data = seed(rollbackCriteria=_DROP, rollbackCritera=SEED["rollbackCriteria"])
    text = dump(data)
    p = only(problems_of(write(tmp_path, text)))
    assert p.path == "rollbackCritera"
    assert "did you mean 'rollbackCriteria'?" in p.message
    assert p.line == line_of(text, "rollbackCritera:")


def test_unknown_nested_key(tmp_path: Path) -> None:
    text = dump(seed(approval={"requried": True}))
    p = only(problems_of(write(tmp_path, text)))
    assert p.path == "approval.requried"
    assert "did you mean 'required'?" in p.message
    assert p.line == line_of(text, "requried:")


def test_step_listed_twice(tmp_path: Path) -> None:
    steps = [*SEED["cutoverSteps"], "smoke_test"]
    text = dump(seed(cutoverSteps=steps))
    p = only(problems_of(write(tmp_path, text)))
    assert p.path == "cutoverSteps"
    assert "'smoke_test' is listed twice" in p.message
    assert p.line == line_of(text, "cutoverSteps:")


def test_check_listed_twice(tmp_path: Path) -> None:
    text = dump(seed(preChecks=[*SEED["preChecks"], "dns_ttl_lowered"]))
    p = only(problems_of(write(tmp_path, text)))
    assert p.path == "preChecks"
    assert "'dns_ttl_lowered' is listed twice" in p.message


def test_duplicate_yaml_key(tmp_path: Path) -> None:
    text = dump(SEED) + "application: another-app\n"
    p = only(problems_of(write(tmp_path, text)))
    assert "duplicate key 'application' (first at line 1)" in p.message
    assert p.line == len(text.splitlines())


def test_duplicate_nested_yaml_key(tmp_path: Path) -> None:
    text = dump(SEED) + "approval:\n  required: true\n  required: false\n"
    p = only(problems_of(write(tmp_path, text)))
    assert "duplicate key 'required'" in p.message
    assert p.line == len(text.splitlines())


_BEFORE = ["quiesce_application", "final_data_sync"]
_TARGET = ["attach_target_storage_profile", "validate_guest_tools_and_drivers"]

ORDERING_CASES = {
    "target-step-before-convert": (
        [
            *_BEFORE,
            "attach_target_storage_profile",
            "convert_image",
            "power_on_target",
            "smoke_test",
            "update_load_balancer",
        ],
        "'attach_target_storage_profile' must come after 'convert_image'",
    ),
    "power-on-without-convert": (
        [*_BEFORE, *_TARGET, "power_on_target", "smoke_test", "update_load_balancer"],
        "'power_on_target' needs 'convert_image' before it",
    ),
    "smoke-test-before-power-on": (
        [
            *_BEFORE,
            "convert_image",
            *_TARGET,
            "smoke_test",
            "power_on_target",
            "update_load_balancer",
        ],
        "'smoke_test' must come after 'power_on_target'",
    ),
    "load-balancer-before-smoke-test": (
        [
            *_BEFORE,
            "convert_image",
            *_TARGET,
            "power_on_target",
            "update_load_balancer",
            "smoke_test",
        ],
        "'update_load_balancer' must come after 'smoke_test'",
    ),
    "dns-before-smoke-test": (
        [*_BEFORE, "convert_image", *_TARGET, "power_on_target", "update_dns", "smoke_test"],
        "'update_dns' must come after 'smoke_test'",
    ),
    "final-sync-before-quiesce": (
        [
            "final_data_sync",
            "quiesce_application",
            "convert_image",
            *_TARGET,
            "power_on_target",
            "smoke_test",
            "update_load_balancer",
        ],
        "'final_data_sync' must come after 'quiesce_application'",
    ),
    "final-sync-without-quiesce": (
        [
            "final_data_sync",
            "convert_image",
            *_TARGET,
            "power_on_target",
            "smoke_test",
            "update_load_balancer",
        ],
        "'final_data_sync' needs 'quiesce_application' before it",
    ),
    "power-on-before-storage": (
        [
            *_BEFORE,
            "convert_image",
            "power_on_target",
            *_TARGET,
            "smoke_test",
            "update_load_balancer",
        ],
        "'power_on_target' must come after 'attach_target_storage_profile'",
    ),
}


@pytest.mark.parametrize("case", list(ORDERING_CASES))
def test_unsafe_step_order(tmp_path: Path, case: str) -> None:
    steps, expected = ORDERING_CASES[case]
    assert expected in "; ".join(ordering_errors(steps))
    endpoint = {"dns": {"name": "api.example.com"}}  # so update_dns fails on order alone
    text = dump(seed(cutoverSteps=steps, endpoint=endpoint))
    p = only(problems_of(write(tmp_path, text)))
    assert p.path == "cutoverSteps"
    assert p.message.startswith("unsafe step order: ")
    assert expected in p.message
    assert p.line == line_of(text, "cutoverSteps:")


@pytest.mark.parametrize("step", sorted(TARGET_STEPS))
def test_every_target_step_must_follow_convert_image(step: Step) -> None:
    why = " (nothing runs on the target before conversion)"
    errors = ordering_errors([step.value, Step.CONVERT_IMAGE.value])
    assert f"'{step.value}' must come after 'convert_image'{why}" in errors
    errors = ordering_errors([step.value])
    assert f"'{step.value}' needs 'convert_image' before it{why}" in errors


def test_malformed_yaml_reports_the_line(tmp_path: Path) -> None:
    lines = dump(SEED).splitlines()
    lines[2] = "sourcePlatform: vmware-vsphere: extra"
    p = only(problems_of(write(tmp_path, "\n".join(lines) + "\n")))
    assert p.path == ""
    assert p.message.startswith("invalid YAML: ")
    assert p.line == 3
    assert str(p).endswith("(line 3)")


def test_unclosed_flow_sequence_reports_a_line(tmp_path: Path) -> None:
    p = only(problems_of(write(tmp_path, "application: x\ncutoverSteps: [a, b\nwave: 2\n")))
    assert p.message.startswith("invalid YAML: ")
    assert p.line is not None and p.line >= 2


def test_several_documents_are_rejected(tmp_path: Path) -> None:
    p = only(problems_of(write(tmp_path, dump(SEED) + "---\n" + dump(SEED))))
    assert p.message.startswith("invalid YAML: ")


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("- application\n- wave\n", "a list"),
        ("just a string\n", "a str"),
        ("42\n", "a int"),
        ("", "empty document"),
        ("# only a comment\n", "empty document"),
        ("---\n", "empty document"),
    ],
    ids=["list", "scalar-str", "scalar-int", "empty-file", "comment-only", "bare-marker"],
)
def test_document_must_be_a_mapping(tmp_path: Path, text: str, kind: str) -> None:
    p = only(problems_of(write(tmp_path, text)))
    assert p.path == ""
    assert p.message == f"expected a mapping of keys to values, got {kind}"
    assert str(p).startswith(f"{tmp_path / 'rb.yaml'}: (document): ")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    p = only(problems_of(path))
    assert p.message.startswith("cannot read file")
    assert "No such file" in p.message


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    p = only(problems_of(tmp_path))
    assert p.message.startswith("cannot read file")


def test_non_utf8_bytes(tmp_path: Path) -> None:
    p = only(problems_of(write(tmp_path, dump(SEED).encode() + b"sourceCluster: caf\xe9\n")))
    assert p.message.startswith("cannot read file")
    assert "utf-8" in p.message


def test_missing_required_fields_are_all_reported(tmp_path: Path) -> None:
    problems = problems_of(write(tmp_path, seed(application=_DROP, cutoverSteps=_DROP)))
    assert {p.path for p in problems} == {"application", "cutoverSteps"}
    assert all(p.message == "required field is missing" for p in problems)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    data = seed(application="Bad_Name", rollbackWindowMinutes=0, colour="blue")
    data["postChecks"] = ["made_up_check"]
    with pytest.raises(ConfigError) as info:
        load_runbook(write(tmp_path, data))
    paths = {p.path for p in info.value.problems}
    assert paths == {"application", "rollbackWindowMinutes", "postChecks[0]", "colour"}
    assert str(info.value).count("\n") == len(info.value.problems) - 1


def test_approval_required_needs_approvers(tmp_path: Path) -> None:
    for approval in ({"required": True}, {"required": True, "approvers": []}):
        text = dump(seed(approval=approval))
        p = only(problems_of(write(tmp_path, text)))
        assert p.path == "approval"
        assert "`approvers`" in p.message
        assert p.line == line_of(text, "approval:")
    ok = seed(approval={"required": True, "approvers": ["alice"], "timeoutMinutes": 30})
    assert load_runbook(write(tmp_path, ok)).approval.approvers == ["alice"]


def test_vms_and_vm_selector_are_exclusive(tmp_path: Path) -> None:
    text = dump(seed(vms=["vm-01"], vmSelector={"tag": "analytics"}))
    p = only(problems_of(write(tmp_path, text)))
    assert p.path == "vmSelector"
    assert "not both" in p.message
    assert p.line == line_of(text, "vmSelector:")
    assert load_runbook(write(tmp_path, seed(vms=["vm-01"]))).vms == ["vm-01"]
    rb = load_runbook(write(tmp_path, seed(vmSelector={"customAttribute": "app"})))
    assert rb.selector.customAttribute == "app"


def test_vms_must_not_be_empty(tmp_path: Path) -> None:
    text = dump(seed(vms=[]))
    p = only(problems_of(write(tmp_path, text)))
    assert p.path == "vms"
    assert p.line == line_of(text, "vms:")


def test_vm_selector_needs_exactly_one_way(tmp_path: Path) -> None:
    for selector in ({}, {"tag": "a", "customAttribute": "b"}):
        p = only(problems_of(write(tmp_path, seed(vmSelector=selector))))
        assert p.path == "vmSelector"
        assert "exactly one" in p.message


def test_update_dns_needs_endpoint_dns(tmp_path: Path) -> None:
    steps = [*SEED["cutoverSteps"], "update_dns"]
    for data in (seed(cutoverSteps=steps), seed(cutoverSteps=steps, endpoint={})):
        p = only(problems_of(write(tmp_path, data)))
        assert p.path == "endpoint"
        assert "`endpoint.dns.name`" in p.message
        assert p.line is not None
    ok = seed(cutoverSteps=steps, endpoint={"dns": {"name": "api.example.com"}})
    assert load_runbook(write(tmp_path, ok)).endpoint.dns is not None


def test_endpoint_dns_name_must_be_a_dns_name(tmp_path: Path) -> None:
    for name in ("Bad_Name.example.com", "api.example.com\n", "-a.example.com"):
        text = dump(seed(endpoint={"dns": {"name": name}}))
        p = only(problems_of(write(tmp_path, text)))
        assert p.path == "endpoint.dns.name"
        assert p.line == line_of(text, "name:")


# Inputs PyYAML parses badly: each used to escape as a raw Python exception.
@pytest.mark.parametrize(
    "text",
    [
        "? [a, b]\n: 1\n",  # unhashable (sequence) key
        "? {a: 1}\n: 1\n",  # unhashable (mapping) key
        "application: x\nwhen: 2024-02-30\n",  # looks like a date, is not one
        "a: !!int abc\n",
        "a: !!bool maybe\n",
        "a: !!timestamp yesterday\n",
        "a: !!map [1]\n",
        "[" * 5000 + "]" * 5000,  # nested deeper than the recursion limit
    ],
    ids=[
        "list-key",
        "map-key",
        "bad-date",
        "bad-int",
        "bad-bool",
        "bad-timestamp",
        "map-tag-on-seq",
        "too-deep",
    ],
)
def test_yaml_that_pyyaml_chokes_on_is_a_config_error(tmp_path: Path, text: str) -> None:
    p = only(problems_of(write(tmp_path, text)))
    assert p.path == ""
    assert p.message.startswith("invalid YAML: ")


def test_yaml_merge_keys_and_anchors_work(tmp_path: Path) -> None:
    text = dump(SEED) + (
        "approval:\n  <<: {required: true, approvers: [alice]}\n  timeoutMinutes: 30\n"
    )
    rb = load_runbook(write(tmp_path, text))
    assert rb.approval.required is True and rb.approval.approvers == ["alice"]
    assert rb.approval.timeoutMinutes == 30


def test_problem_str_format() -> None:
    assert str(Problem("rb.yaml", "wave", "bad", 2)) == "rb.yaml: wave: bad (line 2)"
    assert str(Problem("rb.yaml", "", "bad")) == "rb.yaml: (document): bad"
    # Echoed input never splits a problem over several lines.
    assert str(Problem("rb.yaml", "application", "'a\nb' is bad")) == (
        "rb.yaml: application: 'a\\nb' is bad"
    )


def test_control_character_is_reported_on_one_line(tmp_path: Path) -> None:
    p = only(problems_of(write(tmp_path, "application: a\x07b\n")))
    assert p.message.startswith("invalid YAML: unacceptable character #x0007")
    assert "\n" not in p.message


# --------------------------------------------------------- 3. site config


GOOD_SITE = """\
name: lab
taskQueue: cutover-lab
vcenter:
  host: vcenter.lab
  user: cutover@vsphere.local
  passwordRef:
    env: VCENTER_PASSWORD
libvirt:
  uri: qemu+ssh://kvm-01/system
loadBalancer:
  socket: /run/haproxy/admin.sock
dns:
  server: 10.0.0.53
  zone: example.com
  tsigKeyFile: /etc/cutover/tsig.key
checks:
  app_health_check_failure:
    type: http
    url: https://api.example.com/healthz
    failAfter: 3
  target_monitoring_ready:
    type: tcp
    host: prometheus.lab
    port: 9090
  backup_success_last_24h:
    type: command
    argv: [/usr/local/bin/check-backup, --max-age, 24h]
"""


def test_good_site_loads(tmp_path: Path) -> None:
    site = load_site(write(tmp_path, GOOD_SITE, "site.yaml"))
    assert site.name == "lab" and site.taskQueue == "cutover-lab"
    assert site.vcenter is not None and site.vcenter.passwordRef.env == "VCENTER_PASSWORD"
    assert site.dns is not None and site.dns.tsigKeyFile == "/etc/cutover/tsig.key"
    kinds = {name: probe.type for name, probe in site.checks.items()}
    assert kinds == {
        "app_health_check_failure": "http",
        "target_monitoring_ready": "tcp",
        "backup_success_last_24h": "command",
    }
    assert site.checks["app_health_check_failure"].failAfter == 3


def _site_problems(tmp_path: Path, text: str) -> list[Problem]:
    path = write(tmp_path, text, "site.yaml")
    with pytest.raises(ConfigError) as info:
        load_site(path)
    assert info.value.problems
    assert all(p.file == str(path) and p.message for p in info.value.problems)
    return info.value.problems


@pytest.mark.parametrize(
    ("text", "path", "key"),
    [
        ("vcenter:\n  host: h\n  user: u\n  password: hunter2\n", "vcenter", "password"),
        ("dns:\n  server: s\n  zone: z\n  tsigKeyFile: f\n  apiKey: k\n", "dns", "apiKey"),
        ("token: abc\n", "", "token"),
        (
            "checks:\n  x:\n    type: http\n    url: http://h\n    authToken: t\n",
            "checks.x",
            "authToken",
        ),
    ],
    ids=["vcenter-password", "dns-api-key", "top-level-token", "probe-token"],
)
def test_secrets_may_not_be_inline(tmp_path: Path, text: str, path: str, key: str) -> None:
    p = only(_site_problems(tmp_path, text))
    assert p.path == path
    assert f"`{key}`: secrets may not be written in the site config" in p.message
    assert "env" in p.message and "file" in p.message


def test_inline_secret_hint_names_the_real_reference_field(tmp_path: Path) -> None:
    text = "vcenter:\n  host: h\n  user: u\n  password: hunter2\n"
    assert "`passwordRef`" in only(_site_problems(tmp_path, text)).message


def test_secrets_rule_also_guards_site_config_model() -> None:
    with pytest.raises(ValidationError, match="secrets may not be written"):
        SiteConfig.model_validate({"vcenter": {"host": "h", "user": "u", "password": "x"}})


def test_secret_ref_needs_exactly_one_source(tmp_path: Path) -> None:
    for ref in ("{}", "{env: A, file: /b}"):
        text = f"vcenter:\n  host: h\n  user: u\n  passwordRef: {ref}\n"
        p = only(_site_problems(tmp_path, text))
        assert p.path == "vcenter.passwordRef"
        assert "exactly one of `env` or `file`" in p.message
        assert p.line == 4


def test_probe_with_unknown_type(tmp_path: Path) -> None:
    p = only(_site_problems(tmp_path, "checks:\n  foo:\n    type: smtp\n    host: h\n"))
    assert p.path == "checks.foo"
    assert "'smtp'" in p.message and "'command', 'http', 'tcp'" in p.message
    assert p.line == 2


def test_probe_without_type(tmp_path: Path) -> None:
    p = only(_site_problems(tmp_path, "checks:\n  foo:\n    argv: [true]\n"))
    assert p.path == "checks.foo"
    assert "'type'" in p.message


@pytest.mark.parametrize(
    ("probe", "path"),
    [
        ("{type: command, argv: []}", "checks.foo.argv"),
        ("{type: http, url: ftp://h}", "checks.foo.url"),
        ("{type: tcp, host: h, port: 0}", "checks.foo.port"),
        ("{type: tcp, port: 80}", "checks.foo.host"),
        ("{type: command, argv: [x], failAfter: 0}", "checks.foo.failAfter"),
        ("{type: command, argv: [x], retries: 3}", "checks.foo.retries"),
    ],
)
def test_probe_field_errors_name_the_field_not_the_union_tag(
    tmp_path: Path, probe: str, path: str
) -> None:
    p = only(_site_problems(tmp_path, f"checks:\n  foo: {probe}\n"))
    assert p.path == path
    assert p.line == 2


@pytest.mark.parametrize("name", ["Foo", "foo-bar", "9lives", "_x", "a" * 64, "foo\\n"])
def test_bad_check_names(tmp_path: Path, name: str) -> None:
    p = only(_site_problems(tmp_path, f'checks:\n  "{name}": {{type: tcp, host: h, port: 1}}\n'))
    assert p.path == "checks"
    assert "check name" in p.message


@pytest.mark.parametrize(
    ("field", "index"),
    [("preChecks", 3), ("postChecks", 0), ("rollbackCriteria", 2)],
)
def test_runbook_check_without_a_probe_in_the_site(tmp_path: Path, field: str, index: int) -> None:
    missing = SEED[field][index]
    site_path = write(tmp_path, site_data(BUILTIN_CHECKS - {missing}), "site.yaml")
    site = load_site(site_path)
    p = only(problems_of(write(tmp_path, SEED), site, str(site_path)))
    assert p.path == f"{field}[{index}]"
    assert f"check '{missing}' has no probe in the site config {site_path}" in p.message
    assert "`checks`" in p.message


def test_every_unbound_check_is_reported(tmp_path: Path) -> None:
    site = SiteConfig.model_validate(site_data(set()))
    problems = problems_of(write(tmp_path, SEED), site)
    n = len(SEED["preChecks"]) + len(SEED["postChecks"]) + len(SEED["rollbackCriteria"])
    assert len(problems) == n
    assert problems[0].path == "preChecks[0]"
    assert problems[-1].path == f"rollbackCriteria[{len(SEED['rollbackCriteria']) - 1}]"
    assert all("  " not in p.message for p in problems)


def test_custom_check_defined_only_in_the_site(tmp_path: Path) -> None:
    data = seed(postChecks=[*SEED["postChecks"], "orders_queue_drained"])
    runbook = write(tmp_path, data)
    site = SiteConfig.model_validate(site_data(BUILTIN_CHECKS | {"orders_queue_drained"}))
    assert load_runbook(runbook, site).postChecks[-1] == "orders_queue_drained"
    # Without the site it is unknown; with a site lacking it, unknown too.
    assert "unknown check 'orders_queue_drained'" in only(problems_of(runbook)).message
    other = SiteConfig.model_validate(site_data())
    p = only(problems_of(runbook, other))
    assert p.path == f"postChecks[{len(SEED['postChecks'])}]"
    assert "unknown check 'orders_queue_drained'" in p.message


# ------------------------------------------------ 4. properties (hypothesis)


def _assert_config_error_or_runbook(path: Path, site: SiteConfig | None = None) -> None:
    try:
        rb = load_runbook(path, site, "site.yaml")
    except ConfigError as exc:
        assert exc.problems
        for p in exc.problems:
            assert p.file == str(path)
            assert p.message
            assert p.line is None or p.line >= 1
            assert str(p).startswith(f"{path}: ")
            assert "\n" not in str(p) and "\r" not in str(p)  # one problem, one line
    else:
        assert isinstance(rb, Runbook)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hypothesis") / "runbook.yaml"


PROPERTY = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

_YAMLISH = st.text(
    alphabet=st.sampled_from(list(string.ascii_lowercase + "0123456789 \n\t-:[]{},#&*!|>'\"%@?.~_"))
)
_KEYS = st.one_of(
    st.sampled_from(
        sorted(
            {
                *SEED,
                "approval",
                "vms",
                "endpoint",
                "dataSync",
                "vmSelector",
                "required",
                "dns",
                "name",
            }
        )
    ),
    st.text(max_size=12),
)
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from([*sorted(BUILTIN_CHECKS), *(s.value for s in Step), "2024-02-30"]),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(_KEYS, children, max_size=5),
    ),
    max_leaves=25,
)


@st.composite
def _mutated_seed(draw: st.DrawFn) -> dict[str, Any]:
    data = copy.deepcopy(SEED)
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        op = draw(st.sampled_from(["drop", "retype", "insert", "item", "shuffle"]))
        keys = sorted(data)
        if op == "drop" and keys:
            del data[draw(st.sampled_from(keys))]
        elif op == "retype" and keys:
            data[draw(st.sampled_from(keys))] = draw(_VALUES)
        elif op == "insert":
            data[draw(_KEYS)] = draw(_VALUES)
        elif op == "item":
            lists = [k for k in keys if isinstance(data[k], list) and data[k]]
            if lists:
                key = draw(st.sampled_from(lists))
                i = draw(st.integers(min_value=0, max_value=len(data[key]) - 1))
                data[key][i] = draw(_VALUES)
        elif op == "shuffle" and isinstance(data.get("cutoverSteps"), list):
            data["cutoverSteps"] = draw(st.permutations(data["cutoverSteps"]))
    return data


_SITE = SiteConfig.model_validate(site_data())


@PROPERTY
@given(text=st.one_of(st.text(), _YAMLISH))
def test_property_random_text_is_a_runbook_or_a_config_error(scratch: Path, text: str) -> None:
    scratch.write_text(text, encoding="utf-8")
    _assert_config_error_or_runbook(scratch)


@PROPERTY
@given(raw=st.binary(max_size=200))
def test_property_random_bytes_are_a_runbook_or_a_config_error(scratch: Path, raw: bytes) -> None:
    scratch.write_bytes(raw)
    _assert_config_error_or_runbook(scratch)


@PROPERTY
@given(doc=_VALUES, flow=st.booleans())
def test_property_random_documents_are_a_runbook_or_a_config_error(
    scratch: Path, doc: Any, flow: bool
) -> None:
    scratch.write_text(yaml.safe_dump(doc, default_flow_style=flow), encoding="utf-8")
    _assert_config_error_or_runbook(scratch)


@PROPERTY
@given(data=_mutated_seed(), with_site=st.booleans())
def test_property_mutated_seed_is_a_runbook_or_a_config_error(
    scratch: Path, data: dict[str, Any], with_site: bool
) -> None:
    scratch.write_text(dump(data), encoding="utf-8")
    _assert_config_error_or_runbook(scratch, _SITE if with_site else None)


@PROPERTY
@given(data=_mutated_seed())
def test_property_problem_paths_name_real_keys(scratch: Path, data: dict[str, Any]) -> None:
    """Every path's first segment is a key of the file or a field of the runbook."""
    text = dump(data)
    scratch.write_text(text, encoding="utf-8")
    try:
        load_runbook(scratch)
    except ConfigError as exc:
        heads = set(Runbook.model_fields) | {str(k) for k in data}
        for p in exc.problems:
            assert (
                p.path in ("", *heads)
                or p.path.startswith("[")  # a non-string key
                or any(p.path.startswith((f"{h}.", f"{h}[")) for h in heads)
            ), p
            assert not p.path.endswith((".float", ".int")), p


def test_nan_is_not_a_valid_rollback_window_even_via_the_model() -> None:
    with pytest.raises(ValidationError):
        Runbook.model_validate(seed(rollbackWindowMinutes=math.nan))
