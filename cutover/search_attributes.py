"""The one registry of the search attributes cutover workflows set (typed keys)."""

from __future__ import annotations

from temporalio.common import SearchAttributeKey

WAVE = SearchAttributeKey.for_keyword("CutoverWave")
APPLICATION = SearchAttributeKey.for_keyword("CutoverApplication")
PHASE = SearchAttributeKey.for_keyword("CutoverPhase")
OUTCOME = SearchAttributeKey.for_keyword("CutoverOutcome")

ALL = (WAVE, APPLICATION, PHASE, OUTCOME)


def server_flags() -> list[str]:
    """`temporal server start-dev` flags that register every key."""
    return [f"--search-attribute={k.name}=Keyword" for k in ALL]
