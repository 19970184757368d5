"""VMs' realtime performance counters from vCenter's PerformanceManager (`cutover baseline`).

One PerformanceManager.QueryPerf per batch of VMs (the aggregate instance of each counter,
realtime 20 s samples); the summary and storage are domain code (cutover/plan/baseline.py).
"""

from __future__ import annotations

from typing import Any

from pyVmomi import vim

from adapters.vsphere.client import VSphereClient
from adapters.vsphere.properties import collect, moref, props
from cutover.errors import ErrorKind, error
from cutover.plan.baseline import COUNTERS, VmSeries

#: VMs per QueryPerf call (vCenter's config.vpxd.stats.maxQueryMetrics defaults to 64).
BATCH = 64
REALTIME_SECONDS = 20


def read_counters(client: VSphereClient, names: list[str], samples: int) -> list[VmSeries]:
    """The last `samples` realtime samples of COUNTERS for the named VMs (all VMs but
    templates when `names` is empty), in the order asked (else by name)."""

    def read(si: Any) -> list[VmSeries]:
        objs = collect(
            client,
            si,
            si.content.rootFolder,
            vim.VirtualMachine,
            ["name", "config.template", "config.hardware.numCPU"],
        )
        found: dict[str, tuple[Any, dict[str, Any]]] = {}
        for o in objs:
            p = props(o)
            for key in (p.get("name"), moref(o.obj)):
                if key:
                    found.setdefault(str(key), (o.obj, p))
        missing = [n for n in names if n not in found]
        if missing:
            raise error(
                ErrorKind.NOT_FOUND,
                f"VM(s) not found in vCenter {client.settings.host}: {', '.join(missing)}",
            )
        if names:
            chosen = [found[n] for n in names]
        else:
            chosen = sorted(
                ((o.obj, props(o)) for o in objs if not props(o).get("config.template")),
                key=lambda op: str(op[1].get("name")),
            )
        pm = si.content.perfManager
        ids = {
            f"{c.groupInfo.key}.{c.nameInfo.key}.{c.rollupType}": c.key
            for c in (pm.perfCounter or [])
        }
        wanted = {ids[n]: n for n in COUNTERS if n in ids}
        out: list[VmSeries] = []
        for i in range(0, len(chosen), BATCH):
            batch = chosen[i : i + BATCH]
            specs = [
                vim.PerformanceManager.QuerySpec(
                    entity=vm,
                    metricId=[
                        vim.PerformanceManager.MetricId(counterId=k, instance="") for k in wanted
                    ],
                    intervalId=REALTIME_SECONDS,
                    maxSample=samples,
                )
                for vm, _ in batch
            ]
            results = pm.QueryPerf(querySpec=specs) if wanted else []
            client.round_trips += 1
            by_entity = {str(r.entity._moId): r for r in results or []}
            for vm, p in batch:
                result = by_entity.get(str(vm._moId))
                series: dict[str, list[int]] = {}
                if result is not None:
                    # samples come newest first from some servers: order them oldest first
                    stamps = [s.timestamp for s in (result.sampleInfo or [])]
                    reverse = len(stamps) > 1 and stamps[0] > stamps[-1]
                    for value in result.value or []:
                        name = wanted.get(value.id.counterId)
                        if name is not None:
                            vals = [int(v) for v in (value.value or [])]
                            vals = vals[::-1] if reverse else vals
                            # govmomi's simulator drops zero values from the series: a
                            # short series is zeros (their position does not change a
                            # summary); vCenter sends every sample (-1: not available)
                            series[name] = vals + [0] * (len(stamps) - len(vals))
                out.append(
                    VmSeries(
                        vm=str(p.get("name")),
                        moref=str(vm._moId),
                        numCpu=int(p.get("config.hardware.numCPU") or 1),
                        intervalSeconds=REALTIME_SECONDS,
                        series=series,
                    )
                )
        return out

    return client.call("reading performance counters", read)
