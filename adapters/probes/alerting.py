"""The `alert-routing` probe: Prometheus has the application's alert rules and scrapes its
target, and a test alert posted to Alertmanager is routed to the expected receiver (and,
with `receiptUrl`, delivered there).

The test alert carries a unique `cutover_probe` label, so its group and its receipt are
told apart from every other alert; it is resolved (endsAt now) when the probe is done.
"""

from __future__ import annotations

import contextlib
import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from adapters.probes.result import check_result
from cutover.models import CheckInput, CheckResult
from cutover.site import AlertRoutingProbe

POLL = 0.25


class _Unreachable(Exception):
    pass


def _call(url: str, timeout: float, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        url,
        data=data,
        method="GET" if body is None else "POST",
        headers={"Accept": "application/json", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=max(timeout, 0.5)) as resp:
            raw = resp.read(16 << 20)
    except urllib.error.HTTPError as exc:
        text = exc.read(300).decode(errors="replace")
        raise _Unreachable(f"{url}: HTTP {exc.code} {text}".strip()) from None
    except (urllib.error.URLError, OSError) as exc:
        raise _Unreachable(f"{url}: {getattr(exc, 'reason', exc)}") from None
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


def _api(base: str, path: str, **query: str) -> str:
    q = f"?{urllib.parse.urlencode(query)}" if query else ""
    return f"{base.rstrip('/')}{path}{q}"


# -------------------------------------------------------------------- Prometheus


def _rules(probe: AlertRoutingProbe, timeout: float) -> tuple[str, list[str]]:
    assert probe.prometheusUrl is not None
    doc = _call(_api(probe.prometheusUrl, "/api/v1/rules", type="alert"), timeout)
    loaded: dict[str, dict[str, Any]] = {}
    for group in doc["data"]["groups"]:
        for rule in group.get("rules", []):
            loaded.setdefault(rule["name"], rule)
    problems = []
    for name in probe.alertRules:
        rule = loaded.get(name)
        if rule is None:
            problems.append(f"alert rule {name} is not loaded in Prometheus")
        elif rule.get("health") == "err":
            problems.append(f"alert rule {name} fails to evaluate: {rule.get('lastError', '')}")
    ok = len(probe.alertRules) - len(problems)
    return f"{ok}/{len(probe.alertRules)} alert rules loaded", problems


def _targets(probe: AlertRoutingProbe, timeout: float) -> tuple[str, list[str]]:
    assert probe.prometheusUrl is not None and probe.job is not None
    doc = _call(_api(probe.prometheusUrl, "/api/v1/targets", state="active"), timeout)
    mine = [
        t
        for t in doc["data"]["activeTargets"]
        if t.get("labels", {}).get("job") == probe.job
        and (probe.instance is None or t.get("labels", {}).get("instance") == probe.instance)
    ]
    which = f"job {probe.job}" + (f" instance {probe.instance}" if probe.instance else "")
    if not mine:
        return f"{which}: not scraped", [f"Prometheus scrapes no target of {which}"]
    down = [t for t in mine if t.get("health") != "up"]
    problems = [
        f"{t['labels'].get('instance', '?')} is {t.get('health')}"
        + (f" ({t['lastError']})" if t.get("lastError") else "")
        for t in down
    ]
    return f"{which}: {len(mine) - len(down)}/{len(mine)} targets up", problems


def _sends_to(probe: AlertRoutingProbe, timeout: float) -> list[str]:
    assert probe.prometheusUrl is not None and probe.alertmanagerUrl is not None
    doc = _call(_api(probe.prometheusUrl, "/api/v1/alertmanagers"), timeout)
    urls = [a["url"] for a in doc["data"].get("activeAlertmanagers", [])]
    want = urllib.parse.urlsplit(probe.alertmanagerUrl).netloc
    if any(urllib.parse.urlsplit(u).netloc == want for u in urls):
        return []
    return [
        f"Prometheus does not send its alerts to {probe.alertmanagerUrl} (it sends to: "
        f"{', '.join(urls) or 'no Alertmanager'})"
    ]


# ------------------------------------------------------------------ Alertmanager


def _alert(
    probe: AlertRoutingProbe, probe_id: str, inp: CheckInput, starts: datetime, ends: datetime
) -> Any:
    return [
        {
            "labels": {"alertname": probe.alertname, "cutover_probe": probe_id, **probe.labels},
            "annotations": {
                "summary": f"cutover test alert of check {inp.name} ({inp.application}); "
                "resolved by the probe, no action needed"
            },
            "startsAt": starts.isoformat(),
            "endsAt": ends.isoformat(),
        }
    ]


def _routed_to(probe: AlertRoutingProbe, probe_id: str, timeout: float) -> list[str]:
    """The receivers whose groups hold the test alert (empty: not (yet) in any)."""
    assert probe.alertmanagerUrl is not None
    groups = _call(
        _api(probe.alertmanagerUrl, "/api/v2/alerts/groups", filter=f'cutover_probe="{probe_id}"'),
        timeout,
    )
    return sorted(
        {
            g["receiver"]["name"]
            for g in groups or []
            if any(a.get("labels", {}).get("cutover_probe") == probe_id for a in g["alerts"])
        }
    )


def _test_alert(
    inp: CheckInput, probe: AlertRoutingProbe, deadline: float
) -> tuple[str, list[str]]:
    assert probe.alertmanagerUrl is not None and probe.receiver is not None
    probe_id = uuid.uuid4().hex
    posted = time.monotonic()
    starts = datetime.now(UTC)
    ends = starts + timedelta(seconds=probe.timeoutSeconds + 300)
    _call(_api(probe.alertmanagerUrl, "/api/v2/alerts"), deadline - posted,
          _alert(probe, probe_id, inp, starts, ends))  # fmt: skip
    try:
        receivers: list[str] = []
        while not receivers and time.monotonic() < deadline:
            receivers = _routed_to(probe, probe_id, deadline - time.monotonic())
            if not receivers:
                time.sleep(POLL)
        if not receivers:
            return "test alert not routed", [
                f"test alert {probe_id} reached no receiver's group within "
                f"{probe.timeoutSeconds:g}s"
            ]
        routed = time.monotonic() - posted
        if probe.receiver not in receivers:
            return f"test alert routed to {', '.join(receivers)}", [
                f"test alert {probe_id} was routed to {', '.join(receivers)}, "
                f"not to {probe.receiver}"
            ]
        said = f"test alert routed to {probe.receiver} in {routed:.1f} s"
        if probe.receiptUrl is None:
            return said, []
        while time.monotonic() < deadline:
            got = _call(probe.receiptUrl, deadline - time.monotonic())
            if probe_id in (got if isinstance(got, str) else json.dumps(got)):
                return f"{said}, received in {time.monotonic() - posted:.1f} s", []
            time.sleep(POLL)
        return f"{said}, not received", [
            f"test alert {probe_id} was routed to {probe.receiver} but never showed at "
            f"{probe.receiptUrl} within {probe.timeoutSeconds:g}s (the receiver's "
            "notification failed or was not sent)"
        ]
    finally:
        # resolve it (same start, ends now): the test alert does not stay firing for
        # whoever watches; a failure here changes nothing of what was verified
        with contextlib.suppress(_Unreachable):
            _call(_api(probe.alertmanagerUrl, "/api/v2/alerts"), 5,
                  _alert(probe, probe_id, inp, starts, datetime.now(UTC)))  # fmt: skip


def _threshold(probe: AlertRoutingProbe) -> str:
    want = []
    if probe.alertRules:
        want.append(f"alert rules loaded: {', '.join(probe.alertRules)}")
    if probe.job:
        want.append(
            f"job {probe.job}" + (f" instance {probe.instance}" if probe.instance else "")
            + " scraped and up"
        )  # fmt: skip
    if probe.prometheusUrl and probe.alertmanagerUrl:
        want.append("Prometheus sends to the Alertmanager")
    if probe.receiver:
        want.append(
            f"a test alert routed to {probe.receiver}"
            + (" and received" if probe.receiptUrl else "")
            + f" within {probe.timeoutSeconds:g}s"
        )
    return "; ".join(want)


def alert_routing_probe(inp: CheckInput, probe: AlertRoutingProbe) -> CheckResult:
    threshold = _threshold(probe)
    deadline = time.monotonic() + probe.timeoutSeconds
    measured: list[str] = []
    problems: list[str] = []

    def left() -> float:
        return max(deadline - time.monotonic(), 0.5)

    try:
        if probe.prometheusUrl is not None:
            if probe.alertRules:
                said, found = _rules(probe, left())
                measured.append(said)
                problems += found
            if probe.job is not None:
                said, found = _targets(probe, left())
                measured.append(said)
                problems += found
            if probe.alertmanagerUrl is not None:
                problems += _sends_to(probe, left())
        if probe.alertmanagerUrl is not None:
            said, found = _test_alert(inp, probe, deadline)
            measured.append(said)
            problems += found
    except _Unreachable as exc:
        measured.append("no answer")
        problems.append(str(exc))
    except (KeyError, TypeError, AttributeError) as exc:
        measured.append("unexpected answer")
        problems.append(f"an answer without {exc}")
    return check_result(inp, not problems, "; ".join(measured), threshold, "; ".join(problems))
