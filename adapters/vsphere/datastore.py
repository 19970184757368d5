"""Datastore files read over vCenter's `/folder` HTTP endpoint."""

from __future__ import annotations

import http.client
import io
import urllib.parse
from typing import Any

from adapters.vsphere.client import VSphereClient
from cutover.errors import ErrorKind, error

# ------------------------------------------------------------------------ disk bytes


class DatastoreFile(io.RawIOBase):
    """A seekable read-only stream of a datastore file over vCenter's `/folder` endpoint,
    with Range requests and the SOAP session cookie (as vCenter requires)."""

    def __init__(
        self, client: VSphereClient, datastore_path: str, datacenter: str, chunk: int = 8 << 20
    ) -> None:
        if not (datastore_path.startswith("[") and "] " in datastore_path):
            raise ValueError(f"not a datastore path: {datastore_path!r} (expected '[ds] dir/file')")
        ds, rel = datastore_path[1:].split("] ", 1)
        query = urllib.parse.urlencode({"dcPath": datacenter, "dsName": ds})
        self._path = f"/folder/{urllib.parse.quote(rel)}?{query}"
        self._client = client
        self._pos = 0
        self._chunk = chunk
        self.name = datastore_path
        self.size = self._size()

    def _get(
        self, headers: dict[str, str], method: str = "GET"
    ) -> tuple[int, dict[str, str], bytes]:
        s = self._client.settings
        conn = http.client.HTTPSConnection(s.host, s.port, context=self._client._ssl(), timeout=60)
        try:
            conn.request(
                method, self._path, headers={"Cookie": self._client.session_cookie(), **headers}
            )
            resp = conn.getresponse()
            body = resp.read() if method == "GET" else b""
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
        except OSError as exc:
            raise error(
                ErrorKind.VSPHERE_UNAVAILABLE, f"reading {self.name}: {exc}", True
            ) from None
        finally:
            conn.close()

    def _size(self) -> int:
        status, headers, _ = self._get({}, method="HEAD")
        if status == 404:
            raise error(ErrorKind.NOT_FOUND, f"{self.name} does not exist on the datastore")
        if status >= 400:
            raise error(ErrorKind.VSPHERE_FAULT, f"{self.name}: HTTP {status}")
        return int(headers.get("content-length", "0"))

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, buf: Any) -> int:
        view = memoryview(buf).cast("B")
        want = min(len(view), self.size - self._pos)
        if want <= 0:
            return 0
        status, _, body = self._get({"Range": f"bytes={self._pos}-{self._pos + want - 1}"})
        if status not in (200, 206):
            raise error(
                ErrorKind.VSPHERE_FAULT, f"reading {self.name} at {self._pos}: HTTP {status}"
            )
        if status == 200:  # server ignored the range: take our slice of the whole file
            body = body[self._pos : self._pos + want]
        n = len(body)
        view[:n] = body
        self._pos += n
        return n

    def readall(self) -> bytes:
        """The rest of the file in `chunk`-sized ranged requests (not 8 KiB ones)."""
        out = bytearray()
        while self._pos < self.size:
            buf = bytearray(min(self._chunk, self.size - self._pos))
            n = self.readinto(buf)
            if n == 0:
                break
            out += buf[:n]
        return bytes(out)
