"""Domain statistics (libvirt `virConnectGetAllDomainStats`) for the performance check:
vCPU wait (`vcpu.N.delay`), block request counts and times, network packets and drops."""

from __future__ import annotations

from typing import Any

import libvirt


def domain_stats(conn: Any, names: list[str]) -> dict[str, dict[str, int]]:
    """Integer counters of each named domain that runs (others are absent)."""
    wanted = set(names)
    flags = (
        libvirt.VIR_DOMAIN_STATS_VCPU
        | libvirt.VIR_DOMAIN_STATS_BLOCK
        | libvirt.VIR_DOMAIN_STATS_INTERFACE
    )
    doms = [d for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
            if d.name() in wanted]  # fmt: skip
    out: dict[str, dict[str, int]] = {}
    for dom, stats in conn.domainListGetStats(doms, flags) if doms else []:
        out[dom.name()] = {k: int(v) for k, v in stats.items() if isinstance(v, int)}
    return out
