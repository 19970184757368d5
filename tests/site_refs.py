"""The test client stands in for `cutover run` and `cutover worker --site` together.

Tests build inputs with their site in them (tests/factories.py), as `cutover run` does
before it sends one. This client interceptor does what `cutover run` then does: it sends the
site by reference (`siteRef`) and, in place of the worker's `--site FILE`, adds the site to
this process's worker store (`workers.sites.shared()`, archived under
$CUTOVER_SITE_ARCHIVE, where worker subprocesses of the same test session find it too).
Tests of the refusal itself use a client without it (`raw_client`).
"""

from __future__ import annotations

from typing import Any

from temporalio.client import (
    Interceptor,
    OutboundInterceptor,
    StartWorkflowInput,
)

from cutover.models import CutoverInput
from cutover.site import SiteConfig
from cutover.wave import WaveInput
from workers.sites import shared


def by_reference(arg: Any) -> Any:
    """`arg` as `cutover run` sends it, its site registered with this process's worker."""
    if isinstance(arg, list):
        return [by_reference(a) for a in arg]
    if isinstance(arg, CutoverInput | WaveInput) and arg.site is not None and arg.carry is None:
        shared().add(arg.site)
        return arg.by_reference()
    if isinstance(arg, dict) and isinstance(arg.get("site"), dict) and "siteRef" not in arg:
        try:
            site = SiteConfig.model_validate(arg["site"])
        except ValueError:
            return arg  # an invalid site: the workflow names its problems
        ref = shared().add(site)
        return {**{k: v for k, v in arg.items() if k != "site"}, "siteRef": ref.model_dump()}
    return arg


class SiteByReference(Interceptor):
    def intercept_client(self, next: OutboundInterceptor) -> OutboundInterceptor:
        return _Outbound(next)


class _Outbound(OutboundInterceptor):
    async def start_workflow(self, input: StartWorkflowInput) -> Any:
        input.args = [by_reference(a) for a in input.args]
        return await super().start_workflow(input)


def serve(path: str) -> str:
    """This process's workers serve the site file at `path` (`cutover worker --site`)."""
    shared().load([path])
    return path
