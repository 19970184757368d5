"""Our metric names and histogram buckets: pure data, shared by the workflow that records
the metrics (through `workflow.metric_meter()`, replay-safe) and the worker's telemetry
(`cutover.telemetry`) that serves them. Prometheus adds nothing to these names: counters
have no `_total`, no unit suffix."""

from __future__ import annotations

CUTOVERS = "cutover_cutovers"
DOWNTIME = "cutover_downtime_seconds"
BYTES_MOVED = "cutover_bytes_moved"
#: What targets wrote in their windows (their overlays), by what became of it (`fate`:
#: kept = merged at finalize or written back to the source; discarded).
TARGET_WRITTEN = "cutover_target_written_bytes"
#: Downtime buckets, in seconds: from a quick switch to a long data sync.
DOWNTIME_BUCKETS = [1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0]
