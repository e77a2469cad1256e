"""Run a program on a list of hosts through ssh, supervised like ``launch/local.py``.

    python launch/ssh.py --hosts=node1,node2 -- python examples/ensemble.py --mesh=data=-1
    python launch/ssh.py --hostfile=hosts.txt --processes_per_host=8 --gpu_ids=0,1,2,3,4,5,6,7 -- \\
        python examples/ensemble.py --flagfile=configs/slurm_gpu_2node.flags

Rank 0 runs on the first host, which serves the coordinator at a port chosen per start
(``--coordinator_host`` if the other hosts reach it under another name). Each rank is one
``ssh HOST COMMAND`` child: output prefixed ``[rank i HOST]``, per-rank logs in
``--log_dir/RUN_ID/``, fail fast (one failing rank stops the others and the launcher exits
with its code), ``--timeout``, ``--max_restarts``. On the hosts every program runs in its own
process group beside a watchdog tied to the ssh session: when a rank fails, the launcher is
stopped or killed, or the connection drops, the remote program's whole group is killed.

The program starts in ``--remote_dir`` (default: this directory's path, so a shared file
system or the same checkout on every host). ``--ssh_config=FILE`` gives every ssh a client
config (``ssh -F FILE``: ports, users, keys, known hosts); ``--ssh_option`` adds ``-o`` options.
``--dry_run`` prints the ssh commands.
The program comes after ``--`` and reaches the hosts unchanged.
"""

from __future__ import annotations

import os
import sys

from absl import flags

# As a script this file has launch/ on sys.path, not the checkout: put the checkout first, so the
# launcher uses this checkout's distmap, installed or not, over any other. Importing it loads no JAX.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from distmap._src import flags as distmap_flags
from distmap._src.launch import cli, shell, ssh
from distmap._src.launch.ports import pick_port

cli.define_common_flags(init_timeout=120.0)
_HOSTS = flags.DEFINE_list("hosts", None, "ssh destinations, rank 0 on the first: host1,user@host2,...")
_HOSTFILE = flags.DEFINE_string("hostfile", None, "A file with one ssh destination a line (# comments).")
flags.mark_flags_as_mutual_exclusive(["hosts", "hostfile"], required=True)
cli.check_flag("hosts", lambda h: ssh.check_hosts([h]))
cli.check_flag("hostfile", ssh.read_hostfile)
_PER_HOST = flags.DEFINE_integer("processes_per_host", 1, "Processes (ranks) on each host.", lower_bound=1)
_GPU_IDS = flags.DEFINE_list("gpu_ids", None, "Each host's GPU ids, split evenly among its processes, e.g. 0,1,2,3.")
_COORDINATOR_HOST = flags.DEFINE_string("coordinator_host", None, "The address the hosts reach the first host at "
                                        "(default: its name in --hosts).")
cli.check_flag("coordinator_host", lambda h: ssh.check_hosts([h]))
_REMOTE_DIR = flags.DEFINE_string("remote_dir", None, "Where the program starts on every host (default: this "
                                  "directory's path).")
_SSH_OPTION = flags.DEFINE_multi_string("ssh_option", [], "More ssh -o options, e.g. Port=2222 (repeat the flag); "
                                        f"they add to, and may override, the defaults {', '.join(ssh.DEFAULT_SSH_OPTIONS)}.")
_SSH_CONFIG = flags.DEFINE_string("ssh_config", None, "An ssh client config file for every connection (ssh -F "
                                  "FILE): host names, ports, users, keys, known hosts. Default: ~/.ssh/config.")
flags.register_validator("ssh_config", lambda path: path is None or os.path.isfile(path),
                         "--ssh_config must name an existing ssh client config file (ssh -F FILE).")
flags.adopt_module_key_flags(cli)
flags.adopt_module_key_flags(distmap_flags)


def main(argv: list[str]) -> None:
    program = cli.program_from_argv(argv)
    fv = flags.FLAGS
    options = cli.options_from_flags()
    # --hosts= (an empty list) is "given" to absl too: read the file only where it was named.
    hostfile = _HOSTFILE.value
    hosts = ssh.check_hosts(ssh.read_hostfile(hostfile) if hostfile is not None else _HOSTS.value or [])
    gpu_ids = [int(i) for i in _GPU_IDS.value] if _GPU_IDS.value else None
    per_process = len(gpu_ids) // _PER_HOST.value if gpu_ids else fv.devices_per_process
    cli.check_mesh_fits(
        len(hosts) * _PER_HOST.value * per_process if per_process else None,
        f"{len(hosts)} host(s) x --processes_per_host={_PER_HOST.value} x {per_process} device(s) per process",
        program,
    )
    kwargs = dict(
        processes_per_host=_PER_HOST.value, coordinator_host=_COORDINATOR_HOST.value,
        devices_per_process=fv.devices_per_process, gpu_ids=gpu_ids, init_timeout=fv.init_timeout,
        stall_timeout=fv.stall_timeout, env=cli.env_from_flags(), remote_dir=_REMOTE_DIR.value or os.getcwd(),
        ssh_options=_SSH_OPTION.value, ssh_config=os.path.abspath(_SSH_CONFIG.value) if _SSH_CONFIG.value else None,
    )
    if fv.dry_run:
        port = fv.coordinator_port or pick_port()
        print(f"# distmap ssh run {options.run_id}: {len(hosts)} host(s), coordinator port {port}; one command per "
              "rank; 'stop' or end-of-file on its stdin gives the remote program SIGTERM and the grace period, "
              "'kill' ends it at once")
        for w in ssh.ssh_workers(program, hosts, port=port, run_id=options.run_id, grace_period=options.grace_period,
                                 **kwargs):
            print(shell.join(w.argv))
        return
    sys.exit(ssh.run_ssh(program, hosts, coordinator_port=fv.coordinator_port, options=options, **kwargs).exit_code)


if __name__ == "__main__":
    cli.run(main)
