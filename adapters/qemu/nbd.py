"""Block-level access to a disk image in any format QEMU reads (qcow2 first), through
`qemu-nbd` (Debian `qemu-utils`) on a private Unix socket and a minimal NBD client.

Why: the warm path keeps a pre-converted qcow2 image in step with the source, so the final
pass in the downtime writes only the changed blocks into it (no conversion of the whole
disk after quiesce); and the window's consistency check reads what the target will boot
(the guest's view of the qcow2), not a side copy. Only the fixed-newstyle handshake with
`NBD_OPT_EXPORT_NAME` and simple replies are used: what every qemu-nbd since 2.x speaks.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

_OPT_MAGIC = 0x49484156454F5054  # "IHAVEOPT"
_REQUEST = 0x25609513
_REPLY = 0x67446698
_CMD_READ, _CMD_WRITE, _CMD_DISC, _CMD_FLUSH = 0, 1, 2, 3
_FLAG_FIXED_NEWSTYLE, _FLAG_NO_ZEROES = 1, 2
#: the largest request qemu-nbd accepts is 32 MiB; stay well below
MAX_REQUEST = 8 << 20


class NbdError(RuntimeError):
    """qemu-nbd could not be started, or a request failed (message says which and why)."""


class NbdImage:
    """One image exported by a qemu-nbd of our own; use as a context manager.

    `read_only` with `shared`: read an image another process (a running QEMU domain) holds
    open (image locking off for this reader)."""

    def __init__(
        self,
        path: Path,
        fmt: str,
        read_only: bool = False,
        shared: bool = False,
        server: list[str] | None = None,
    ) -> None:
        """`server`: another NBD server's command line (e.g. nbdkit) instead of qemu-nbd;
        `{socket}` in it is replaced by the private socket's path."""
        self.path, self.fmt, self.read_only = path, fmt, read_only
        qemu_nbd = shutil.which("qemu-nbd")
        if qemu_nbd is None and server is None:
            raise NbdError("qemu-nbd is not installed (Debian package qemu-utils)")
        self._dir = tempfile.mkdtemp(prefix="cutover-nbd-")
        self._sock_path = os.path.join(self._dir, "sock")
        argv = [str(qemu_nbd), f"--socket={self._sock_path}", "--shared=1"]
        if read_only:
            argv.append("--read-only")
        if server is not None:
            argv = [a.replace("{socket}", self._sock_path) for a in server]
        elif shared:  # no image lock: QEMU's own lock on a running domain's disk stays
            name = str(path).replace(",", ",,")
            opts = f"driver={fmt},file.driver=file,file.filename={name},file.locking=off"
            argv += ["--image-opts", opts]
        else:
            argv += [f"--format={fmt}", str(path)]
        self._proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self._sock: socket.socket | None = None
        self._handle = 0
        try:
            self._sock = self._connect()
            self.size = self._handshake()
        except BaseException:
            self._stop()
            raise

    # -- lifecycle

    def _connect(self) -> socket.socket:
        deadline = time.monotonic() + 15
        while True:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace").strip()  # type: ignore[union-attr]
                raise NbdError(f"qemu-nbd {self.path} exited ({self._proc.returncode}): {err}")
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(self._sock_path)
                return sock
            except OSError:
                sock.close()
                if time.monotonic() > deadline:
                    raise NbdError(f"qemu-nbd {self.path}: no socket after 15 s") from None
                time.sleep(0.01)

    def _recv(self, n: int) -> bytes:
        assert self._sock is not None
        buf = bytearray(n)
        view, got = memoryview(buf), 0
        while got < n:
            k = self._sock.recv_into(view[got:], n - got)
            if k == 0:
                raise NbdError(f"qemu-nbd {self.path} closed the connection")
            got += k
        return bytes(buf)

    def _handshake(self) -> int:
        assert self._sock is not None
        magic, opt, flags = struct.unpack(">8sQH", self._recv(18))
        if magic != b"NBDMAGIC" or opt != _OPT_MAGIC or not flags & _FLAG_FIXED_NEWSTYLE:
            raise NbdError(f"qemu-nbd {self.path}: not a fixed-newstyle NBD server")
        zeroes = not flags & _FLAG_NO_ZEROES
        mine = _FLAG_FIXED_NEWSTYLE | (0 if zeroes else _FLAG_NO_ZEROES)
        self._sock.sendall(struct.pack(">I", mine) + struct.pack(">QII", _OPT_MAGIC, 1, 0))
        size, _tflags = struct.unpack(">QH", self._recv(10))
        if zeroes:
            self._recv(124)
        return int(size)

    def _request(self, cmd: int, offset: int, length: int, data: bytes | memoryview = b"") -> None:
        assert self._sock is not None
        self._handle += 1
        head = struct.pack(">IHHQQI", _REQUEST, 0, cmd, self._handle, offset, length)
        self._sock.sendall(head)
        if data:
            self._sock.sendall(data)

    def _reply(self, what: str) -> None:
        magic, err, handle = struct.unpack(">IIQ", self._recv(16))
        if magic != _REPLY or handle != self._handle:
            raise NbdError(f"qemu-nbd {self.path}: unexpected reply to {what}")
        if err:
            raise NbdError(f"qemu-nbd {self.path}: {what} failed: {os.strerror(err)}")

    # -- I/O

    def read(self, offset: int, length: int) -> bytes:
        parts = []
        for pos in range(offset, offset + length, MAX_REQUEST):
            n = min(MAX_REQUEST, offset + length - pos)
            self._request(_CMD_READ, pos, n)
            self._reply(f"read of {n} bytes at {pos}")
            parts.append(self._recv(n))
        return b"".join(parts)

    def write(self, offset: int, data: bytes | memoryview) -> None:
        view = memoryview(data)
        for rel in range(0, len(view), MAX_REQUEST):
            piece = view[rel : rel + MAX_REQUEST]
            self._request(_CMD_WRITE, offset + rel, len(piece), piece)
            self._reply(f"write of {len(piece)} bytes at {offset + rel}")

    def flush(self) -> None:
        self._request(_CMD_FLUSH, 0, 0)
        self._reply("flush")

    def close(self) -> None:
        """Flush (when writable), disconnect, and wait for qemu-nbd to close the image."""
        try:
            if self._sock is not None and not self.read_only:
                self.flush()
            if self._sock is not None:
                with contextlib.suppress(OSError):
                    self._request(_CMD_DISC, 0, 0)
        finally:
            self._stop()

    def _stop(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None
        try:
            self._proc.wait(10)  # qemu-nbd exits when its only client goes
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(5)
        if self._proc.stderr is not None:
            self._proc.stderr.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> NbdImage:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self._stop()
