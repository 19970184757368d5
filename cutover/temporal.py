"""Connecting to Temporal: the embedded dev server by default, a real cluster by settings.

TEMPORAL_ADDRESS (default 127.0.0.1:7233), TEMPORAL_NAMESPACE (default `default`), and for
mTLS TEMPORAL_TLS_CERT / TEMPORAL_TLS_KEY (client certificate files) and TEMPORAL_TLS_CA.
"""

from __future__ import annotations

import asyncio
import dataclasses
import getpass
import os
import socket
import time
from pathlib import Path
from typing import Any

from temporalio.api.failure.v1 import Failure
from temporalio.client import Client, Interceptor, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter, DefaultFailureConverter, PayloadConverter
from temporalio.exceptions import ApplicationError
from temporalio.runtime import Runtime
from temporalio.service import RPCError, TLSConfig

from cutover import search_attributes
from cutover.errors import ErrorKind

DEFAULT_ADDRESS = "127.0.0.1:7233"


class _RefusalsWithoutTraces(DefaultFailureConverter):
    """An Update's refusal (ApplicationError type `Refused`, raised by its validator) is an
    answer to an operator, not a crash: it carries no stack trace, which the Temporal UI
    would print under the message. Rejected Updates never enter the history."""

    def to_failure(
        self, exception: BaseException, payload_converter: PayloadConverter, failure: Failure
    ) -> None:
        super().to_failure(exception, payload_converter, failure)
        if isinstance(exception, ApplicationError) and exception.type == ErrorKind.REFUSED.value:
            failure.stack_trace = ""


#: pydantic payloads (as the replay test uses), refusals without stack traces.
DATA_CONVERTER: DataConverter = dataclasses.replace(
    pydantic_data_converter, failure_converter_class=_RefusalsWithoutTraces
)


def identity() -> str:
    """Who is acting: recorded by Temporal in the history of every request."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _tls() -> TLSConfig | bool:
    cert, key, ca = (os.environ.get(f"TEMPORAL_TLS_{k}") for k in ("CERT", "KEY", "CA"))
    if not (cert or key or ca):
        return False
    if bool(cert) != bool(key):
        raise ValueError("set both TEMPORAL_TLS_CERT and TEMPORAL_TLS_KEY, or neither")
    return TLSConfig(
        client_cert=Path(cert).read_bytes() if cert else None,
        client_private_key=Path(key).read_bytes() if key else None,
        server_root_ca_cert=Path(ca).read_bytes() if ca else None,
    )


async def connect(
    address: str | None = None,
    namespace: str | None = None,
    interceptors: list[Interceptor] | None = None,
    wait_seconds: float = 30.0,
    runtime: Runtime | None = None,
) -> Client:
    """Connect, waiting up to `wait_seconds` for a server that is still starting: its port
    opens before its frontend is healthy ("Frontend is not healthy yet"), and a worker
    started alongside the server must not die of that."""
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            return await Client.connect(
                address or os.environ.get("TEMPORAL_ADDRESS", DEFAULT_ADDRESS),
                namespace=namespace or os.environ.get("TEMPORAL_NAMESPACE", "default"),
                data_converter=DATA_CONVERTER,
                tls=_tls(),
                identity=identity(),
                interceptors=interceptors or [],
                runtime=runtime,
            )
        except RuntimeError as exc:
            starting = any(s in str(exc) for s in ("not healthy", "Unavailable", "refused"))
            if not starting or time.monotonic() >= deadline:
                raise
            await asyncio.sleep(0.2)


async def why_finished(handle: WorkflowHandle[Any, Any], command: str, what: str) -> str:
    """Updates reach only running workflows: say what the cutover or wave did instead."""
    try:
        desc = await handle.describe()
    except RPCError:
        return f"no {what} with workflow ID {handle.id}"
    state = desc.status.name if desc.status else "UNKNOWN"
    outcome = desc.typed_search_attributes.get(search_attributes.OUTCOME) or state
    retired = what == "cutover" and outcome == "COMPLETED"
    extra = "; after finalize the source is retired" if retired else ""
    return f"{command} refused: {what} {handle.id} has already finished ({outcome}){extra}"
