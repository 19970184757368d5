"""vCenter's REST tagging API (`/rest/com/vmware/cis/...`)."""

from __future__ import annotations

import base64
import http.client
import json
from typing import Any

from adapters.vsphere.client import VSphereClient
from cutover.errors import ErrorKind, error
from cutover.inventory import (
    Tag,
)

# ---------------------------------------------------------------------- tagging REST


class Tagging:
    """vCenter's REST tagging API (`/rest/com/vmware/cis/...`), with a session token."""

    def __init__(self, client: VSphereClient) -> None:
        self.client = client
        self._token: str | None = None

    def _conn(self) -> http.client.HTTPSConnection:
        s = self.client.settings
        return http.client.HTTPSConnection(s.host, s.port, context=self.client._ssl(), timeout=30)

    def _request(self, method: str, path: str, body: Any = None, retry: bool = True) -> Any:
        conn = self._conn()
        try:
            headers = {"Content-Type": "application/json", "Accept": "application/json"}
            if path == "/rest/com/vmware/cis/session":
                auth = f"{self.client.settings.user}:{self.client._password()}"
                headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
            else:
                headers["vmware-api-session-id"] = self._session()
            conn.request(
                method,
                path,
                body=json.dumps(body if body is not None else {}) if method == "POST" else None,
                headers=headers,
            )
            resp = conn.getresponse()
            data = resp.read()
        except OSError as exc:
            raise error(
                ErrorKind.VSPHERE_UNAVAILABLE, f"vCenter tagging API unreachable: {exc}", True
            ) from None
        finally:
            conn.close()
        if resp.status == 401 and retry and path != "/rest/com/vmware/cis/session":
            self._token = None
            return self._request(method, path, body, retry=False)
        if resp.status == 401:
            raise error(ErrorKind.AUTHENTICATION_FAILED, "vCenter refused the tagging API login")
        if resp.status >= 400:
            raise error(ErrorKind.VSPHERE_FAULT, f"tagging API {method} {path}: HTTP {resp.status}")
        return json.loads(data)["value"] if data else None

    def _session(self) -> str:
        if self._token is None:
            self._token = str(self._request("POST", "/rest/com/vmware/cis/session"))
        return self._token

    def categories(self) -> dict[str, str]:
        ids = self._request("GET", "/rest/com/vmware/cis/tagging/category") or []
        return {
            i: self._request("GET", f"/rest/com/vmware/cis/tagging/category/id:{i}")["name"]
            for i in ids
        }

    def tags(self) -> list[dict[str, Any]]:
        ids = self._request("GET", "/rest/com/vmware/cis/tagging/tag") or []
        return [self._request("GET", f"/rest/com/vmware/cis/tagging/tag/id:{i}") for i in ids]

    def attached_objects(self, tag_id: str) -> list[str]:
        objs = (
            self._request(
                "POST",
                f"/rest/com/vmware/cis/tagging/tag-association/id:{tag_id}?~action=list-attached-objects",
            )
            or []
        )
        return [o["id"] for o in objs if o.get("type") == "VirtualMachine"]

    def vms_with_tag(self, name: str, category: str | None = None) -> list[str]:
        cats = self.categories() if category else {}
        return sorted(
            moref
            for t in self.tags()
            if t["name"] == name and (category is None or cats.get(t["category_id"]) == category)
            for moref in self.attached_objects(t["id"])
        )

    def ensure_tag(self, category: str, name: str) -> str:
        """The ID of tag `name` in `category`, creating either when missing (idempotent)."""
        cats = {n: i for i, n in self.categories().items()}
        cat_id = cats.get(category)
        if cat_id is None:
            cat_id = str(
                self._request(
                    "POST",
                    "/rest/com/vmware/cis/tagging/category",
                    {
                        "create_spec": {
                            "name": category,
                            "description": "",
                            "cardinality": "MULTIPLE",
                            "associable_types": ["VirtualMachine"],
                        },
                    },
                )
            )
        for t in self.tags():
            if t["name"] == name and t["category_id"] == cat_id:
                return str(t["id"])
        return str(
            self._request(
                "POST",
                "/rest/com/vmware/cis/tagging/tag",
                {
                    "create_spec": {"name": name, "description": "", "category_id": cat_id},
                },
            )
        )

    def attach(self, tag_id: str, vm_moref: str) -> None:
        obj = {"object_id": {"type": "VirtualMachine", "id": vm_moref}}
        self._request(
            "POST", f"/rest/com/vmware/cis/tagging/tag-association/id:{tag_id}?~action=attach", obj
        )

    def tags_by_vm(self) -> dict[str, list[Tag]]:
        cats = self.categories()
        out: dict[str, list[Tag]] = {}
        for t in self.tags():
            for moref in self.attached_objects(t["id"]):
                out.setdefault(moref, []).append(
                    Tag(category=cats.get(t["category_id"], ""), name=t["name"])
                )
        return out
