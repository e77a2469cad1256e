#!/bin/bash
# distmap TPU VM run golden: 1 slice(s) (distmap-v5e-32), zone us-west4-a; logs in /shared/runs/golden
# 1. Copy the packed working tree to every worker: /shared/distmap (git ls-files) packed into /shared/runs/golden/code.tar.gz
gcloud compute tpus tpu-vm scp /shared/runs/golden/code.tar.gz --zone=us-west4-a distmap-v5e-32:distmap-code-golden.tar.gz --worker=all
# 2. On every worker: end an earlier run's processes, remove the TPU lock file, put the code in ~/distmap_code/golden
prepare_script=$(cat <<'DISTMAP_SCRIPT'
set -u
# End the process group an earlier distmap run left behind, and whatever holds the TPU.
pg=$(cat "${TMPDIR:-/tmp}/distmap-tpu-job.pgid" 2>/dev/null); case "$pg" in ""|*[!0-9]*|0|1) ;; *) kill -s TERM -- "-$pg" 2>/dev/null; i=0; while [ "$i" -lt 50 ] && kill -s 0 -- "-$pg" 2>/dev/null; do sleep 0.1; i=$((i + 1)); done; kill -s KILL -- "-$pg" 2>/dev/null;; esac; rm -f "${TMPDIR:-/tmp}/distmap-tpu-job.pgid"; true
holders=$( { lsof -t /dev/accel* /dev/vfio/[0-9]* 2>/dev/null; sudo -n lsof -t /dev/accel* /dev/vfio/[0-9]* 2>/dev/null; } | sort -u); for p in $holders; do case "$p" in ""|*[!0-9]*|0|1) ;; *) kill -s KILL "$p" 2>/dev/null || sudo -n kill -s KILL "$p" 2>/dev/null;; esac; done
rm -f /tmp/libtpu_lockfile 2>/dev/null || sudo -n rm -f /tmp/libtpu_lockfile
rm -rf distmap_code/golden && mkdir -p distmap_code/golden && tar -xzf distmap-code-golden.tar.gz -C distmap_code/golden && rm -f distmap-code-golden.tar.gz
DISTMAP_SCRIPT
)
gcloud compute tpus tpu-vm ssh distmap-v5e-32 --zone=us-west4-a --worker=all --command="$prepare_script"
# 3. Start the program on every worker of every slice at once (one command per slice)
run_script=$(cat <<'DISTMAP_SCRIPT'
set -o pipefail
w="${TPU_WORKER_ID:-$(curl -sf -H "Metadata-Flavor: Google" http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number 2>/dev/null || hostname)}"
pid_file="${TMPDIR:-/tmp}/distmap-tpu-job.pgid"
{
  cd distmap_code/golden || { echo 'distmap: the code folder is missing on this worker'; echo "##distmap-worker-exit## 1"; exit 1; }
  env DISTMAP_INIT_TIMEOUT=300 DISTMAP_RUN_ID=golden DISTMAP_ATTEMPT=0 PYTHONUNBUFFERED=1 JAX_COORDINATOR_PORT=23456 setsid --wait sh -c 'echo "$$" > "$0" && exec "$@"' "$pid_file" python3 examples/ensemble.py --flagfile=configs/tpu_v5e_32.flags 'a b' ''"'"'single'"'"'' '"double"' '$(touch /tmp/distmap_pwned)' '; rm -rf /' '`id`' 'line1
line2' 'tab	here' '*' '' -- --num_processes=9 %t '%j %%' '$(POD_IP)' '$$' '${HOME}' 'ünï' '\' a=b=c '#not a comment' '-- x'
  rc=$?; rm -f "$pid_file"
  echo "##distmap-worker-exit## $rc"
  exit "$rc"
} 2>&1 | while IFS= read -r line || [ -n "$line" ]; do printf "[worker %s] %s\n" "$w" "$line"; done
DISTMAP_SCRIPT
)
gcloud compute tpus tpu-vm ssh distmap-v5e-32 --zone=us-west4-a --worker=all --command="$run_script"
# If a worker fails or the launch is stopped, on every worker: end the program and free the TPU:
cleanup_script=$(cat <<'DISTMAP_SCRIPT'
pg=$(cat "${TMPDIR:-/tmp}/distmap-tpu-job.pgid" 2>/dev/null); case "$pg" in ""|*[!0-9]*|0|1) ;; *) kill -s TERM -- "-$pg" 2>/dev/null; i=0; while [ "$i" -lt 50 ] && kill -s 0 -- "-$pg" 2>/dev/null; do sleep 0.1; i=$((i + 1)); done; kill -s KILL -- "-$pg" 2>/dev/null;; esac; rm -f "${TMPDIR:-/tmp}/distmap-tpu-job.pgid"; true
rm -f /tmp/libtpu_lockfile 2>/dev/null || sudo -n rm -f /tmp/libtpu_lockfile
DISTMAP_SCRIPT
)
gcloud compute tpus tpu-vm ssh distmap-v5e-32 --zone=us-west4-a --worker=all --command="$cleanup_script"
