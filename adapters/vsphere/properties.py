"""The PropertyCollector: many objects' properties in one round trip, one property of one
object, and polling a vSphere task (heartbeating while it runs).
"""

from __future__ import annotations

import time
from typing import Any

from pyVmomi import vim, vmodl
from temporalio import activity

from adapters.vsphere.client import VSphereClient, translate
from cutover.errors import ErrorKind, error

# ------------------------------------------------------------------------- inventory


def collect(client: VSphereClient, si: Any, root: Any, kind: type, paths: list[str]) -> list[Any]:
    """All objects of one type under root with the given properties: one round trip (plus
    continuations for very large sets), not one per object or property."""
    content = si.content
    view = content.viewManager.CreateContainerView(root, [kind], True)
    try:
        traversal = vmodl.query.PropertyCollector.TraversalSpec(
            name="view", path="view", skip=False, type=vim.view.ContainerView
        )
        spec = vmodl.query.PropertyCollector.FilterSpec(
            objectSet=[
                vmodl.query.PropertyCollector.ObjectSpec(obj=view, skip=True, selectSet=[traversal])
            ],
            propSet=[vmodl.query.PropertyCollector.PropertySpec(type=kind, pathSet=paths)],
        )
        pc = content.propertyCollector
        options = vmodl.query.PropertyCollector.RetrieveOptions(maxObjects=1000)
        result = pc.RetrievePropertiesEx([spec], options)
        client.round_trips += 1
        objects: list[Any] = []
        while result is not None:
            objects.extend(result.objects)
            if not result.token:
                break
            result = pc.ContinueRetrievePropertiesEx(result.token)
            client.round_trips += 1
        return objects
    finally:
        view.Destroy()


def props(obj: Any) -> dict[str, Any]:
    return {p.name: p.val for p in (obj.propSet or [])}


def moref(obj: Any) -> str:
    return str(obj._moId)


def wait_task(si: Any, task: Any, what: str, timeout: float = 3600) -> Any:
    """Poll a vSphere task, heartbeating while it runs; raise its fault as a typed error.

    Reads `info.state` etc. one by one through the PropertyCollector: pyvmomi 9 cannot
    deserialize a whole `info` whose entity is a snapshot (remove-snapshot tasks)."""
    deadline = time.monotonic() + timeout
    while True:
        state = str(read_property(si, task, "info.state"))
        if state == "success":
            return read_property(si, task, "info.result")
        if state == "error":
            raise translate(read_property(si, task, "info.error"), what)
        if time.monotonic() > deadline:
            raise error(
                ErrorKind.VSPHERE_UNAVAILABLE,
                f"{what}: task still {state} after {timeout:g}s",
                True,
            )
        if activity.in_activity():
            activity.heartbeat({"task": what, "progress": read_property(si, task, "info.progress")})
        time.sleep(0.2)


def read_property(si: Any, obj: Any, path: str) -> Any:
    """One property of one object through the PropertyCollector: an unset property is None
    (reading an unset one such as `vm.snapshot` directly can break the connection)."""
    pc = vmodl.query.PropertyCollector
    spec = pc.FilterSpec(
        objectSet=[pc.ObjectSpec(obj=obj, skip=False)],
        propSet=[pc.PropertySpec(type=type(obj), pathSet=[path])],
    )
    for result in si.content.propertyCollector.RetrieveContents([spec]) or []:
        for prop in result.propSet or []:
            if prop.name == path:
                return prop.val
    return None
