"""A site says where an application answers when its runbook does not (the seed's do not):
`applications.<name>.{sourceAddress,targetAddress}` fill in what the runbook leaves unset,
when the runbook is loaded against the site (so the workflow's input names them)."""

from __future__ import annotations

from pathlib import Path

import yaml

from cutover.site import SiteConfig, load_runbook

SEED = Path(__file__).resolve().parent.parent / "examples" / "customer-analytics-api.yaml"


def site(**apps: dict[str, str]) -> SiteConfig:
    checks = {n: {"type": "tcp", "host": "127.0.0.1", "port": 1}
              for n in yaml.safe_load(SEED.read_text())["preChecks"]
              + yaml.safe_load(SEED.read_text())["postChecks"]
              + yaml.safe_load(SEED.read_text())["rollbackCriteria"]}  # fmt: skip
    return SiteConfig.model_validate({
        "libvirt": {"uri": "qemu:///system"},
        "vcenter": {"host": "vc.example", "user": "u", "passwordRef": {"env": "VC_PW"}},
        "loadBalancer": {"socket": "/run/haproxy.sock"}, "checks": checks,
        "applications": apps,
    })  # fmt: skip


def test_the_site_fills_in_the_addresses_the_seed_runbook_leaves_out() -> None:
    s = site(**{"customer-analytics-api": {"sourceAddress": "10.1.0.4:8080",
                                           "targetAddress": "10.2.0.4:8080"}})  # fmt: skip
    rb = load_runbook(SEED, None)
    assert rb.endpoint.targetAddress is None  # the seed's file says nothing
    filled = load_runbook(SEED, s)  # what `cutover run` and a wave's input do
    assert filled == s.with_endpoints(rb)
    assert (filled.endpoint.sourceAddress, filled.endpoint.targetAddress) == (
        "10.1.0.4:8080", "10.2.0.4:8080")  # fmt: skip
    # what a runbook says wins; another application's entry is not used
    own = rb.model_copy(update={"endpoint": rb.endpoint.model_copy(
        update={"targetAddress": "10.9.9.9:80"})})  # fmt: skip
    assert s.with_endpoints(own).endpoint.targetAddress == "10.9.9.9:80"
    assert site(other={"targetAddress": "1.2.3.4:5"}).with_endpoints(rb) == rb
