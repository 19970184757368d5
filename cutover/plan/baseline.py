"""Performance baselines before migration (`cutover baseline`): the seed's "baseline CPU
ready, storage latency and network drop rates before migration wave 0".

The vSphere adapter (adapters/vsphere/performance.py) reads each VM's realtime counters from
vCenter's PerformanceManager as raw series (`VmSeries`); this module summarises them (pure)
and keeps them in a file, one entry per VM, merged across runs:

- CPU ready, percent per vCPU: ``cpu.ready.summation`` (ms of the sample interval the VM
  was ready but not scheduled, summed over its vCPUs) / (interval * 1000) / vCPUs * 100;
- storage latency, ms: ``disk.maxTotalLatency.latest`` (the worst disk's latency);
- network drops: ``net.droppedRx/Tx.summation`` per second, and as a percent of the
  packets (``net.packetsRx/Tx.summation`` plus the dropped ones).
"""

from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

#: The counters read, as `group.name.rollup`.
COUNTERS = (
    "cpu.ready.summation",
    "disk.maxTotalLatency.latest",
    "net.droppedRx.summation",
    "net.droppedTx.summation",
    "net.packetsRx.summation",
    "net.packetsTx.summation",
)


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VmSeries(_M):
    """One VM's raw samples, oldest first (what the adapter read)."""

    vm: str
    moref: str
    numCpu: int = 1
    intervalSeconds: int = 20
    #: counter (`group.name.rollup`) -> one value per sample; a counter vCenter does not
    #: have is absent
    series: dict[str, list[int]] = Field(default_factory=dict)


class Stat(_M):
    avg: float
    p95: float
    max: float


class VmBaseline(_M):
    vm: str
    moref: str
    takenAt: datetime
    samples: int
    intervalSeconds: int
    cpuReadyPercent: Stat | None = None
    diskLatencyMs: Stat | None = None
    netDroppedPerSecond: Stat | None = None
    netDropPercent: Stat | None = None


class Baselines(_M):
    """The stored baselines of one site, by VM name."""

    site: str
    vms: dict[str, VmBaseline] = Field(default_factory=dict)


def _stat(values: list[float]) -> Stat | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(0.95 * len(ordered)))  # nearest rank
    return Stat(
        avg=round(sum(values) / len(values), 3),
        p95=round(ordered[rank - 1], 3),
        max=round(ordered[-1], 3),
    )


def summarise(s: VmSeries, taken_at: datetime) -> VmBaseline:
    """The VM's figures; samples vCenter marks not available (-1) are left out."""
    s = s.model_copy(
        update={"series": {k: [v for v in vs if v >= 0] for k, vs in s.series.items()}}
    )
    ms = s.intervalSeconds * 1000
    ready = [v / ms / max(s.numCpu, 1) * 100 for v in s.series.get("cpu.ready.summation", [])]
    dropped = [
        rx + tx
        for rx, tx in zip(
            s.series.get("net.droppedRx.summation", []),
            s.series.get("net.droppedTx.summation", []),
            strict=False,
        )
    ]
    packets = [
        rx + tx
        for rx, tx in zip(
            s.series.get("net.packetsRx.summation", []),
            s.series.get("net.packetsTx.summation", []),
            strict=False,
        )
    ]
    drop_pct = [d / (p + d) * 100 if p + d else 0.0 for d, p in zip(dropped, packets, strict=False)]
    samples = max((len(v) for v in s.series.values()), default=0)
    return VmBaseline(
        vm=s.vm,
        moref=s.moref,
        takenAt=taken_at,
        samples=samples,
        intervalSeconds=s.intervalSeconds,
        cpuReadyPercent=_stat(ready),
        diskLatencyMs=_stat([float(v) for v in s.series.get("disk.maxTotalLatency.latest", [])]),
        netDroppedPerSecond=_stat([d / s.intervalSeconds for d in dropped]),
        netDropPercent=_stat(drop_pct),
    )


def load(path: Path, site: str) -> Baselines:
    """The stored baselines (none yet: empty); a file of another site is refused."""
    if not path.exists():
        return Baselines(site=site)
    try:
        stored = Baselines.model_validate_json(path.read_bytes())
    except (OSError, ValidationError) as exc:
        raise ValueError(f"{path}: not a baseline file of `cutover baseline` ({exc})") from None
    if stored.site != site:
        raise ValueError(f"{path}: holds the baselines of site {stored.site!r}, not {site!r}")
    return stored


def store(path: Path, site: str, taken: list[VmBaseline]) -> Baselines:
    """Merge `taken` into the file (a VM measured again replaces its entry)."""
    current = load(path, site)
    current.vms.update({b.vm: b for b in taken})
    current.vms = dict(sorted(current.vms.items()))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(current.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return current


# ------------------------------------------------------------- the target against it


class Observed(_M):
    """One target domain over a sample window, in the baseline's units."""

    vm: str
    domain: str
    seconds: float
    cpuReadyPercent: float
    diskLatencyMs: float
    netDropPercent: float


def _delta(a: dict[str, int], b: dict[str, int], match: str, suffixes: tuple[str, ...]) -> int:
    return sum(
        max(0, b[k] - a.get(k, 0))
        for k in b
        if k.startswith(match) and k.endswith(suffixes) and isinstance(b[k], int)
    )


def observe(vm: str, domain: str, a: dict[str, int], b: dict[str, int], seconds: float) -> Observed:
    """From two libvirt domain-stats snapshots `seconds` apart: the time vCPUs waited for
    a host CPU (`vcpu.N.delay`, KVM's "ready") per vCPU, the mean latency of the disk
    requests done meanwhile, and the share of packets dropped."""
    ncpu = max(int(b.get("vcpu.current", 1)), 1)
    delay_ns = _delta(a, b, "vcpu.", (".delay",))
    reqs = _delta(a, b, "block.", (".rd.reqs", ".wr.reqs"))
    times_ns = _delta(a, b, "block.", (".rd.times", ".wr.times"))
    drops = _delta(a, b, "net.", (".rx.drop", ".tx.drop"))
    pkts = _delta(a, b, "net.", (".rx.pkts", ".tx.pkts"))
    return Observed(
        vm=vm,
        domain=domain,
        seconds=round(seconds, 3),
        cpuReadyPercent=round(delay_ns / 1e9 / seconds / ncpu * 100, 3),
        diskLatencyMs=round(times_ns / reqs / 1e6, 3) if reqs else 0.0,
        netDropPercent=round(drops / (pkts + drops) * 100, 3) if pkts + drops else 0.0,
    )


def compare(base: VmBaseline, obs: Observed, factor: float, floors: dict[str, float]) -> list[str]:
    """What is worse than the baseline allows: `p95 * factor`, never below the floor."""
    problems = []
    for field, stat in (
        ("cpuReadyPercent", base.cpuReadyPercent),
        ("diskLatencyMs", base.diskLatencyMs),
        ("netDropPercent", base.netDropPercent),
    ):
        limit = max((stat.p95 * factor) if stat else 0.0, floors[field])
        value = float(getattr(obs, field))
        if value > limit:
            was = f"baseline p95 {stat.p95:g}" if stat else "no baseline figure"
            problems.append(
                f"{obs.vm} ({obs.domain}) {field} {value:g} > {limit:g} ({was} x {factor:g}, "
                f"floor {floors[field]:g})"
            )
    return problems
