"""Run a program as a Kubernetes Indexed Job: one pod per process, a headless Service to find rank 0 (Kubernetes >= 1.31).

    python launch/k8s.py --image=ghcr.io/me/distmap:1 --num_processes=2 --gpus_per_process=8 --dry_run -- \\
        python examples/ensemble.py --mesh=data=-1,model=8
    python launch/k8s.py --flagfile=configs/k8s_gpu.flags --apply -- \\
        python examples/ensemble.py --flagfile=configs/k8s_gpu.flags

Each pod gets ``DISTMAP_COORDINATOR=NAME-0.NAME:PORT`` (pod 0 through the headless
Service), ``DISTMAP_NUM_PROCESSES`` and, from its Job index, ``DISTMAP_PROCESS_ID``, so the
program's bare ``distmap.distributed.initialize()`` joins the run. One failing pod fails the
Job and Kubernetes stops the others. ``--dry_run`` prints the manifests (JSON, which is
YAML); ``--apply`` writes them to ``--log_dir/RUN_ID/k8s.json`` and creates the Job, then the
Service owned by it (``kubectl apply``), so the Service goes with the Job. ``--timeout``
becomes the Job's ``activeDeadlineSeconds``, ``--grace_period`` the pods' termination grace
period (SIGTERM to SIGKILL, 30 s by default), ``--ttl_after_finished`` its
``ttlSecondsAfterFinished``. GPU pods get a memory-backed ``/dev/shm``. The program comes
after ``--`` and reaches the pods unchanged.
"""

from __future__ import annotations

import os
import sys

from absl import flags

# As a script this file has launch/ on sys.path, not the checkout: put the checkout first, so the
# launcher uses this checkout's distmap, installed or not, over any other. Importing it loads no JAX.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from distmap._src import flags as distmap_flags
from distmap._src.launch import cli, k8s, shell
from distmap._src.launch.ports import pick_port

cli.define_common_flags(init_timeout=600.0)
_APPLY = flags.DEFINE_bool("apply", False, "Pipe the manifests to kubectl apply -f -.")
_IMAGE = flags.DEFINE_string("image", None, "Container image with the code and its Python environment.", required=True)
cli.check_flag("image", k8s.check_image)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 2, "Pods (one process each).", lower_bound=1)
_GPUS = flags.DEFINE_integer("gpus_per_process", 0, "nvidia.com/gpu per pod.", lower_bound=0)
_CPU = flags.DEFINE_string("cpu", None, "CPU per pod (requests and limits), a Kubernetes quantity, e.g. 8 or 500m.")
cli.check_flag("cpu", lambda v: k8s.check_quantity(v, "--cpu"))
_MEMORY = flags.DEFINE_string("memory", None, "Memory per pod (requests and limits), a Kubernetes quantity, e.g. 64Gi.")
cli.check_flag("memory", lambda v: k8s.check_quantity(v, "--memory"))
_NAMESPACE = flags.DEFINE_string("namespace", None, "Namespace (default: kubectl's current one).")
cli.check_flag("namespace", k8s.check_namespace)
_JOB_NAME = flags.DEFINE_string("job_name", None, "Name of the Job and its Service (default: distmap-RUN_ID).")
_WORKDIR = flags.DEFINE_string("workdir", None, "The container's working directory (default: the image's).")
_NODE_SELECTOR = flags.DEFINE_multi_string("node_selector", [], "LABEL=VALUE the pods' nodes must have.")
cli.check_flag("node_selector", lambda item: k8s.parse_labels([item]))
_TTL = flags.DEFINE_integer("ttl_after_finished", 86400, "Seconds Kubernetes keeps the finished Job and its pods "
                            "(ttlSecondsAfterFinished), so their logs can be read.", lower_bound=0)
flags.register_validator(
    "max_restarts", lambda v: v == 0,
    "--max_restarts is not supported by launch/k8s.py: a Job restarts single pods, and a new process cannot rejoin "
    "a running JAX job. Run the Job again (a new run id and port), or use a JobSet.",
)
flags.adopt_module_key_flags(cli)
flags.adopt_module_key_flags(distmap_flags)


def main(argv: list[str]) -> None:
    program = cli.program_from_argv(argv)
    fv = flags.FLAGS
    options = cli.options_from_flags()
    per_process = _GPUS.value or fv.devices_per_process
    cli.check_mesh_fits(
        _NUM_PROCESSES.value * per_process if per_process else None,
        f"--num_processes={_NUM_PROCESSES.value} x {per_process} device(s) per process", program,
    )
    job = k8s.K8sJob(
        program=program,
        image=_IMAGE.value,
        name=_JOB_NAME.value or k8s.default_name(options.run_id),
        num_processes=_NUM_PROCESSES.value,
        run_id=options.run_id,
        port=fv.coordinator_port or pick_port(),
        gpus_per_process=_GPUS.value,
        cpu=_CPU.value,
        memory=_MEMORY.value,
        namespace=_NAMESPACE.value,
        devices_per_process=fv.devices_per_process,
        init_timeout=fv.init_timeout,
        stall_timeout=fv.stall_timeout,
        timeout=options.timeout,
        grace_period=options.grace_period,
        env=cli.env_from_flags(),
        workdir=_WORKDIR.value,
        node_selector=k8s.parse_labels(_NODE_SELECTOR.value),
        ttl_after_finished=_TTL.value,
    )
    text = k8s.render(job)  # checked before anything is written
    if fv.dry_run or not _APPLY.value:
        if not fv.dry_run:
            sys.stderr.write("distmap k8s: printing the manifests; --apply sends them to kubectl.\n")
        sys.stdout.write(text)
        return
    os.makedirs(options.run_dir, exist_ok=True)
    path = os.path.join(options.run_dir, "k8s.json")
    with open(path, "w") as f:
        f.write(text)
    code, out, err = k8s.apply(job)
    sys.stdout.write(out)
    sys.stderr.write(err)
    if code == 0:
        ns = f" -n {shell.quote(job.namespace)}" if job.namespace else ""
        sys.stderr.write(
            f"distmap k8s: applied {path}. Follow it with: kubectl logs{ns} -f -l {k8s.JOB_LABEL}={job.name} --prefix "
            f"--max-log-requests={job.num_processes}\n"
        )
    sys.exit(code)


if __name__ == "__main__":
    cli.run(main)
