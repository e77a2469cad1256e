"""Run a program as a Kubernetes Indexed Job: one pod per process, a headless Service to find rank 0.

    python launch/k8s.py --image=ghcr.io/me/distmap:1 --num_processes=2 --gpus_per_process=8 --dry_run -- \\
        python examples/ensemble.py --mesh=data=-1,model=8
    python launch/k8s.py --flagfile=configs/k8s_gpu.flags --apply -- \\
        python examples/ensemble.py --flagfile=configs/k8s_gpu.flags

Each pod gets ``DISTMAP_COORDINATOR=NAME-0.NAME:PORT`` (pod 0 through the headless
Service), ``DISTMAP_NUM_PROCESSES`` and, from its Job index, ``DISTMAP_PROCESS_ID``, so the
program's bare ``distmap.distributed.initialize()`` joins the run. One failing pod fails the
Job and Kubernetes stops the others. ``--dry_run`` prints the YAML; ``--apply`` writes it to
``--log_dir/RUN_ID/k8s.yaml`` and pipes it to ``kubectl apply -f -``. ``--timeout`` becomes
the Job's ``activeDeadlineSeconds``, ``--grace_period`` the pods' termination grace period.
Everything after ``--`` reaches the program unchanged.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

import _light  # launch/ is on sys.path: this file runs as a script

_light.use_light_distmap()  # the launcher needs distmap's launch code (from this checkout), not JAX

from distmap import errors  # noqa: E402
from distmap._src import flags as distmap_flags  # noqa: E402
from distmap._src.launch import cli, cluster, k8s, shell  # noqa: E402

cli.define_common_flags(init_timeout=600.0)
cluster.define_cluster_flags()
distmap_flags.define_mesh_flags(cpu_devices=False)
_APPLY = flags.DEFINE_bool("apply", False, "Pipe the manifests to kubectl apply -f -.")
_IMAGE = flags.DEFINE_string("image", None, "Container image with the code and its Python environment.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 2, "Pods (one process each).", lower_bound=1)
_GPUS = flags.DEFINE_integer("gpus_per_process", 0, "nvidia.com/gpu per pod.", lower_bound=0)
_CPU = flags.DEFINE_string("cpu", None, "CPU per pod (requests and limits), e.g. 8.")
_MEMORY = flags.DEFINE_string("memory", None, "Memory per pod (requests and limits), e.g. 64Gi.")
_NAMESPACE = flags.DEFINE_string("namespace", None, "Namespace (default: kubectl's current one).")
_JOB_NAME = flags.DEFINE_string("job_name", None, "Name of the Job and its Service (default: distmap-RUN_ID).")
_WORKDIR = flags.DEFINE_string("workdir", None, "The container's working directory (default: the image's).")
_NODE_SELECTOR = flags.DEFINE_multi_string("node_selector", [], "LABEL=VALUE the pods' nodes must have.")


def main(argv: list[str]) -> None:
    program = cli.program_from_argv(argv)
    fv = flags.FLAGS
    options = cluster.with_run_id(cli.options_from_flags())
    if options.max_restarts:
        raise app.UsageError(
            "--max_restarts is not supported by launch/k8s.py: a Job restarts single pods, and a new process cannot "
            "rejoin a running JAX job. Run the Job again (a new run id and port), or use a JobSet."
        )
    per_process = _GPUS.value or fv.devices_per_process
    cluster.check_mesh_fits(
        _NUM_PROCESSES.value * per_process if per_process else None,
        f"--num_processes={_NUM_PROCESSES.value} x {per_process} device(s) per process", fv,
    )
    try:
        selector = {}
        for item in _NODE_SELECTOR.value:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise errors.DistributedError(f"--node_selector={item!r} is not LABEL=VALUE.")
            selector[key] = value
        job = k8s.K8sJob(
            program=program,
            image=_IMAGE.value or "",
            name=_JOB_NAME.value or k8s.default_name(options.run_id),
            num_processes=_NUM_PROCESSES.value,
            run_id=options.run_id,
            port=fv.coordinator_port or shell.pick_port(),
            gpus_per_process=_GPUS.value,
            cpu=_CPU.value,
            memory=_MEMORY.value,
            namespace=_NAMESPACE.value,
            devices_per_process=fv.devices_per_process,
            init_timeout=fv.init_timeout,
            timeout=options.timeout,
            grace_period=options.grace_period,
            env=cluster.env_from_flags(),
            workdir=_WORKDIR.value,
            node_selector=selector,
        )
        text = k8s.render(job)
    except errors.DistributedError as e:
        raise app.UsageError(str(e)) from None
    if fv.dry_run or not _APPLY.value:
        if not fv.dry_run:
            sys.stderr.write("distmap k8s: printing the manifests; --apply sends them to kubectl.\n")
        sys.stdout.write(text)
        return
    run_dir = cluster.run_dir_of(options)
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, "k8s.yaml")
    with open(path, "w") as f:
        f.write(text)
    try:
        proc = k8s.apply(text)
    except errors.DistributedError as e:
        sys.stderr.write(f"distmap k8s: {e}\n")
        sys.exit(1)
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    if proc.returncode == 0:
        ns = f" -n {shell.quote(job.namespace)}" if job.namespace else ""
        sys.stderr.write(
            f"distmap k8s: applied {path}. Follow it with: kubectl logs{ns} -f -l {k8s.JOB_LABEL}={job.name} --prefix "
            f"--max-log-requests={job.num_processes}\n"
        )
    sys.exit(proc.returncode)


if __name__ == "__main__":
    app.run(main)
