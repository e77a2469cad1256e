#!/bin/bash
# distmap TPU VM run golden: 1 slice(s) (pod), zone europe-west4-b; logs in /shared/runs/golden
set -euo pipefail
# 1. On every worker: free the TPU, put the code in ~/distmap_code/golden, run --setup there
prepare_script=$(cat <<'DISTMAP_SCRIPT'
set -eu
# Whatever holds the TPU (a crashed earlier run), and libtpu's lock file.
holders=$( { lsof -t /dev/accel* /dev/vfio/[0-9]* 2>/dev/null; sudo -n lsof -t /dev/accel* /dev/vfio/[0-9]* 2>/dev/null; } | sort -u); for p in $holders; do case "$p" in ""|*[!0-9]*|0|1) ;; *) kill -s KILL "$p" 2>/dev/null || sudo -n kill -s KILL "$p" 2>/dev/null;; esac; done
rm -f /tmp/libtpu_lockfile 2>/dev/null || sudo -n rm -f /tmp/libtpu_lockfile
rm -rf distmap_code/golden && git clone --quiet https://github.com/example/distmap.git distmap_code/golden && git -C distmap_code/golden checkout --quiet --detach v1.2.3
cd distmap_code/golden
# --setup:
pip install -e .[tpu]
DISTMAP_SCRIPT
)
gcloud compute tpus tpu-vm ssh pod --zone=europe-west4-b --project=my-project --worker=all --tunnel-through-iap --command="$prepare_script"
# 2. Start the program on every worker of every slice at once, one ssh per worker
# Each worker's program ends when its ssh session does: give them a stdin that stays open while
# this script runs (a background job's stdin would be /dev/null, which ends the program at once).
exec 3< <(exec sleep infinity)
keeper=$!
run_script_pod=$(cat <<'DISTMAP_SCRIPT'
cd -- distmap_code/golden && exec sh -c 'exec 3<&0
setsid --wait "$@" </dev/null &
pg=$!
{ while read -r _; do :; done <&3; kill -s KILL -- "-$pg"; } >/dev/null 2>&1 &
wd=$!
exec 3<&-
{ wait "$pg"; } 2>/dev/null; rc=$?
kill "$wd" 2>/dev/null
kill -s KILL -- "-$pg" 2>/dev/null
exit "$rc"
' distmap-rank env DISTMAP_RUN_ID=golden DISTMAP_ATTEMPT=0 PYTHONUNBUFFERED=1 JAX_COORDINATOR_PORT=23456 'XLA_FLAGS=--x=1 --y' python3 train.py
DISTMAP_SCRIPT
)
for w in $(seq 0 $((4 - 1))); do gcloud compute tpus tpu-vm ssh pod --zone=europe-west4-b --project=my-project --tunnel-through-iap --worker="$w" --command="$run_script_pod" <&3 2>&1 | sed -u "s/^/[pod worker $w] /" & done
status=0
for pid in $(jobs -p); do wait "$pid" || status=$?; done  # Ctrl-C ends every worker's program
kill "$keeper"
exit "$status"
