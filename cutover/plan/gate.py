"""The wave promotion gate: "measure MTTR and change failure rate each wave; do not scale
migration until both trend down" (the seed's Wave 3).

Pure: `promotion_gate` judges the figures of the waves that finished before (read by the CLI
from their workflows' results). Predecessors are the finished waves of the same site's task
queue, the latest run of each wave name, the one being started excluded, in the order they
ended. With fewer than two there is no trend yet and the gate passes. Otherwise, of the last
two (`before`, `last`):

- the change failure rate went down when `last`'s is none or 0 (nothing left to lower), or
  below `before`'s;
- MTTR went down when `last` has none (no rollback to recover from), or it is below
  `before`'s (a first MTTR after a wave without rollbacks is not a decrease).

Both must go down, else `cutover wave run` refuses, naming the figures, unless the operator
overrides with a reason (recorded in the wave's history, as its memo).
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WaveFigures(_M):
    """One finished wave's figures (from its `WaveResult`)."""

    wave: str
    workflowId: str
    endedAt: datetime
    changeFailureRate: float | None = None
    mttrSeconds: float | None = None


class GateVerdict(_M):
    passed: bool
    #: One sentence naming the waves and figures compared (or why there is no trend).
    figures: str
    before: WaveFigures | None = None
    last: WaveFigures | None = None


def _rate(v: float | None) -> str:
    return "none" if v is None else f"{v:.0%}"


def _mttr(v: float | None) -> str:
    return "none" if v is None else f"{v:.0f} s"


def promotion_gate(finished: list[WaveFigures], wave: str) -> GateVerdict:
    latest: dict[str, WaveFigures] = {}
    for f in finished:
        if f.wave != wave and (f.wave not in latest or f.endedAt > latest[f.wave].endedAt):
            latest[f.wave] = f
    ordered = sorted(latest.values(), key=lambda f: (f.endedAt, f.wave))
    if len(ordered) < 2:
        return GateVerdict(
            passed=True,
            figures=f"{len(ordered)} earlier wave(s) finished on this task queue: no trend yet",
        )
    before, last = ordered[-2], ordered[-1]
    b_cfr, l_cfr = before.changeFailureRate, last.changeFailureRate
    cfr_down = l_cfr is None or l_cfr == 0 or (b_cfr is not None and l_cfr < b_cfr)
    b_mttr, l_mttr = before.mttrSeconds, last.mttrSeconds
    mttr_down = l_mttr is None or (b_mttr is not None and l_mttr < b_mttr)
    figures = (
        f"wave {before.wave} then wave {last.wave}: change failure rate {_rate(b_cfr)} -> "
        f"{_rate(l_cfr)} ({'down' if cfr_down else 'did not go down'}), MTTR "
        f"{_mttr(b_mttr)} -> {_mttr(l_mttr)} ({'down' if mttr_down else 'did not go down'})"
    )
    return GateVerdict(passed=cfr_down and mttr_down, figures=figures, before=before, last=last)
