"""A site's own policies (issue 13): `accessFile` and `workloadPolicyFiles` are read into the
site (its digest covers them), and `cutover validate` checks runbooks against them without
`--policy`, as the workflow does."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cutover.catalog import BUILTIN_CHECKS
from cutover.config import ConfigError
from cutover.site import load_site, site_digest
from tests.test_cli_validate import EXAMPLE, site_yaml, validate

ROOT = Path(__file__).resolve().parents[1]
POLICIES = ROOT / "examples" / "policy"


def with_files(tmp_path: Path, platforms: list[str]) -> Path:
    site = site_yaml(tmp_path / "site.yaml", BUILTIN_CHECKS)
    data = yaml.safe_load(site.read_text())
    policy = {
        "apiVersion": "policy.virtualmachine.space/v1",
        "kind": "WorkloadPolicy",
        "metadata": {"name": "only-these"},
        "spec": {"allowedPlatforms": platforms},
    }
    (tmp_path / "policies.yaml").write_text(yaml.safe_dump(policy))
    (tmp_path / "access.yaml").write_text((POLICIES / "access.yaml").read_text())
    data |= {"workloadPolicyFiles": ["policies.yaml"], "accessFile": "access.yaml"}
    site.write_text(yaml.safe_dump(data))
    return site


def test_policy_files_are_read_into_the_site_and_its_digest(tmp_path: Path) -> None:
    site_file = with_files(tmp_path, ["pextra"])
    site = load_site(site_file)
    assert [p.name for p in site.workloadPolicies] == ["only-these"]
    assert site.access is not None and "ops-lead" in site.access.principals
    assert site.workloadPolicyFiles == [] and site.accessFile is None  # read in, not paths
    before = site_digest(site)
    with_files(tmp_path, ["openstack"])  # an edit of the policy file is a new site version
    assert site_digest(load_site(site_file)) != before


def test_validate_checks_runbooks_against_the_sites_own_policies(tmp_path: Path) -> None:
    ok = validate("--site", with_files(tmp_path, ["pextra"]), EXAMPLE)  # the seed: pextra-cloud
    assert ok.returncode == 0, ok.stderr
    assert f"under the workload policies of {tmp_path / 'site.yaml'}" in ok.stdout
    bad = validate("--site", with_files(tmp_path, ["openstack"]), EXAMPLE)
    assert bad.returncode == 2
    assert "only-these" in bad.stderr and "spec.allowedPlatforms" in bad.stderr
    assert str(EXAMPLE) in bad.stderr and "targetPlatform" in bad.stderr


def test_a_missing_policy_file_is_named(tmp_path: Path) -> None:
    site_file = with_files(tmp_path, ["pextra"])
    (tmp_path / "policies.yaml").unlink()
    with pytest.raises((ConfigError, ValueError, OSError)) as err:
        load_site(site_file)
    assert "policies.yaml" in str(err.value)
