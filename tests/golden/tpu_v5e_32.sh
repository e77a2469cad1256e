#!/bin/bash
# distmap TPU VM run golden: 1 slice(s) (distmap-v5e-32), zone us-west4-a; logs in /shared/runs/golden
# The agent (launch/agent.py) runs the plan below, as launch/tpu_vm.py would:
#  1. pack the working tree of /shared/distmap: mkdir -p /shared/runs/golden && (cd /shared/distmap && { git ls-files -z --cached --others --exclude-standard 2>/dev/null || find . \( -name .git -o -name __pycache__ -o -name runs \) -prune -o -type f -print0; } | tar --null --ignore-failed-read -czf /shared/runs/golden/code.tar.gz -T -)
#  2. Copy the packed working tree (/shared/runs/golden/code.tar.gz) to every worker: gcloud compute tpus tpu-vm scp /shared/runs/golden/code.tar.gz --zone=us-west4-a distmap-v5e-32:distmap-code-golden.tar.gz --worker=all
#  3. On every worker: free the TPU, put the code in ~/distmap_code/golden: gcloud compute tpus tpu-vm ssh distmap-v5e-32 --zone=us-west4-a --worker=all --command=<prepare script>
#  4. start the program on every worker gcloud ... describe lists, one gcloud ... ssh --worker=W each, all at once, and supervise them:
#     a failing worker stops every other at once (the launch exits with its code); Ctrl-C or SIGTERM to this
#     script gives every worker's program SIGTERM and 30 s (--grace_period) to save and end, then SIGKILL;
#     --max_restarts=0: after a failure only, each after a backoff, the TPU VMs checked and prepared again.
#     Worker 0's command: gcloud compute tpus tpu-vm ssh distmap-v5e-32 --zone=us-west4-a --worker=0 --command=<its program, watched>
set -euo pipefail
exec /venv/bin/python /checkout/launch/agent.py --plan=- <<'DISTMAP_PLAN'
{"job": {"code_source": "/shared/distmap", "coordinator_address": null, "coordinator_port": 23456, "env": {}, "gcloud": "gcloud", "gcloud_args": [], "git_repo": null, "git_revision": null, "init_timeout": 300.0, "kill_tpu_holders": true, "megascale_port": 8080, "program": ["python3", "examples/ensemble.py", "--flagfile=configs/tpu_v5e_32.flags", "a b", "'single'", "\"double\"", "$(touch /tmp/distmap_pwned)", "; rm -rf /", "`id`", "line1\nline2", "tab\there", "*", "", "--", "--num_processes=9", "%t", "%j %%", "$(POD_IP)", "$$", "${HOME}", "\u00fcn\u00ef", "\\", "a=b=c", "#not a comment", "-- x"], "project": null, "remote_dir": null, "run_dir": "/shared/runs/golden", "run_id": "golden", "setup": [], "stall_timeout": 120.0, "tpu_lockfile": "/tmp/libtpu_lockfile", "tpu_names": ["distmap-v5e-32"], "workers_per_slice": null, "zone": "us-west4-a"}, "kind": "tpu_vm", "options": {"announce": true, "console": "brief", "grace_period": 30.0, "log_dir": "/shared/runs", "log_tag": null, "max_restarts": 0, "restart_backoff": 1.0, "run_id": "golden", "tail_lines": 20, "timeout": null}}
DISTMAP_PLAN
