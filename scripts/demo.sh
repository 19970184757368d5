#!/usr/bin/env bash
# The main job on the embedded defaults: our vSphere simulator with a VM whose disk holds
# real data, a private libvirtd (QEMU; KVM where /dev/kvm works), the embedded Temporal
# server (durable SQLite, Web UI) and a worker; then one warm application cutover driven
# through the `cutover` CLI, from pre-checks to a running target and a finalized source.
# Everything it starts is stopped by PID, and what the cutover made is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

PORT=${CUTOVER_TEMPORAL_PORT:-7233}
UI_PORT=${CUTOVER_UI_PORT:-8233}
STATE=.cutover
mkdir -p "$STATE"
export TEMPORAL_ADDRESS=127.0.0.1:$PORT
CUTOVER=.venv/bin/cutover
SITE=examples/demo/site.yaml
pids=()
json() { .venv/bin/python -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$1" "$2"; }
cleanup() {
  if [ -s "$STATE/libvirtd.json" ]; then
    echo "== removing what the cutover made (target domain, pool, staging)"
    .venv/bin/python -m cutover.demo teardown "$SITE" || true
  fi
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  done
  rm -f "$STATE/libvirtd.json"
}
trap cleanup EXIT

if .venv/bin/python -c "import socket,sys; s=socket.socket(); sys.exit(s.connect_ex(('127.0.0.1', $PORT)) != 0)"; then
  echo "demo: port $PORT is in use; stop what listens there or set CUTOVER_TEMPORAL_PORT" >&2
  exit 1
fi

# A fresh database each run, so a cutover left over from an interrupted demo cannot
# collide with this one (one workflow per application).
rm -f "$STATE"/temporal.db "$STATE"/temporal.db-*
VCSIM_PORT=18443
if .venv/bin/python -c "import socket,sys; s=socket.socket(); sys.exit(s.connect_ex(('127.0.0.1', $VCSIM_PORT)) != 0)"; then
  echo "demo: port $VCSIM_PORT (vSphere simulator) is in use; stop what listens there" >&2
  exit 1
fi
echo "== starting the vSphere API simulator on 127.0.0.1:$VCSIM_PORT"
rm -rf "$STATE/vcsim"
.venv/bin/python -m cutover.vcsim "$STATE/vcsim" "$VCSIM_PORT" >"$STATE/vcsim.json"
pids+=("$(json "$STATE/vcsim.json" pid)")
DATASTORE=$(json "$STATE/vcsim.json" datastore)
VM=DC0_C0_H0_VM0
echo "   the source VM's disk: 256 MiB with data, sha256 $(.venv/bin/python -m cutover.demo seed "$DATASTORE" "$VM")"
.venv/bin/cutover inventory --site "$SITE" | head -4

echo "== starting libvirtd (socket in /run/cutover/libvirtd)"
.venv/bin/python -m cutover.libvirtd "$STATE/libvirtd" /run/cutover/libvirtd >"$STATE/libvirtd.json"
for pid in $(.venv/bin/python -c "import json; print(*json.load(open('$STATE/libvirtd.json'))['pids'])"); do
  pids+=("$pid")
done
.venv/bin/python -m cutover.demo teardown "$SITE" >/dev/null  # leftovers of an interrupted run

echo "== starting the embedded Temporal server (UI: http://127.0.0.1:$UI_PORT)"
$CUTOVER server --db "$STATE/temporal.db" --port "$PORT" --ui-port "$UI_PORT" >"$STATE/server.log" 2>&1 &
pids+=($!)
.venv/bin/python -c "from cutover.server import wait_for_port; wait_for_port('127.0.0.1', $PORT)"

echo "== starting a worker (JSON logs in $STATE/worker.log)"
$CUTOVER worker >"$STATE/worker.log" 2>&1 &
pids+=($!)

echo "== validating runbooks"
$CUTOVER validate examples/customer-analytics-api.yaml
$CUTOVER validate --site "$SITE" examples/demo/demo-app.yaml

echo "== running the cutover of demo-app: warm copy while the source serves, then approval"
$CUTOVER run examples/demo/demo-app.yaml --site "$SITE" --wait --json \
  >"$STATE/demo-result.json" &
run_pid=$!
for _ in $(seq 1 300); do
  phase=$($CUTOVER status demo-app --json 2>/dev/null | .venv/bin/python -c "import json,sys; print(json.load(sys.stdin)['phase'])" 2>/dev/null || true)
  [ "$phase" = "AWAITING_APPROVAL" ] && break
  sleep 0.2
done
echo "-- phase: ${phase:-unknown} (the warm copy is done)"
.venv/bin/python -m cutover.demo write "$DATASTORE" "$VM"
echo "-- approving as a non-approver first:"
$CUTOVER approve demo-app --as mallory || true
$CUTOVER approve demo-app --as ops-lead
rc=0; wait "$run_pid" || rc=$?

echo "== result (also in $STATE/demo-result.json)"
.venv/bin/python - "$STATE/demo-result.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"{r['workflowId']}: {r['outcome']} - {r['reason']}")
for line in r["leftWhere"]:
    print(f"  {line}")
for s in r["steps"]:
    n = s.get("bytesMoved")
    moved = f"{n / 2**20:6.1f} MiB moved" if n is not None else ""
    print(f"  {s['kind']:<12} {s['name']:<32} {s['outcome']:<7} {moved} {s.get('error') or ''}")
for c in r["checks"]:
    print(f"  check {c['phase']:<6} {c['name']:<32} {c['passed']!s:<6} {c.get('measured') or ''}")
print(f"  downtime: {r.get('downtimeSeconds')} s")
PY
echo "== checking the world"
.venv/bin/python -m cutover.demo verify "$SITE" demo-app "$STATE/demo-result.json" "$DATASTORE" "$VM" || rc=1
echo "   Every step is in the workflow history: open http://127.0.0.1:$UI_PORT while the demo"
echo "   runs, or afterwards '$CUTOVER server --db $STATE/temporal.db' (then 'cutover audit demo-app')."
exit "$rc"
