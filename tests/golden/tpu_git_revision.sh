#!/bin/bash
# distmap TPU VM run golden: 1 slice(s) (pod), zone europe-west4-b; logs in /shared/runs/golden
# The agent (launch/agent.py) runs the plan below, as launch/tpu_vm.py would:
#  1. On every worker: free the TPU, put the code in ~/distmap_code/golden, run --setup there: gcloud compute tpus tpu-vm ssh pod --zone=europe-west4-b --project=my-project --worker=all --tunnel-through-iap --command=<prepare script>
#  2. start the program on 4 workers per slice, one gcloud ... ssh --worker=W each, all at once, and supervise them:
#     a failing worker stops every other at once (the launch exits with its code); Ctrl-C or SIGTERM to this
#     script gives every worker's program SIGTERM and 30 s (--grace_period) to save and end, then SIGKILL;
#     --max_restarts=2: after a failure only, each after a backoff, the TPU VMs checked and prepared again.
#     Worker 0's command: gcloud compute tpus tpu-vm ssh pod --zone=europe-west4-b --project=my-project --worker=0 --tunnel-through-iap --command=<its program, watched>
set -euo pipefail
exec /venv/bin/python /shared/distmap/launch/agent.py --plan=- <<'DISTMAP_PLAN'
{"job": {"code_source": "/shared/distmap", "coordinator_address": null, "coordinator_port": 23456, "env": {"XLA_FLAGS": "--x=1 --y"}, "gcloud": "gcloud", "gcloud_args": ["--tunnel-through-iap"], "git_repo": "https://github.com/example/distmap.git", "git_revision": "v1.2.3", "init_timeout": null, "kill_tpu_holders": true, "megascale_port": 8080, "program": ["python3", "train.py"], "project": "my-project", "remote_dir": null, "run_dir": "/shared/runs/golden", "run_id": "golden", "setup": ["pip install -e .[tpu]"], "stall_timeout": null, "tpu_lockfile": "/tmp/libtpu_lockfile", "tpu_names": ["pod"], "workers_per_slice": 4, "zone": "europe-west4-b"}, "kind": "tpu_vm", "options": {"announce": true, "console": "brief", "grace_period": 30.0, "log_dir": "/shared/runs", "log_tag": null, "max_restarts": 2, "restart_backoff": 1.0, "run_id": "golden", "tail_lines": 20, "timeout": null}}
DISTMAP_PLAN
