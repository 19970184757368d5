#!/usr/bin/env bash
# The main job: the local lab (every real component, on loopback), a worker, and a wave of
# three application cutovers end to end: `shop` completes and finalizes; `billing` is
# rolled back when a rollback criterion fires in its window; `search` fails at a cutover
# step and is compensated back to its source. Live progress, a summary table, and every
# world-facing invariant checked, then the worker's tamper-evident audit log verified; exit 0
# only when all is as the scenario expects. Every request is signed with the lab's keys
# (.cutover/lab/keys: lab-operator starts the wave, ops-lead approves billing).
# The lab stays up afterwards, so the histories can be read in the Temporal UI;
# `.venv/bin/cutover lab down` stops it (and removes what the cutovers made).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

CUTOVER=.venv/bin/cutover
STATE=.cutover
mkdir -p "$STATE"
worker=""
cleanup() {
  if [ -n "$worker" ]; then
    kill "$worker" 2>/dev/null || true
    wait "$worker" 2>/dev/null || true
  fi
}
trap cleanup EXIT

t0=$(date +%s)
echo "== bringing the lab up (Temporal, vSphere simulator, libvirtd, BIND, HAProxy, apps)"
$CUTOVER lab up
t1=$(date +%s)

echo "== starting a worker (the lab's site, key and audit log; JSON logs in $STATE/lab/worker.log)"
$CUTOVER worker >"$STATE/lab/worker.log" 2>&1 &
worker=$!

echo "== validating the wave and its runbooks against the lab's site and its workload policies"
# the inventory: the VMs' devices, which the policies' gpuScheduling limits
$CUTOVER inventory --json >"$STATE/lab/inventory.json"
$CUTOVER validate --site "$STATE/lab/site.yaml" --inventory "$STATE/lab/inventory.json" \
  "$STATE"/lab/runbooks/*.yaml

echo "== running wave lab-1 (shop: completes; billing: criterion rollback; search: step failure)"
rc=0
.venv/bin/python -m cutover.lab.demo || rc=$?
t2=$(date +%s)
echo "== wall time: lab up $((t1 - t0)) s, wave $((t2 - t1)) s"
echo "   The lab stays up for the Temporal UI (http://127.0.0.1:8233): '$CUTOVER lab down' stops it."
exit "$rc"
