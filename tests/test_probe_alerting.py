"""The `alert-routing` probe against a real Prometheus, Alertmanager and webhook receiver
(tests/alerting_fixtures.py): rules loaded, the target scraped and up, and a test alert
routed to the receiver and delivered there, each failing for the reason it names."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from pydantic import ValidationError

from activities.checks import CheckActivities
from cutover.models import CheckInput, CheckResult
from cutover.site import AlertRoutingProbe, SiteConfig
from tests.alerting_fixtures import Monitoring, get_json, monitoring

__all__ = ["monitoring"]  # the fixture, used by name


def probe_for(**check: Any) -> AlertRoutingProbe:
    """The probe as a site binds it (through the site model: what YAML gives)."""
    site = SiteConfig.model_validate({"checks": {"alerts": {"type": "alert-routing", **check}}})
    probe = site.checks["alerts"]
    assert isinstance(probe, AlertRoutingProbe)
    return probe


def run(probe: AlertRoutingProbe, name: str = "alerting_signals_present") -> CheckResult:
    inp = CheckInput(name=name, phase="post", application="customer-analytics-api", probe=probe)
    return asyncio.run(CheckActivities().run_check(inp))


def test_the_target_scraped_and_up_passes(monitoring: Monitoring) -> None:
    res = run(probe_for(prometheusUrl=monitoring.prometheus, job="analytics",
                        instance=monitoring.app.address), "target_monitoring_ready")  # fmt: skip
    assert res.passed, res.detail
    assert res.measured == f"job analytics instance {monitoring.app.address}: 1/1 targets up"
    assert res.threshold == f"job analytics instance {monitoring.app.address} scraped and up"


def test_a_target_down_or_not_scraped_fails_naming_it(monitoring: Monitoring) -> None:
    res = run(probe_for(prometheusUrl=monitoring.prometheus, job="gone"))
    assert not res.passed and res.measured == "job gone: 0/1 targets up"
    dead = monitoring.dead.removeprefix("http://")
    assert res.detail.startswith(f"{dead} is down (") and "connection refused" in res.detail
    res = run(
        probe_for(prometheusUrl=monitoring.prometheus, job="analytics", instance="10.9.9.9:80")
    )
    assert (res.passed, res.measured) == (False, "job analytics instance 10.9.9.9:80: not scraped")
    assert res.detail == "Prometheus scrapes no target of job analytics instance 10.9.9.9:80"


def test_rules_loaded_and_a_missing_rule_named(monitoring: Monitoring) -> None:
    rules = ["AnalyticsApiDown", "AnalyticsErrorRate"]
    res = run(probe_for(prometheusUrl=monitoring.prometheus, alertRules=rules))
    assert res.passed and res.measured == "2/2 alert rules loaded", res.detail
    res = run(probe_for(prometheusUrl=monitoring.prometheus, alertRules=[*rules, "AnalyticsSlow"]))
    assert (res.passed, res.measured) == (False, "2/3 alert rules loaded")
    assert res.detail == "alert rule AnalyticsSlow is not loaded in Prometheus"


def test_a_test_alert_is_routed_and_received(monitoring: Monitoring) -> None:
    probe = probe_for(
        prometheusUrl=monitoring.prometheus, alertRules=["AnalyticsApiDown"],
        alertmanagerUrl=monitoring.alertmanager, receiver="ops-webhook",
        labels={"app": "analytics", "severity": "test"}, receiptUrl=monitoring.sink,
        timeoutSeconds=20,
    )  # fmt: skip
    res = run(probe)
    assert res.passed, res.detail
    measured = res.measured or ""
    assert measured.startswith("1/1 alert rules loaded; test alert routed to ops-webhook in ")
    assert ", received in " in measured
    assert res.threshold == (
        "alert rules loaded: AnalyticsApiDown; Prometheus sends to the Alertmanager; a test "
        "alert routed to ops-webhook and received within 20s"
    )
    # what the receiver got: Alertmanager's webhook notification of our test alert
    got = [r["payload"] for r in monitoring.received()]
    ours = [a for p in got for a in p["alerts"] if a["labels"].get("severity") == "test"]
    assert ours and ours[-1]["labels"]["alertname"] == "CutoverTestAlert"
    assert got[-1]["receiver"] == "ops-webhook"
    # and the probe resolved it afterwards (endsAt: the moment it was done)
    probe_id = ours[-1]["labels"]["cutover_probe"]
    url = (f"{monitoring.alertmanager}/api/v2/alerts?active=true&filter="
           f"cutover_probe%3D%22{probe_id}%22")  # fmt: skip
    deadline = time.monotonic() + 2
    while (active := get_json(url)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert active == [], json.dumps(active, indent=1)


def test_an_alert_routed_elsewhere_fails(monitoring: Monitoring) -> None:
    probe = probe_for(alertmanagerUrl=monitoring.alertmanager, receiver="ops-webhook",
                      labels={"app": "billing"}, timeoutSeconds=5)  # fmt: skip
    res = run(probe)
    assert (res.passed, res.measured) == (False, "test alert routed to blackhole")
    assert res.detail.endswith("was routed to blackhole, not to ops-webhook")


def test_an_alert_routed_but_never_delivered_fails(monitoring: Monitoring) -> None:
    probe = probe_for(alertmanagerUrl=monitoring.alertmanager, receiver="broken-webhook",
                      labels={"app": "broken"}, receiptUrl=monitoring.sink,
                      timeoutSeconds=4)  # fmt: skip
    res = run(probe)
    assert not res.passed
    assert res.measured is not None and res.measured.endswith(", not received")
    assert "was routed to broken-webhook but never showed at" in res.detail


def test_an_alert_that_never_reaches_alertmanager_fails(monitoring: Monitoring) -> None:
    res = run(probe_for(alertmanagerUrl=monitoring.dead, receiver="ops-webhook",
                        labels={"app": "analytics"}, timeoutSeconds=3))  # fmt: skip
    assert (res.passed, res.measured) == (False, "no answer")
    assert res.detail.startswith(f"{monitoring.dead}/api/v2/alerts: ")
    assert "Connection refused" in res.detail
    # Prometheus pointed at another Alertmanager than the one its alerts go to
    res = run(probe_for(prometheusUrl=monitoring.prometheus, job="analytics",
                        alertmanagerUrl=monitoring.dead, receiver="ops-webhook",
                        timeoutSeconds=3))  # fmt: skip
    assert not res.passed
    assert f"Prometheus does not send its alerts to {monitoring.dead}" in res.detail


def test_site_validation_names_the_field() -> None:
    def problem(**check: Any) -> str:
        with pytest.raises(ValidationError) as caught:
            probe_for(**check)
        return str(caught.value)

    assert "`prometheusUrl`: expected an http" in problem(prometheusUrl="prom:9090", job="j")
    assert "set `prometheusUrl`" in problem(alertRules=["A"], alertmanagerUrl="http://a",
                                            receiver="r")  # fmt: skip
    assert "both `alertmanagerUrl` and `receiver`" in problem(alertmanagerUrl="http://a")
    assert "`labels`: 'cutover_probe' is set by the probe" in problem(
        alertmanagerUrl="http://a", receiver="r", labels={"cutover_probe": "x"}
    )
    assert "nothing to verify" in problem()
    # placeholders are filled in per application (tests/test_templating.py); unknown ones
    # are refused naming the field
    assert "`instance`: unknown placeholder {target}" in problem(
        prometheusUrl="http://p", job="j", instance="{target}"
    )
