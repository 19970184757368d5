"""The `nftables-policy` probe against real nftables: each test loads its own table into a
network namespace of its own (`ip netns add cutover-test-<random>`, removed after), so
no table of the host is read or touched. A missing `nft` or `ip` FAILS (never a skip)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import ValidationError

from activities.checks import CheckActivities
from cutover.models import CheckInput, CheckResult
from cutover.site import NftablesPolicyProbe, SiteConfig

#: What the application needs: ssh from the admin network, https from anywhere.
FLOWS = [
    {"proto": "tcp", "port": 22, "source": "10.0.0.0/8"},
    {"proto": "tcp", "port": 443, "source": "any"},
]

GOOD = """
table inet TABLE {
  chain input {
    type filter hook input priority 0; policy drop;
    ct state established,related accept
    ct state invalid drop
    iif lo accept
    ip saddr 10.0.0.0/8 tcp dport 22 counter accept
    tcp dport 443 accept
  }
}
"""


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is missing: apt-get install -y {package}", pytrace=False)
    return path


class Netns:
    """A network namespace this test owns, with one nftables table in it."""

    def __init__(self) -> None:
        _tool("nft", "nftables")
        self.ip = _tool("ip", "iproute2")
        self.name = f"cutover-test-{uuid.uuid4().hex[:10]}"
        self.table = f"cutover_app_{uuid.uuid4().hex[:6]}"
        subprocess.run([self.ip, "netns", "add", self.name], check=True, capture_output=True)

    def load(self, ruleset: str) -> None:
        """Replace the namespace's ruleset with `ruleset` (`TABLE` is the table's name)."""
        self.nft("flush", "ruleset")
        self.nft("-f", "-", stdin=ruleset.replace("TABLE", self.table))

    def nft(self, *args: str, stdin: str | None = None) -> str:
        proc = subprocess.run(
            [self.ip, "netns", "exec", self.name, "nft", *args],
            input=stdin, capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, f"nft {' '.join(args)}: {proc.stderr}"
        return proc.stdout

    def remove(self) -> None:
        subprocess.run([self.ip, "netns", "delete", self.name], check=False, capture_output=True)


@pytest.fixture
def netns() -> Iterator[Netns]:
    ns = Netns()
    try:
        yield ns
    finally:
        ns.remove()


def probe_for(ns: Netns, **over: Any) -> NftablesPolicyProbe:
    """The probe as a site binds it (through the site model: what YAML gives)."""
    check = {"type": "nftables-policy", "table": ns.table, "netns": ns.name, "allow": FLOWS}
    site = SiteConfig.model_validate({"checks": {"policy": {**check, **over}}})
    probe = site.checks["policy"]
    assert isinstance(probe, NftablesPolicyProbe)
    return probe


def run(probe: NftablesPolicyProbe) -> CheckResult:
    inp = CheckInput(name="target_network_policy_validated", phase="pre", application="app",
                     probe=probe)  # fmt: skip
    return asyncio.run(CheckActivities().run_check(inp))


def test_policy_with_exactly_the_required_flows_passes(netns: Netns) -> None:
    netns.load(GOOD)
    res = run(probe_for(netns))
    assert res.passed, res.detail
    assert res.measured == "policy drop, 2 of 2 required flows accepted, 0 extra opening(s)"
    assert res.threshold == (
        f"inet {netns.table}/input in netns {netns.name}: policy drop; accepted: tcp/22 from "
        "10.0.0.0/8, tcp/443 from any; nothing else open"
    )


def test_a_missing_rule_is_named(netns: Netns) -> None:
    netns.load(GOOD.replace("ip saddr 10.0.0.0/8 tcp dport 22 counter accept", ""))
    res = run(probe_for(netns))
    assert not res.passed
    assert "1 of 2 required flows accepted" in (res.measured or "")
    assert "missing: tcp/22 from 10.0.0.0/8: no rule accepts tcp/22 from 10.0.0.0/8" in res.detail


def test_a_rule_narrower_than_the_flow_does_not_serve_it(netns: Netns) -> None:
    netns.load(GOOD.replace("10.0.0.0/8", "10.1.0.0/16"))
    res = run(probe_for(netns))
    assert not res.passed
    assert "missing: tcp/22 from 10.0.0.0/8" in res.detail


def test_an_extra_open_port_is_named(netns: Netns) -> None:
    netns.load(GOOD.replace("tcp dport 443 accept", "tcp dport { 443, 8080 } accept"))
    res = run(probe_for(netns))
    assert not res.passed
    assert "2 of 2 required flows accepted, 1 extra opening(s)" in (res.measured or "")
    handle = _handle(netns, "8080")
    assert (
        f"extra: rule handle {handle} (tcp dport {{ 443, 8080 }} accept) opens "
        "tcp/8080 from 0.0.0.0/0, tcp/8080 from ::/0"
    ) in res.detail


def test_a_flow_opened_to_more_sources_than_required_is_extra(netns: Netns) -> None:
    netns.load(GOOD.replace("ip saddr 10.0.0.0/8 tcp dport 22", "tcp dport 22"))
    res = run(probe_for(netns))
    assert not res.passed
    assert "opens tcp/22 from 0.0.0.0/0, tcp/22 from ::/0" in res.detail


def test_policy_accept_and_unreadable_rules_fail(netns: Netns) -> None:
    netns.load(GOOD.replace("policy drop", "policy accept"))
    res = run(probe_for(netns))
    assert not res.passed and res.measured is not None and "policy accept" in res.measured
    assert "policy is accept, not drop" in res.detail
    netns.load(GOOD.replace("iif lo accept", "meta mark 0x1 accept"))
    res = run(probe_for(netns))
    assert not res.passed
    assert "(mark 1 accept) opens matches the probe cannot verify (mark 1)" in res.detail


def test_a_drop_before_the_accept_shadows_the_flow(netns: Netns) -> None:
    netns.load(GOOD.replace("iif lo accept", "iif lo accept\n    tcp dport 443 drop"))
    res = run(probe_for(netns))
    assert not res.passed
    assert "tcp/443 from 0.0.0.0/0 is dropped by rule handle" in res.detail


def test_a_table_that_is_not_there_fails_naming_it(netns: Netns) -> None:
    netns.load(GOOD)
    res = run(probe_for(netns, table="cutover_not_here"))
    assert not res.passed and res.measured == "not read"
    assert "cutover_not_here" in res.detail and "No such file or directory" in res.detail


def test_site_validation_names_the_field() -> None:
    def problem(**check: Any) -> str:
        base = {"type": "nftables-policy", "table": "t", **check}
        with pytest.raises(ValidationError) as caught:
            SiteConfig.model_validate({"checks": {"policy": base}})
        return str(caught.value)

    assert "allow.0.source" in problem(allow=[{"proto": "tcp", "port": 22, "source": "10.0.0.1/8"}])
    assert "allow.0.port" in problem(allow=[{"proto": "tcp", "port": 70000}])
    assert "allow.0.proto" in problem(allow=[{"proto": "icmp", "port": 1}])
    assert "`table`: unknown placeholder {app}" in problem(table="{app}")


def _handle(ns: Netns, needle: str) -> int:
    for line in ns.nft("-a", "list", "table", "inet", ns.table).splitlines():
        if needle in line and "# handle" in line:
            return int(line.rsplit("# handle", 1)[1])
    raise AssertionError(f"no rule with {needle}")
