"""Launcher for a private libvirtd (and the virtlogd its QEMU driver logs through).

No systemd here: the tests, the demo and the benches start `libvirtd` as a plain process
with its own socket directory, so the URI is `qemu+unix:///system?socket=<dir>/libvirt-sock`
(the storage driver has no embedded mode; domains and pools both go through this daemon).
`virtlogd` is started too unless one already answers on `/run/libvirt/virtlogd-sock` (its
path is fixed). Both are stopped by PID. What the host needs: Debian `libvirt-daemon`,
`libvirt-daemon-driver-qemu`, `qemu-system-x86` and a `libvirt-qemu` user (setup.sh).

    python -m cutover.lab.libvirtd WORKDIR [SOCKET_DIR]   # start; prints {"uri", "pids"}
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

VIRTLOGD_SOCK = Path("/run/libvirt/virtlogd-sock")


class LibvirtdError(RuntimeError):
    """libvirtd could not be started (the message says what is missing or its log)."""


def _binary(name: str) -> str:
    path = shutil.which(name, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
    if path:
        return path
    raise LibvirtdError(
        f"{name} is missing: apt-get install -y libvirt-daemon libvirt-daemon-driver-qemu "
        "(scripts/setup.sh does)"
    )


def _answers(sock: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(str(sock))
        except OSError:
            return False
    return True


def _holder(pid_file: Path) -> int | None:
    """The live process a libvirt driver pid file names (libvirtd holds it locked)."""
    try:
        pid = int(pid_file.read_text().strip() or 0)
    except (OSError, ValueError):
        return None
    if pid <= 0:
        return None
    try:
        os.kill(pid, 0)
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (ProcessLookupError, PermissionError, OSError):
        return None
    return pid if b"libvirtd" in cmdline else None


@dataclass
class Libvirtd:
    uri: str
    workdir: Path
    pids: list[int] = field(default_factory=list)

    def stop(self, timeout: float = 10) -> None:
        """Stop what `start` started, by PID (libvirtd first: it holds virtlogd's socket)."""
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.05)
            with contextlib.suppress(ProcessLookupError):
                if _alive(pid):
                    os.kill(pid, signal.SIGKILL)
        self.pids = []


def _alive(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass  # not our child (started by another process): probe it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def start(workdir: Path, sock_dir: Path | None = None, wait_seconds: float = 20) -> Libvirtd:
    """Start virtlogd (when none answers) and a libvirtd whose sockets live in `sock_dir`
    (default `workdir/sock`; a fixed path gives a fixed URI for a site file)."""
    import libvirt  # the client library: only where a daemon is wanted

    libvirt.registerErrorHandler(lambda _c, _e: None, None)  # failures arrive as exceptions

    daemon = _binary("libvirtd")
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    sock_dir = (sock_dir or workdir / "sock").resolve()
    sock_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    conf = workdir / "libvirtd.conf"
    conf.write_text(
        f'unix_sock_dir = "{sock_dir}"\nauth_unix_rw = "none"\nauth_unix_ro = "none"\n'
        'unix_sock_rw_perms = "0700"\n'
    )
    other = _holder(Path("/run/libvirt/network/driver.pid"))
    if other is not None:
        raise LibvirtdError(
            f"another libvirtd runs on this host (pid {other}); one per host: stop it first "
            "(`cutover lab down` if it is the lab's)"
        )
    pids: list[int] = []
    if not _answers(VIRTLOGD_SOCK):
        with (workdir / "virtlogd.log").open("ab") as log:
            vl = subprocess.Popen(
                [_binary("virtlogd"), "-p", str(workdir / "virtlogd.pid")],
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        pids.append(vl.pid)
    with (workdir / "libvirtd.log").open("ab") as log:
        proc = subprocess.Popen(
            [daemon, "-f", str(conf), "-p", str(workdir / "libvirtd.pid")],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    pids.insert(0, proc.pid)
    lv = Libvirtd(f"qemu+unix:///system?socket={sock_dir}/libvirt-sock", workdir, pids)
    deadline = time.monotonic() + wait_seconds
    while True:
        if proc.poll() is not None:
            lv.stop()
            raise LibvirtdError(f"libvirtd exited: {(workdir / 'libvirtd.log').read_text()}")
        try:
            libvirt.open(lv.uri).close()
            break
        except libvirt.libvirtError:
            if time.monotonic() > deadline:
                lv.stop()
                raise LibvirtdError(f"libvirtd did not answer within {wait_seconds} s") from None
            time.sleep(0.1)
    deadline = time.monotonic() + wait_seconds
    while not _answers(VIRTLOGD_SOCK):
        if time.monotonic() > deadline:
            lv.stop()
            raise LibvirtdError("virtlogd did not answer on /run/libvirt/virtlogd-sock")
        time.sleep(0.05)
    return lv


def _main(argv: list[str]) -> int:
    if len(argv) not in (1, 2):
        print("usage: python -m cutover.lab.libvirtd WORKDIR [SOCKET_DIR]", file=sys.stderr)
        return 2
    try:
        lv = start(Path(argv[0]), Path(argv[1]) if len(argv) == 2 else None)
    except LibvirtdError as exc:
        print(f"libvirtd: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"uri": lv.uri, "pids": lv.pids}))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
