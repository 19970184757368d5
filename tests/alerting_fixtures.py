"""Fixtures: a real monitoring stack on loopback ports, per test module: Prometheus (Debian's
`prometheus`) scraping an application with alert rules loaded and sending to Alertmanager
(Debian's `prometheus-alertmanager`, clustering off), whose routes send an application's
alerts to a webhook receiver: `python -m adapters.probes.webhook_sink`, which keeps what it
got. Every process is started here and stopped by its PID. A missing binary FAILS the
tests that need it: never a skip.

Alertmanager's routes (matched on the `app` label):

    app="analytics" -> ops-webhook     (the sink: delivered and readable back)
    app="broken"    -> broken-webhook  (a webhook URL where nothing listens)
    anything else   -> blackhole       (no notification at all)
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import procs
from tests.prometheus_fixtures import App, _free_port, prometheus_binary

ROOT = Path(__file__).resolve().parent.parent
RULES = {
    "groups": [
        {
            "name": "analytics",
            "rules": [
                {"alert": "AnalyticsApiDown", "expr": 'up{job="analytics"} == 0', "for": "1m"},
                {
                    "alert": "AnalyticsErrorRate",
                    "expr": 'rate(app_requests_total{job="analytics",code=~"5.."}[1m]) > 1',
                    "for": "5m",
                },
            ],
        }
    ]
}


def _binary(name: str, package: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is missing: apt-get install -y {package}", pytrace=False)
    return found


class Process:
    """A server process of this module's, its output in a log; stopped by its PID."""

    def __init__(self, name: str, argv: list[str], workdir: Path, ready_url: str) -> None:
        self.name, self.ready_url = name, ready_url
        self.log = workdir / f"{name}.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, cwd=ROOT)  # fmt: skip

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                with urllib.request.urlopen(self.ready_url, timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        tail = self.log.read_text(errors="replace")[-2000:]
        pytest.fail(f"{self.name} did not become ready at {self.ready_url}:\n{tail}", pytrace=False)

    def stop(self) -> None:
        procs.stop(self.proc)


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.load(resp)


@dataclass
class Monitoring:
    prometheus: str
    alertmanager: str
    sink: str
    #: where a webhook receiver's notifications go unanswered (nothing listens)
    dead: str
    app: App

    def received(self) -> list[dict[str, Any]]:
        doc: dict[str, list[dict[str, Any]]] = get_json(self.sink)
        return doc["received"]


def _wait(what: str, check: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    pytest.fail(f"the monitoring stack never got ready: {what}", pytrace=False)


@pytest.fixture(scope="module")
def monitoring(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Monitoring]:
    prom_bin = prometheus_binary()
    am_bin = _binary("prometheus-alertmanager", "prometheus-alertmanager")
    work = tmp_path_factory.mktemp("monitoring")
    app = App()
    dead = f"http://127.0.0.1:{_free_port()}"
    sink_port, am_port, prom_port = _free_port(), _free_port(), _free_port()
    sink_url = f"http://127.0.0.1:{sink_port}"
    am_url = f"http://127.0.0.1:{am_port}"
    prom_url = f"http://127.0.0.1:{prom_port}"
    (work / "alertmanager.yml").write_text(json.dumps({  # YAML is a superset of JSON
        "route": {
            "receiver": "blackhole", "group_by": ["alertname", "cutover_probe"],
            "group_wait": "1s", "group_interval": "1s", "repeat_interval": "1h",
            "routes": [
                {"matchers": ['app="analytics"'], "receiver": "ops-webhook"},
                {"matchers": ['app="broken"'], "receiver": "broken-webhook"},
            ],
        },
        "receivers": [
            {"name": "blackhole"},
            {"name": "ops-webhook", "webhook_configs": [{"url": f"{sink_url}/alerts"}]},
            {"name": "broken-webhook", "webhook_configs": [{"url": f"{dead}/alerts"}]},
        ],
    }))  # fmt: skip
    (work / "rules.yml").write_text(json.dumps(RULES))
    (work / "prometheus.yml").write_text(json.dumps({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(work / "rules.yml")],
        "alerting": {
            "alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]
        },
        "scrape_configs": [
            {"job_name": "analytics", "static_configs": [{"targets": [app.address]}]},
            {"job_name": "gone", "static_configs": [{"targets": [dead.removeprefix("http://")]}]},
        ],
    }))  # fmt: skip
    procs = [
        Process("webhook-sink", [sys.executable, "-m", "adapters.probes.webhook_sink",
                                 "--listen", f"127.0.0.1:{sink_port}"], work, sink_url),
        Process("alertmanager", [am_bin, f"--config.file={work / 'alertmanager.yml'}",
                                 f"--storage.path={work / 'am-data'}",
                                 f"--web.listen-address=127.0.0.1:{am_port}",
                                 "--cluster.listen-address="], work, f"{am_url}/-/ready"),
        Process("prometheus", [prom_bin, f"--config.file={work / 'prometheus.yml'}",
                               f"--storage.tsdb.path={work / 'prom-data'}",
                               f"--web.listen-address=127.0.0.1:{prom_port}"],
                work, f"{prom_url}/-/ready"),
    ]  # fmt: skip
    try:
        for p in procs:
            p.wait_ready()

        def up() -> bool:
            targets = get_json(f"{prom_url}/api/v1/targets?state=active")["data"]
            health = {t["labels"]["job"]: t["health"] for t in targets["activeTargets"]}
            linked = get_json(f"{prom_url}/api/v1/alertmanagers")["data"]
            return health == {"analytics": "up", "gone": "down"} and bool(
                linked["activeAlertmanagers"]
            )

        _wait("both jobs scraped once, Alertmanager discovered", up)
        yield Monitoring(prom_url, am_url, sink_url, dead, app)
    finally:
        for p in reversed(procs):
            p.stop()
        app.stop()
