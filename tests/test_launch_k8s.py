"""``launch/k8s.py``: the Indexed Job and headless Service, parsed (JSON, and as YAML) and run as pods would run.

The pods are played on this machine: each container's command and args, with Kubernetes'
``$(VAR)`` expansion applied to them and to the env values (as the kubelet does), and the
environment a pod of the Job gets (``JOB_COMPLETION_INDEX``, its pod IP). The only
test-time change is the coordinator's host, pod 0's DNS name, rewritten to 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import yaml
from _stand_ins import (
    CHILD, HOSTILE, PY, ROOT, argvs, calls, check_golden, install, kill_started, results,
)

from distmap._src.launch import k8s, local

LAUNCHER = os.path.join(ROOT, "launch", "k8s.py")
LOOPBACK = "127.0.0.1"


def _render(*flags, program=("python", "examples/ensemble.py")) -> str:
    proc = subprocess.run([PY, LAUNCHER, "--dry_run", *flags, "--", *program], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _items(text: str) -> list[dict]:
    """The manifests of ``text``: a JSON ``v1 List``, which YAML reads the same."""
    doc = json.loads(text)
    assert yaml.safe_load(text) == doc and (doc["apiVersion"], doc["kind"]) == ("v1", "List")
    return doc["items"]


def kube_expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' expansion of ``$(VAR)`` in command, args and env values (the kubelet's rules).

    ``$$`` is one ``$``; ``$(NAME)`` is NAME's value, or stays as written when NAME is not
    defined; any other ``$`` stays.
    """
    out, i = [], 0
    while i < len(text):
        if text[i] != "$" or i + 1 == len(text):
            out.append(text[i])
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "(" and (end := text.find(")", i + 2)) != -1:
            name = text[i + 2 : end]
            out.append(env[name] if name in env else text[i : end + 1])
            i = end + 1
        else:
            out.append("$" + nxt)
            i += 2
    return "".join(out)


def _pod(job: dict, index: int, *, pod_ip: str = LOOPBACK, rewrite_coordinator: bool = True):
    """(argv, env) of pod ``index`` of the Indexed Job ``job``, as the kubelet would start it."""
    spec = job["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTMAP_")}
    env.update(JOB_COMPLETION_INDEX=str(index), HOSTNAME=f"{job['metadata']['name']}-{index}")
    for item in container["env"]:
        if "valueFrom" in item:
            assert item["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
            env[item["name"]] = pod_ip
        else:
            env[item["name"]] = kube_expand(item["value"], env)
    if rewrite_coordinator:
        env["DISTMAP_COORDINATOR"] = LOOPBACK + ":" + env["DISTMAP_COORDINATOR"].rsplit(":", 1)[1]
    argv = [kube_expand(a, env) for a in container["command"] + container["args"]]
    return argv, env


# ---------------------------------------------------------------------------- manifests


def test_golden_manifests_from_the_gpu_config():
    text = _render(f"--flagfile={os.path.join(ROOT, 'configs', 'k8s_gpu.flags')}", "--run_id=golden",
                   "--coordinator_port=23456", "--namespace=ml", "--env=XLA_FLAGS=--x=1 $(NOT_A_VAR)",
                   program=("python", "examples/ensemble.py", "--flagfile=configs/k8s_gpu.flags", *HOSTILE))
    check_golden("k8s_gpu.json", text)


def test_manifests_fit_together_and_every_pod_gets_its_own_rank():
    text = _render(f"--flagfile={os.path.join(ROOT, 'configs', 'k8s_gpu.flags')}", "--num_processes=4",
                   "--mesh=data=16,model=2", "--run_id=r1", "--coordinator_port=23456", "--timeout=3600")
    service, job = _items(text)
    assert (service["kind"], job["kind"], job["apiVersion"]) == ("Service", "Job", "batch/v1")
    spec, pod = job["spec"], job["spec"]["template"]
    # All pods at once, one failing pod fails the Job (and Kubernetes ends the others), no pod restarted alone.
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == 4
    assert spec["backoffLimit"] == 0 and pod["spec"]["restartPolicy"] == "Never"
    assert spec["podFailurePolicy"]["rules"] == [
        {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "NotIn", "values": [0]}}]
    assert spec["activeDeadlineSeconds"] == 3600
    # The headless Service selects exactly these pods, and pod 0 is NAME-0.SERVICE through it.
    name, svc = job["metadata"]["name"], service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert pod["spec"]["subdomain"] == svc
    (container,) = pod["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    host, port = env["DISTMAP_COORDINATOR"].rsplit(":", 1)
    assert host == f"{name}-0.{svc}"  # an Indexed Job's pod i has host name NAME-i
    assert int(port) == service["spec"]["ports"][0]["port"] == container["ports"][0]["containerPort"] == 23456
    assert env["DISTMAP_COORDINATOR_BIND"] == "$(POD_IP):23456" and env["DISTMAP_NUM_PROCESSES"] == "4"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 8
    # GPU pods: a memory-backed /dev/shm for NCCL; the finished Job is cleaned up after a day.
    assert container["volumeMounts"] == [{"name": "dshm", "mountPath": "/dev/shm"}]
    assert pod["spec"]["volumes"] == [{"name": "dshm", "emptyDir": {"medium": "Memory"}}]
    assert spec["ttlSecondsAfterFinished"] == 86400 and env["DISTMAP_STALL_TIMEOUT"] == "120"
    assert container["image"] == "ghcr.io/your-org/distmap:latest" and container["workingDir"] == "/workspace/distmap"
    # Each pod's command maps its Job index to its rank.
    ranks = []
    for i in range(4):
        argv, penv = _pod(job, i)
        argv = argv[: argv.index("distmap-pod") + 1] + [PY, CHILD, "env"]
        out = subprocess.run(argv, env=penv, capture_output=True, text=True, timeout=30).stdout
        line = next(x for x in out.splitlines() if x.startswith("ENV "))
        ranks.append(json.loads(line[4:])["env"]["DISTMAP_PROCESS_ID"])
    assert ranks == ["0", "1", "2", "3"]
    argv, penv = _pod(job, 0)
    del penv["JOB_COMPLETION_INDEX"]
    bad = subprocess.run(argv[: argv.index("distmap-pod") + 1] + ["true"], env=penv, capture_output=True, text=True,
                         timeout=30)
    assert bad.returncode != 0 and "JOB_COMPLETION_INDEX" in bad.stderr


@pytest.mark.multiprocess
def test_pod_commands_run_as_a_real_two_process_job(tmp_path):
    port = local.free_port()
    text = _render("--image=img", "--num_processes=2", "--devices_per_process=2", "--init_timeout=60",
                   "--job_name=ens", "--run_id=pods", f"--coordinator_port={port}", "--mesh=data=4",
                   program=(PY, CHILD, "collective", *HOSTILE))
    _, job = _items(text)
    procs = []
    try:
        for i in range(2):
            argv, env = _pod(job, i)
            assert env["DISTMAP_COORDINATOR_BIND"] == f"{LOOPBACK}:{port}"
            procs.append(subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                          cwd=str(tmp_path), start_new_session=True))
        outs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, 9)
                p.wait()
    assert [p.returncode for p in procs] == [0, 0], outs
    got = [results(o.splitlines())[0] for o in outs]
    assert [r["rank"] for r in got] == [0, 1]  # pod i is rank i
    for r in got:
        assert r["mode"] == "explicit" and r["processes"] == 2 and r["devices"] == 4
        assert r["centered"] == pytest.approx(r["expected"])
    assert [argvs(o.splitlines()) for o in outs] == [[HOSTILE], [HOSTILE]]  # $(POD_IP), $$ and all: unchanged


def test_apply_pipes_the_manifests_to_kubectl(tmp_path):
    bin_dir = str(tmp_path / "bin")
    env = install(bin_dir, "kubectl")
    env["FAKE_KUBECTL_OUT"] = str(tmp_path / "applied.yaml")
    flags = ["--image=img", "--run_id=app", "--coordinator_port=23456", f"--log_dir={tmp_path}"]
    try:
        proc = subprocess.run([PY, LAUNCHER, "--apply", *flags, "--", "python", "t.py"], capture_output=True,
                              text=True, timeout=60, env=env)
    finally:
        kill_started(bin_dir)
    assert proc.returncode == 0, proc.stderr
    assert "job.batch/distmap-app applied (uid uid-of-distmap-app)" in proc.stdout and "kubectl logs" in proc.stderr
    job, service = [json.loads(line) for line in (tmp_path / "applied.yaml").read_text().splitlines()]
    rendered = json.loads(_render(*flags, program=("python", "t.py")))["items"]
    assert (tmp_path / "app" / "k8s.json").read_text() == _render(*flags, program=("python", "t.py"))
    assert job == rendered[1] and job["kind"] == "Job"  # the Job first, then the Service it owns
    assert service["metadata"].pop("ownerReferences") == [{
        "apiVersion": "batch/v1", "kind": "Job", "name": "distmap-app", "uid": "uid-of-distmap-app", "controller": True,
        "blockOwnerDeletion": True}]
    assert service == rendered[0]
    assert calls(bin_dir) == [["kubectl", "apply", "-f", "-", "-o", "jsonpath={.metadata.uid}"],
                              ["kubectl", "apply", "-f", "-"]]


def test_refuses_what_kubernetes_cannot_do():
    proc = subprocess.run([PY, LAUNCHER, "--image=i", "--max_restarts=1", "--", "p"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1 and "--max_restarts is not supported" in proc.stderr
    with pytest.raises(Exception, match="at most 63"):
        k8s.check_name("x" * 62, 10)
    with pytest.raises(Exception, match="lowercase"):
        k8s.check_name("Ens", 2)
    for good in ("8", "500m", "0.5", "64Gi", "512Mi", "1e3", "2k"):
        assert k8s.check_quantity(good, "--cpu") == good


_EVIL = "x\n---\napiVersion: v1\nkind: Pod\nspec: {hostNetwork: true}"


@pytest.mark.parametrize("flag, value, words", [
    ("--run_id", _EVIL, "run id"),
    ("--job_name", _EVIL, "cannot name the Job"),
    ("--namespace", _EVIL, "not a namespace name"),
    ("--image", "img\nx: 1", "not a container image"),
    ("--cpu", "8 cores", "not a Kubernetes quantity"),
    ("--memory", "64GB", "not a Kubernetes quantity"),
    ("--memory", "-1Gi", "not a Kubernetes quantity"),
    ("--node_selector", "gpu=" + _EVIL, "not a Kubernetes label"),
    ("--node_selector", "a b=c", "not a Kubernetes label"),
    ("--workdir", "relative/dir", "absolute path"),
    ("--env", "A\nB=1", "not a valid environment variable name"),
])
def test_every_value_that_reaches_a_manifest_is_checked(flag, value, words, tmp_path):
    """Hostile values are refused before anything is printed or written (the YAML injection of a newline)."""
    args = [PY, LAUNCHER, "--apply", f"--log_dir={tmp_path}", f"{flag}={value}"]
    args += [] if flag == "--image" else ["--image=img"]
    proc = subprocess.run([*args, "--", "python", "t.py"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and words in proc.stderr, proc.stderr
    assert not proc.stdout and not os.listdir(tmp_path)


def test_values_with_no_syntax_of_their_own_are_encoded():
    """Program arguments and --env values may hold anything: JSON carries them whole, no document is added."""
    text = _render("--image=img", f"--env=EVIL={_EVIL}", "--run_id=r", program=("python", _EVIL, *HOSTILE))
    service, job = _items(text)
    assert len(yaml.safe_load(text)["items"]) == 2  # still exactly the Service and the Job
    (container,) = job["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert kube_expand(env["EVIL"], {}) == _EVIL
    assert [kube_expand(a, {}) for a in container["args"]] == ["python", _EVIL, *HOSTILE]
    not_utf8 = b"\xff".decode("utf-8", "surrogateescape")
    proc = subprocess.run([PY, LAUNCHER, "--image=img", "--dry_run", "--", "python", not_utf8], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1 and "is not valid UTF-8" in proc.stderr and not proc.stdout


def test_kube_expand_is_undone_by_literal():
    env = {"POD_IP": "pod-ip-9"}
    for s in HOSTILE + ["$(POD_IP)", "$$(POD_IP)", "$(", "a$", "$(x"]:
        assert kube_expand(k8s.literal(s), env) == s
    assert kube_expand("$(POD_IP):1 $$(POD_IP) $(NOPE)", env) == "pod-ip-9:1 $(POD_IP) $(NOPE)"
