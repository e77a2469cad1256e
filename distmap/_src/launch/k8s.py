"""The policy of ``launch/k8s.py``: an Indexed Job and a headless Service it owns, for one run.

Needs Kubernetes 1.31 or later: the Job's ``podFailurePolicy`` is GA from 1.31 (the
manifests are checked against the API schema of 1.31 and of the newest version
``kubernetes-validate`` knows, ``tests/test_k8s_schema.py``).

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
  before its DNS name resolves. The Job **owns** the Service (``ownerReferences``, which
  needs the Job's uid: :func:`apply` creates the Job first), so deleting the Job, or its
  ``ttlSecondsAfterFinished``, removes the Service too.
* **Stops**: a pod being deleted (a stop, a drain, a preemption) gets SIGTERM and
  ``terminationGracePeriodSeconds`` (``--grace_period``, 30 s by default, as Kubernetes' own
  default) before SIGKILL; the program notices it with ``distmap.distributed.stop_requested``.

Kubernetes expands ``$(NAME)`` in a container's command, args and env values, so every
``$`` of the program's arguments and of ``--env`` values is written as ``$$`` (which
Kubernetes turns back into ``$``): arguments reach the program unchanged.

The manifests are written as JSON (:func:`render`: one ``v1 List``; JSON is YAML, and
``kubectl apply -f`` reads both), so no value can change the document's structure; and
every value with a syntax of its own is checked before anything is written: names and
labels (DNS labels, label keys and values), quantities (``--cpu``, ``--memory``), the
namespace, the image, the run id. GPU pods get a memory-backed ``/dev/shm`` (NCCL needs
more than a container's default 64 MB), and the finished Job is deleted by Kubernetes
after ``ttl_after_finished`` seconds.

Example:
    >>> job = K8sJob(program=["python", "train.py"], image="ghcr.io/me/train:1", name="ens", num_processes=2,
    ...              run_id="r1", port=23456)
    >>> service, batch_job = manifests(job)
    >>> service["spec"]["clusterIP"], batch_job["spec"]["completionMode"], coordinator_address(job)
    ('None', 'Indexed', 'ens-0.ens:23456')
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any

from distmap import errors
from distmap._src.launch import contract, shell

CONTAINER = "main"
JOB_LABEL = "distmap/job"

# The pod's command: rank from the Job's index, then the program ("$@", the container's args).
POD_SCRIPT = (
    'export DISTMAP_PROCESS_ID="${JOB_COMPLETION_INDEX:?is not set: run this command as a pod of an Indexed Job}"\n'
    'exec "$@"\n'
)
_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?\Z")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")
_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?\Z")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?\Z")
_QUANTITY = re.compile(r"(\d+(\.\d*)?|\.\d+)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?\d+)?\Z")
_IMAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@+-]*\Z")


def check_quantity(value: str, flag: str) -> str:
    """``value`` if it is a positive Kubernetes quantity (``8``, ``500m``, ``64Gi``, ``1e3``), else ``ValueError``.

    Example:
        >>> check_quantity("64Gi", "--memory"), check_quantity("0.5", "--cpu")
        ('64Gi', '0.5')
    """
    m = _QUANTITY.match(value)
    if not m or float(m.group(1)) <= 0:
        raise ValueError(
            f"{flag}={value!r} is not a Kubernetes quantity: a positive number with an optional suffix, like 8, "
            "500m, 1.5, 64Gi or 512Mi."
        )
    return value


def check_namespace(value: str) -> str:
    """``value`` if it can name a namespace (a DNS label), else ``ValueError``."""
    if not _DNS_LABEL.match(value):
        raise ValueError(f"--namespace={value!r} is not a namespace name (lowercase letters, digits, -; at most 63).")
    return value


def check_label(key: str, value: str, flag: str = "--node_selector") -> tuple[str, str]:
    """``(key, value)`` if they make a Kubernetes label (``[prefix/]name``, value), else ``ValueError``."""
    prefix, _, name = key.rpartition("/")
    if (prefix and not _DNS_SUBDOMAIN.match(prefix)) or not _LABEL_NAME.match(name) or (
        value and not _LABEL_NAME.match(value)
    ):
        raise ValueError(
            f"{flag}={key}={value!r} is not a Kubernetes label: KEY=VALUE with KEY [prefix/]name and name and VALUE "
            "of at most 63 letters, digits, - _ . (beginning and ending with a letter or digit)."
        )
    return key, value


def parse_labels(items: Sequence[str], flag: str = "--node_selector") -> dict[str, str]:
    """``["KEY=VALUE", ...]`` as checked labels."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"{flag}={item!r} is not KEY=VALUE.")
        out.update([check_label(key, value, flag)])
    return out


def check_image(value: str) -> str:
    """``value`` if it looks like a container image reference (no spaces or quotes), else ``ValueError``."""
    if not _IMAGE.match(value):
        raise ValueError(f"--image={value!r} is not a container image reference (like ghcr.io/me/train:1).")
    return value


def _check_utf8(texts: Sequence[str], what: str) -> None:
    for i, t in enumerate(texts):
        try:
            t.encode("utf-8")
        except UnicodeEncodeError:
            raise errors.DistributedError(
                f"k8s: {what} {i} ({t!r}) is not valid UTF-8; a Kubernetes manifest is UTF-8 text, so it cannot "
                "carry these bytes. Pass the value in another form (say, a file in the image)."
            ) from None


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
        stall_timeout: seconds of no progress before the progress watch fails the run (0: off).
        ttl_after_finished: seconds Kubernetes keeps the finished Job (and its pods' logs).
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
    stall_timeout: float | None = None
    ttl_after_finished: int | None = None


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
        cpu_devices=job.devices_per_process, init_timeout=job.init_timeout, stall_timeout=job.stall_timeout,
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
    if job.gpus_per_process and job.devices_per_process:
        raise errors.DistributedError(
            "k8s: --devices_per_process (a CPU run) and --gpus_per_process exclude each other."
        )
    try:
        check_image(job.image)
        contract.check_run_id(job.run_id)
        for flag, value in (("--cpu", job.cpu), ("--memory", job.memory)):
            if value:
                check_quantity(value, flag)
        if job.namespace:
            check_namespace(job.namespace)
        for key, value in job.node_selector.items():
            check_label(key, value)
        if job.workdir and (not job.workdir.startswith("/") or any(ord(c) < 32 for c in job.workdir)):
            raise ValueError(f"--workdir={job.workdir!r} must be an absolute path.")
    except ValueError as e:
        raise errors.DistributedError(f"k8s: {e}") from None
    _check_utf8(job.program, "program argument")
    _check_utf8(list(job.env.values()), "--env value")
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
    if job.gpus_per_process:  # NCCL's shared-memory transport needs more than the default 64 MB /dev/shm
        container["volumeMounts"] = [{"name": "dshm", "mountPath": "/dev/shm"}]
        pod_spec["volumes"] = [{"name": "dshm", "emptyDir": {"medium": "Memory"}}]
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
    if job.ttl_after_finished is not None:
        spec["ttlSecondsAfterFinished"] = int(job.ttl_after_finished)
    spec["template"] = {"metadata": {"labels": labels}, "spec": pod_spec}
    batch_job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {**meta, "labels": labels, "annotations": {"distmap/run-id": job.run_id}},
        "spec": spec,
    }
    return [service, batch_job]


def render(job: K8sJob) -> str:
    """The manifests as one JSON ``v1 List`` (``--dry_run``'s output, ``kubectl apply -f``'s input).

    Example:
        >>> job = K8sJob(program=["python", "t.py"], image="img", name="ens", num_processes=2, run_id="r1", port=1)
        >>> [item["kind"] for item in json.loads(render(job))["items"]]
        ['Service', 'Job']
    """
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests(job)}, indent=2) + "\n"


def owned(manifest: dict[str, Any], owner: dict[str, Any], uid: str) -> dict[str, Any]:
    """``manifest`` with ``ownerReferences`` to ``owner`` (the Job), whose ``uid`` the cluster gave it.

    Example:
        >>> job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "ens"}}
        >>> owned({"kind": "Service", "metadata": {"name": "ens"}}, job, "u-1")["metadata"]["ownerReferences"][0]["uid"]
        'u-1'
    """
    ref = {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": owner["metadata"]["name"], "uid": uid,
           "controller": True, "blockOwnerDeletion": True}
    return {**manifest, "metadata": {**manifest["metadata"], "ownerReferences": [ref]}}


def _kubectl(argv: list[str], text: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, input=text, capture_output=True, text=True)
    except OSError as e:
        raise errors.DistributedError(f"could not run {shell.join(argv)}: {e.strerror or e}.") from e


def apply(job: K8sJob, *, kubectl: str = "kubectl") -> tuple[int, str, str]:
    """Create the Job, then the Service owned by it; returns ``(exit status, kubectl's output, its errors)``.

    ``kubectl apply -f - -o jsonpath={.metadata.uid}`` gives the Job's uid, which the
    Service's ``ownerReferences`` need; a failure of either step is returned as is.
    """
    service, batch_job = manifests(job)
    first = _kubectl([kubectl, "apply", "-f", "-", "-o", "jsonpath={.metadata.uid}"], json.dumps(batch_job, indent=2))
    uid = first.stdout.strip()
    if first.returncode != 0 or not uid:
        return first.returncode or 1, first.stdout, first.stderr or "kubectl printed no uid for the Job.\n"
    second = _kubectl([kubectl, "apply", "-f", "-"], json.dumps(owned(service, batch_job, uid), indent=2))
    out = f"job.batch/{job.name} applied (uid {uid})\n" + second.stdout
    return second.returncode, out, first.stderr + second.stderr


__all__ = [
    "CONTAINER",
    "JOB_LABEL",
    "POD_SCRIPT",
    "K8sJob",
    "apply",
    "check_image",
    "check_label",
    "check_name",
    "check_namespace",
    "check_quantity",
    "coordinator_address",
    "default_name",
    "literal",
    "manifests",
    "owned",
    "parse_labels",
    "pod_env",
    "render",
]
