"""The policy of ``launch/k8s.py``: an Indexed Job and a headless Service for one run.

* The **Job** runs ``num_processes`` pods at once (``completionMode: Indexed``,
  ``parallelism = completions = N``). Each pod's index (``JOB_COMPLETION_INDEX``, set by
  Kubernetes) is its rank: the pod's command maps it to ``DISTMAP_PROCESS_ID`` and then
  runs the program, which only calls ``distmap.distributed.initialize()``.
* One failing pod fails the Job, and Kubernetes then ends the other pods: ``backoffLimit:
  0`` and a ``podFailurePolicy`` that fails the Job on any non-zero exit. A pod is never
  restarted on its own: a new process cannot rejoin a running JAX job.
* The **Service** is headless (``clusterIP: None``), selects the Job's pods and publishes
  their addresses before they are ready; with the pods' ``subdomain`` set to its name, pod
  ``i`` is reachable as ``NAME-i.NAME``, so the coordinator is ``NAME-0.NAME:PORT``. Rank 0
  binds its own pod IP (``DISTMAP_COORDINATOR_BIND=$(POD_IP):PORT``), which it has even
  before its DNS name resolves.

Kubernetes expands ``$(NAME)`` in a container's command, args and env values, so every
``$`` of the program's arguments and of ``--env`` values is written as ``$$`` (which
Kubernetes turns back into ``$``): arguments reach the program unchanged.

Example:
    >>> job = K8sJob(program=["python", "train.py"], image="ghcr.io/me/train:1", name="ens", num_processes=2,
    ...              run_id="r1", port=23456)
    >>> service, batch_job = manifests(job)
    >>> service["spec"]["clusterIP"], batch_job["spec"]["completionMode"], coordinator_address(job)
    ('None', 'Indexed', 'ens-0.ens:23456')
"""

from __future__ import annotations

import dataclasses
import math
import re
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any

from distmap import errors
from distmap._src.launch import contract, shell, yaml_text

CONTAINER = "main"
JOB_LABEL = "distmap/job"

# The pod's command: rank from the Job's index, then the program ("$@", the container's args).
POD_SCRIPT = (
    'export DISTMAP_PROCESS_ID="${JOB_COMPLETION_INDEX:?is not set: run this command as a pod of an Indexed Job}"\n'
    'exec "$@"\n'
)
_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?\Z")


@dataclasses.dataclass(frozen=True)
class K8sJob:
    """One Kubernetes run.

    Attributes:
        program: the command every pod runs (the container's ``args``).
        image: the container image (with the code and Python environment in it).
        name: the Job's and the Service's name (a DNS label).
        num_processes: pods, one process each.
        run_id: the run's id (``DISTMAP_RUN_ID``, an annotation).
        port: the coordinator's port.
        gpus_per_process: ``nvidia.com/gpu`` per pod.
        cpu, memory: the pod's CPU and memory (requests and limits), e.g. ``"8"``, ``"32Gi"``.
        namespace: the namespace (``None``: kubectl's current one).
        devices_per_process: simulated CPU devices per pod (a CPU run).
        init_timeout: seconds every pod waits for all to join.
        timeout: seconds the Job may run (``activeDeadlineSeconds``).
        grace_period: seconds a pod gets between SIGTERM and SIGKILL.
        env: more variables for every pod.
        workdir: the container's working directory (``None``: the image's).
        node_selector: node labels the pods must run on (e.g. a GPU type).
    """

    program: Sequence[str]
    image: str
    name: str
    num_processes: int
    run_id: str
    port: int
    gpus_per_process: int = 0
    cpu: str | None = None
    memory: str | None = None
    namespace: str | None = None
    devices_per_process: int | None = None
    init_timeout: float | None = None
    timeout: float | None = None
    grace_period: float | None = None
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    workdir: str | None = None
    node_selector: Mapping[str, str] = dataclasses.field(default_factory=dict)


def default_name(run_id: str) -> str:
    """A Job name made from a run id: ``distmap-<run id>``, lowercased, cut to fit pod host names.

    Example:
        >>> default_name("20250101-120000-4242-ab12")
        'distmap-20250101-120000-4242-ab12'
    """
    text = re.sub(r"[^a-z0-9-]+", "-", ("distmap-" + run_id).lower())
    return text[:52].strip("-") or "distmap"


def check_name(name: str, num_processes: int) -> str:
    """``name`` if it can name the Job, the Service and every pod host (``NAME-<index>``)."""
    longest = f"{name}-{max(num_processes - 1, 0)}"
    if not _NAME.match(name) or len(longest) > 63:
        raise errors.DistributedError(
            f"k8s: --job_name={name!r} cannot name the Job, its Service and its pods: use lowercase letters, digits "
            f"and '-', starting with a letter, short enough that {longest!r} has at most 63 characters."
        )
    return name


def literal(text: str) -> str:
    """``text`` written so that Kubernetes' ``$(VAR)`` expansion gives back exactly ``text``.

    Example:
        >>> literal("$(HOME) costs $5")
        '$$(HOME) costs $$5'
    """
    return text.replace("$", "$$")


def coordinator_address(job: K8sJob) -> str:
    """``NAME-0.NAME:PORT``: pod 0's stable name through the headless Service."""
    return f"{job.name}-0.{job.name}:{job.port}"


def pod_env(job: K8sJob) -> list[dict[str, Any]]:
    """The container's ``env`` list (the index-dependent rank is set by the pod's command)."""
    spec = contract.RankSpec(
        coordinator=coordinator_address(job), num_processes=job.num_processes, process_id=None, run_id=job.run_id,
        cpu_devices=job.devices_per_process, init_timeout=job.init_timeout,
    )
    values = contract.rank_env(spec)
    values.update(job.env)
    out: list[dict[str, Any]] = [
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
    ]
    for k, v in values.items():
        shell.check_env_name(k, "--env")
        out.append({"name": k, "value": literal(v)})
        if k == contract.COORDINATOR:  # rank 0 binds its pod IP: the DNS name may not resolve yet
            out.append({"name": contract.COORDINATOR_BIND, "value": f"$(POD_IP):{job.port}"})
    return out


def manifests(job: K8sJob) -> list[dict[str, Any]]:
    """``[Service, Job]`` as plain dicts, ready for :func:`render`."""
    if not job.program:
        raise errors.DistributedError("k8s: no program to run.")
    if job.num_processes < 1:
        raise errors.DistributedError(f"k8s: --num_processes must be >= 1, got {job.num_processes}.")
    if not job.image:
        raise errors.DistributedError("k8s: give the container image with --image.")
    if job.gpus_per_process and job.devices_per_process:
        raise errors.DistributedError(
            "k8s: --devices_per_process (a CPU run) and --gpus_per_process exclude each other."
        )
    name = check_name(job.name, job.num_processes)
    labels = {"app.kubernetes.io/name": "distmap", JOB_LABEL: name}
    meta: dict[str, Any] = {"name": name}
    if job.namespace:
        meta["namespace"] = job.namespace
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {**meta, "labels": labels},
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,  # pod 0's name resolves while the pods start
            "selector": {JOB_LABEL: name},
            "ports": [{"name": "coordinator", "port": job.port, "targetPort": job.port}],
        },
    }
    resources: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    requests: dict[str, Any] = {}
    if job.gpus_per_process:
        limits["nvidia.com/gpu"] = int(job.gpus_per_process)
    for key, value in (("cpu", job.cpu), ("memory", job.memory)):
        if value:
            limits[key] = requests[key] = str(value)
    if requests:
        resources["requests"] = requests
    if limits:
        resources["limits"] = limits
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": job.image,
        "command": [literal(a) for a in ("sh", "-c", POD_SCRIPT, "distmap-pod")],
        "args": [literal(a) for a in job.program],
        "env": pod_env(job),
        "ports": [{"name": "coordinator", "containerPort": job.port}],
    }
    if job.workdir:
        container["workingDir"] = job.workdir
    if resources:
        container["resources"] = resources
    pod_spec: dict[str, Any] = {
        "subdomain": name,  # with the pod's host name NAME-<index>: NAME-<index>.NAME resolves
        "restartPolicy": "Never",
        "containers": [container],
    }
    if job.grace_period is not None:
        pod_spec["terminationGracePeriodSeconds"] = int(math.ceil(job.grace_period))
    if job.node_selector:
        pod_spec["nodeSelector"] = dict(job.node_selector)
    spec: dict[str, Any] = {
        "completionMode": "Indexed",
        "completions": job.num_processes,
        "parallelism": job.num_processes,
        "backoffLimit": 0,
        "podFailurePolicy": {
            "rules": [
                {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "NotIn", "values": [0]}},
            ],
        },
    }
    if job.timeout:
        spec["activeDeadlineSeconds"] = int(math.ceil(job.timeout))
    spec["template"] = {"metadata": {"labels": labels}, "spec": pod_spec}
    batch_job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {**meta, "labels": labels, "annotations": {"distmap/run-id": job.run_id}},
        "spec": spec,
    }
    return [service, batch_job]


def render(job: K8sJob) -> str:
    """The manifests as YAML (``--dry_run``'s output, ``kubectl apply``'s input)."""
    header = (
        f"# distmap Kubernetes run {job.run_id}: Indexed Job {job.name!r} ({job.num_processes} pods) and its headless "
        "Service, written by launch/k8s.py.\n"
    )
    return header + yaml_text.dump_all(manifests(job))


def apply(text: str, *, kubectl: str = "kubectl") -> subprocess.CompletedProcess:
    """``kubectl apply -f -`` with ``text`` on its input; returns the finished process."""
    argv = [kubectl, "apply", "-f", "-"]
    try:
        return subprocess.run(argv, input=text, capture_output=True, text=True)
    except OSError as e:
        raise errors.DistributedError(f"could not run {shell.join(argv)}: {e.strerror or e}.") from e


__all__ = [
    "CONTAINER",
    "JOB_LABEL",
    "POD_SCRIPT",
    "K8sJob",
    "apply",
    "check_name",
    "coordinator_address",
    "default_name",
    "literal",
    "manifests",
    "pod_env",
    "render",
]
