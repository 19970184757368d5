"""A workflow whose update validator verifies signatures as the cutover's does: proves
`cutover.signing` runs in the Temporal sandbox (tests only; imports nothing else)."""

from __future__ import annotations

from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from cutover import signing


@workflow.defn(name="SigningSandboxTest")
class SigningSandboxTest:
    """Approve takes a request dict with a `signature`; refusals never enter the history."""

    @workflow.init
    def __init__(self, keys: dict[str, str]) -> None:
        self.seen: set[str] = set()
        self.accepted: list[str] = []
        self.keys = keys

    @workflow.run
    async def run(self, keys: dict[str, str]) -> list[str]:
        await workflow.wait_condition(lambda: len(self.accepted) >= 1)
        return self.accepted

    @workflow.update
    def approve(self, req: dict[str, Any]) -> str:
        sig = signing.Signature.model_validate(req["signature"])
        self.seen.add(sig.nonce)
        self.accepted.append(sig.signer)
        return f"approved by {sig.signer}"

    @approve.validator
    def _check(self, req: dict[str, Any]) -> None:
        raw = req.get("signature")
        sig = signing.Signature.model_validate(raw) if raw is not None else None
        args = {k: v for k, v in req.items() if k != "signature"}
        reason = signing.verify(
            sig, workflow.info().workflow_id, "approve", args, self.keys, workflow.now(), self.seen
        )
        if reason is not None:
            raise ValueError(reason)
