"""`cutover validate` through the real console script: exit codes and operator-facing output."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from cutover.catalog import BUILTIN_CHECKS
from tests.factories import SEED

CUTOVER = Path(sys.executable).parent / "cutover"
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "customer-analytics-api.yaml"
#: `FILE: field.path: message` with an optional ` (line N)`.
LINE = re.compile(r"^(?P<file>[^:]+): (?P<path>\S+): (?P<message>.+?)(?: \(line (?P<line>\d+)\))?$")


def validate(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert CUTOVER.exists(), f"console script not installed at {CUTOVER}"
    proc = subprocess.run(
        [str(CUTOVER), "validate", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        check=False,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stdout, proc.stdout
    return proc


def problems_in(stderr: str) -> list[dict[str, str | None]]:
    """Parse every stderr line; each must be one problem in the documented shape."""
    out = []
    for line in stderr.splitlines():
        m = LINE.match(line)
        assert m, f"not `FILE: field.path: message`: {line!r}"
        out.append(m.groupdict())
    return out


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def bad_files(tmp_path: Path) -> tuple[Path, Path, set[tuple[str, str]]]:
    """Two bad runbooks and the (file, field path) of every problem they hold."""
    one = copy.deepcopy(SEED)
    one["application"] = "Customer_Analytics_API"
    one["rollbackCritera"] = one.pop("rollbackCriteria")
    one["approval"] = {"required": True}
    bad1 = write_yaml(tmp_path / "bad-one.yaml", one)

    two = copy.deepcopy(SEED)
    two["cutoverSteps"] = ["smoke_test", *SEED["cutoverSteps"][:-2], "update_load_balancer"]
    two["postChecks"] = [*SEED["postChecks"], "made_up_check"]
    two["rollbackWindowMinutes"] = "90"
    bad2 = write_yaml(tmp_path / "bad-two.yaml", two)

    expected = {
        (str(bad1), "application"),
        (str(bad1), "rollbackCritera"),
        (str(bad1), "approval"),
        (str(bad2), "cutoverSteps"),
        (str(bad2), "postChecks[4]"),
        (str(bad2), "rollbackWindowMinutes"),
    }
    return bad1, bad2, expected


def site_yaml(path: Path, checks: set[str] | frozenset[str]) -> Path:
    probes = {name: {"type": "command", "argv": ["true"]} for name in sorted(checks)}
    lb = {"socket": "/run/haproxy/admin.sock"}
    vc = {"host": "vc.example", "user": "svc", "passwordRef": {"env": "VC_PW"}}
    return write_yaml(path, {"name": "lab", "checks": probes, "loadBalancer": lb, "vcenter": vc})


def test_console_script_is_installed() -> None:
    assert CUTOVER.exists()
    proc = subprocess.run(
        [str(CUTOVER), "validate", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0
    assert "RUNBOOK" in proc.stdout


def test_seed_file_is_valid() -> None:
    proc = validate(EXAMPLE)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout.strip() == "1 runbook(s) valid"


def test_bad_files_exit_2_and_print_every_problem(
    bad_files: tuple[Path, Path, set[tuple[str, str]]],
) -> None:
    bad1, bad2, expected = bad_files
    proc = validate(bad1, EXAMPLE, bad2)
    assert proc.returncode == 2
    assert proc.stdout == ""
    problems = problems_in(proc.stderr)
    assert {(p["file"], p["path"]) for p in problems} == expected
    assert str(EXAMPLE) not in proc.stderr  # the valid file is not blamed
    by_path = {p["path"]: p for p in problems}
    assert "DNS-1123" in str(by_path["application"]["message"])
    assert "did you mean 'rollbackCriteria'?" in str(by_path["rollbackCritera"]["message"])
    assert "unknown check 'made_up_check'" in str(by_path["postChecks[4]"]["message"])
    assert "unsafe step order" in str(by_path["cutoverSteps"]["message"])
    assert all(p["line"] is not None for p in problems)  # every one of these has a line


def test_json_output(bad_files: tuple[Path, Path, set[tuple[str, str]]]) -> None:
    bad1, bad2, expected = bad_files
    proc = validate("--json", EXAMPLE, bad1, bad2)
    assert proc.returncode == 2
    report = json.loads(proc.stdout)
    assert report["valid"] == [str(EXAMPLE)]
    assert report["problems"] == proc.stderr.splitlines()
    assert {(p["file"], p["path"]) for p in problems_in("\n".join(report["problems"]))} == expected

    proc = validate("--json", EXAMPLE)
    assert proc.returncode == 0
    assert json.loads(proc.stdout) == {"valid": [str(EXAMPLE)], "problems": []}


def test_site_missing_a_probe_exits_2(tmp_path: Path) -> None:
    site = site_yaml(tmp_path / "site.yaml", BUILTIN_CHECKS - {"dns_ttl_lowered"})
    proc = validate("--site", site, EXAMPLE)
    assert proc.returncode == 2
    (problem,) = problems_in(proc.stderr)
    assert problem["file"] == str(EXAMPLE)
    assert problem["path"] == "preChecks[3]"
    assert "check 'dns_ttl_lowered' has no probe" in str(problem["message"])
    assert str(site) in str(problem["message"])


def test_site_binding_every_check_is_valid(tmp_path: Path) -> None:
    site = site_yaml(tmp_path / "site.yaml", BUILTIN_CHECKS)
    proc = validate("--site", site, EXAMPLE)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "1 runbook(s) valid"


def test_bad_site_file_is_reported(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text("vcenter:\n  host: h\n  user: u\n  password: hunter2\n", encoding="utf-8")
    proc = validate("--site", site, EXAMPLE)
    assert proc.returncode == 2
    problems = problems_in(proc.stderr)
    assert (str(site), "vcenter") in {(p["file"], p["path"]) for p in problems}
    assert "hunter2" not in proc.stderr


UNREADABLE: dict[str, tuple[bytes | None, str]] = {
    "missing": (None, "cannot read file"),
    "not-utf8": (b"application: caf\xe9\n", "cannot read file"),
    "malformed": (b"application: [unclosed\n", "invalid YAML"),
    "not-a-mapping": (b"- a list\n", "expected a mapping"),
    "unhashable-key": (b"? [a, b]\n: 1\n", "invalid YAML"),
    "bad-date": (b"application: x\nwhen: 2024-02-30\n", "invalid YAML"),
    "control-char": (b"application: a\x07b\n", "invalid YAML"),
    "newline-in-value": (
        b'application: "api\\n"\n'
        + yaml.safe_dump({k: v for k, v in SEED.items() if k != "application"}).encode(),
        "DNS-1123",
    ),
}


def test_unreadable_or_unparsable_files_exit_2_one_line_each(tmp_path: Path) -> None:
    paths = {}
    for name, (content, _) in UNREADABLE.items():
        paths[name] = tmp_path / f"{name}.yaml"
        if content is not None:
            paths[name].write_bytes(content)
    proc = validate(*paths.values())
    assert proc.returncode == 2
    problems = problems_in(proc.stderr)  # also proves each problem is on one line
    assert len(problems) == len(UNREADABLE)
    for name, (_, fragment) in UNREADABLE.items():
        (problem,) = [p for p in problems if p["file"] == str(paths[name])]
        assert fragment in str(problem["message"]), (name, problem)


def test_site_defaults_to_cutover_site_else_a_clear_error(tmp_path: Path) -> None:
    """Without --site: $CUTOVER_SITE, else the lab's site when a lab is up, else exit 2."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "CUTOVER_SITE"}
    rb = tmp_path / "rb.yaml"
    rb.write_text(yaml.safe_dump(SEED))
    res = subprocess.run([str(CUTOVER), "lower-ttl", str(rb)], capture_output=True, text=True,
                         env=env, cwd=tmp_path)  # fmt: skip
    # (scripts/test.sh stops any lab first, so no lab's site is there to be taken)
    assert res.returncode == 2, res.stderr
    assert "no site config: pass --site FILE, set CUTOVER_SITE" in res.stderr
    site = tmp_path / "site.yaml"
    site.write_text("name: x\nstagingDir: 7\n")
    res = subprocess.run([str(CUTOVER), "lower-ttl", str(rb)], capture_output=True, text=True,
                         env={**env, "CUTOVER_SITE": str(site)})  # fmt: skip
    assert res.returncode == 2 and str(site) in res.stderr and "stagingDir" in res.stderr
