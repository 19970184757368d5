"""Per-application probes from one site catalog: `{placeholders}` in probe settings.

A site's check catalog serves every application of the site, so a probe may say
`url: http://{dns_name}/healthz` or `argv: [check-backup, "{application}"]`. The workflow
expands them for each cutover (pure and deterministic), so the history records the probe
exactly as it ran. Unknown placeholders are rejected when the site config loads.
"""

from __future__ import annotations

import string
from typing import Any, TypeVar

from pydantic import BaseModel

from cutover.facts import TARGET_ADDRESS
from cutover.runbook import Runbook

#: What a probe may refer to; `target_*` are known only once the target reported them.
PLACEHOLDERS = (
    "application",
    "wave",
    "dns_name",
    "source_address",
    "source_host",
    "target_address",
    "target_host",
)

#: The probe settings that say where to probe; only these are templates (a body or a
#: description may well contain braces).
TEMPLATED = frozenset({
    "url", "argv", "host", "name", "server", "query", "expectValue",
    # the day-two probes: a backup's file, a scrape target, a domain, an nftables table
    "path", "instance", "domain", "table", "netns",
})  # fmt: skip

P = TypeVar("P", bound=BaseModel)


def placeholders_in(value: str) -> list[str]:
    """The `{names}` a string uses (`{{` and `}}` are literal braces)."""
    names = []
    for _, field, spec, conv in string.Formatter().parse(value):
        if field is not None:
            if not field.isidentifier() or spec or conv:
                raise ValueError(f"'{{{field}}}' is not a placeholder; use {{{{ }}}} for braces")
            names.append(field)
    return names


def check_placeholders(value: str) -> str:
    unknown = [n for n in placeholders_in(value) if n not in PLACEHOLDERS]
    if unknown:
        raise ValueError(
            f"unknown placeholder {{{unknown[0]}}}; known: "
            + ", ".join(f"{{{p}}}" for p in PLACEHOLDERS)
        )
    return value


def values_for(runbook: Runbook, facts: dict[str, str]) -> dict[str, str]:
    def host(addr: str) -> str:
        return addr.rsplit(":", 1)[0].strip("[]") if addr else ""

    source = runbook.endpoint.sourceAddress or ""
    target = facts.get(TARGET_ADDRESS) or runbook.endpoint.targetAddress or ""
    return {
        "application": runbook.application,
        "wave": runbook.wave_name,
        "dns_name": runbook.endpoint.dns.name if runbook.endpoint.dns else runbook.application,
        "source_address": source,
        "source_host": host(source),
        "target_address": target,
        "target_host": host(target),
    }


def expand(probe: P, values: dict[str, str]) -> P:
    """The probe with every `{placeholder}` in its string settings filled in."""

    def fill(v: Any) -> Any:
        if isinstance(v, str) and "{" in v:
            return v.format_map(values)
        if isinstance(v, list):
            return [fill(x) for x in v]
        return v

    data = probe.model_dump()
    return type(probe).model_validate(
        {k: fill(v) if k in TEMPLATED else v for k, v in data.items()}
    )
