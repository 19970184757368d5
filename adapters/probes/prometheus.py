"""The `prometheus` probe: an instant PromQL query compared with a threshold."""

from __future__ import annotations

import json
import math
import operator
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

from adapters.probes.result import check_result
from cutover.models import CheckInput, CheckResult
from cutover.site import PrometheusProbe

# ------------------------------------------------------------------- prometheus

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
}


def prometheus_probe(inp: CheckInput, probe: PrometheusProbe) -> CheckResult:
    """An instant query; its single value (a one-element vector, or a scalar) is compared
    with the threshold. An empty vector passes only with `emptyPasses`; more than one
    series, a range vector, or a query error fails with the reason."""
    threshold = f"value {probe.op} {probe.threshold:g}" + (
        " (an empty result passes)" if probe.emptyPasses else " (an empty result fails)"
    )
    query = urllib.parse.urlencode({"query": probe.query})
    url = f"{probe.url.rstrip('/')}/api/v1/query?{query}"
    req = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=probe.timeoutSeconds) as resp:
            raw = resp.read(16 << 20)
    except urllib.error.HTTPError as exc:
        # Prometheus answers a bad query with 400 or 422 and a JSON error document.
        raw = exc.read(1 << 16) or f"HTTP {exc.code}".encode()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return check_result(inp, False, "no response", threshold, f"{probe.url}: {reason}")
    try:
        series = _instant_series(raw)
    except _QueryError as exc:
        return check_result(inp, False, "query error", threshold, f"query {probe.query!r}: {exc}")
    if not series:
        detail = f"query {probe.query!r} returned no series"
        return check_result(inp, probe.emptyPasses, "empty result", threshold, detail)
    if len(series) > 1:
        named = ", ".join(_labels(labels) for labels, _ in series[:3])
        more = f" and {len(series) - 3} more" if len(series) > 3 else ""
        return check_result(
            inp,
            False,
            f"{len(series)} series",
            threshold,
            f"query {probe.query!r} returned {len(series)} series ({named}{more}); "
            "expected one: aggregate them (sum, max, ...) or select one by its labels",
        )
    value = series[0][1]
    passed = not math.isnan(value) and _OPS[probe.op](value, probe.threshold)
    return check_result(inp, passed, f"{value:.6g}", threshold, f"query {probe.query!r}")


class _QueryError(Exception):
    pass


def _instant_series(raw: bytes) -> list[tuple[dict[str, str], float]]:
    """The (labels, value) pairs of an instant query's answer (a scalar is one, unlabelled);
    raises _QueryError with Prometheus's reason, or for an answer of another shape."""
    try:
        doc: Any = json.loads(raw)
        if doc.get("status") != "success":
            raise _QueryError(f"{doc.get('errorType', 'error')}: {doc.get('error', '')}")
        kind, result = doc["data"]["resultType"], doc["data"]["result"]
        if kind == "scalar":
            return [({}, float(result[1]))]
        if kind != "vector":
            raise _QueryError(f"returned a {kind}; expected an instant vector or a scalar")
        return [(dict(r.get("metric", {})), float(r["value"][1])) for r in result]
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        raise _QueryError(f"not a Prometheus query answer: {raw[:200]!r}") from None


def _labels(metric: dict[str, str]) -> str:
    name = metric.get("__name__", "")
    labels = ",".join(f'{k}="{v}"' for k, v in sorted(metric.items()) if k != "__name__")
    return f"{name}{{{labels}}}"
