"""Per-application probes from one site catalog (pure logic)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from cutover.runbook import Runbook
from cutover.site import CommandProbe, HttpProbe, SiteConfig
from cutover.templating import expand, values_for
from tests.factories import SEED


def runbook(**over: object) -> Runbook:
    return Runbook.model_validate({**SEED, **over})


def test_expands_where_to_probe_only() -> None:
    rb = runbook(endpoint={"dns": {"name": "api.apps.test"}, "sourceAddress": "10.0.0.5:8080"})
    probe = HttpProbe(type="http", url="http://{dns_name}/healthz?src={source_host}",
                      bodyContains='{"status": "ok"}')  # fmt: skip
    out = expand(probe, values_for(rb, {"target_address": "127.0.0.1:18080"}))
    assert out.url == "http://api.apps.test/healthz?src=10.0.0.5"
    assert out.bodyContains == '{"status": "ok"}'  # a body's braces are not placeholders
    cmd = CommandProbe(type="command", argv=["check-backup", "{application}", "--wave={wave}"])
    assert expand(cmd, values_for(rb, {})).argv == ["check-backup", rb.application, "--wave=2"]
    target = HttpProbe(type="http", url="http://{target_address}/")
    assert (
        expand(target, values_for(rb, {"target_address": "127.0.0.1:9"})).url
        == "http://127.0.0.1:9/"
    )


def test_unknown_placeholder_is_rejected_at_load() -> None:
    with pytest.raises(ValidationError) as err:
        SiteConfig.model_validate({"checks": {"x": {"type": "http", "url": "http://{app}/"}}})
    assert "unknown placeholder {app}" in str(err.value)
    with pytest.raises(ValidationError):
        CommandProbe(type="command", argv=["echo", "{0}"])


def test_the_day_two_probes_take_placeholders_where_they_name_the_application() -> None:
    """One site, many applications: the scrape target, the domain, the backup's file and
    the nftables table follow the application."""
    rb = runbook(endpoint={"targetAddress": "10.2.0.7:8080"})
    site = SiteConfig.model_validate({"checks": {
        "scraped": {"type": "alert-routing", "prometheusUrl": "http://prom:9090",
                    "job": "apps", "instance": "{target_address}"},
        "resize": {"type": "live-resize", "domain": "{application}", "memoryDeltaMiB": -64},
        "backup": {"type": "restic-backup", "mode": "backup-and-restore", "repository": "/r",
                   "passwordRef": {"env": "PW"}, "path": "/pools/{application}.raw"},
        "policy": {"type": "nftables-policy", "table": "fw_{wave}", "netns": "ns-{wave}"},
    }})  # fmt: skip
    values = values_for(rb, {})
    out = {name: expand(p, values) for name, p in site.checks.items()}
    dumped = {name: p.model_dump() for name, p in out.items()}
    assert dumped["scraped"]["instance"] == "10.2.0.7:8080"
    assert dumped["resize"]["domain"] == rb.application
    assert dumped["backup"]["path"] == f"/pools/{rb.application}.raw"
    assert (dumped["policy"]["table"], dumped["policy"]["netns"]) == ("fw_2", "ns-2")
