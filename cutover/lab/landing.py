"""The lab's landing zone: the services day-two checks verify, as plain processes started
and stopped by PID like the rest of the lab (`cutover.lab.stack`), each from Debian
(installed by scripts/setup.sh):

- backup: a restic repository (`<lab>/restic/repo`, its password in a file beside it); `up`
  backs up the day-two application's source disk (host and tag name it);
- monitoring and alert routing: Prometheus (:19090) scraping the application's target
  (`/metrics`, which the lab apps answer on both sides), its alert rules loaded, sending to
  Alertmanager (:19093, clustering off), whose route sends the application's alerts to a
  webhook receiver (:19095, `adapters.probes.webhook_sink`) whose receipts can be read;
- network policy: an nftables table in a network namespace the lab makes (`cutover-lab`):
  the flows the application needs, policy drop.

`break_check`/`fix_check` make one day-two check fail on purpose and well again: the
backup repository moved away, the application's alert route pointing elsewhere, the
application's nftables rule deleted.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_PORT, ALERTMANAGER_PORT, SINK_PORT = 19090, 19093, 19095
NETNS = "cutover-lab"
TABLE = "customer_analytics_api"
RECEIVER = "ops-webhook"
ALERT = "CustomerAnalyticsApiDown"
#: the knobs `break_check` takes, and the check each one makes fail
KNOBS = {
    "backup": "backup_success_last_24h, backup_job_succeeds, target_backup_failure",
    "alert-routing": "alerting_signals_present",
    "network-policy": "target_network_policy_validated",
}


class LandingError(RuntimeError):
    """A landing-zone service could not be set up (the message says what and where)."""


def tool(name: str, package: str) -> str:
    path = shutil.which(name, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
    if path is None:
        raise LandingError(f"{name} is missing: apt-get install -y {package} (scripts/setup.sh)")
    return path


def _spawn(argv: list[str], log: Path, cwd: Path) -> int:
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                cwd=cwd)  # fmt: skip
    return proc.pid


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def _wait(what: str, ready: Callable[[], bool], log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
            raise LandingError(f"{what} did not become ready in {timeout:g} s ({log}):\n{tail}")
        time.sleep(0.1)


# ---------------------------------------------------------------------------- backup


def restic_env(directory: Path) -> dict[str, str]:
    return {**os.environ, "RESTIC_PASSWORD_FILE": str(directory / "password"),
            "RESTIC_CACHE_DIR": str(directory / "cache")}  # fmt: skip


def backup_source(directory: Path, app: str, disk: Path) -> None:
    """A fresh repository with one backup of the application's source disk."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    (directory / "password").write_text(os.urandom(16).hex())
    (directory / "password").chmod(0o600)
    restic = tool("restic", "restic")
    env = restic_env(directory)
    repo = str(directory / "repo")
    for argv in (
        [restic, "--repo", repo, "init"],
        [restic, "--repo", repo, "backup", "--host", app, "--tag", "lab", str(disk)],
    ):
        done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise LandingError(f"{' '.join(argv[:4])}: {done.stderr.strip()}")


# ---------------------------------------------------------------------------- monitoring


def _alertmanager_cfg(app: str, route_to: str) -> dict[str, Any]:
    return {
        "route": {
            "receiver": "blackhole", "group_by": ["alertname", "cutover_probe"],
            "group_wait": "1s", "group_interval": "1s", "repeat_interval": "1h",
            "routes": [{"matchers": [f'app="{route_to}"'], "receiver": RECEIVER}],
        },
        "receivers": [
            {"name": "blackhole"},
            {"name": RECEIVER,
             "webhook_configs": [{"url": f"http://127.0.0.1:{SINK_PORT}/alerts"}]},
        ],
    }  # fmt: skip


def start_monitoring(directory: Path, app: str, target: str, pids: dict[str, Any]) -> None:
    """Webhook receiver, Alertmanager and Prometheus; their PIDs go into `pids`."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "alertmanager.yml").write_text(json.dumps(_alertmanager_cfg(app, app)))
    rules = {"groups": [{"name": app, "rules": [{
        "alert": ALERT, "expr": f'cutover_lab_up{{job="{app}"}} == 0', "for": "10m",
        "labels": {"app": app, "severity": "page"},
        "annotations": {"summary": f"{app} does not serve on its target"},
    }]}]}  # fmt: skip
    (directory / "rules.yml").write_text(json.dumps(rules))
    (directory / "prometheus.yml").write_text(json.dumps({
        "global": {"scrape_interval": "2s", "evaluation_interval": "2s"},
        "rule_files": [str(directory / "rules.yml")],
        "alerting": {"alertmanagers": [
            {"static_configs": [{"targets": [f"127.0.0.1:{ALERTMANAGER_PORT}"]}]}]},
        "scrape_configs": [{"job_name": app, "static_configs": [{"targets": [target]}]}],
    }))  # fmt: skip
    am = tool("prometheus-alertmanager", "prometheus-alertmanager")
    prom = tool("prometheus", "prometheus")
    pids["webhookSink"] = _spawn(
        [sys.executable, "-m", "adapters.probes.webhook_sink", "--listen",
         f"127.0.0.1:{SINK_PORT}"], directory / "webhook-sink.log", ROOT)  # fmt: skip
    pids["alertmanager"] = _spawn(
        [am, f"--config.file={directory / 'alertmanager.yml'}",
         f"--storage.path={directory / 'alertmanager'}",
         f"--web.listen-address=127.0.0.1:{ALERTMANAGER_PORT}", "--cluster.listen-address="],
        directory / "alertmanager.log", directory)  # fmt: skip
    pids["prometheus"] = _spawn(
        [prom, f"--config.file={directory / 'prometheus.yml'}",
         f"--storage.tsdb.path={directory / 'prometheus'}",
         f"--web.listen-address=127.0.0.1:{PROMETHEUS_PORT}"],
        directory / "prometheus.log", directory)  # fmt: skip
    _wait("the webhook receiver", lambda: _ready(f"http://127.0.0.1:{SINK_PORT}/"),
          directory / "webhook-sink.log")  # fmt: skip
    _wait("alertmanager", lambda: _ready(f"http://127.0.0.1:{ALERTMANAGER_PORT}/-/ready"),
          directory / "alertmanager.log")  # fmt: skip
    _wait("prometheus", lambda: _ready(f"http://127.0.0.1:{PROMETHEUS_PORT}/-/ready"),
          directory / "prometheus.log")  # fmt: skip


def wait_scraped(directory: Path, job: str, timeout: float = 30) -> None:
    """Until Prometheus has scraped `job` once and found it up (the application's services
    start after Prometheus), so a cutover started right after `lab up` meets a monitored
    target."""

    def up() -> bool:
        try:
            url = f"http://127.0.0.1:{PROMETHEUS_PORT}/api/v1/targets?state=active"
            with urllib.request.urlopen(url, timeout=2) as resp:
                doc = json.load(resp)
        except (OSError, ValueError):
            return False
        targets = doc.get("data", {}).get("activeTargets", [])
        return any(t["labels"].get("job") == job and t.get("health") == "up" for t in targets)

    _wait(f"prometheus scraping {job}", up, directory / "prometheus.log", timeout)


# ---------------------------------------------------------------------------- network policy


def _nft(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("ip", "iproute2"), "netns", "exec", NETNS,
                           tool("nft", "nftables"), *args], input=stdin, capture_output=True,
                          text=True, check=False)  # fmt: skip


def start_policy(port: int) -> None:
    """The network namespace and the application's table: its one flow, policy drop."""
    stop_policy()
    ip = tool("ip", "iproute2")
    done = subprocess.run([ip, "netns", "add", NETNS], capture_output=True, text=True,
                          check=False)  # fmt: skip
    if done.returncode != 0:
        raise LandingError(f"ip netns add {NETNS}: {done.stderr.strip()}")
    rules = f"""table inet {TABLE} {{
    chain input {{
        type filter hook input priority 0; policy drop;
        ct state established,related accept
        iif lo accept
        ip saddr 127.0.0.0/8 tcp dport {port} accept comment "app"
    }}
}}
"""
    done = _nft("-f", "-", stdin=rules)
    if done.returncode != 0:
        raise LandingError(f"nft -f (netns {NETNS}): {done.stderr.strip()}")


def stop_policy() -> None:
    with contextlib.suppress(LandingError):
        subprocess.run([tool("ip", "iproute2"), "netns", "delete", NETNS], capture_output=True,
                       check=False)  # fmt: skip


# ---------------------------------------------------------------------------- knobs


def break_check(lab: Path, knob: str, app: str) -> str:
    """Make the day-two checks behind `knob` fail; returns what was done."""
    if knob == "backup":
        repo = lab / "restic" / "repo"
        if repo.exists():
            repo.rename(lab / "restic" / "repo.broken")
        return f"moved the backup repository away ({repo}): backups and their checks fail"
    if knob == "alert-routing":
        cfg = lab / "monitoring" / "alertmanager.yml"
        cfg.write_text(json.dumps(_alertmanager_cfg(app, "nobody")))
        _reload_alertmanager(lab)
        return f"alertmanager now routes {app}'s alerts nowhere ({cfg})"
    if knob == "network-policy":
        listed = _nft("-a", "list", "chain", "inet", TABLE, "input")
        handles = [line.rsplit("# handle ", 1)[1].strip()
                   for line in listed.stdout.splitlines()
                   if 'comment "app"' in line and "# handle " in line]  # fmt: skip
        for h in handles:
            _nft("delete", "rule", "inet", TABLE, "input", "handle", h)
        return f"deleted {app}'s allow rule from table inet {TABLE} (netns {NETNS})"
    raise LandingError(f"unknown knob {knob!r}: one of {', '.join(KNOBS)}")


def fix_check(lab: Path, knob: str, app: str, port: int) -> str:
    if knob == "backup":
        broken = lab / "restic" / "repo.broken"
        if broken.exists():
            broken.rename(lab / "restic" / "repo")
        return "backup repository back in place"
    if knob == "alert-routing":
        (lab / "monitoring" / "alertmanager.yml").write_text(
            json.dumps(_alertmanager_cfg(app, app))
        )
        _reload_alertmanager(lab)
        return f"alertmanager routes {app}'s alerts to {RECEIVER} again"
    if knob == "network-policy":
        start_policy(port)
        return f"table inet {TABLE} restored"
    raise LandingError(f"unknown knob {knob!r}: one of {', '.join(KNOBS)}")


def _reload_alertmanager(lab: Path) -> None:
    state = json.loads((lab / "lab.json").read_text())
    pid = state["pids"].get("alertmanager")
    if not pid:
        raise LandingError("alertmanager is not running in this lab")
    os.kill(pid, signal.SIGHUP)  # reloads its configuration
    time.sleep(1.0)
