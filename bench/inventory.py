"""Inventory read cost: PropertyCollector batches against property-by-property reads.

    .venv/bin/python -m bench.inventory [--sizes 1000,5000] [--sample 1000]

For each size it starts our vSphere simulator (cluster hosts x 100 VMs each), reads the
whole inventory with `adapters.vsphere.inventory.read_inventory` (one RetrievePropertiesEx per
object type per datacenter, plus page continuations), then reads the same VM properties
one property of one VM per round trip, the way naive pyvmomi code does (`vm.config...`
per VM). The naive read of `--sample` VMs is timed and scaled linearly to all VMs (it is
linear by construction: one request per VM and property); the ratio compares seconds.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pyVmomi import vim

from adapters.vsphere.client import ClientPool
from adapters.vsphere.inventory import VM_PATHS, read_inventory
from adapters.vsphere.properties import collect, read_property
from cutover.lab import vcsim
from cutover.site import VCenter


def measure(size: int, sample: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as d:
        sim = vcsim.start(vcsim.build(), Path(d), clusters=1, hosts=size // 100, vms=100)
        try:
            settings = VCenter.model_validate({
                "host": sim.host, "port": sim.port, "user": sim.user,
                "passwordRef": {"env": "UNUSED"}, "caFile": str(sim.ca_file),
            })  # fmt: skip
            pool = ClientPool(password=lambda s: sim.password)
            client = pool.get(settings)
            client.connect()
            t0 = time.perf_counter()
            inv = read_inventory(client)
            batched = time.perf_counter() - t0
            assert len(inv.vms) == size, len(inv.vms)

            def naive(si: Any) -> tuple[int, float]:
                vms = [o.obj for o in collect(client, si, si.content.rootFolder,
                                               vim.VirtualMachine, ["name"])][:sample]  # fmt: skip
                calls = 0
                t = time.perf_counter()
                for vm in vms:
                    for path in VM_PATHS:
                        read_property(si, vm, path)
                        calls += 1
                return calls, time.perf_counter() - t

            calls, naive_s = client.call("naive read", naive)
            pool.close()
        finally:
            sim.stop()
    scale = size / min(sample, size)
    return {
        "vms": size,
        "batched_s": batched,
        "batched_round_trips": inv.roundTrips,
        "naive_s": naive_s * scale,
        "naive_round_trips": int(calls * scale),
        "naive_measured_vms": min(sample, size),
    }


def main() -> None:
    # `timeout` sends SIGTERM: exit through the finally blocks that stop the simulator.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    p = argparse.ArgumentParser(prog="python -m bench.inventory", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--sizes", default="1000,5000", help="VM counts (multiples of 100)")
    p.add_argument("--sample", type=int, default=1000, help="VMs read property by property")
    args = p.parse_args()
    print(f"{'VMs':>6} {'batched s':>10} {'round trips':>12} {'naive s':>9} "
          f"{'round trips':>12} {'naive/batched s':>16}")  # fmt: skip
    for size in (int(s) for s in args.sizes.split(",")):
        r = measure(size, args.sample)
        extrapolated = "*" if r["naive_measured_vms"] < size else ""
        print(
            f"{r['vms']:>6} {r['batched_s']:>10.2f} {r['batched_round_trips']:>12} "
            f"{r['naive_s']:>8.1f}{extrapolated:1} {r['naive_round_trips']:>12} "
            f"{r['naive_s'] / r['batched_s']:>16.1f}"
        )
    print("* naive read timed on --sample VMs and scaled linearly")


if __name__ == "__main__":
    main()
