"""Launcher for cutover's vSphere API simulator (``lab/vcsim/main.go``).

The simulator is govmomi 0.24.2's vcsim built from Debian's Go source by
``scripts/build-vcsim.sh`` into ``.cutover/bin/vcsim``. It serves the vSphere SOAP API at
``/sdk`` (pyvmomi), the vAPI REST API at ``/rest/com/vmware/cis/...`` (session, tagging),
datastore files at ``/folder/<path>?dcPath=DC0&dsName=LocalDS_0`` (GET with Range, PUT),
and changed-block tracking (``VirtualMachine.QueryChangedDiskAreas``), all over TLS with
a certificate we generate.

Inventory: ``datacenters`` x (``clusters`` x ``hosts`` + ``standalone_hosts``) hosts, and
``vms`` VMs on every host, named ``<host>_VM<i>`` (``DC0_C0_H0_VM0``, ``DC0_H0_VM0``),
powered on. One datastore ``LocalDS_0`` per datacenter, a real directory under
``<workdir>/datastores/govcsim-<DC>-LocalDS_0-*`` (the process runs with TMPDIR there).
Each VM has one 1 MiB disk ``[LocalDS_0] <vm>/disk1.vmdk``; the simulator creates the
empty files ``<vm>/disk1.vmdk`` and ``<vm>/disk1-flat.vmdk`` (plus ``<vm>.vmx``,
``<vm>.nvram``, ``vmware.log``). Nothing there is removed when the simulator stops.

Change-tracking file format (written by whoever writes disk data, read by the simulator):
beside each disk descriptor ``<name>.vmdk`` in the datastore, a JSON file
``<name>-ctk.json``::

    {"uuid": "<any string>", "blockSize": 65536, "seq": N,
     "changes": {"<blockIndex>": seqWhenLastWritten, ...}, "capacityBytes": C}

A writer that writes a batch of blocks increments ``seq`` by 1 and sets
``changes[b] = seq`` for each block ``b`` written (see :func:`record_writes`). The
disk's current change ID is ``"<uuid>/<seq>"``; pyvmomi sees it as
``config.hardware.device[].backing.changeId`` once the VM has
``config.changeTrackingEnabled = True`` (ReconfigVM_Task).

``QueryChangedDiskAreas(deviceKey=..., startOffset=..., changeId=...)``:

* ``changeId="*"``: the allocated extents of ``<name>-flat.vmdk`` (SEEK_DATA/SEEK_HOLE,
  widened to whole blocks); without a flat file, every block listed in ``changes``.
* ``changeId="<uuid>/<k>"``: the blocks with ``changes[b] > k``, coalesced into extents.
  Another uuid, a malformed ID or ``k > seq`` raise ``vmodl.fault.InvalidArgument``.
* Extents are clipped to ``[startOffset, capacity)``; the answer's ``startOffset`` is the
  one asked for and ``length = capacity - startOffset`` (capacity = ``capacityBytes``,
  else the disk's size). CBT disabled on the VM raises ``vim.fault.FileFault``. With a
  ``snapshot``, ``"*"`` is the data of that snapshot's point in time (its flat base and
  deltas); a change ID's answer is the same superset as without one.

Snapshots (``lab/vcsim/chain.go``): ``CreateSnapshot`` puts a vmfsSparse delta
``<disk>-00000N.vmdk`` (+ ``-delta.vmdk``) on each disk and freezes what is under it;
``RemoveSnapshot`` merges it down; ``RevertToSnapshot`` (newest only) empties it. The
change-tracking file stays beside the base descriptor. Outside writers (the lab, tests)
write into the highest-numbered delta under the ``<disk>-chain.lck`` flock
(``cutover.lab.disk.write_at``).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = ROOT / "scripts" / "build-vcsim.sh"
DEFAULT_BINARY = ROOT / ".cutover" / "bin" / "vcsim"
BLOCK_SIZE = 65536


class VcsimError(RuntimeError):
    """The simulator could not be built or started (the message carries its output)."""


def build(root: Path = ROOT) -> Path:
    """Run ``scripts/build-vcsim.sh`` (idempotent) and return the binary's path."""
    proc = subprocess.run(
        [str(root / "scripts" / "build-vcsim.sh")],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise VcsimError(f"scripts/build-vcsim.sh failed ({proc.returncode}):\n{proc.stdout}")
    return root / ".cutover" / "bin" / "vcsim"


def generate_cert(directory: Path, name: str = "vcsim") -> tuple[Path, Path]:
    """Write a self-signed 2048-bit RSA certificate for 127.0.0.1/localhost.

    Returns ``(cert, key)`` PEM paths; the certificate is also the CA file clients load.
    """
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    proc = subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256",
            "-days", "30", "-keyout", str(key), "-out", str(cert),
            "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-addext", "basicConstraints=critical,CA:TRUE",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise VcsimError(f"openssl req failed ({proc.returncode}):\n{proc.stdout}")
    key.chmod(0o600)
    return cert, key


@dataclass
class Vcsim:
    """A running simulator process that this Python process started."""

    url: str  # https://127.0.0.1:PORT/sdk
    host: str
    port: int
    user: str
    password: str
    ca_file: Path  # our self-signed certificate: the CA clients must trust
    datastore_dir: Path  # the directory behind DC0's LocalDS_0
    datastores: dict[str, dict[str, Path]]  # datacenter -> datastore -> directory
    workdir: Path
    log: Path  # the simulator's stderr
    proc: subprocess.Popen[bytes] = field(repr=False)

    @property
    def base_url(self) -> str:
        """``https://127.0.0.1:PORT`` (for ``/rest`` and ``/folder``)."""
        return self.url.removesuffix("/sdk")

    def ssl_context(self) -> ssl.SSLContext:
        """A verifying client context that trusts only our certificate."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    def folder_url(self, path: str, datastore: str = "LocalDS_0", datacenter: str = "DC0") -> str:
        """URL of a datastore file, e.g. ``folder_url("DC0_C0_H0_VM0/disk1-flat.vmdk")``."""
        return f"{self.base_url}/folder/{path}?dcPath={datacenter}&dsName={datastore}"

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait, SIGKILL if needed (by PID only). Returns the exit code."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> Vcsim:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start(
    binary: Path,
    workdir: Path,
    *,
    datacenters: int = 1,
    clusters: int = 1,
    hosts: int = 2,
    vms: int = 4,
    standalone_hosts: int = 0,
    port: int = 0,
    host: str = "127.0.0.1",
    cert: Path | None = None,
    key: Path | None = None,
    timeout: float = 300.0,
) -> Vcsim:
    """Start the simulator and wait for its ready line.

    ``hosts`` is per cluster, ``standalone_hosts`` per datacenter, ``vms`` per host.
    ``port=0`` lets the simulator bind a free port itself (no race). Without ``cert``
    and ``key`` a certificate is generated in ``workdir``. The process's stdout (the
    ready line) and stderr (its log) go to files in ``workdir``.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    if cert is None or key is None:
        cert, key = generate_cert(workdir)
    dsroot = workdir / "datastores"
    dsroot.mkdir(exist_ok=True)
    ready_file, log = workdir / "vcsim.ready.json", workdir / "vcsim.log"
    args = [
        str(binary),
        f"-datacenter={datacenters}",
        f"-cluster={clusters}",
        f"-host={hosts}",
        f"-vm={vms}",
        f"-standalone-host={standalone_hosts}",
        f"-listen={host}:{port}",
        f"-cert={cert}",
        f"-key={key}",
    ]
    password = secrets.token_urlsafe(16)  # a real login check: wrong passwords fail
    env = {**os.environ, "TMPDIR": str(dsroot), "VCSIM_PASSWORD": password}
    with open(ready_file, "wb") as out, open(log, "ab") as err:
        proc = subprocess.Popen(
            args, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env,
            cwd=workdir, start_new_session=True,
        )  # fmt: skip
    try:
        info = _wait_ready(proc, ready_file, log, timeout)
    except BaseException:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        raise
    datastores = {
        dc: {name: Path(p) for name, p in stores.items()}
        for dc, stores in info["datastores"].items()
    }
    first_dc = datastores.get("DC0") or next(iter(datastores.values()), {})
    return Vcsim(
        url=info["url"],
        host=info["host"],
        port=int(info["port"]),
        user=info["username"],
        password=password,
        ca_file=cert,
        datastore_dir=first_dc.get("LocalDS_0", dsroot),
        datastores=datastores,
        workdir=workdir,
        log=log,
        proc=proc,
    )


def _wait_ready(
    proc: subprocess.Popen[bytes], ready_file: Path, log: Path, timeout: float
) -> dict[str, Any]:
    """Poll for the one JSON line the simulator prints on stdout when it serves."""
    deadline = time.monotonic() + timeout
    while True:
        data = ready_file.read_bytes()
        if data.endswith(b"\n"):
            info: dict[str, Any] = json.loads(data.splitlines()[0])
            return info
        if proc.poll() is not None:
            raise VcsimError(
                f"vcsim exited with {proc.returncode} before it was ready:\n"
                + log.read_text(errors="replace")[-4000:]
            )
        if time.monotonic() > deadline:
            raise VcsimError(f"vcsim not ready after {timeout}s; log: {log}")
        time.sleep(0.02)


def record_writes(ctk_file: Path, blocks: Iterable[int], *, capacity: int | None = None) -> str:
    """Record one batch of written blocks in a change-tracking file; return the change ID.

    Creates the file (uuid from the file's path and time, seq 0) when missing. This is
    the writer side of the format above, for tests and the lab.
    """
    if ctk_file.exists():
        ctk = json.loads(ctk_file.read_text())
    else:
        ctk = {"uuid": f"{os.getpid():x}-{time.time_ns():x}", "blockSize": BLOCK_SIZE,
               "seq": 0, "changes": {}, "capacityBytes": capacity or 0}  # fmt: skip
    if capacity is not None:
        ctk["capacityBytes"] = capacity
    ctk["seq"] += 1
    for b in blocks:
        ctk["changes"][str(b)] = ctk["seq"]
    tmp = ctk_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(ctk))
    tmp.replace(ctk_file)  # atomic: the simulator never reads half a file
    return f"{ctk['uuid']}/{ctk['seq']}"


def _serve(argv: list[str]) -> int:
    """`python -m cutover.lab.vcsim WORKDIR [PORT]`: build, start in the background, write
    WORKDIR/vcsim.json (host, port, user, pid, caFile) and WORKDIR/password (mode 600),
    and exit, leaving the simulator running in its own session (stop it by that pid)."""
    workdir = Path(argv[0]).resolve()
    port = int(argv[1]) if len(argv) > 1 else 0
    sim = start(build(), workdir, clusters=1, hosts=2, vms=2, standalone_hosts=0, port=port)
    secret = workdir / "password"
    secret.write_text(sim.password)
    secret.chmod(0o600)
    info = {"host": sim.host, "port": sim.port, "user": sim.user, "pid": sim.proc.pid,
            "caFile": str(sim.ca_file), "datastore": str(sim.datastore_dir)}  # fmt: skip
    (workdir / "vcsim.json").write_text(json.dumps(info, indent=2))
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(_serve(sys.argv[1:]))
