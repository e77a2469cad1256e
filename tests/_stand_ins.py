"""Helpers of the cluster-launcher tests: stand-in cluster commands, golden files, process checks.

The stand-ins are small Python scripts a test writes into a folder it puts first on
``PATH``. They run what they are given on this machine, the way the real command would run
it on a cluster, and they keep the real command's one property that matters most here:
a "remote" program runs in its own session, so killing the stand-in (the ssh or gcloud
client) does not kill it. Only the launcher's remote clean-up can.

* ``sbatch --parsable SCRIPT``: runs the script with bash (SLURM_JOB_ID, the ``#SBATCH``
  ``--chdir`` and ``--output``), records its exit status in ``FAKE_SLURM_STATE/job_ID.status``
  and prints ``ID;cluster``.
* ``srun --nodes=1 --ntasks=1 --nodelist=NODE ... CMD``: one job step of one task, run here in a
  session of its own with srun's stdin (as ``--input=all``) and the step's ``SLURM_*`` variables.
* ``scontrol show hostnames LIST``: the comma list's names, one a line (the stand-in sbatch
  names the nodes ``localhost``, ``127.0.0.2``, ...: all of them this machine).
* ``gcloud compute tpus tpu-vm {scp,ssh,describe} NAME ...``: ``FAKE_TPU_WORKERS`` workers per
  TPU, each a home folder ``FAKE_TPU_ROOT/NAME/worker_W`` (``HOME``, ``TMPDIR`` there,
  ``TPU_WORKER_ID=W``); ``scp --worker=all`` copies to every worker; ``ssh --worker=all
  --command=CMD`` runs ``bash -c CMD`` on every worker at once, ``ssh --worker=W`` on worker W
  (its stdin passed on, as ssh passes it); ``describe --format=value(networkEndpoints[].ipAddress)``
  prints one ``127.0.0.1`` per worker, ``;``-separated; ``describe --format=value(state)`` prints
  ``FAKE_TPU_STATE`` (default ``READY``).
* ``ssh [-o OPT] HOST CMD...``: runs ``sh -c "CMD..."`` here, as sshd runs it with a POSIX login
  shell, with the client's stdin and output (so the remote side sees end-of-file when the
  client's stdin closes, as through a real ssh session).
* ``kubectl apply -f - [-o jsonpath={.metadata.uid}]``: appends its input (one JSON object) to
  ``FAKE_KUBECTL_OUT`` and prints ``uid-of-NAME`` for the jsonpath, else ``kind/NAME created``.

Every call is appended to ``calls.jsonl`` in the stand-in folder.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import signal
import stat
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = os.path.join(ROOT, "tests", "golden")
CHILD = os.path.join(ROOT, "tests", "_cluster_child.py")
PY = sys.executable

#: Program arguments that a shell, srun, sbatch, absl or Kubernetes could mangle.
HOSTILE = [
    "a b", "'single'", '"double"', "$(touch /tmp/distmap_pwned)", "; rm -rf /", "`id`", "line1\nline2",
    "tab\there", "*", "", "--", "--num_processes=9", "%t", "%j %%", "$(POD_IP)", "$$", "${HOME}", "ünï", "\\",
    "a=b=c", "#not a comment", "-- x",
]

_COMMON = '''
import json, os, re, signal, subprocess, sys, threading, time
HERE = os.path.dirname(os.path.abspath(__file__))
os.environ["STAND_IN_MARK"] = HERE  # inherited by everything started from here (see kill_started)
with open(os.path.join(HERE, "calls.jsonl"), "a") as _f:
    _f.write(json.dumps([os.path.basename(sys.argv[0])] + sys.argv[1:]) + "\\n")

def code_of(rc):
    return 128 - rc if rc < 0 else rc

def started(proc):  # the test ends every process group a stand-in started (see kill_started)
    with open(os.path.join(HERE, "started_pids"), "a") as f:
        f.write(f"{proc.pid}\\n")
    return proc
'''

_SBATCH = _COMMON + r'''
args = sys.argv[1:]
if len(args) != 2 or args[0] != "--parsable":
    sys.exit(f"fake sbatch: expected --parsable SCRIPT, got {args}")
script, state = args[1], os.environ["FAKE_SLURM_STATE"]
counter = os.path.join(state, "next_job_id")
job_id = int(open(counter).read()) if os.path.exists(counter) else 4242
open(counter, "w").write(str(job_id + 1))
opts = {}
text = open(script, "rb").read().decode("utf-8", "surrogateescape")
for m in re.finditer(r"^#SBATCH (--[^=\s]+)(?:=(\S+))?$", text, re.M):
    opts[m.group(1)] = m.group(2)
nodes = opts.get("--nodes", "1")
out = re.sub(r"%(%|j)", lambda m: "%" if m.group(1) == "%" else str(job_id), opts["--output"])
env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
names = ",".join(["localhost"] + [f"127.0.0.{i + 1}" for i in range(1, int(nodes))])  # all of them this machine
env.update(SLURM_JOB_ID=str(job_id), SLURM_JOBID=str(job_id), SLURM_JOB_NODELIST=names, SLURMD_NODENAME="localhost",
           SLURM_NODELIST=names, SLURM_JOB_NUM_NODES=nodes, SLURM_NNODES=nodes, SLURM_SUBMIT_DIR=os.getcwd())
with open(out, "w") as log:
    rc = subprocess.call(["bash", script], cwd=opts.get("--chdir"), env=env, stdin=subprocess.DEVNULL,
                         stdout=log, stderr=subprocess.STDOUT)
open(os.path.join(state, f"job_{job_id}.status"), "w").write(str(rc))
print(f"{job_id};fakecluster")
'''

_SRUN = _COMMON + r'''
args = sys.argv[1:]
opts = {}
while args and args[0].startswith("--"):
    key, _, value = args.pop(0).partition("=")
    opts[key] = value
if opts.get("--ntasks") != "1" or opts.get("--nodes") != "1" or "--nodelist" not in opts:
    sys.exit(f"fake srun: expected one task on one node (--nodes=1 --ntasks=1 --nodelist=N), got {opts}")
env = dict(os.environ, SLURM_STEP_NODELIST=opts["--nodelist"], SLURM_STEP_NUM_TASKS="1", SLURM_NTASKS="1",
           SLURM_PROCID="0", SLURM_LOCALID="0", SLURMD_NODENAME=opts["--nodelist"])
# The task gets srun's stdin (as --input=all does) and runs in a session of its own, as under slurmstepd.
sys.exit(code_of(started(subprocess.Popen(args, env=env, start_new_session=True)).wait()))
'''

_SCONTROL = _COMMON + r'''
if sys.argv[1:3] != ["show", "hostnames"]:
    sys.exit(f"fake scontrol: only 'show hostnames LIST', got {sys.argv[1:]}")
print("\n".join(sys.argv[3].split(",")))
'''

_GCLOUD = _COMMON + r'''
import shutil
root, workers = os.environ["FAKE_TPU_ROOT"], int(os.environ.get("FAKE_TPU_WORKERS", "2"))
args = sys.argv[1:]
if args[:3] != ["compute", "tpus", "tpu-vm"]:
    sys.exit(f"fake gcloud: only 'compute tpus tpu-vm', got {args}")
verb, flags, pos = args[3], {}, []
for a in args[4:]:
    if a.startswith("--"):
        key, _, value = a.partition("=")
        flags[key] = value
    else:
        pos.append(a)

def home(name, w):
    h = os.path.join(root, name, f"worker_{w}")
    os.makedirs(os.path.join(h, "tmp"), exist_ok=True)
    return h

if verb == "describe" and flags["--format"] == "value(state)":
    print(os.environ.get("FAKE_TPU_STATE", "READY"))
    sys.exit(0)
if verb == "describe":
    assert flags["--format"] == "value(networkEndpoints[].ipAddress)", flags
    print(";".join(["127.0.0.1"] * workers))
    sys.exit(0)
worker = flags.get("--worker")
if verb == "ssh" and worker is not None and worker.isdigit():
    h = home(pos[0], int(worker))
    env = dict(os.environ, HOME=h, TMPDIR=os.path.join(h, "tmp"), TPU_WORKER_ID=worker)
    sys.exit(code_of(started(subprocess.Popen(["bash", "-c", flags["--command"]], cwd=h, env=env,
                                              start_new_session=True)).wait()))
if worker != "all":
    sys.exit("fake gcloud: scp and the preparation go to --worker=all")
if verb == "scp":
    src, dest = pos
    name, path = dest.split(":", 1)
    for w in range(workers):
        shutil.copy(src, os.path.join(home(name, w), path))
    sys.exit(0)
if verb == "ssh":
    name, command, lock, procs = pos[0], flags["--command"], threading.Lock(), []
    for w in range(workers):
        h = home(name, w)
        env = dict(os.environ, HOME=h, TMPDIR=os.path.join(h, "tmp"), TPU_WORKER_ID=str(w))
        procs.append(started(subprocess.Popen(["bash", "-c", command], cwd=h, env=env, stdin=subprocess.DEVNULL,
                                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                              start_new_session=True)))

    def pump(p):
        for line in p.stdout:
            with lock:
                sys.stdout.buffer.write(line)
                sys.stdout.buffer.flush()

    threads = [threading.Thread(target=pump, args=(p,)) for p in procs]
    for t in threads:
        t.start()
    codes = [code_of(p.wait()) for p in procs]
    for t in threads:
        t.join()
    sys.exit(max(codes))
sys.exit(f"fake gcloud: unknown verb {verb}")
'''

_SSH = _COMMON + r'''
args, i = sys.argv[1:], 0
while args[i].startswith("-"):
    i += 2 if args[i] == "-o" else 1
host, command = args[i], " ".join(args[i + 1:])
p = started(subprocess.Popen(["/bin/sh", "-c", command], env=dict(os.environ, FAKE_SSH_HOST=host),
                             start_new_session=True))
sys.exit(code_of(p.wait()))
'''

_KUBECTL = _COMMON + r'''
args = sys.argv[1:]
if args[:3] != ["apply", "-f", "-"] or args[3:] not in ([], ["-o", "jsonpath={.metadata.uid}"]):
    sys.exit(f"fake kubectl: expected apply -f - [-o jsonpath={{.metadata.uid}}], got {args}")
doc = json.loads(sys.stdin.read())
with open(os.environ["FAKE_KUBECTL_OUT"], "a") as f:
    f.write(json.dumps(doc) + "\n")
if args[3:]:
    print(f"uid-of-{doc['metadata']['name']}", end="")
else:
    print(f"{doc['kind'].lower()}/{doc['metadata']['name']} created")
'''

_SCRIPTS = {"sbatch": _SBATCH, "srun": _SRUN, "scontrol": _SCONTROL, "gcloud": _GCLOUD, "ssh": _SSH,
            "kubectl": _KUBECTL}


def install(bin_dir: str, *names: str) -> dict[str, str]:
    """Write the stand-ins ``names`` into ``bin_dir``; returns an environment with it first on PATH."""
    os.makedirs(bin_dir, exist_ok=True)
    for name in names:
        path = os.path.join(bin_dir, name)
        with open(path, "w") as f:
            f.write(f"#!{PY}\n" + _SCRIPTS[name])
        os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISTMAP_", "SLURM_"))}
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    return env


def calls(bin_dir: str) -> list[list[str]]:
    """Every stand-in call so far, as ``[command, args...]``."""
    path = os.path.join(bin_dir, "calls.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f]


def started_groups(bin_dir: str) -> list[int]:
    """The process groups (session leaders) the stand-ins started: tasks, "remote" shells."""
    path = os.path.join(bin_dir, "started_pids")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [int(line) for line in f if line.strip()]


def kill_started(bin_dir: str) -> None:
    """SIGKILL everything a stand-in started that is still there (a test's own clean-up).

    The recorded process groups, and every process that carries the stand-ins' mark in its
    environment: programs that moved to a session of their own (``setsid``) included.
    """
    for pgid in started_groups(bin_dir):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    mark = b"STAND_IN_MARK=" + os.path.abspath(bin_dir).encode() + b"\0"
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                marked = mark in f.read() + b"\0"
            if marked:
                os.kill(int(entry), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass


def check_golden(name: str, text: str) -> None:
    """Compare ``text`` with ``tests/golden/NAME``; with ``DISTMAP_UPDATE_GOLDEN=1``, rewrite the file.

    To accept a deliberate change of a launcher's output:
        DISTMAP_UPDATE_GOLDEN=1 python -m pytest tests/test_launch_*.py -k golden
    then review ``git diff tests/golden``.
    """
    path = os.path.join(GOLDEN, name)
    if os.environ.get("DISTMAP_UPDATE_GOLDEN") == "1":
        os.makedirs(GOLDEN, exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        return
    assert os.path.exists(path), f"no golden file {path}; create it with DISTMAP_UPDATE_GOLDEN=1"
    with open(path) as f:
        want = f.read()
    if text != want:
        diff = "".join(difflib.unified_diff(want.splitlines(True), text.splitlines(True), f"golden/{name}", "now"))
        raise AssertionError(
            f"the output differs from tests/golden/{name}. If the change is meant, rerun with "
            f"DISTMAP_UPDATE_GOLDEN=1 and review the diff:\n{diff}"
        )


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pids, timeout: float = 5.0) -> list[int]:
    """Wait up to ``timeout`` s for ``pids`` to end; returns those still alive."""
    end = time.monotonic() + timeout
    left = [p for p in pids if alive(p)]
    while left and time.monotonic() < end:
        time.sleep(0.05)
        left = [p for p in left if alive(p)]
    return left


def kill_pids(pids) -> None:
    """SIGKILL whatever of ``pids`` still runs (a test's own leftovers)."""
    for pid in pids:
        if alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def pids_in(text: str) -> list[int]:
    """The pids that programs announced as ``PID <n>`` in ``text``."""
    return [int(p) for p in re.findall(r"\bPID (\d+)", text)]


def sigint_ends_every_program(args: list[str], env: dict[str, str], programs: int = 2) -> None:
    """Start a launcher, wait until ``programs`` of its programs announce their pid, send it SIGINT,
    and check that it exits with 128 + SIGINT and that every program is gone within 5 s."""
    import subprocess

    launch = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                              start_new_session=True)
    pids: list[int] = []
    try:
        while len(pids) < programs:
            line = launch.stdout.readline()
            assert line, launch.stderr.read()
            pids += pids_in(line)
        launch.send_signal(signal.SIGINT)
        assert launch.wait(timeout=20) == 128 + signal.SIGINT
        assert not wait_gone(pids, 5)
    finally:
        if launch.poll() is None:
            os.killpg(launch.pid, signal.SIGKILL)
            launch.wait()
        kill_pids(pids)
        launch.stdout.close()
        launch.stderr.close()


def results(lines) -> list[dict]:
    """The ``RESULT <json>`` payloads in ``lines`` (prefixes before ``RESULT`` ignored)."""
    return [json.loads(line.split("RESULT ", 1)[1]) for line in lines if "RESULT " in line]


def argvs(lines) -> list[list[str]]:
    """The ``ARGV <json>`` payloads in ``lines``."""
    return [json.loads(line.split("ARGV ", 1)[1]) for line in lines if "ARGV " in line]
