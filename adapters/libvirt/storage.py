"""Target storage: dir pools, and volumes made from converted images (hard-linked in where
the pool shares the image's file system, else uploaded, sparse where libvirt can)."""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import libvirt

from adapters.libvirt.connection import lookup
from adapters.progress import heartbeat
from adapters.staging.layout import confined
from cutover.disknames import safe_name
from cutover.errors import ErrorKind, error


def ensure_dir_pool(conn: Any, name: str, root: Callable[[], Path], lock: threading.Lock) -> Any:
    """The pool `name`, defined (a dir pool under `root()`), built and started when missing.
    Cutovers running at once share a pool: one thread (holding `lock`) defines and starts
    it, and a second worker process doing the same is tolerated (define/create race)."""
    with lock:
        pool = lookup(conn.storagePoolLookupByName, name)
        if pool is None:
            path = confined(root(), safe_name(name, "target pool"), "pool directory")
            xml = ET.Element("pool", type="dir")
            ET.SubElement(xml, "name").text = name
            target = ET.SubElement(xml, "target")
            ET.SubElement(target, "path").text = str(path)
            # QEMU runs as its own user (libvirt-qemu) and must reach the volumes
            ET.SubElement(ET.SubElement(target, "permissions"), "mode").text = "0755"
            try:
                pool = conn.storagePoolDefineXML(ET.tostring(xml, encoding="unicode"), 0)
            except libvirt.libvirtError:
                pool = lookup(conn.storagePoolLookupByName, name)
                if pool is None:
                    raise
            with contextlib.suppress(libvirt.libvirtError):
                pool.build(0)
            with contextlib.suppress(libvirt.libvirtError):
                pool.setAutostart(1)
        if not pool.isActive():
            with contextlib.suppress(libvirt.libvirtError):
                pool.build(0)  # its directory may be gone (a defined pool outlives it)
            try:
                pool.create(0)
            except libvirt.libvirtError:
                if not pool.isActive():  # not started by someone else meanwhile
                    raise
        return pool


def link_volume(pool: Any, source: Path, name: str) -> Any | None:
    """A dir pool on the image's file system: hard-link the image in as the volume (no
    byte copied, so the downtime does not grow with the disk). None: upload instead."""
    desc = ET.fromstring(pool.XMLDesc(0))
    target = desc.findtext("target/path")
    if desc.get("type") != "dir" or not target:
        return None
    path = Path(target) / safe_name(name, "volume")
    try:
        os.link(source, path)
    except OSError as exc:
        if exc.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            return None
        raise error(ErrorKind.LIBVIRT_FAULT, f"linking {source} into {target}: {exc}") from None
    refresh(pool)
    return pool.storageVolLookupByName(name)


def upload_volume(conn: Any, vol: Any, source: Path) -> tuple[int, bool]:
    """Stream the file into the volume, skipping holes where libvirt can. Returns
    (bytes sent, sparse)."""
    fd = os.open(source, os.O_RDONLY)
    size = os.fstat(fd).st_size
    sent = 0

    def data(_stream: Any, nbytes: int, _opaque: Any) -> bytes:
        nonlocal sent
        chunk = os.read(fd, nbytes)
        sent += len(chunk)
        if sent % (256 << 20) < len(chunk):
            heartbeat({"volume": vol.name(), "bytes": sent, "of": size})
        return chunk

    def hole(_stream: Any, _opaque: Any) -> list[Any]:
        pos = os.lseek(fd, 0, os.SEEK_CUR)
        if pos >= size:
            return [True, 0]
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:  # no data after pos: the rest is a hole
            os.lseek(fd, pos, os.SEEK_SET)
            return [False, size - pos]
        if start > pos:
            os.lseek(fd, pos, os.SEEK_SET)
            return [False, start - pos]
        end = os.lseek(fd, pos, os.SEEK_HOLE)
        os.lseek(fd, pos, os.SEEK_SET)
        return [True, end - pos]

    def skip(_stream: Any, length: int, _opaque: Any) -> int:
        os.lseek(fd, length, os.SEEK_CUR)
        return 0

    try:
        stream = conn.newStream(0)
        try:
            vol.upload(stream, 0, 0, libvirt.VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM)
            stream.sparseSendAll(data, hole, skip, None)
            sparse = True
        except libvirt.libvirtError as exc:
            if exc.get_error_code() not in (
                libvirt.VIR_ERR_NO_SUPPORT,
                libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED,
            ):
                with contextlib.suppress(libvirt.libvirtError):
                    stream.abort()
                raise
            os.lseek(fd, 0, os.SEEK_SET)
            stream = conn.newStream(0)
            vol.upload(stream, 0, 0, 0)
            stream.sendAll(data, None)
            sparse = False
        stream.finish()
        return sent, sparse
    finally:
        os.close(fd)


def volume_from_image(conn: Any, pool: Any, src: Path, name: str) -> tuple[Any, str, int, bool]:
    """Volume `name` in `pool` holding the image `src` (a previous attempt's volume is
    replaced): (volume, method "link" or "upload", bytes sent, sparse)."""
    old = lookup(pool.storageVolLookupByName, name)
    if old is not None:  # a retry: upload again from scratch
        old.delete(0)
    xml = ET.Element("volume")
    ET.SubElement(xml, "name").text = name
    ET.SubElement(xml, "capacity", unit="bytes").text = str(src.stat().st_size)
    ET.SubElement(xml, "allocation", unit="bytes").text = "0"
    # raw container: libvirt must not format it; the bytes are the image
    ET.SubElement(ET.SubElement(xml, "target"), "format", type="raw")
    vol = link_volume(pool, src, name)
    if vol is not None:  # same file system: the image becomes the volume
        method, sent, sparse = "link", 0, True
    else:
        vol = pool.createXML(ET.tostring(xml, encoding="unicode"), 0)
        sent, sparse = upload_volume(conn, vol, src)
        method = "upload"
    refresh(pool)
    return vol, method, sent, sparse


#: The overlay's qcow2 cluster size (see `overlay_volume`).
OVERLAY_CLUSTER = 4096


def overlay_volume(pool: Any, base: Any, base_format: str, capacity: int, name: str) -> Any:
    """A qcow2 volume `name` in `pool` on top of `base` (a fresh one: a previous attempt's
    is replaced; attach runs before the target ever boots it). The base is never written
    while the overlay exists: it stays the point in time the final sync produced."""
    old = lookup(pool.storageVolLookupByName, name)
    if old is not None:
        old.delete(0)
    xml = ET.Element("volume")
    ET.SubElement(xml, "name").text = name
    ET.SubElement(xml, "capacity", unit="bytes").text = str(capacity)
    ET.SubElement(xml, "allocation", unit="bytes").text = "0"
    target = ET.SubElement(xml, "target")
    ET.SubElement(target, "format", type="qcow2")
    # 4 KiB clusters: a guest's 4 KiB write allocates 4 KiB, not 64 (copied up from the
    # base), so the overlay measures what the target wrote and reverse sync moves only that
    ET.SubElement(target, "clusterSize", unit="B").text = str(OVERLAY_CLUSTER)
    backing = ET.SubElement(xml, "backingStore")
    ET.SubElement(backing, "path").text = base.path()
    ET.SubElement(backing, "format", type=base_format)
    vol = pool.createXML(ET.tostring(xml, encoding="unicode"), 0)
    refresh(pool)
    return vol


def refresh(pool: Any, wait: float = 30.0) -> None:
    """Rescan the pool's directory. libvirt refuses while another volume of the pool is
    being built ("has asynchronous jobs running": a cutover of the same wave creating its
    overlay, in this worker or another): wait for it, bounded."""
    deadline = time.monotonic() + wait
    while True:
        try:
            pool.refresh(0)
            return
        except libvirt.libvirtError as exc:
            busy = "asynchronous jobs" in str(exc)
            if not busy or time.monotonic() > deadline:
                raise
        time.sleep(0.1)
