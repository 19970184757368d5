"""A check's result, as every probe reports it."""

from __future__ import annotations

from cutover.models import CheckInput, CheckResult


def check_result(
    inp: CheckInput,
    passed: bool,
    measured: str,
    threshold: str,
    detail: str = "",
    facts: dict[str, str] | None = None,
) -> CheckResult:
    return CheckResult(
        name=inp.name,
        phase=inp.phase,
        passed=passed,
        measured=measured,
        threshold=threshold,
        detail=detail,
        facts=facts or {},
    )
