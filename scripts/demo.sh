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
# CUTOVER_LAB_DATA_HOSTS=N: one orchestration worker and N data hosts (issue 17), each a
# `cutover worker --role data` process with its own staging directory; default 0: one
# `--role all` worker.
DATA_HOSTS=${CUTOVER_LAB_DATA_HOSTS:-0}
workers=()
cleanup() {
  for w in "${workers[@]}"; do
    kill "$w" 2>/dev/null || true
    wait "$w" 2>/dev/null || true
  done
}
trap cleanup EXIT

t0=$(date +%s)
echo "== bringing the lab up (Temporal, vSphere simulator, libvirtd, BIND, HAProxy, apps)"
$CUTOVER lab up --data-hosts "$DATA_HOSTS"
t1=$(date +%s)

if [ "$DATA_HOSTS" -gt 0 ]; then
  echo "== starting an orchestration worker and $DATA_HOSTS data hosts (JSON logs in $STATE/lab/*.log)"
  $CUTOVER worker --role orchestration >"$STATE/lab/worker.log" 2>&1 &
  workers+=($!)
  for i in $(seq 1 "$DATA_HOSTS"); do
    $CUTOVER worker --role data --data-host "lab-data-$i" \
      --staging-dir "/var/lib/cutover/lab/hosts/lab-data-$i/staging" >"$STATE/lab/data-$i.log" 2>&1 &
    workers+=($!)
  done
else
  echo "== starting a worker (the lab's site, key and audit log; JSON logs in $STATE/lab/worker.log)"
  $CUTOVER worker >"$STATE/lab/worker.log" 2>&1 &
  workers+=($!)
fi

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
