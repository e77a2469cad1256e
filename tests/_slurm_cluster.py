"""A real one-node SLURM cluster on 127.0.0.1 for the test session: slurmctld + slurmd.

:func:`start` writes a ``slurm.conf`` into a folder of its own (state, spool, logs and pid
files all there), picks free ports for both daemons, starts ``slurmctld -D`` and
``slurmd -D -N localhost`` as children of the test process and waits until ``sinfo`` shows
the node idle. Clients find the cluster through ``SLURM_CONF``, which :attr:`SlurmCluster.env`
sets, so the real ``sbatch``/``srun``/``squeue``/``scancel``/``scontrol`` talk to it.

The configuration is the smallest that runs jobs as root without munge or cgroups:
``AuthType=auth/none`` and ``CredType=cred/none`` (nothing leaves 127.0.0.1),
``ProctrackType=proctrack/linuxproc`` (tasks tracked by parent pid), ``TaskPlugin=task/none``,
and ``SlurmdParameters=config_overrides`` so the node offers 4 CPUs whatever the machine has
(2 tasks of a job plus a second job fit on a 2-core machine). Tested with Debian's
slurm-wlm 22.05.

Example (what ``tests/conftest.py`` does)::

    cluster = start(str(tmp_dir))
    subprocess.run(["sbatch", "--wait", "job.sh"], env=cluster.env)
    cluster.stop()
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import time

from _daemon import MARK, free_port, marker_for, missing, sweep_orphans, tail, which
from _daemon import start as start_daemon
from _daemon import stop as stop_daemons

#: What the fixture needs on PATH: the daemons and the clients the tests call.
PROGRAMS = ("slurmctld", "slurmd", "sbatch", "srun", "squeue", "scancel", "scontrol", "sinfo")

_CONF = """\
# A one-node test cluster on 127.0.0.1 (tests/_slurm_cluster.py); nothing here outlives the session.
ClusterName=distmaptest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/none
CredType=cred/none
SlurmUser={user}
SlurmdUser=root
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MinJobAge=600
KillWait=5
NodeName=localhost NodeAddr=127.0.0.1 CPUs=4 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


@dataclasses.dataclass
class SlurmCluster:
    """A running test cluster: its folder, config, the environment clients need, its daemons."""

    root: str
    conf: str
    env: dict[str, str]
    daemons: list[subprocess.Popen]
    marker: str

    def run(self, *argv: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
        """Run a SLURM client command against this cluster (output captured as text)."""
        return subprocess.run(list(argv), env=self.env, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` of ``job_id`` as a dict (``JobState``, ``ExitCode``, ...)."""
        out = self.run("scontrol", "show", "job", "-o", job_id).stdout
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def wait(self, job_id: str, timeout: float = 120.0) -> dict[str, str]:
        """Wait until ``job_id`` has ended (``squeue`` no longer lists it); returns :meth:`job`.

        A job still there after ``timeout`` s is cancelled with ``scancel`` and the test fails.
        """
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if not self.run("squeue", "-h", "-j", job_id, "-o", "%i").stdout.strip():
                return self.job(job_id)
            time.sleep(0.2)
        self.run("scancel", job_id)
        raise AssertionError(f"SLURM job {job_id} still running after {timeout} s; cancelled. "
                             f"{self.job(job_id)}\n{self.logs()}")

    def cancel_all(self, timeout: float = 30.0) -> None:
        """``scancel`` every job still queued or running, and wait until ``squeue`` is empty."""
        ids = self.run("squeue", "-h", "-o", "%i").stdout.split()
        if ids:
            self.run("scancel", *ids)
        end = time.monotonic() + timeout
        while self.run("squeue", "-h", "-o", "%i").stdout.strip() and time.monotonic() < end:
            time.sleep(0.2)

    def logs(self) -> str:
        """The daemons' last log lines (for failure messages)."""
        return "".join(f"--- {n}\n{tail(os.path.join(self.root, n))}" for n in ("slurmctld.log", "slurmd.log"))

    def stop(self) -> list[int]:
        """Cancel what still runs, stop both daemons by pid; returns pids that had to be killed by marker."""
        try:
            self.cancel_all()
        except (OSError, subprocess.SubprocessError):
            pass  # the controller is gone already: stopping by pid and marker still ends everything
        return stop_daemons(self.daemons, self.marker)


def why_not() -> str | None:
    """Why this machine cannot run the cluster (a skip reason), or ``None``."""
    gone = missing(PROGRAMS)
    if gone:
        return f"needs SLURM ({', '.join(gone)} not found): apt-get install slurm-wlm openssh-server"
    if os.geteuid() != 0:
        return "needs root: slurmd starts each job's tasks as the job's user"
    return None


def start(root: str, timeout: float = 60.0) -> SlurmCluster:
    """Write the config into ``root``, start both daemons and wait until the node is idle."""
    for sub in ("state", "spool"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    ctld_port = free_port()
    slurmd_port = free_port()
    while slurmd_port == ctld_port:
        slurmd_port = free_port()
    conf = os.path.join(root, "slurm.conf")
    with open(conf, "w") as f:
        f.write(_CONF.format(root=root, ctld_port=ctld_port, slurmd_port=slurmd_port, user="root"))
    env = dict(os.environ, SLURM_CONF=conf)
    sweep_orphans()  # what a killed earlier session left
    marker = marker_for(root)
    env[MARK] = marker  # the tasks of every job submitted with this env carry it too
    for k in [k for k in env if k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_")) and k != "SLURM_CONF"]:
        del env[k]  # a test session started inside a SLURM job must not leak that job into these
    daemons = [start_daemon([which("slurmctld"), "-D", "-f", conf], os.path.join(root, "slurmctld.out"), marker, env)]
    daemons.append(start_daemon([which("slurmd"), "-D", "-N", "localhost", "-f", conf], os.path.join(root, "slurmd.out"),
                                marker, env))
    cluster = SlurmCluster(root=root, conf=conf, env=env, daemons=daemons, marker=marker)
    end = time.monotonic() + timeout
    state = ""
    while time.monotonic() < end:
        dead = [d.args[0] for d in daemons if d.poll() is not None]
        if dead:
            cluster.stop()
            raise RuntimeError(f"{', '.join(dead)} exited at start:\n{cluster.logs()}"
                               f"{tail(os.path.join(root, 'slurmctld.out'))}{tail(os.path.join(root, 'slurmd.out'))}")
        state = cluster.run("sinfo", "-h", "-n", "localhost", "-o", "%t").stdout.strip()
        if state == "idle":
            return cluster
        time.sleep(0.2)
    cluster.stop()
    raise RuntimeError(f"the SLURM node was not idle after {timeout} s (sinfo: {state!r}):\n{cluster.logs()}")
