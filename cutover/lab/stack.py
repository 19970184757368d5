"""The local lab: every component a cutover touches, on loopback, as plain processes.

`cutover lab up` starts, each installed by scripts/setup.sh:

- the embedded Temporal server (durable SQLite `<lab>/temporal.db`, Web UI, our search
  attributes) on 127.0.0.1:7233 / :8233;
- our vSphere simulator on :18443, one VM per application (`DC0_C0_H0_VM<i>`, given the
  memory the guest needs) whose disk is a real file in its datastore with data the lab can
  check and a guest that boots (`cutover.lab.disk`, `cutover.lab.guest`);
- a private libvirtd (+ virtlogd) with the QEMU driver; the site asks for domain type
  `qemu` (TCG): the guest's kernel hangs under this machine's nested KVM;
- BIND authoritative for `lab.test.` on :15353, taking TSIG-signed updates; one A record
  per application (`<app>.lab.test.` -> its source, TTL 30: already lowered for the wave);
- HAProxy with one frontend on :18100 routing `/<app>/...` to the application's backend
  (servers `source`, and `target` in maintenance until the switch); admin socket;
- the applications (`cutover.lab.apps`): a source and a target HTTP service each;
- with `day_two` (the default): the seed's application `customer-analytics-api` (a VM of
  its own, tagged for the runbook's default selector, not in the demo's wave) and the
  landing zone its day-two checks verify (`cutover.lab.landing`: restic, Prometheus,
  Alertmanager and a webhook receiver, an nftables policy in network namespace
  `cutover-lab`).

It writes the site config (`<lab>/site.yaml`), a runbook per application and a wave file.
Governance (issue 13): keys under `<lab>/keys/` (`lab-operator` starts and steers,
`ops-lead` approves, `worker` signs the worker's audit log and a wave's relayed rollbacks;
kept across `up`s), the site's `access:` policy naming them, the applications' labels
(tenant `lab`, tier, criticality), and WorkloadPolicy documents (`<lab>/workload-policies.yaml`,
the seed's regulated-tier policy adapted to the lab) the site reads in. The lab's worker
appends to `<lab>/audit.jsonl` (a fresh one per lab: its records' histories live in the lab's
Temporal database).
State (PIDs, addresses) is `<lab>/lab.json`; `down` stops exactly those PIDs and removes
what cutovers made (domains, pools, volumes, staging); `up` after a crash does that first.
Staging and target pools live in /var/lib/cutover/lab: QEMU runs as `libvirt-qemu` and must
reach the volumes.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rcode
import yaml

from cutover import server
from cutover.disknames import volume_name
from cutover.lab import disk, landing, libvirtd, vcsim

ROOT = Path(__file__).resolve().parents[2]
LAB = ROOT / ".cutover" / "lab"
DATA = Path("/var/lib/cutover/lab")
LIBVIRT_SOCK = Path("/run/cutover/lab-libvirtd")
TEMPORAL_PORT, UI_PORT, VCSIM_PORT, DNS_PORT, LB_PORT = 7233, 8233, 18443, 15353, 18100
ZONE = "lab.test."
MiB = 1 << 20


@dataclass(frozen=True)
class App:
    name: str
    index: int
    #: what the demo wave shows with it: completes | criterion-rollback | step-failure
    scenario: str

    @property
    def vm(self) -> str:
        return f"DC0_C0_H0_VM{self.index}"

    @property
    def source(self) -> str:
        return f"127.0.1.{self.index + 1}:8080"

    @property
    def target(self) -> str:
        return f"127.0.2.{self.index + 1}:8080"


APPS = [
    App("shop", 0, "completes"),
    App("billing", 1, "criterion-rollback"),
    App("search", 2, "step-failure"),
]
#: The seed article's application: its runbook (examples/customer-analytics-api.yaml) runs
#: unedited in the lab against the landing zone's day-two checks (cutover.lab.landing). Its
#: VM comes after the wave's; it is not in the demo's wave (its window is the seed's 90 min).
DAY_TWO = "customer-analytics-api"
SEED_RUNBOOK = ROOT / "examples" / "customer-analytics-api.yaml"
#: The lab's principals: who starts and steers its cutovers, who approves them, and its
#: worker (signs the audit log and the rollbacks a wave relays).
OPERATOR, APPROVER, WORKER = "lab-operator", "ops-lead", "worker"
#: The zone of the lab's target pool (workload policies' `compliance.residency`).
POOL_ZONE = "lab-zone-a"
#: Each application's labels (its tenant, tier, criticality): what access rules and workload
#: policies match. billing is the regulated one (the demo approves it).
LABELS: dict[str, dict[str, str]] = {
    "shop": {"tier": "standard", "criticality": "high"},
    "billing": {"tier": "regulated", "criticality": "critical"},
    "search": {"tier": "standard", "criticality": "medium"},
    DAY_TWO: {"tier": "standard", "criticality": "high"},
}


class LabError(RuntimeError):
    """The lab could not do what was asked (the message says what and where)."""


def state_file() -> Path:
    return LAB / "lab.json"


def key_file(name: str) -> Path:
    """A lab principal's private key (`--key` of the CLI; its public key: NAME.pub)."""
    return LAB / "keys" / f"{name}.key"


def audit_log_file() -> Path:
    """The audit log the lab's worker appends to (`cutover audit verify`)."""
    return LAB / "audit.jsonl"


def _lab_key(name: str) -> str:
    """The principal's public key text; its key pair is made once and kept across `up`s
    (an operator's $CUTOVER_KEY stays valid)."""
    from cutover.keyfiles import create_key, load_private_key
    from cutover.signing import public_key_text

    path = key_file(name)
    if not path.exists():
        return create_key(name, path.parent)[2]
    text = public_key_text(load_private_key(path)[1].public_key())
    path.with_suffix(".pub").write_text(text + "\n", encoding="utf-8")
    return text


def access_policy(keys: dict[str, str]) -> dict[str, Any]:
    """The lab's access policy: signed requests only; its operator and approver act on the
    lab tenant's applications; whoever started a cutover does not approve it."""
    from cutover.policy import DEFAULT_ROLES

    every = ["start", "approve", "rollback", "extend", "finalize", "resume", "pause", "cancel"]
    return {
        "requireSignatures": True,
        "separationOfDuties": True,
        "principals": {
            OPERATOR: {"publicKey": keys[OPERATOR], "roles": ["operator", "wave-runner"],
                       "tenant": "lab", "team": "migration"},
            APPROVER: {"publicKey": keys[APPROVER], "roles": ["approver"], "tenant": "lab",
                       "team": "platform"},
            WORKER: {"publicKey": keys[WORKER], "roles": ["worker"]},
        },
        "roles": {**{r: list(a) for r, a in DEFAULT_ROLES.items()}, "worker": ["rollback"]},
        "rules": [
            {"effect": "allow", "actions": every, "principal": {"tenant": "$app.tenant"}},
            # the rollbacks a wave's cancel relays (the wave checked who cancelled)
            {"effect": "allow", "actions": ["rollback"], "principal": {"roles": ["worker"]}},
        ],
    }  # fmt: skip


def workload_policies() -> list[dict[str, Any]]:
    """The seed's regulated-tier WorkloadPolicy adapted to the lab (its KVM target family
    allowed, residency in the lab pool's zone), and the standard tier's."""

    def policy(name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return {"apiVersion": "policy.virtualmachine.space/v1", "kind": "WorkloadPolicy",
                "metadata": {"name": name}, "spec": spec}  # fmt: skip

    return [
        policy("lab-regulated-tier-policy", {
            "selector": {"matchLabels": {"tier": "regulated"}},
            "requiresApproval": True,
            "allowedPlatforms": ["vmware", "pextra", "nutanix", "openstack", "kvm"],
            "gpuScheduling": {"allowModes": ["passthrough", "sriov", "vgpu", "mig"]},
            "compliance": {"residency": [POOL_ZONE], "immutableAuditLog": True},
        }),
        policy("lab-standard-tier-policy", {
            "selector": {"matchLabels": {"tier": "standard"}},
            "requiresApproval": False,
            "allowedPlatforms": ["kvm", "pextra"],
            "compliance": {"residency": [POOL_ZONE], "immutableAuditLog": True},
        }),
    ]  # fmt: skip


def load_state() -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(state_file().read_text())
    except FileNotFoundError:
        return None
    return data


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


def _stop(pid: int, timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL: the process (and its group when it leads one)."""
    if not _alive(pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)  # workers a master left (haproxy), by its group


def _spawn(argv: list[str], log: Path) -> int:
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, cwd=ROOT,
        )  # fmt: skip
    return proc.pid


# ------------------------------------------------------------------------- pieces


def _haproxy_cfg(apps: list[App], sock: Path) -> str:
    lines = [
        "global",
        f"    stats socket {sock} mode 600 level admin",
        "    stats timeout 10s",
        "    hard-stop-after 5s",
        "defaults",
        "    mode http",
        "    timeout connect 2s",
        "    timeout client 10s",
        "    timeout server 10s",
        "frontend lab",
        f"    bind 127.0.0.1:{LB_PORT}",
        "    use_backend %[path,field(2,/)]",
    ]
    for i, a in enumerate(apps):
        lines += [
            f"backend {a.name}",
            "    option httpchk GET /health",
            "    http-check expect status 200",
            "    default-server inter 300ms rise 2 fall 2",
            f"    server source {a.source} check",
            # the target's address is set by the switch; nothing listens here before
            f"    server target 127.0.3.{i + 1}:9 check disabled",
        ]
    return "\n".join(lines) + "\n"


def _named_conf(directory: Path, key_file: Path) -> str:
    d = directory
    return f"""\
options {{
    directory "{d}";
    listen-on port {DNS_PORT} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    pid-file "{d}/named.pid";
    session-keyfile "{d}/session.key";
    managed-keys-directory "{d}";
    recursion no;
    dnssec-validation no;
    notify no;
    allow-transfer {{ none; }};
}};
controls {{ }};
include "{key_file}";
zone "{ZONE.rstrip(".")}" {{
    type primary;
    file "{d}/lab.test.db";
    update-policy {{ grant cutover-lab zonesub ANY; }};
}};
"""


def _zone(apps: list[App]) -> str:
    lines = [
        "$TTL 3600",
        f"@ IN SOA ns1.{ZONE} hostmaster.{ZONE} 1 3600 600 86400 60",
        f"@ IN NS ns1.{ZONE}",
        "ns1 IN A 127.0.0.1",
    ]
    lines += [f"{a.name} 30 IN A {a.source.split(':')[0]}" for a in apps]
    return "\n".join(lines) + "\n"


def _tool(name: str, package: str) -> str:
    path = shutil.which(name, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
    if path is None:
        raise LabError(f"{name} is missing: apt-get install -y {package} (scripts/setup.sh)")
    return path


def _wait(what: str, ready: Any, pid: int, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if not _alive(pid):
            raise LabError(f"{what} exited: {log.read_text(errors='replace')[-2000:]}")
        if time.monotonic() > deadline:
            raise LabError(f"{what} did not become ready in {timeout:g} s (log: {log})")
        time.sleep(0.1)


def _dns_ready() -> bool:
    try:
        reply = dns.query.tcp(dns.message.make_query(ZONE, "SOA"), "127.0.0.1", port=DNS_PORT,
                              timeout=1)  # fmt: skip
    except Exception:
        return False
    return reply.rcode() == dns.rcode.NOERROR and bool(reply.answer)


def _http_ready(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        conn = http.client.HTTPConnection(host, int(port), timeout=1)
        conn.request("GET", "/health")
        conn.getresponse().read()
        conn.close()
    except OSError:
        return False
    return True


# ------------------------------------------------------------------------- files


def site_config(state: dict[str, Any]) -> dict[str, Any]:
    site = _site_base(state)
    day = state.get("dayTwo")
    if day:
        site["checks"].update(day_two_checks(day))
        site["applications"][day["name"]].update(
            sourceAddress=day["sourceAddress"], targetAddress=day["targetAddress"]
        )
    return site


def day_two_checks(day: dict[str, Any]) -> dict[str, Any]:
    """The seed runbook's eleven checks, bound to the landing zone's real services."""
    app, target = day["name"], day["targetAddress"]
    restic = {"repository": str(LAB / "restic" / "repo"),
              "passwordRef": {"file": str(LAB / "restic" / "password")}, "host": app}  # fmt: skip
    prom = f"http://127.0.0.1:{landing.PROMETHEUS_PORT}"
    through_lb = f"http://127.0.0.1:{LB_PORT}/{app}/"
    return {
        "backup_success_last_24h": {
            "type": "restic-backup", "mode": "last-snapshot-age", **restic, "maxAgeHours": 24,
            "description": "the source's last successful backup is younger than 24 h",
        },
        "target_monitoring_ready": {
            "type": "alert-routing", "prometheusUrl": prom, "job": app, "instance": target,
            "alertRules": [landing.ALERT],
            "description": "Prometheus scrapes the target and has the application's alert rules",
        },
        "target_network_policy_validated": {
            "type": "nftables-policy", "table": landing.TABLE, "netns": landing.NETNS,
            "allow": [{"proto": "tcp", "port": int(target.rsplit(":", 1)[1]),
                       "source": "127.0.0.0/8"}],
            "description": "the target's network policy allows its flow and nothing else",
        },
        "p95_latency_within_slo": {
            "type": "http", "url": through_lb, "samples": 20, "concurrency": 2,
            "maxP95Ms": 1000, "timeoutSeconds": 5,
            "description": "p95 latency through the load balancer within the 1 s SLO",
        },
        "error_rate_below_threshold": {
            "type": "http", "url": through_lb, "samples": 20, "concurrency": 2,
            "maxErrorRate": 0.01, "timeoutSeconds": 5,
            "description": "under 1% of requests through the load balancer fail",
        },
        "backup_job_succeeds": {
            "type": "restic-backup", "mode": "backup-and-restore", **restic,
            "path": day["targetVolume"],
            "description": "a backup of the target's disk succeeds and its restore verifies",
        },
        "alerting_signals_present": {
            "type": "alert-routing", "prometheusUrl": prom, "alertRules": [landing.ALERT],
            "alertmanagerUrl": f"http://127.0.0.1:{landing.ALERTMANAGER_PORT}",
            "receiver": landing.RECEIVER, "labels": {"app": app},
            "receiptUrl": f"http://127.0.0.1:{landing.SINK_PORT}/", "timeoutSeconds": 30,
            "description": "the alert rules are loaded and a test alert reaches the on-call "
                           "receiver",
        },
        "app_health_check_failure": {
            "type": "http", "url": f"{through_lb}health", "samples": 3, "maxErrorRate": 0,
            "timeoutSeconds": 5,
            "description": "the application's health check answers through the load balancer",
        },
        "sustained_latency_regression": {
            "type": "http", "url": through_lb, "samples": 40, "concurrency": 4,
            "maxP95Ms": 2000, "timeoutSeconds": 5,
            "description": "no sustained latency regression (p95 over 40 requests under 2 s)",
        },
        "target_backup_failure": {
            "type": "restic-backup", "mode": "backup-and-restore", **restic,
            "path": day["targetVolume"],
            "description": "the target's backup keeps succeeding (restore verified)",
        },
        # not in the seed's runbook: a day-two check a runbook may add
        "target_resize_survived": {
            "type": "live-resize", "uri": day["libvirtUri"], "domain": app,
            "memoryDeltaMiB": -64, "url": f"http://{target}/health",
            "description": "the target takes a live memory resize (balloon) and still serves",
        },
    }  # fmt: skip


def data_host_staging(name: str) -> Path:
    """A lab data host's own staging directory (`lab up --data-hosts N`)."""
    return DATA / "hosts" / name / "staging"


def _fleet(state: dict[str, Any]) -> dict[str, Any]:
    """`lab up --data-hosts N`: the site's fleet (issue 17); none by default."""
    hosts = state.get("dataHosts") or []
    if not hosts:
        return {}
    return {
        "fleet": {
            "dataHosts": [{"name": h} for h in hosts],
            "limits": {"perDataHost": 2, "perDatastore": 4},
            "hostWaitSeconds": 60,
        }
    }


def _site_base(state: dict[str, Any]) -> dict[str, Any]:
    return {
        **_fleet(state),
        "name": "local-lab",
        "taskQueue": "cutover",
        "stagingDir": str(DATA / "staging"),
        "vcenter": {
            "host": "127.0.0.1",
            "port": VCSIM_PORT,
            "user": state["vcenterUser"],
            "passwordRef": {"file": str(LAB / "vcsim" / "password")},
            "caFile": state["caFile"],
            "datacenter": "DC0",
            # reverse sync writes the target's writes into the VMs' disks: the simulator's
            # datastore is a local directory, as an NFS datastore mounted on the worker is
            "datastoreMounts": {"LocalDS_0": state["datastore"]},
        },
        # TCG: the guest's kernel hangs under nested KVM (LAB.md)
        "libvirt": {"uri": state["libvirtUri"], "domainType": "qemu"},
        "storageMappings": [
            {
                "sourceDatastore": "LocalDS_0",
                "targetPool": "cutover-lab",
                "format": "raw",
                "zone": POOL_ZONE,
            }
        ],
        "loadBalancer": {
            "socket": str(LAB / "haproxy" / "admin.sock"),
            # finalize writes the switch into it, so a reload keeps the target
            "configFile": str(LAB / "haproxy" / "haproxy.cfg"),
            "healthTimeoutSeconds": 20,
            "drainTimeoutSeconds": 5,
        },
        "dns": {
            "server": "127.0.0.1",
            "port": DNS_PORT,
            "zone": ZONE,
            "tsigKeyFile": str(LAB / "named" / "cutover-lab.key"),
            "ttlThresholdSeconds": 60,
        },
        "checks": {
            "migration_concerns": {
                "type": "vsphere-concerns",
                "description": "no critical pre-migration concern on the application's VMs",
            },
            "orchestrator_reachable": {
                "type": "tcp",
                "host": "127.0.0.1",
                "port": TEMPORAL_PORT,
                "description": "the Temporal frontend answers (it keeps the rollback timer)",
            },
            "dns_ttl_lowered": {
                "type": "dns",
                "name": "{dns_name}",
                "description": "the application's record has a low TTL before the switch",
            },
            "data_consistency_confirmed": {
                "type": "data-consistency",
                "description": "every block of the frozen source equals the migrated copy",
                # four rounds (about 15 s): the target's guest boots and writes meanwhile,
                # so billing's rollback has writes to bring back (reverse sync)
                "failAfter": 4,
            },
            "served_through_load_balancer": {
                "type": "http",
                "url": f"http://127.0.0.1:{LB_PORT}/{{application}}/",
                "samples": 10,
                "maxErrorRate": 0,
                # a request that recomputes the served view (qemu-img over the overlay, under
                # TCG) takes up to ~1 s on this 2-core lab; errors are what this check is for
                "maxP95Ms": 2000,
                "timeoutSeconds": 5,
                "description": "users reach the application through HAProxy, without errors",
            },
            "dns_points_at_target": {
                "type": "dns",
                "name": "{dns_name}",
                "expectValue": "{target_host}",
                "description": "the application's name resolves to the target",
            },
        },
        # who may do what (every request signed by a lab key), and what a cutover may do
        "access": access_policy(state["keys"]),
        "workloadPolicyFiles": [str(LAB / "workload-policies.yaml")],
        "applications": {
            a["name"]: {
                "labels": {
                    "tenant": "lab",
                    "environment": "lab",
                    **LABELS.get(a["name"], {"tier": "standard"}),
                }
            }
            for a in [*state["apps"], *([state["dayTwo"]] if state.get("dayTwo") else [])]
        },
    }


def _tag_and_disk(site_file: Path, vm_name: str, tag: str) -> int:
    """Tag the VM `tag` (the seed runbook's default selector finds it) and return its
    disk's device key."""
    from pyVmomi import vim

    from adapters.vsphere.client import ClientPool
    from adapters.vsphere.inventory import find_vms
    from adapters.vsphere.tagging import Tagging
    from cutover.site import load_site

    site = load_site(site_file)
    assert site.vcenter is not None
    pool = ClientPool()
    try:
        client = pool.get(site.vcenter)
        [vm] = find_vms(client, [vm_name])
        tagging = Tagging(client)
        tagging.attach(tagging.ensure_tag("cutover-lab", tag), vm._moId)
        return next(int(d.key) for d in vm.config.hardware.device
                    if isinstance(d, vim.vm.device.VirtualDisk))  # fmt: skip
    finally:
        pool.close()


def _guest_memory(site_file: Path, vms: list[str]) -> None:
    """The simulator's VMs have 32 MiB; the guest's kernel needs more (the target domain
    gets the source VM's memory)."""
    from pyVim.task import WaitForTask
    from pyVmomi import vim

    from adapters.vsphere.client import ClientPool
    from adapters.vsphere.inventory import find_vms
    from cutover.lab.guest import MIN_MEMORY_MIB
    from cutover.site import load_site

    site = load_site(site_file)
    assert site.vcenter is not None
    pool = ClientPool()
    try:
        for vm in find_vms(pool.get(site.vcenter), vms):
            WaitForTask(vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(memoryMB=MIN_MEMORY_MIB)))
    finally:
        pool.close()


def runbook(app: App, wave: str = "lab-1", window_minutes: float = 0.5) -> dict[str, Any]:
    rb: dict[str, Any] = {
        "application": app.name,
        "wave": wave,
        "sourcePlatform": "vmware-vsphere",
        "sourceCluster": "lab-cluster",
        "targetPlatform": "kvm-libvirt",
        "rollbackWindowMinutes": window_minutes,
        "checkIntervalSeconds": 5,
        "vms": [app.vm],
        "quiesce": {"guestShutdownTimeoutSeconds": 30},
        "dataSync": {"warm": True, "incrementalPasses": 1},
        "endpoint": {
            "loadBalancer": {"backend": app.name},
            "dns": {"name": app.name, "ttl": 30},
            "sourceAddress": app.source,
            "targetAddress": app.target,
        },
        "smokeTest": {"path": "/", "samples": 40, "concurrency": 4, "maxErrorRate": 0},
        "preChecks": ["orchestrator_reachable", "migration_concerns", "dns_ttl_lowered"],
        "cutoverSteps": [
            "quiesce_application",
            "final_data_sync",
            "convert_image",
            "attach_target_storage_profile",
            "validate_guest_tools_and_drivers",
            "power_on_target",
            "smoke_test",
            "update_load_balancer",
            "update_dns",
        ],
        "postChecks": [
            "data_consistency_confirmed",
            "served_through_load_balancer",
            "dns_points_at_target",
        ],
        "rollbackCriteria": ["data_consistency_confirmed", "served_through_load_balancer"],
    }
    if app.scenario == "criterion-rollback":  # the demo writes behind CBT while it waits
        rb["approval"] = {"required": True, "approvers": ["ops-lead"]}
    return rb


# ------------------------------------------------------------------------- commands


def up(
    apps: list[App] = APPS,
    disk_mib: int = 128,
    libvirt_uri: str | None = None,
    concurrency: int | None = None,
    window_minutes: float = 0.5,
    day_two: bool = True,
    data_hosts: int = 0,
) -> dict[str, Any]:
    """Start the lab (cleaning what a crashed one left first); returns its state.
    `data_hosts`: the site names that many data hosts (`lab-data-1`, ...) in its fleet:
    run one orchestration worker and a data worker for each (`data_host_staging`).
    `libvirt_uri`: use that libvirtd instead of starting one (one libvirtd per host: the
    test suite runs the lab on its own daemon). `day_two`: also the seed's application and
    the landing zone's services its checks verify (`cutover.lab.landing`)."""
    if load_state() is not None:
        down(quiet=True)
    for port in (TEMPORAL_PORT, UI_PORT, VCSIM_PORT, DNS_PORT, LB_PORT):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                raise LabError(f"port {port} is in use: stop what listens there first")
    LAB.mkdir(parents=True, exist_ok=True)
    state: dict[str, Any] = {"dir": str(LAB), "pids": {}, "apps": []}
    state["dataHosts"] = [f"lab-data-{i}" for i in range(1, data_hosts + 1)]
    state["keys"] = {name: _lab_key(name) for name in (OPERATOR, APPROVER, WORKER)}
    (LAB / "workload-policies.yaml").write_text(
        yaml.safe_dump_all(workload_policies(), sort_keys=False)
    )
    # a fresh Temporal database: the old log's records could not be derived again
    audit_log_file().unlink(missing_ok=True)
    try:
        _start_all(state, apps, disk_mib, libvirt_uri, concurrency or len(apps), window_minutes,
                   day_two)  # fmt: skip
    except BaseException:
        state_file().write_text(json.dumps(state, indent=2))
        down(quiet=True)
        raise
    return state


def _start_all(
    state: dict[str, Any],
    apps: list[App],
    disk_mib: int,
    libvirt_uri: str | None,
    concurrency: int,
    window_minutes: float,
    day_two: bool = True,
) -> None:
    pids: dict[str, Any] = state["pids"]
    day = App(DAY_TWO, len(apps), "day-two") if day_two else None
    every = [*apps, *([day] if day else [])]

    def save() -> None:
        state_file().write_text(json.dumps(state, indent=2))

    # Temporal: a fresh database per lab (a crashed lab's cutovers would meet a new world)
    db = LAB / "temporal.db"
    for f in LAB.glob("temporal.db*"):
        f.unlink()
    proc = server.start(db, TEMPORAL_PORT, UI_PORT, log=LAB / "temporal.log")
    pids["temporal"] = proc.pid
    save()

    shutil.rmtree(LAB / "vcsim", ignore_errors=True)
    sim = vcsim.start(vcsim.DEFAULT_BINARY, LAB / "vcsim", hosts=1, vms=len(every),
                      port=VCSIM_PORT)  # fmt: skip
    pids["vcsim"] = sim.proc.pid
    (LAB / "vcsim" / "password").write_text(sim.password)
    (LAB / "vcsim" / "password").chmod(0o600)
    state["vcenterUser"], state["caFile"] = sim.user, str(sim.ca_file)
    state["datastore"] = str(sim.datastore_dir)
    save()

    if libvirt_uri is None:
        lv = libvirtd.start(LAB / "libvirtd", LIBVIRT_SOCK)
        pids["libvirtd"], libvirt_uri = lv.pids, lv.uri
    state["libvirtUri"] = libvirt_uri
    save()
    _clean_target(libvirt_uri)

    ndir = LAB / "named"
    shutil.rmtree(ndir, ignore_errors=True)
    ndir.mkdir(parents=True)
    key = ndir / "cutover-lab.key"
    key.write_text(subprocess.run(
        [_tool("tsig-keygen", "bind9-utils"), "-a", "hmac-sha256", "cutover-lab"],
        check=True, capture_output=True, text=True,
    ).stdout)  # fmt: skip
    key.chmod(0o600)
    (ndir / "lab.test.db").write_text(_zone(every))
    (ndir / "named.conf").write_text(_named_conf(ndir, key))
    pids["named"] = _spawn([_tool("named", "bind9"), "-g", "-4", "-c", str(ndir / "named.conf")],
                           ndir / "named.log")  # fmt: skip
    save()
    _wait("named", _dns_ready, pids["named"], ndir / "named.log")

    for app in every:
        digest = disk.seed(Path(sim.datastore_dir), app.vm, size=disk_mib * MiB)
        flat, _ = disk.paths(Path(sim.datastore_dir), app.vm)
        entry = {
            "name": app.name, "vm": app.vm, "scenario": app.scenario,
            "sourceAddress": app.source, "targetAddress": app.target,
            "disk": str(flat), "seedDigest": digest,
            "url": f"http://127.0.0.1:{LB_PORT}/{app.name}/",
        }  # fmt: skip
        if app is day:
            state["dayTwo"] = {**entry, "libvirtUri": libvirt_uri}
        else:
            state["apps"].append(entry)
    (LAB / "knobs.json").write_text("{}\n")
    site_file = LAB / "site.yaml"
    state["site"] = str(site_file)
    site_file.write_text(yaml.safe_dump(_site_base(state), sort_keys=False))
    _guest_memory(site_file, [app.vm for app in every])
    if day is not None:
        disk_key = _tag_and_disk(site_file, day.vm, day.name)
        mapping = _site_base(state)["storageMappings"][0]
        state["dayTwo"]["targetVolume"] = str(
            DATA / "staging" / "pools" / mapping["targetPool"]
            / volume_name(day.name, f"{day.vm}-{disk_key}", mapping["format"])
        )  # fmt: skip
        landing.backup_source(LAB / "restic", day.name, Path(state["dayTwo"]["disk"]))
        landing.start_monitoring(LAB / "monitoring", day.name, day.target, pids)
        save()
        landing.start_policy(int(day.target.rsplit(":", 1)[1]))
        state["netns"] = landing.NETNS
        site_file.write_text(yaml.safe_dump(site_config(state), sort_keys=False))
    save()
    rdir = LAB / "runbooks"
    shutil.rmtree(rdir, ignore_errors=True)
    rdir.mkdir()
    for app in apps:
        rb = runbook(app, window_minutes=window_minutes)
        (rdir / f"{app.name}.yaml").write_text(yaml.safe_dump(rb, sort_keys=False))
    wave = {
        "wave": "lab-1",
        "concurrency": concurrency,
        "failureThreshold": len(apps),
        "applications": [{"runbook": f"runbooks/{a.name}.yaml"} for a in apps],
    }
    (LAB / "wave.yaml").write_text(yaml.safe_dump(wave, sort_keys=False))
    save()

    pids["apps"] = _spawn([sys.executable, "-m", "cutover.lab.apps", str(state_file())],
                          LAB / "apps.log")  # fmt: skip
    save()
    for app in every:
        _wait(f"the {app.name} service", lambda a=app: _http_ready(a.source), pids["apps"],
              LAB / "apps.log")  # fmt: skip

    hdir = LAB / "haproxy"
    hdir.mkdir(exist_ok=True)
    (hdir / "haproxy.cfg").write_text(_haproxy_cfg(every, hdir / "admin.sock"))
    pids["haproxy"] = _spawn([_tool("haproxy", "haproxy"), "-W", "-db", "-f",
                              str(hdir / "haproxy.cfg")], hdir / "haproxy.log")  # fmt: skip
    save()
    _wait("haproxy", lambda: (hdir / "admin.sock").exists() and _lb_up(every), pids["haproxy"],
          hdir / "haproxy.log")  # fmt: skip
    if day is not None:
        landing.wait_scraped(LAB / "monitoring", day.name)


def _lb_up(apps: list[App]) -> bool:
    # the HAProxy adapter: only when the lab comes up (the CLI's default --site reads LAB here)
    from adapters.haproxy.runtime import HAProxyRuntime

    try:
        rt = HAProxyRuntime(str(LAB / "haproxy" / "admin.sock"))
        return all(rt.state(a.name)["source"].status == "UP" for a in apps)
    except Exception:
        return False


def _clean_target(uri: str) -> list[str]:
    """Domains cutover made, the lab's pools and their volumes, staging: all removed."""
    # libvirt: only when the lab is cleaned (the CLI's default --site reads LAB here)
    import libvirt

    from adapters.libvirt.domain import remove_cutover_domains

    removed = [f"domain {d}" for d in remove_cutover_domains(uri)]
    conn = libvirt.open(uri)
    try:
        for pool in conn.listAllStoragePools(0):
            if not pool.name().startswith("cutover-lab"):
                continue
            with contextlib.suppress(libvirt.libvirtError):
                if pool.isActive():
                    for vol in pool.listAllVolumes(0):
                        vol.delete(0)
                        removed.append(f"volume {vol.name()}")
                    pool.destroy()
                pool.undefine()
                removed.append(f"pool {pool.name()}")
    finally:
        conn.close()
    if DATA.exists():
        shutil.rmtree(DATA)
        removed.append(str(DATA))
    return removed


def down(quiet: bool = False) -> list[str]:
    """Remove what cutovers made, then stop exactly the processes `up` started."""
    state = load_state()
    if state is None:
        return []
    done: list[str] = []
    pids = state.get("pids", {})
    lv_pids = pids.get("libvirtd") or []
    uri = state.get("libvirtUri")
    if uri:
        restarted: libvirtd.Libvirtd | None = None
        if lv_pids and not _alive(lv_pids[0]):  # crashed: a daemon to clean up with
            with contextlib.suppress(Exception):
                restarted = libvirtd.start(LAB / "libvirtd", LIBVIRT_SOCK)
        with contextlib.suppress(Exception):
            done += _clean_target(uri)
        if restarted is not None:
            restarted.stop()
    if state.get("netns"):
        landing.stop_policy()
        done.append(f"removed network namespace {state['netns']}")
    for name in ("prometheus", "alertmanager", "webhookSink", "haproxy", "apps", "named",
                 "vcsim", "temporal"):  # fmt: skip
        pid = pids.get(name)
        if pid and _alive(pid):
            _stop(pid)
            done.append(f"stopped {name} ({pid})")
    for pid in lv_pids:
        if _alive(pid):
            _stop(pid)
            done.append(f"stopped libvirtd/virtlogd ({pid})")
    state_file().unlink()
    if not quiet:
        for line in done:
            print(f"lab: {line}")
    return done


def status() -> dict[str, Any]:
    state = load_state()
    if state is None:
        return {"up": False}
    pids = state["pids"]
    alive = {k: (all(_alive(p) for p in v) if isinstance(v, list) else _alive(v))
             for k, v in pids.items()}  # fmt: skip
    return {"up": all(alive.values()), "processes": alive, "site": state.get("site"),
            "ui": f"http://127.0.0.1:{UI_PORT}", "apps": state.get("apps", [])}  # fmt: skip


def set_knob(app: str, side: str, **values: Any) -> dict[str, Any]:
    """Make an application's source or target slow, failing or unhealthy (or well again)."""
    state = load_state()
    if state is None:
        raise LabError("the lab is not up (cutover lab up)")
    if app not in {a["name"] for a in state["apps"]}:
        raise LabError(
            f"no application {app!r} in the lab ({', '.join(a['name'] for a in state['apps'])})"
        )
    path = LAB / "knobs.json"
    knobs: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    knobs.setdefault(app, {})[side] = {k: v for k, v in values.items() if v}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(knobs, indent=2))
    tmp.replace(path)
    return knobs


def day_two_knob(knob: str, broken: bool) -> str:
    """Make the seed application's day-two checks behind `knob` fail (or pass again)."""
    state = load_state()
    if state is None or not state.get("dayTwo"):
        raise LabError("the lab is not up with the day-two application (cutover lab up)")
    day = state["dayTwo"]
    try:
        if broken:
            return landing.break_check(LAB, knob, day["name"])
        return landing.fix_check(LAB, knob, day["name"], int(day["targetAddress"].rsplit(":")[1]))
    except landing.LandingError as exc:
        raise LabError(str(exc)) from None
