#!/bin/bash
# distmap TPU VM run golden: 1 slice(s) (distmap-v5e-32), zone us-west4-a; logs in /shared/runs/golden
set -euo pipefail
# 1. Pack the working tree of /shared/distmap (git ls-files)
mkdir -p /shared/runs/golden && (cd /shared/distmap && { git ls-files -z --cached --others --exclude-standard 2>/dev/null || find . \( -name .git -o -name __pycache__ -o -name runs \) -prune -o -type f -print0; } | tar --null --ignore-failed-read -czf /shared/runs/golden/code.tar.gz -T -)
# 2. Copy the packed working tree (/shared/runs/golden/code.tar.gz) to every worker
gcloud compute tpus tpu-vm scp /shared/runs/golden/code.tar.gz --zone=us-west4-a distmap-v5e-32:distmap-code-golden.tar.gz --worker=all
# 3. On every worker: free the TPU, put the code in ~/distmap_code/golden
prepare_script=$(cat <<'DISTMAP_SCRIPT'
set -eu
# Whatever holds the TPU (a crashed earlier run), and libtpu's lock file.
holders=$( { lsof -t /dev/accel* /dev/vfio/[0-9]* 2>/dev/null; sudo -n lsof -t /dev/accel* /dev/vfio/[0-9]* 2>/dev/null; } | sort -u); for p in $holders; do case "$p" in ""|*[!0-9]*|0|1) ;; *) kill -s KILL "$p" 2>/dev/null || sudo -n kill -s KILL "$p" 2>/dev/null;; esac; done
rm -f /tmp/libtpu_lockfile 2>/dev/null || sudo -n rm -f /tmp/libtpu_lockfile
rm -rf distmap_code/golden && mkdir -p distmap_code/golden && tar -xzf distmap-code-golden.tar.gz -C distmap_code/golden && rm -f distmap-code-golden.tar.gz
DISTMAP_SCRIPT
)
gcloud compute tpus tpu-vm ssh distmap-v5e-32 --zone=us-west4-a --worker=all --command="$prepare_script"
# 4. Start the program on every worker of every slice at once, one ssh per worker
endpoints_distmap_v5e_32=$(gcloud compute tpus tpu-vm describe distmap-v5e-32 --zone=us-west4-a '--format=value(networkEndpoints[].ipAddress)')
# Each worker's program ends when its ssh session does: give them a stdin that stays open while
# this script runs (a background job's stdin would be /dev/null, which ends the program at once).
exec 3< <(exec sleep infinity)
keeper=$!
run_script_distmap_v5e_32=$(cat <<'DISTMAP_SCRIPT'
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
' distmap-rank env DISTMAP_INIT_TIMEOUT=300 DISTMAP_STALL_TIMEOUT=120 DISTMAP_RUN_ID=golden DISTMAP_ATTEMPT=0 PYTHONUNBUFFERED=1 JAX_COORDINATOR_PORT=23456 python3 examples/ensemble.py --flagfile=configs/tpu_v5e_32.flags 'a b' ''"'"'single'"'"'' '"double"' '$(touch /tmp/distmap_pwned)' '; rm -rf /' '`id`' 'line1
line2' 'tab	here' '*' '' -- --num_processes=9 %t '%j %%' '$(POD_IP)' '$$' '${HOME}' 'ünï' '\' a=b=c '#not a comment' '-- x'
DISTMAP_SCRIPT
)
for w in $(seq 0 $(($(echo "$endpoints_distmap_v5e_32" | tr ';' '\n' | grep -c .) - 1))); do gcloud compute tpus tpu-vm ssh distmap-v5e-32 --zone=us-west4-a --worker="$w" --command="$run_script_distmap_v5e_32" <&3 2>&1 | sed -u "s/^/[distmap-v5e-32 worker $w] /" & done
status=0
for pid in $(jobs -p); do wait "$pid" || status=$?; done  # Ctrl-C ends every worker's program
kill "$keeper"
exit "$status"
