"""The DNS adapter against a real BIND 9 (tests/bind_fixtures.py): the TTL pre-check, the
switch and its rollback (compare-and-swap, verified by query), TSIG failures, idempotency,
and the key staying secret."""

from __future__ import annotations

import contextlib
import http.server
import logging
import socket
import threading
import time
import traceback
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dns.exception
import dns.message
import dns.update
import pytest
from temporalio.exceptions import ApplicationError

from activities.dns import DnsActivities
from adapters.dns.probe import dns_probe
from adapters.dns.records import TtlMarker, lower_ttl
from adapters.dns.server import DnsServer, TcpTransport, marker_name, record_name
from adapters.dns.tsig import load_tsig_key, parse_tsig_key
from cutover.models import CheckInput, CheckResult, StepContext, StepInput, StepResult
from cutover.runbook import Runbook
from cutover.site import DnsProbe, SiteConfig
from tests.bind_fixtures import ZONE, BindServer
from tests.factories import SEED

SOURCE, TARGET = "10.0.0.1", "10.1.0.5"


def record_acts(**kw: Any) -> DnsActivities:
    """The DNS activities for tests of the record logic: their sources are addresses, not
    services, so restore_dns does not wait for them to serve (tested below)."""
    return DnsActivities(source_health_timeout=None, **kw)


def step_input(
    bind: BindServer,
    step: str = "update_dns",
    *,
    name: str = "app",
    ttl: int = 60,
    facts: dict[str, str] | None = None,
    source: str | None = f"{SOURCE}:8080",
    target: str | None = f"{TARGET}:8080",
    **dns: Any,
) -> StepInput:
    endpoint: dict[str, Any] = {"dns": {"name": name, "ttl": ttl}}
    if source:
        endpoint["sourceAddress"] = source
    if target:
        endpoint["targetAddress"] = target
    rb = Runbook.model_validate(
        {**SEED, "cutoverSteps": [*SEED["cutoverSteps"], "update_dns"], "endpoint": endpoint}
    )
    ctx = StepContext(
        workflowId=f"cutover-{rb.application}",
        application=rb.application,
        wave="2",
        runbook=rb,
        site=SiteConfig(dns=bind.settings(**dns)),
        facts=facts or {},
    )
    return StepInput(step=step, context=ctx)


def check(bind: BindServer, name: str = "app", **fields: Any) -> tuple[CheckInput, DnsProbe]:
    probe = DnsProbe(type="dns", name=name, **fields)
    inp = CheckInput(
        name="dns_ttl_lowered",
        phase="pre",
        application="customer-analytics-api",
        probe=probe,
        dns=bind.settings(),
    )
    return inp, probe


def refused(exc: pytest.ExceptionInfo[ApplicationError], kind: str) -> ApplicationError:
    err = exc.value
    assert err.type == kind, err.message
    return err


def no_secret(bind: BindServer, *things: Any) -> None:
    for key_file in (bind.key_file, bind.wrong_secret_key, bind.unauthorised_key):
        secret = bind.secret(key_file)
        for thing in things:
            text = thing.model_dump_json() if hasattr(thing, "model_dump_json") else repr(thing)
            assert secret not in text and secret not in str(thing)


# ------------------------------------------------------------------ key file, names


def test_key_file_parsing(tmp_path: Path, bind: BindServer) -> None:
    key = load_tsig_key(str(bind.key_file))
    assert key.name.to_text() == "cutover-key." and key.algorithm.to_text() == "hmac-sha256."
    assert bind.secret() not in repr(key) and bind.secret() not in str(key)

    # comments (and a secret holding "//") are read like BIND reads them
    text = (
        "# made by tsig-keygen\n// another comment\n/* and\n one */\n"
        'key "k1" {\n  algorithm HMAC-SHA512; // strong\n  secret "ab//cd+/Ef==";\n};\n'
    )
    k = parse_tsig_key(text, "k1.key")
    assert k.secret == __import__("base64").b64decode("ab//cd+/Ef==")
    assert k.algorithm.to_text() == "hmac-sha512."

    problems = {
        "two keys": (bind.key_file.read_text() + bind.unauthorised_key.read_text(), "2 keys"),
        "no key": ("# empty\n", "0 keys"),
        "bad algorithm": ('key "k" { algorithm hmac-foo; secret "c2VjcmV0"; };', "hmac-foo"),
        "bad secret": ('key "k" { algorithm hmac-sha256; secret "n0t base64!"; };', "base64"),
        "garbage": ("key k algorithm", "not a BIND key file"),
    }
    for label, (content, words) in problems.items():
        with pytest.raises(ApplicationError) as exc:
            parse_tsig_key(content, "site.key")
        err = refused(exc, "ConfigError")
        assert words in err.message and err.non_retryable, label
        assert "n0t" not in err.message
    with pytest.raises(ApplicationError) as exc:
        load_tsig_key(str(tmp_path / "missing.key"))
    assert "does not exist" in refused(exc, "ConfigError").message


def test_names_relative_or_absolute() -> None:
    assert str(record_name("app", "apps.test")) == "app.apps.test."
    assert str(record_name("app", "apps.test.")) == "app.apps.test."
    assert str(record_name("app.apps.test", "apps.test.")) == "app.apps.test."
    assert str(record_name("app.apps.test.", "apps.test")) == "app.apps.test."
    assert str(record_name("a.b", "apps.test.")) == "a.b.apps.test."
    assert str(record_name("apps.test", "apps.test.")) == "apps.test."
    assert str(marker_name(record_name("app", ZONE))) == "_cutover-ttl.app.apps.test."
    with pytest.raises(ApplicationError) as exc:
        record_name("app.example.com.", "apps.test.")
    assert "outside the site's DNS zone" in refused(exc, "ConfigError").message


# ------------------------------------------------------------------- TTL pre-check


def test_ttl_check_passes_on_a_low_ttl_and_says_the_age_is_unknown(bind: BindServer) -> None:
    res = dns_probe(*check(bind, "web", expectValue="10.0.0.2"))
    assert res.passed, res.describe()
    assert res.measured is not None and "TTL 30s" in res.measured and "10.0.0.2" in res.measured
    assert res.threshold is not None and "TTL <= 60s" in res.threshold
    assert "_cutover-ttl.web.apps.test." in res.detail and "unknown" in res.detail


def test_ttl_check_fails_on_a_high_ttl(bind: BindServer) -> None:
    inp, probe = check(bind, "app")
    res = dns_probe(inp, probe)
    assert not res.passed
    assert res.measured is not None and "TTL 3600s" in res.measured
    assert "above 60s" in res.detail
    # a probe threshold overrides the site's
    inp, probe = check(bind, "app", maxTtl=3600)
    assert dns_probe(inp, probe).passed


def test_ttl_check_compares_the_value(bind: BindServer) -> None:
    for name, expect, passed in [
        ("multi", "10.0.0.4, 10.0.0.3", True),
        ("multi", "10.0.0.3", False),
        ("web", "10.9.9.9", False),
    ]:
        inp, probe = check(bind, name, expectValue=expect, maxTtl=3600)
        res = dns_probe(inp, probe)
        assert res.passed is passed, res.describe()
    inp, probe = check(bind, "nothere")
    res = dns_probe(inp, probe)
    assert not res.passed and res.measured == "no such name (NXDOMAIN)"
    inp, probe = check(bind, "alias", rdtype="CNAME", expectValue="web.apps.test.", maxTtl=3600)
    assert dns_probe(inp, probe).passed


def test_lowered_ttl_passes_only_once_the_old_ttl_has_expired(bind: BindServer) -> None:
    t0 = float(int(time.time()))
    clock = [t0]
    acts = record_acts(clock=lambda: clock[0])
    lowered = acts.lower_dns_ttl(step_input(bind, "lower_dns_ttl", ttl=30))
    assert lowered.changed and lowered.facts["dns_original_ttl"] == "3600"
    # the server itself: same address, the low TTL, and the marker beside it
    assert bind.a("app") == ({SOURCE}, 30)
    marker = bind.query("_cutover-ttl.app", "TXT")
    assert marker is not None and marker[0].to_text() == f'"old=3600 at={int(t0)}"'

    inp, probe = check(bind, "app")
    res = acts.probe(inp, probe)
    assert not res.passed, res.describe()
    assert "published 0s ago" in (res.measured or "") and "previous TTL (3600s)" in res.detail

    clock[0] = t0 + 3599
    assert not acts.probe(inp, probe).passed
    clock[0] = t0 + 3600
    res = acts.probe(inp, probe)
    assert res.passed, res.describe()
    assert "published 3600s ago (previous TTL 3600s)" in (res.measured or "")

    # lowering again is a no-op that keeps the marker
    again = acts.lower_dns_ttl(step_input(bind, "lower_dns_ttl", ttl=30))
    assert not again.changed and again.facts["dns_ttl_lowered_at"] == str(int(t0))


def test_lowering_in_two_stages_keeps_the_later_deadline(bind: BindServer) -> None:
    settings = bind.settings()
    first = lower_ttl(settings, "app", 300, clock=lambda: 1_000_000.0)
    assert first.marker == TtlMarker(old=3600, at=1_000_000)
    second = lower_ttl(settings, "app", 30, clock=lambda: 1_000_010.0)
    assert second.changed and second.previous_ttl == 300
    assert second.marker == first.marker  # 3600 s from t0 ends after 300 s from t0+10
    assert bind.a("app") == ({SOURCE}, 30)


# ---------------------------------------------------------------- switch, rollback


def test_switch_and_rollback_verified_by_query(bind: BindServer) -> None:
    acts = record_acts()
    inp = step_input(bind, facts={"target_address": "10.1.0.7:8443"})
    res = acts.update_dns(inp)
    assert res.changed
    assert res.facts == {
        "dns_value": "10.1.0.7",
        "dns_previous_value": SOURCE,
        "dns_previous_ttl": "3600",
        "dns_original_ttl": "3600",
    }
    assert res.details["previousIsSource"] is True
    assert bind.a("app") == ({"10.1.0.7"}, 60)

    facts = {"target_address": "10.1.0.7:8443", **res.facts}
    back = acts.restore_dns(step_input(bind, "restore_dns", facts=facts))
    assert back.changed
    assert bind.a("app") == ({SOURCE}, 3600)
    no_secret(bind, res, back)


def test_round_robin_record_and_absolute_names(bind: BindServer) -> None:
    acts = record_acts()
    for name in ("multi.apps.test.", "multi.apps.test"):
        res = acts.update_dns(step_input(bind, name=name, ttl=20))
        assert res.facts["dns_previous_value"] == "10.0.0.3,10.0.0.4"
        assert bind.a("multi") == ({TARGET}, 20)
        acts.restore_dns(step_input(bind, "restore_dns", name="multi", facts=res.facts))
        assert bind.a("multi") == ({"10.0.0.3", "10.0.0.4"}, 300)


def test_switch_is_idempotent(bind: BindServer) -> None:
    acts = record_acts()
    first = acts.update_dns(step_input(bind))
    again = acts.update_dns(step_input(bind, facts=first.facts))
    assert first.changed and not again.changed
    assert "already pointed at the target" in str(again.details["note"])
    assert again.facts == first.facts  # read back from _cutover-prior
    assert bind.a("app") == ({TARGET}, 60)
    # already at the target with another TTL: only the TTL changes
    ttl_only = acts.update_dns(step_input(bind, ttl=30))
    assert ttl_only.changed and ttl_only.facts["dns_previous_value"] == SOURCE
    assert bind.a("app") == ({TARGET}, 30)
    # the workflow merges facts: the retry does not erase what the first attempt learnt
    facts = {**first.facts, **again.facts, **ttl_only.facts}
    assert facts["dns_previous_value"] == SOURCE
    assert acts.restore_dns(step_input(bind, "restore_dns", facts=facts)).changed
    again = acts.restore_dns(step_input(bind, "restore_dns", facts=facts))
    assert not again.changed and "already holds the previous value" in str(again.details["note"])
    assert bind.a("app") == ({SOURCE}, 3600)


def test_restore_when_never_switched_is_a_no_op(bind: BindServer) -> None:
    acts = record_acts()
    res = acts.restore_dns(step_input(bind, "restore_dns"))
    assert not res.changed
    # nor without a source address: the record does not hold the target
    res = acts.restore_dns(step_input(bind, "restore_dns", source=None))
    assert not res.changed and "never switched" in str(res.details["note"])
    assert bind.a("app") == ({SOURCE}, 3600)
    assert not bind.dirty()


def _delete(bind: BindServer, name: str, rdtype: str) -> None:
    key = load_tsig_key(str(bind.key_file))
    theirs = dns.update.UpdateMessage(ZONE, keyring=key, keyname=key.name)
    theirs.delete(name, rdtype)
    DnsServer.for_site(bind.settings()).update(theirs, f"deleting {name}", key)


def test_restore_without_facts_or_prior_record_uses_the_source_address(
    bind: BindServer,
) -> None:
    """No facts and no _cutover-prior record (deleted by hand, or the record pointed at the
    target before the cutover): the runbook's source address is the last resort."""
    acts = record_acts()
    acts.update_dns(step_input(bind))
    _delete(bind, "_cutover-prior.app", "TXT")
    res = acts.restore_dns(step_input(bind, "restore_dns", source="10.0.0.1:8080"))
    assert res.changed
    assert bind.a("app") == ({SOURCE}, 60)  # previous TTL unknown: the current one stays
    acts.update_dns(step_input(bind))
    _delete(bind, "_cutover-prior.app", "TXT")
    with pytest.raises(ApplicationError) as exc:
        acts.restore_dns(step_input(bind, "restore_dns", source=None))
    assert "endpoint.sourceAddress" in refused(exc, "ConfigError").message


class _VerifyFails(TcpTransport):
    """The update reaches the server, then the verification read times out (once)."""

    def __init__(self) -> None:
        self.updated = self.failed = False

    def send(
        self, message: dns.message.Message, address: str, port: int, timeout: float
    ) -> dns.message.Message:
        if isinstance(message, dns.update.UpdateMessage):
            self.updated = True
        elif self.updated and not self.failed:
            self.failed = True
            raise dns.exception.Timeout
        return super().send(message, address, port, timeout)


def test_a_retried_switch_still_restores_the_original_without_a_source_address(
    bind: BindServer,
) -> None:
    """update_dns's first attempt lands but never reports (its verification read fails, or
    the worker dies): the retry, on a fresh activity (another worker), still learns what
    the switch replaced, so restore_dns restores it with no endpoint.sourceAddress."""
    flaky = _VerifyFails()
    with pytest.raises(ApplicationError) as exc:
        record_acts(transport=flaky).update_dns(step_input(bind, source=None))
    assert refused(exc, "DnsUnavailable").non_retryable is False and flaky.failed
    assert bind.a("app") == ({TARGET}, 60)  # it landed
    # the same update wrote what it replaced, beside the record
    prior = bind.query("_cutover-prior.app", "TXT")
    assert prior is not None and f"prev={SOURCE} ttl=3600 orig=3600 to={TARGET}" in str(prior)

    retry = record_acts().update_dns(step_input(bind, source=None))
    assert not retry.changed
    assert retry.facts["dns_previous_value"] == SOURCE
    assert retry.facts["dns_previous_ttl"] == "3600"
    # a second retry as well, and the compensation on yet another worker with only the
    # retries' facts
    record_acts().update_dns(step_input(bind, source=None))
    back = record_acts().restore_dns(step_input(bind, "restore_dns", facts=retry.facts))
    assert back.changed and bind.a("app") == ({SOURCE}, 3600)
    assert bind.query("_cutover-prior.app", "TXT") is None
    # with no facts at all (every result lost), the zone alone says what to restore
    record_acts().update_dns(step_input(bind, source=None))
    record_acts().restore_dns(step_input(bind, "restore_dns", source=None))
    assert bind.a("app") == ({SOURCE}, 3600)


def test_rollback_puts_back_the_ttl_from_before_lower_dns_ttl(bind: BindServer) -> None:
    acts = record_acts()
    acts.lower_dns_ttl(step_input(bind, "lower_dns_ttl", ttl=30))
    assert bind.a("app") == ({SOURCE}, 30)
    switched = acts.update_dns(step_input(bind, ttl=30))
    assert switched.facts["dns_previous_ttl"] == "30"
    assert switched.facts["dns_original_ttl"] == "3600"
    back = acts.restore_dns(step_input(bind, "restore_dns", facts=switched.facts))
    assert back.changed and back.details["ttl"] == 3600
    assert bind.a("app") == ({SOURCE}, 3600)
    assert bind.query("_cutover-ttl.app", "TXT") is None
    assert bind.query("_cutover-prior.app", "TXT") is None
    again = acts.restore_dns(step_input(bind, "restore_dns", facts=switched.facts))
    assert not again.changed


def test_rollback_before_the_switch_puts_back_the_lowered_ttl(bind: BindServer) -> None:
    """The cutover rolled back before update_dns changed anything (or its update never
    landed): the record keeps the source and gets its TTL from before the cutover back."""
    acts = record_acts()
    acts.lower_dns_ttl(step_input(bind, "lower_dns_ttl", ttl=30))
    back = acts.restore_dns(step_input(bind, "restore_dns"))
    assert back.changed and bind.a("app") == ({SOURCE}, 3600)
    assert bind.query("_cutover-ttl.app", "TXT") is None
    assert not acts.restore_dns(step_input(bind, "restore_dns")).changed
    # the same through restore_dns_ttl (for a rollback that never ran update_dns)
    acts.lower_dns_ttl(step_input(bind, "lower_dns_ttl", ttl=30))
    assert acts.restore_dns_ttl(step_input(bind, "restore_dns_ttl")).changed
    assert bind.a("app") == ({SOURCE}, 3600)


def test_finalize_puts_back_the_ttl_from_before_the_cutover_on_the_target(
    bind: BindServer,
) -> None:
    acts = record_acts()
    acts.lower_dns_ttl(step_input(bind, "lower_dns_ttl", ttl=30))
    switched = acts.update_dns(step_input(bind, ttl=30))
    assert bind.a("app") == ({TARGET}, 30)
    # a fresh worker with no facts: the zone says what the TTL was
    done = record_acts().restore_dns_ttl(step_input(bind, "restore_dns_ttl"))
    assert done.changed and done.details == {
        "name": "app.apps.test.",
        "ttl": 3600,
        "previousTtl": 30,
    }
    assert bind.a("app") == ({TARGET}, 3600)
    assert bind.query("_cutover-ttl.app", "TXT") is None
    assert bind.query("_cutover-prior.app", "TXT") is None
    again = acts.restore_dns_ttl(step_input(bind, "restore_dns_ttl", facts=switched.facts))
    assert not again.changed and bind.a("app") == ({TARGET}, 3600)
    # a site without a DNS server has nothing to restore
    no_dns = step_input(bind, "restore_dns_ttl")
    no_dns.context.site = SiteConfig(name="no-dns")
    assert not acts.restore_dns_ttl(no_dns).changed


def test_finalize_leaves_a_record_someone_changed_after_the_switch(bind: BindServer) -> None:
    acts = record_acts()
    acts.update_dns(step_input(bind))
    key = load_tsig_key(str(bind.key_file))
    theirs = dns.update.UpdateMessage(ZONE, keyring=key, keyname=key.name)
    theirs.replace("app", 120, "A", "10.8.8.8")
    DnsServer.for_site(bind.settings()).update(theirs, "their change", key)
    with pytest.raises(ApplicationError) as exc:
        acts.restore_dns_ttl(step_input(bind, "restore_dns_ttl"))
    err = refused(exc, "DnsConflict")
    assert "10.8.8.8" in err.message and "3600s before the cutover" in err.message
    assert bind.a("app") == ({"10.8.8.8"}, 120)


def test_missing_record_is_named(bind: BindServer) -> None:
    with pytest.raises(ApplicationError) as exc:
        record_acts().update_dns(step_input(bind, name="nothere"))
    err = refused(exc, "DnsRecordNotFound")
    assert "NXDOMAIN" in err.message and err.non_retryable


# ---------------------------------------------------------------- refused updates


def test_unsigned_update_is_refused(bind: BindServer) -> None:
    server = DnsServer.for_site(bind.settings())
    update = dns.update.UpdateMessage(ZONE)
    update.replace("app", 60, "A", TARGET)
    with pytest.raises(ApplicationError) as exc:
        server.update(update, "unsigned test update", None)
    err = refused(exc, "DnsUpdateRefused")
    assert "REFUSED" in err.message and "unsigned" in err.message and err.non_retryable
    assert bind.a("app") == ({SOURCE}, 3600)


def test_wrong_secret_is_badsig(bind: BindServer) -> None:
    inp = step_input(bind, tsigKeyFile=str(bind.wrong_secret_key))
    with pytest.raises(ApplicationError) as exc:
        record_acts().update_dns(inp)
    err = refused(exc, "DnsAuthFailed")
    assert "BADSIG" in err.message and "cutover-key" in err.message and err.non_retryable
    assert bind.a("app") == ({SOURCE}, 3600)
    no_secret(bind, err, err.message, inp)


def test_unknown_key_is_badkey(bind: BindServer) -> None:
    with pytest.raises(ApplicationError) as exc:
        record_acts().update_dns(step_input(bind, tsigKeyFile=str(bind.unknown_key)))
    err = refused(exc, "DnsAuthFailed")
    assert "BADKEY" in err.message and "stranger-key" in err.message


def test_unauthorised_key_is_refused(bind: BindServer) -> None:
    with pytest.raises(ApplicationError) as exc:
        record_acts().update_dns(step_input(bind, tsigKeyFile=str(bind.unauthorised_key)))
    err = refused(exc, "DnsUpdateRefused")
    assert (
        "REFUSED" in err.message and "other-key" in err.message and "update-policy" in err.message
    )
    assert bind.a("app") == ({SOURCE}, 3600)
    no_secret(bind, err)


def test_clock_skew_is_badtime(bind: BindServer, monkeypatch: pytest.MonkeyPatch) -> None:
    skewed = types.SimpleNamespace(time=lambda: time.time() - 3600)
    monkeypatch.setattr(dns.message, "time", skewed)
    with pytest.raises(ApplicationError) as exc:
        record_acts().update_dns(step_input(bind))
    err = refused(exc, "DnsAuthFailed")
    assert "BADTIME" in err.message and "clock" in err.message


def test_server_down_is_retryable(bind: BindServer) -> None:
    from tests.bind_fixtures import free_port

    with pytest.raises(ApplicationError) as exc:
        record_acts().update_dns(step_input(bind, port=free_port()))
    err = refused(exc, "DnsUnavailable")
    assert not err.non_retryable and "unreachable" in err.message
    inp, probe = check(bind)
    inp = inp.model_copy(update={"dns": bind.settings(port=free_port())})
    res = dns_probe(inp, probe)
    assert not res.passed and res.measured == "no answer"


# ------------------------------------------------------------ compare-and-swap


class _Interloper(TcpTransport):
    """Another client changes the record just before our update reaches the server."""

    def __init__(self, bind: BindServer, value: str) -> None:
        self.bind, self.value, self.fired = bind, value, False

    def send(
        self, message: dns.message.Message, address: str, port: int, timeout: float
    ) -> dns.message.Message:
        if isinstance(message, dns.update.UpdateMessage) and not self.fired:
            self.fired = True
            key = load_tsig_key(str(self.bind.key_file))
            theirs = dns.update.UpdateMessage(ZONE, keyring=key, keyname=key.name)
            theirs.replace("app", 120, "A", self.value)
            assert super().send(theirs, address, port, timeout).rcode() == 0
        return super().send(message, address, port, timeout)


def test_concurrent_change_is_detected(bind: BindServer) -> None:
    interloper = _Interloper(bind, "10.7.7.7")
    acts = record_acts(transport=interloper)
    with pytest.raises(ApplicationError) as exc:
        acts.update_dns(step_input(bind))
    err = refused(exc, "DnsConflict")
    assert interloper.fired and err.non_retryable
    assert "we read 10.0.0.1" in err.message and "now holds 10.7.7.7 (TTL 120s)" in err.message
    assert bind.a("app") == ({"10.7.7.7"}, 120)  # theirs, not overwritten
    # the step failed, so its undo must not touch their record either
    res = acts.restore_dns(step_input(bind, "restore_dns"))
    assert not res.changed and bind.a("app") == ({"10.7.7.7"}, 120)


def test_change_after_the_switch_blocks_the_restore(bind: BindServer) -> None:
    acts = record_acts()
    res = acts.update_dns(step_input(bind))
    key = load_tsig_key(str(bind.key_file))
    theirs = dns.update.UpdateMessage(ZONE, keyring=key, keyname=key.name)
    theirs.replace("app", 120, "A", "10.8.8.8")
    DnsServer.for_site(bind.settings()).update(theirs, "their change", key)
    with pytest.raises(ApplicationError) as exc:
        acts.restore_dns(step_input(bind, "restore_dns", facts=res.facts))
    err = refused(exc, "DnsConflict")
    assert "holds 10.8.8.8 (TTL 120s)" in err.message and "by hand" in err.message
    assert bind.a("app") == ({"10.8.8.8"}, 120)


def test_stale_expected_value_fails_the_swap(bind: BindServer) -> None:
    """The restore's prerequisite is the target: a record holding another value is kept."""
    facts = {"dns_previous_value": SOURCE, "dns_previous_ttl": "3600", "dns_value": "10.5.5.5"}
    acts = record_acts()
    acts.update_dns(step_input(bind, target="10.6.6.6:80"))
    with pytest.raises(ApplicationError) as exc:
        acts.restore_dns(step_input(bind, "restore_dns", facts=facts))
    refused(exc, "DnsConflict")
    assert bind.a("app") == ({"10.6.6.6"}, 60)


# ----------------------------------------------------------------- the secret


def test_the_key_never_leaks(bind: BindServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    acts = record_acts()
    outputs: list[Any] = []
    outputs.append(acts.lower_dns_ttl(step_input(bind, "lower_dns_ttl")))
    first = acts.update_dns(step_input(bind))
    outputs += [first, acts.update_dns(step_input(bind))]
    outputs.append(acts.restore_dns(step_input(bind, "restore_dns", facts=first.facts)))
    inp, probe = check(bind)
    outputs.append(acts.probe(inp, probe))
    for key_file in (bind.wrong_secret_key, bind.unauthorised_key, bind.unknown_key):
        with pytest.raises(ApplicationError) as exc:
            acts.update_dns(step_input(bind, tsigKeyFile=str(key_file)))
        err = exc.value
        outputs += [err, err.message, err.details, err.__cause__, err.__context__]
        outputs.append("".join(traceback.format_exception(err)))
    assert all(isinstance(o, StepResult | CheckResult) for o in outputs[:5])
    no_secret(bind, *outputs, caplog.text)
    for key_file in (bind.key_file, bind.wrong_secret_key, bind.unknown_key):
        assert bind.secret(key_file) not in caplog.text


# ---------------------------------------------------------------- restore: to a serving source


class _Status(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(type(self).status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def source_service(status: int) -> Iterator[str]:
    handler = type("H", (_Status,), {"status": status})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize("status", [None, 503])
def test_restore_waits_for_the_source_to_serve_and_keeps_the_record_when_it_does_not(
    bind: BindServer, status: int | None
) -> None:
    """A source VM that runs is not a source that serves: the record stays on the target
    (users keep a live side) and the error names the address and what it answered."""
    acts = DnsActivities(source_health_timeout=2)
    acts.update_dns(step_input(bind))
    with contextlib.ExitStack() as stack:
        source = _closed_port() if status is None else stack.enter_context(source_service(status))
        t0 = time.monotonic()
        with pytest.raises(ApplicationError) as exc:
            acts.restore_dns(step_input(bind, "restore_dns", source=source))
        assert time.monotonic() - t0 < 10  # bounded
    err = refused(exc, "SourceUnhealthy")
    assert f"the source at {source} does not serve" in err.message
    assert ("status 503" if status else "refused") in err.message
    assert not err.non_retryable  # a resume, once the source is fixed, moves users back
    assert bind.a("app") == ({TARGET}, 60)


def test_restore_moves_the_record_back_once_the_source_serves(bind: BindServer) -> None:
    acts = DnsActivities(source_health_timeout=10)
    acts.update_dns(step_input(bind))
    with source_service(200) as source:
        res = acts.restore_dns(step_input(bind, "restore_dns", source=source))
    assert res.changed and bind.a("app") == ({SOURCE}, 3600)
