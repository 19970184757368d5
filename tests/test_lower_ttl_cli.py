"""`cutover lower-ttl` (the preparation step) against a real named."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from activities.dns import RESTORE_DNS_TTL, DnsActivities
from cutover.models import StepContext, StepInput
from cutover.runbook import Runbook
from cutover.site import SiteConfig
from tests.bind_fixtures import BindServer
from tests.factories import SEED

CUTOVER = str(Path(sys.executable).parent / "cutover")


def test_lower_ttl_then_dns_check(bind: BindServer, tmp_path: Path) -> None:
    site = {
        "name": "dns",
        "loadBalancer": {"socket": str(tmp_path / "haproxy.sock")},
        "vcenter": {"host": "127.0.0.1", "user": "svc", "passwordRef": {"env": "UNUSED"}},
        "dns": {"server": "127.0.0.1", "port": bind.port, "zone": "apps.test",
                "tsigKeyFile": str(bind.key_file), "ttlThresholdSeconds": 60},
        "checks": {"dns_ttl_lowered": {"type": "dns", "name": "app"}},
    }  # fmt: skip
    rb = {**SEED, "application": "app", "preChecks": ["dns_ttl_lowered"], "postChecks": [],
          "rollbackCriteria": [], "endpoint": {"dns": {"name": "app", "ttl": 30}}}  # fmt: skip
    (tmp_path / "site.yaml").write_text(yaml.safe_dump(site))
    (tmp_path / "rb.yaml").write_text(yaml.safe_dump(rb))
    args = [CUTOVER, "lower-ttl", str(tmp_path / "rb.yaml"), "--site", str(tmp_path / "site.yaml")]
    first = subprocess.run([*args, "--json"], capture_output=True, text=True, check=False,
                           timeout=60, env=dict(os.environ))  # fmt: skip
    assert first.returncode == 0, first.stderr
    done = json.loads(first.stdout)
    assert done == {"name": "app.apps.test.", "ttl": 30, "previousTtl": 3600, "changed": True}
    record = bind.query("app", "A")
    assert record is not None and record.ttl == 30
    marker = bind.query("_cutover-ttl.app", "TXT")
    assert marker is not None and "old=3600" in marker.to_text()
    again = subprocess.run(args, capture_output=True, text=True, check=False, timeout=60)
    assert again.returncode == 0 and "nothing changed" in again.stdout
    assert (
        bind.key_file.read_text().split('secret "')[1].split('"')[0]
        not in first.stdout + again.stdout
    )


def test_ttl_lowered_by_the_cli_is_put_back_at_finalize(bind: BindServer, tmp_path: Path) -> None:
    """`cutover lower-ttl` leaves only its marker in the zone: that is what the finalize step
    restore_dns_ttl (and a rollback's restore_dns) reads the TTL from before the cutover."""
    site = {
        "name": "dns",
        "loadBalancer": {"socket": str(tmp_path / "haproxy.sock")},
        "vcenter": {"host": "127.0.0.1", "user": "svc", "passwordRef": {"env": "UNUSED"}},
        "dns": {"server": "127.0.0.1", "port": bind.port, "zone": "apps.test",
                "tsigKeyFile": str(bind.key_file), "ttlThresholdSeconds": 60},
    }  # fmt: skip
    rb = {**SEED, "application": "app", "preChecks": [], "postChecks": [],
          "rollbackCriteria": [], "endpoint": {"dns": {"name": "app", "ttl": 30}}}  # fmt: skip
    (tmp_path / "site.yaml").write_text(yaml.safe_dump(site))
    (tmp_path / "rb.yaml").write_text(yaml.safe_dump(rb))
    args = [CUTOVER, "lower-ttl", str(tmp_path / "rb.yaml"), "--site", str(tmp_path / "site.yaml")]
    lowered = subprocess.run(args, capture_output=True, text=True, check=False, timeout=60)
    assert lowered.returncode == 0, lowered.stderr
    assert bind.a("app") == ({"10.0.0.1"}, 30)

    ctx = StepContext(
        workflowId="cutover-app",
        application="app",
        wave="1",
        runbook=Runbook.model_validate(rb),
        site=SiteConfig.model_validate(site),
        facts={},  # a fresh workflow: the CLI's result is not among its facts
    )
    done = DnsActivities().restore_dns_ttl(StepInput(step=RESTORE_DNS_TTL, context=ctx))
    assert done.changed and bind.a("app") == ({"10.0.0.1"}, 3600)
    assert bind.query("_cutover-ttl.app", "TXT") is None
