"""Fixtures: cutover's vSphere API simulator (lab/vcsim), built and started for real.

``vcsim`` is one small simulator per session: 1 datacenter, 1 cluster of 2 hosts, 1
standalone host, 2 VMs per host (6 VMs). ``vcsim_factory`` starts more, of any size,
stopped when the test ends. A failed build FAILS the tests with the build output: the
simulator is never skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol, TypedDict

import pytest

from cutover.lab import vcsim as vcsim_mod
from cutover.lab.vcsim import Vcsim, VcsimError


class Inventory(TypedDict):
    datacenters: int
    clusters: int
    hosts: int  # per cluster
    standalone_hosts: int  # per datacenter
    vms: int  # per host


# The session simulator's inventory (tests check their counts against these).
SMALL = Inventory(datacenters=1, clusters=1, hosts=2, standalone_hosts=1, vms=2)


class VcsimFactory(Protocol):
    def __call__(
        self,
        *,
        datacenters: int = 1,
        clusters: int = 1,
        hosts: int = 2,
        vms: int = 4,
        standalone_hosts: int = 0,
    ) -> Vcsim: ...


@pytest.fixture(scope="session")
def vcsim_binary() -> Path:
    """Build (idempotently) with scripts/build-vcsim.sh; fail loudly if that fails."""
    try:
        return vcsim_mod.build()
    except VcsimError as e:
        error = str(e)
    pytest.fail(error, pytrace=False)


@pytest.fixture(scope="session")
def vcsim_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One self-signed certificate (cert, key) for every simulator of the session."""
    return vcsim_mod.generate_cert(tmp_path_factory.mktemp("vcsim-tls"))


@pytest.fixture(scope="session")
def vcsim(
    vcsim_binary: Path,
    vcsim_cert: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Vcsim]:
    cert, key = vcsim_cert
    sim = vcsim_mod.start(
        vcsim_binary, tmp_path_factory.mktemp("vcsim"), cert=cert, key=key, **SMALL
    )
    yield sim
    sim.stop()


@pytest.fixture
def vcsim_factory(
    vcsim_binary: Path,
    vcsim_cert: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[VcsimFactory]:
    cert, key = vcsim_cert
    started: list[Vcsim] = []

    def factory(
        *,
        datacenters: int = 1,
        clusters: int = 1,
        hosts: int = 2,
        vms: int = 4,
        standalone_hosts: int = 0,
    ) -> Vcsim:
        sim = vcsim_mod.start(
            vcsim_binary,
            tmp_path_factory.mktemp("vcsim-extra"),
            datacenters=datacenters,
            clusters=clusters,
            hosts=hosts,
            vms=vms,
            standalone_hosts=standalone_hosts,
            cert=cert,
            key=key,
        )
        started.append(sim)
        return sim

    yield factory
    for sim in started:
        sim.stop()
