"""The `http` probe: one request (status, body, JSON, latency), or SLO sampling
(percentiles and error rate over many requests) with `sample_http`, the sampler the
`smoke_test` step shares.
"""

from __future__ import annotations

import http.client
import itertools
import json
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from adapters.probes.result import check_result
from adapters.progress import heartbeat
from cutover import facts as F
from cutover.models import CheckInput, CheckResult
from cutover.site import HttpProbe

#: What a sampled response body is read up to (the rest is not waited for).
BODY_LIMIT = 1 << 20


def _json_holds(want: Any, got: Any) -> bool:
    """`got` has every key of `want` with an equal value (objects compared recursively)."""
    if isinstance(want, dict):
        return isinstance(got, dict) and all(
            k in got and _json_holds(v, got[k]) for k, v in want.items()
        )
    return bool(want == got)


def http_probe(inp: CheckInput, probe: HttpProbe) -> CheckResult:
    want = [f"status {probe.expectStatus}"]
    if probe.bodyContains is not None:
        want.append(f"body contains {probe.bodyContains!r}")
    if probe.expectJson is not None:
        want.append(f"JSON body holds {json.dumps(probe.expectJson, sort_keys=True)}")
    if probe.maxLatencyMs is not None:
        want.append(f"latency <= {probe.maxLatencyMs:g} ms")
    threshold = ", ".join(want)
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(probe.url, timeout=probe.timeoutSeconds) as resp:
            status, body = resp.status, resp.read(1 << 20).decode(errors="replace")
    except urllib.error.HTTPError as exc:
        status, body = exc.code, ""
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return check_result(inp, False, "no response", threshold, f"{probe.url}: {reason}")
    ms = (time.perf_counter() - start) * 1000
    passed = status == probe.expectStatus
    if probe.bodyContains is not None:
        passed = passed and probe.bodyContains in body
    detail = ""
    if probe.expectJson is not None:
        try:
            holds = _json_holds(probe.expectJson, json.loads(body))
        except ValueError:
            holds, detail = False, "the body is not JSON"
        passed = passed and holds
        if not holds and not detail:
            detail = f"JSON body: {body[:300]}"
    if probe.maxLatencyMs is not None:
        passed = passed and ms <= probe.maxLatencyMs
    return check_result(inp, passed, f"status {status}, {ms:.1f} ms", threshold, detail)


# ----------------------------------------------------------------- SLO sampling


@dataclass(frozen=True)
class HttpSampling:
    """What `sample_http` measured: latencies of the requests that got an answer (or timed
    out), and every request that did not meet the expectation, by kind."""

    url: str
    #: Requests asked for, and sent (fewer only when the sampling was stopped).
    requested: int
    sent: int
    #: Sorted, in ms: every response (any status) and every timeout (at its elapsed time,
    #: a lower bound); connection errors have no latency and are only counted as errors.
    latencies_ms: tuple[float, ...]
    errors: int
    #: Error kind ("status 503", "timeout", "Connection refused", ...) -> count.
    error_kinds: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0

    def percentile(self, p: int) -> float | None:
        """Nearest-rank percentile (the smallest latency at or above p% of them)."""
        n = len(self.latencies_ms)
        if n == 0:
            return None
        return self.latencies_ms[max(1, (p * n + 99) // 100) - 1]

    @property
    def p50(self) -> float | None:
        return self.percentile(50)

    @property
    def p95(self) -> float | None:
        return self.percentile(95)

    @property
    def p99(self) -> float | None:
        return self.percentile(99)

    @property
    def max_ms(self) -> float | None:
        return self.latencies_ms[-1] if self.latencies_ms else None

    @property
    def error_rate(self) -> float:
        """Errors over requests sent (1.0 when none was: nothing was shown to work)."""
        return self.errors / self.sent if self.sent else 1.0

    def describe(self) -> str:
        """`p50 3.1 ms, p95 8.2 ms, p99 9.0 ms, errors 0/200`."""
        if not self.latencies_ms:
            return f"no response, errors {self.errors}/{self.sent}"
        parts = [f"p{p} {self.percentile(p):.1f} ms" for p in (50, 95, 99)]
        return ", ".join([*parts, f"errors {self.errors}/{self.sent}"])

    def describe_errors(self, most: int = 4) -> str:
        """`status 503 x3, timeout x1` (the most frequent kinds first)."""
        kinds = sorted(self.error_kinds.items(), key=lambda kv: (-kv[1], kv[0]))
        text = ", ".join(f"{k} x{n}" for k, n in kinds[:most])
        if len(kinds) > most:
            text += f", {len(kinds) - most} more kinds"
        return text


@dataclass(frozen=True)
class _Target:
    https: bool
    host: str
    port: int | None
    path: str

    @classmethod
    def parse(cls, url: str) -> _Target:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r} is not an http:// or https:// URL with a host")
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(parts.scheme == "https", parts.hostname, parts.port, path)


def _get_once(
    target: _Target,
    timeout: float,
    expect_status: int,
    body_contains: str | None,
    tls: ssl.SSLContext | None,
) -> tuple[float | None, str | None]:
    """One GET on a fresh connection, bounded by `timeout` in total (each socket operation
    gets what remains of it). Returns (latency ms or None, error kind or None)."""
    start = time.perf_counter()
    deadline = start + timeout
    conn: http.client.HTTPConnection
    if target.https:
        conn = http.client.HTTPSConnection(target.host, target.port, timeout=timeout, context=tls)
    else:
        conn = http.client.HTTPConnection(target.host, target.port, timeout=timeout)
    try:
        conn.connect()
        sock = conn.sock
        assert sock is not None

        def budget() -> float:
            left = deadline - time.perf_counter()
            if left <= 0:
                raise TimeoutError
            return left

        sock.settimeout(budget())
        conn.request("GET", target.path, headers={"Connection": "close", "Accept": "*/*"})
        resp = conn.getresponse()
        status = resp.status
        body = bytearray()  # kept only when its text is checked
        received = 0
        while received < BODY_LIMIT and not resp.isclosed():
            sock.settimeout(budget())
            chunk = resp.read(min(65536, BODY_LIMIT - received))
            if not chunk:
                break
            received += len(chunk)
            if body_contains is not None:
                body += chunk
    except TimeoutError:
        return (time.perf_counter() - start) * 1000, "timeout"
    except (OSError, http.client.HTTPException) as exc:
        return None, (getattr(exc, "strerror", None) or str(exc) or type(exc).__name__)
    finally:
        conn.close()
    ms = (time.perf_counter() - start) * 1000
    if ms > timeout * 1000:
        return ms, "timeout"
    if status != expect_status:
        return ms, f"status {status}"
    if body_contains is not None and body_contains not in body.decode(errors="replace"):
        return ms, f"body without {body_contains!r}"
    return ms, None


def sample_http(
    url: str,
    *,
    samples: int,
    concurrency: int = 1,
    timeout: float = 10.0,
    expect_status: int = 200,
    body_contains: str | None = None,
    stop: threading.Event | None = None,
) -> HttpSampling:
    """Send `samples` GETs to `url`, at most `concurrency` at a time, each on a fresh
    connection and bounded by `timeout` seconds; measure latency and errors.

    An error is a response other than `expect_status` (or without `body_contains`), a
    connection error, or a timeout. Redirects are not followed (a 301 is an error when 200
    is expected): the sampler judges exactly the URL it was given, without proxies. Setting
    `stop` ends the sampling early (no new request starts); `sent` says how many went.
    Blocking: call it from a thread (`asyncio.to_thread`) in async code.
    """
    if samples < 1 or concurrency < 1:
        raise ValueError("samples and concurrency must be at least 1")
    target = _Target.parse(url)
    tls = ssl.create_default_context() if target.https else None
    counter = itertools.count()
    lock = threading.Lock()
    latencies: list[float] = []
    kinds: Counter[str] = Counter()
    sent = 0

    def worker() -> None:
        nonlocal sent
        while next(counter) < samples and not (stop is not None and stop.is_set()):
            try:
                ms, kind = _get_once(target, timeout, expect_status, body_contains, tls)
            except Exception as exc:  # a sample, not the sampling, went wrong: count it
                ms, kind = None, f"{type(exc).__name__}: {exc}"
            with lock:
                sent += 1
                if ms is not None:
                    latencies.append(ms)
                if kind is not None:
                    kinds[kind] += 1

    start = time.perf_counter()
    workers = min(concurrency, samples)
    if workers == 1:
        worker()
    else:
        threads = [
            threading.Thread(target=worker, name=f"sample-http-{i}", daemon=True)
            for i in range(workers)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return HttpSampling(
        url=url,
        requested=samples,
        sent=sent,
        latencies_ms=tuple(sorted(latencies)),
        errors=sum(kinds.values()),
        error_kinds=dict(kinds),
        elapsed_s=time.perf_counter() - start,
    )


def is_slo_probe(probe: HttpProbe) -> bool:
    """More than one sample, or any SLO bound: judged by `sample_http`. One sample and no
    SLO bound keeps the single-request probe (`http_probe`: follows redirects, `status 200, 3.1
    ms`)."""
    bounds = (probe.maxP50Ms, probe.maxP95Ms, probe.maxP99Ms, probe.maxErrorRate)
    return probe.samples > 1 or any(b is not None for b in bounds)


def percent(rate: float) -> str:
    return f"{rate * 100:.3g}%"


def http_slo_probe(inp: CheckInput, probe: HttpProbe) -> CheckResult:
    """The SLO probe: every configured bound must hold. An unset `maxErrorRate` tolerates no
    error, as the single-request probe does."""
    s = sample_http(
        probe.url,
        samples=probe.samples,
        concurrency=probe.concurrency,
        timeout=probe.timeoutSeconds,
        expect_status=probe.expectStatus,
        body_contains=probe.bodyContains,
    )
    max_rate = probe.maxErrorRate if probe.maxErrorRate is not None else 0
    want = [f"status {probe.expectStatus}"]
    if probe.bodyContains is not None:
        want.append(f"body contains {probe.bodyContains!r}")
    broken: list[str] = []
    for label, value, bound in (
        ("p50", s.p50, probe.maxP50Ms),
        ("p95", s.p95, probe.maxP95Ms),
        ("p99", s.p99, probe.maxP99Ms),
        ("max latency", s.max_ms, probe.maxLatencyMs),
    ):
        if bound is None:
            continue
        want.append(f"{label} <= {bound:g} ms")
        if value is None:
            broken.append(f"{label} not measured (no response)")
        elif value > bound:
            broken.append(f"{label} {value:.1f} ms > {bound:g} ms")
    want.append(f"error rate <= {percent(max_rate)}")
    if s.error_rate > max_rate:
        broken.append(
            f"error rate {percent(s.error_rate)} ({s.errors}/{s.sent}) > {percent(max_rate)}"
        )
    measured = s.describe()
    if probe.maxLatencyMs is not None and s.max_ms is not None:
        measured += f", max {s.max_ms:.1f} ms"
    detail = "; ".join(broken)
    if s.errors:
        detail += ("; " if detail else "") + "errors: " + s.describe_errors()
    threshold = ", ".join(want) + f" ({probe.samples} samples, {probe.concurrency} concurrent)"
    facts = baseline_facts(s) if inp.phase == "pre" else {}
    return check_result(inp, not broken, measured, threshold, detail, facts)


def baseline_facts(s: HttpSampling) -> dict[str, str]:
    """A pre-check's sampling, as the source's baseline for `smoke_test` to compare with."""
    facts = {"baseline_error_rate": f"{s.error_rate:.6g}"}
    for p in (50, 95, 99):
        value = s.percentile(p)
        if value is not None:
            facts[F.baseline_ms(p)] = f"{value:.3f}"
    return facts


def wait_healthy(
    url: str,
    expect_status: int,
    timeout_s: float,
    *,
    interval_s: float = 1.0,
    successes: int = 2,
) -> str | None:
    """Poll `url` until it answers `expect_status` `successes` times in a row (None), or
    `timeout_s` passes (the last problem seen, e.g. "connection refused", "status 503").
    Heartbeats while it waits."""
    target = _Target.parse(url)
    deadline = time.monotonic() + timeout_s
    streak, last = 0, "no answer yet"
    while True:
        left = deadline - time.monotonic()
        _, problem = _get_once(target, max(0.5, min(5.0, left)), expect_status, None, None)
        streak = 0 if problem else streak + 1
        last = problem or last
        if streak >= successes:
            return None
        heartbeat({"waiting": "source health", "url": url, "last": last})
        if time.monotonic() + interval_s > deadline:
            return last
        time.sleep(interval_s)
