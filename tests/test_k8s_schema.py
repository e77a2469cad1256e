"""``launch/k8s.py``'s manifests against the real Kubernetes API schema.

No cluster runs here, so every manifest ``distmap._src.launch.k8s.manifests`` renders, for
every config and for all pairs of options, is checked against the JSON schema that
Kubernetes publishes for its API types (``kubernetes-validate``, in the test extra), in
strict mode: an unknown or misspelt field, a wrong type or a missing required field fails, as
``kubectl apply --validate=strict`` would on a cluster. (The schema has no enums: values such
as ``restartPolicy: Never`` are checked by ``tests/test_launch_k8s.py``.) The
oldest version checked is the first in which every field used is GA (``podFailurePolicy``:
1.31); the newest is the latest the package knows.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import subprocess

import kubernetes_validate
import pytest
import yaml
from _stand_ins import HOSTILE, PY, ROOT
from kubernetes_validate.utils import latest_version

from distmap import errors
from distmap._src.launch import k8s

LAUNCHER = os.path.join(ROOT, "launch", "k8s.py")
VERSIONS = ("1.31", latest_version())

#: One value per option of K8sJob besides the program, image and name (each also left at its default).
OPTIONS = {
    "gpus_per_process": 8,
    "cpu": "8",
    "memory": "32Gi",
    "namespace": "team-a",
    "devices_per_process": 2,
    "init_timeout": 300.0,
    "timeout": 3600.5,
    "grace_period": 12.5,
    "env": {"XLA_FLAGS": "--xla_x=1 $(not_expanded)", "EMPTY": ""},
    "workdir": "/workspace/distmap",
    "node_selector": {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb", "pool": "a"},
}
EXCLUSIVE = {("gpus_per_process", "devices_per_process")}


def _check(manifest: dict, versions=VERSIONS) -> None:
    for version in versions:
        try:
            kubernetes_validate.validate(manifest, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            where = ".".join(str(p) for p in e.path)
            raise AssertionError(f"{manifest['kind']} is not valid Kubernetes {version} at {where}: {e.message}") from e


def _documents(text: str) -> list[dict]:
    """The manifests in a launcher's output: YAML documents, a JSON document or several, or a ``List`` of them."""
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError:  # JSON objects one after another (not one YAML stream)
        body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
        decoder, docs, at = json.JSONDecoder(), [], 0
        while body[at:].strip():
            at += len(body[at:]) - len(body[at:].lstrip())
            doc, at = decoder.raw_decode(body, at)
            docs.append(doc)
    out = []
    for d in docs:
        if isinstance(d, dict) and d.get("kind") == "List":
            out += d["items"]
        elif d is not None:
            out.append(d)
    return out


def _job(num_processes: int = 2, **options) -> k8s.K8sJob:
    return k8s.K8sJob(program=["python", "examples/ensemble.py", *HOSTILE], image="ghcr.io/me/distmap:1",
                      name="ens", num_processes=num_processes, run_id="r1", port=23456, **options)


def _combinations():
    """(label, options, versions): defaults and everything at once against every version, each pair against the newest."""
    yield "defaults", {}, VERSIONS
    for a, b in itertools.combinations(OPTIONS, 2):
        if (a, b) not in EXCLUSIVE:
            yield f"{a}+{b}", {a: OPTIONS[a], b: OPTIONS[b]}, VERSIONS[-1:]
    yield "all-gpu", {k: v for k, v in OPTIONS.items() if k != "devices_per_process"}, VERSIONS
    yield "all-cpu", {k: v for k, v in OPTIONS.items() if k != "gpus_per_process"}, VERSIONS


def test_every_pair_of_options_renders_valid_kubernetes():
    kinds = set()
    for i, (label, options, versions) in enumerate(_combinations()):
        manifests = k8s.manifests(_job(1 + 2 * (i % 2), **options))  # 1 and 3 pods in turn
        kinds |= {(m["apiVersion"], m["kind"]) for m in manifests}
        for m in manifests:
            try:
                _check(m, versions)
            except AssertionError as e:
                raise AssertionError(f"options {label}: {e}") from None
    assert kinds == {("v1", "Service"), ("batch/v1", "Job")}


def test_documents_of_yaml_json_and_list_output():
    service, job = k8s.manifests(_job())
    for text in (yaml.safe_dump_all([service, job]), json.dumps(service) + "\n" + json.dumps(job),
                 "# header\n" + json.dumps({"apiVersion": "v1", "kind": "List", "items": [service, job]}, indent=2)):
        assert _documents(text) == [service, job]


def test_exclusive_options_are_refused_before_rendering():
    with pytest.raises(errors.DistributedError, match="exclude each other"):
        k8s.manifests(_job(gpus_per_process=8, devices_per_process=2))


@pytest.mark.parametrize("extra", [
    [],
    ["--namespace=team-a", "--cpu=16", "--memory=64Gi", "--node_selector=pool=a100", "--timeout=7200",
     "--grace_period=20", "--env=XLA_FLAGS=--x=$(y)", "--job_name=ens-run"],
    ["--gpus_per_process=0", "--devices_per_process=4", "--mesh=data=4,model=2"],
], ids=["config", "config+options", "config+cpu"])
def test_launcher_dry_run_of_the_config_is_valid_kubernetes(extra):
    """What ``launch/k8s.py --dry_run`` prints for ``configs/k8s_gpu.flags`` (YAML or JSON)."""
    flagfile = "--flagfile=" + os.path.join(ROOT, "configs", "k8s_gpu.flags")
    proc = subprocess.run([PY, LAUNCHER, flagfile, "--dry_run", "--run_id=schema", *extra, "--", "python",
                           "examples/ensemble.py", flagfile,
                           # the program's own mesh must fit the devices the launch starts (the launcher checks)
                           *(["--mesh=data=4,model=2"] if "--devices_per_process=4" in extra else []),
                           *HOSTILE], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    docs = _documents(proc.stdout)
    assert sorted(d["kind"] for d in docs) == ["Job", "Service"]
    for d in docs:
        _check(d)


@pytest.mark.parametrize("path, value, wrong", [
    (("spec", "template", "spec", "containers", 0, "ports", 0, "containerPort"), "23456", "type"),
    (("spec", "template", "spec", "containers", 0, "cmd"), ["sh"], "unknown field"),
    (("spec", "parallelism"), "2", "type"),
    (("spec", "template", "spec", "containers", 0, "name"), None, "required field"),
])
def test_the_schema_check_catches_what_a_cluster_would_refuse(path, value, wrong):
    """The check is strict: a manifest spoilt in one place fails it (so the passes above mean something)."""
    job = copy.deepcopy(k8s.manifests(_job())[1])
    node = job
    for key in path[:-1]:
        node = node[key]
    if value is None:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    with pytest.raises(AssertionError, match="not valid Kubernetes"):
        _check(job)


def test_the_service_owned_by_the_job_is_valid_kubernetes():
    service, job = k8s.manifests(k8s.K8sJob(program=["p"], image="i", name="ens", num_processes=2, run_id="r", port=1))
    _check(k8s.owned(service, job, "5f0c6a8e-0000-4000-8000-000000000001"))
