"""libvirt connections: opening one (with the event loop an embedded driver needs),
translating libvirt errors into typed ones, and lookups that answer None for "not there"."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import libvirt
from temporalio.exceptions import ApplicationError

from cutover.errors import ErrorKind, error

# libvirt prints every error to stderr by default; ours arrive as exceptions, typed below.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

ConnectionFactory = Callable[[str], Any]

_RETRYABLE = {
    libvirt.VIR_ERR_NO_CONNECT,
    libvirt.VIR_ERR_RPC,
    libvirt.VIR_ERR_SYSTEM_ERROR,
    libvirt.VIR_ERR_OPERATION_TIMEOUT,
    libvirt.VIR_ERR_AGENT_UNRESPONSIVE,
}


def translate(exc: BaseException, what: str) -> ApplicationError:
    if isinstance(exc, ApplicationError):
        return exc
    if isinstance(exc, libvirt.libvirtError):
        code = exc.get_error_code()
        if code in _RETRYABLE:
            return error(ErrorKind.LIBVIRT_UNAVAILABLE, f"{what}: {exc} (will retry)", True)
        return error(ErrorKind.LIBVIRT_FAULT, f"{what}: {exc}")
    if isinstance(exc, OSError):
        return error(ErrorKind.LIBVIRT_UNAVAILABLE, f"{what}: {exc}", True)
    return error(ErrorKind.LIBVIRT_FAULT, f"{what}: {type(exc).__name__}: {exc}")


# ------------------------------------------------------------------------ connection

_loop_lock = threading.Lock()
_loop_started = False


def ensure_event_loop() -> None:
    """Embedded drivers (`qemu:///embed`) need a libvirt event loop running in-process."""
    global _loop_started
    with _loop_lock:
        if _loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _loop_started = True


def open_connection(uri: str) -> Any:
    if "/embed" in uri:
        ensure_event_loop()
    return libvirt.open(uri)


def not_found(exc: libvirt.libvirtError) -> bool:
    return exc.get_error_code() in (
        libvirt.VIR_ERR_NO_DOMAIN,
        libvirt.VIR_ERR_NO_STORAGE_POOL,
        libvirt.VIR_ERR_NO_STORAGE_VOL,
        libvirt.VIR_ERR_NO_NETWORK,
    )


def network_exists(conn: Any, name: str) -> bool:
    """Whether the host defines the network. An embedded driver has no network driver of
    its own (it would ask a virtnetworkd that is not there): nothing exists."""
    try:
        conn.networkLookupByName(name)
        return True
    except libvirt.libvirtError as exc:
        if exc.get_error_code() in (libvirt.VIR_ERR_NO_NETWORK, libvirt.VIR_ERR_NO_SUPPORT):
            return False
        if "/embed" in conn.getURI():
            return False
        raise


def lookup(fn: Callable[[str], Any], name: str) -> Any | None:
    try:
        return fn(name)
    except libvirt.libvirtError as exc:
        if not_found(exc):
            return None
        raise
