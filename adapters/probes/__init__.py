"""Check probes: HTTP (one request or SLO sampling), TCP, command, Prometheus; each takes
a check input and its probe settings and returns a CheckResult (never raises for what it
measured; raises only when it cannot run)."""
