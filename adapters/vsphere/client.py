"""vCenter connections: one reusable, self-healing session per vCenter, and the
translation of pyvmomi faults into typed errors (`VSphereUnavailable` retryable; `NotFound`,
`InvalidState`, `AuthenticationFailed`, `PermissionDenied`, `VSphereFault` not).

Verify TLS unless the site config says `insecure` (labs).
"""

from __future__ import annotations

import contextlib
import http.client
import ssl
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import vim, vmodl
from temporalio.exceptions import ApplicationError

from cutover.errors import ErrorKind, error
from cutover.site import VCenter

T = TypeVar("T")

# ---------------------------------------------------------------------------- errors


def translate(exc: BaseException, what: str) -> ApplicationError:
    """Map a pyvmomi fault or a network error to a typed error a person can act on."""
    if isinstance(exc, ApplicationError):
        return exc
    if isinstance(exc, vim.fault.InvalidLogin):
        return error(
            ErrorKind.AUTHENTICATION_FAILED,
            f"{what}: vCenter refused the login: check the "
            "user and the password reference in the site config",
        )
    if isinstance(exc, vim.fault.NoPermission):
        priv = getattr(exc, "privilegeId", "") or ""
        return error(
            ErrorKind.PERMISSION_DENIED, f"{what}: the vCenter user lacks privilege {priv}".strip()
        )
    if isinstance(exc, vim.fault.InvalidPowerState | vim.fault.InvalidState):
        return error(
            ErrorKind.INVALID_STATE, f"{what}: {getattr(exc, 'msg', '') or type(exc).__name__}"
        )
    if isinstance(exc, vmodl.fault.ManagedObjectNotFound):
        return error(ErrorKind.NOT_FOUND, f"{what}: the object no longer exists in vCenter")
    if isinstance(exc, vim.fault.TaskInProgress | vim.fault.NotAuthenticated):
        return error(
            ErrorKind.VSPHERE_UNAVAILABLE, f"{what}: {type(exc).__name__} (will retry)", True
        )
    if isinstance(exc, OSError | http.client.HTTPException | ConnectionError):
        return error(ErrorKind.VSPHERE_UNAVAILABLE, f"{what}: vCenter unreachable: {exc}", True)
    if isinstance(exc, vmodl.MethodFault):
        return error(
            ErrorKind.VSPHERE_FAULT, f"{what}: {getattr(exc, 'msg', '') or type(exc).__name__}"
        )
    return error(ErrorKind.VSPHERE_FAULT, f"{what}: {type(exc).__name__}: {exc}")


# ------------------------------------------------------------------------ connection


class VSphereClient:
    """One reusable, self-healing connection to one vCenter."""

    def __init__(self, settings: VCenter, password: Callable[[], str]) -> None:
        self.settings = settings
        self._password = password
        self._si: Any = None
        self._lock = threading.Lock()
        #: PropertyCollector round trips made (RetrievePropertiesEx + continuations)
        self.round_trips = 0

    def _ssl(self) -> ssl.SSLContext:
        if self.settings.insecure:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            return ctx
        return ssl.create_default_context(cafile=self.settings.caFile)

    def connect(self) -> Any:
        with self._lock:
            if self._si is not None and self._alive(self._si):
                return self._si
            try:
                self._si = SmartConnect(
                    host=self.settings.host,
                    port=self.settings.port,
                    user=self.settings.user,
                    pwd=self._password(),
                    sslContext=self._ssl(),
                    connectionPoolTimeout=-1,
                )
            except Exception as exc:
                raise translate(exc, f"connecting to vCenter {self.settings.host}") from None
            return self._si

    @staticmethod
    def _alive(si: Any) -> bool:
        try:
            return si.content.sessionManager.currentSession is not None
        except Exception:
            return False

    def call(self, what: str, fn: Callable[[Any], T]) -> T:
        """Run fn(service_instance); on an expired session reconnect once and retry."""
        for attempt in (1, 2):
            si = self.connect()
            try:
                return fn(si)
            except vim.fault.NotAuthenticated:
                if attempt == 2:
                    raise translate(vim.fault.NotAuthenticated(), what) from None
                with self._lock:
                    self._si = None
            except ApplicationError:
                raise
            except Exception as exc:
                if isinstance(exc, OSError | http.client.HTTPException):
                    with self._lock:
                        self._si = None
                raise translate(exc, what) from None
        raise AssertionError("unreachable")

    def close(self) -> None:
        with self._lock:
            if self._si is not None:
                # closing is best effort: the session may be gone already
                with contextlib.suppress(Exception):
                    Disconnect(self._si)
                self._si = None

    def session_cookie(self) -> str:
        si = self.connect()
        cookie: str = si._stub.cookie  # the vmware_soap_session cookie, as vCenter sets it
        return cookie


class ClientPool:
    """The worker's vCenter connections, one per (host, port, user); injected into activities."""

    def __init__(self, password: Callable[[VCenter], str] | None = None) -> None:
        self._clients: dict[tuple[str, int, str], VSphereClient] = {}
        self._password = password or (lambda s: s.passwordRef.read())
        self._lock = threading.Lock()

    def get(self, settings: VCenter) -> VSphereClient:
        key = (settings.host, settings.port, settings.user)
        with self._lock:
            client = self._clients.get(key)
            if client is None or client.settings != settings:
                client = VSphereClient(settings, lambda: self._password(settings))
                self._clients[key] = client
            return client

    def close(self) -> None:
        for c in self._clients.values():
            c.close()
