"""The cluster configs (Ray cluster launcher YAML, KubeRay manifests) are valid and keep the cluster private.

No cloud and no Kubernetes here: the launcher config is checked against the JSON schema that ships with the
installed Ray (and Ray's own validation after filling in its defaults); the manifests are checked for the
properties docs/cluster.md promises: token auth from a Secret on every Ray container (and, for the RayJob, on
the submitter and the KubeRay operator), the dashboard never behind a LoadBalancer/NodePort/Ingress, the same
shared volume at the same path in every pod, GPU workers, data sets from $NAS_DATA_ROOT on that volume, and a
RayJob whose entrypoint joins its own cluster and that is not retried on new clusters. The RayJob's entrypoint
itself runs on a real local cluster in tests/hardening/test_rayjob_entrypoint.py.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = ROOT / "cluster" / "launcher" / "gpu-cluster.yaml"
CLUSTER_QUICKSTART = ROOT / "cluster" / "launcher" / "cifar10_quickstart.yaml"
EXAMPLE_QUICKSTART = ROOT / "examples" / "cifar10" / "quickstart.yaml"
KUBERAY = ROOT / "cluster" / "kuberay"
SHARED_PATH = "/mnt/shared"
ALL_MANIFESTS = [pytest.param(n, id=n) for n in ("raycluster.yaml", "rayjob.yaml", "storage.yaml")]
RAY_MANIFESTS = [pytest.param(n, id=n) for n in ("raycluster.yaml", "rayjob.yaml")]
SPEC_ENV = "NAS_SERVICE_SPEC"  # nas_service.commands.experiment.SPEC_ENV: `run env:NAS_SERVICE_SPEC`


def _launcher() -> dict:
    return yaml.safe_load(LAUNCHER.read_text())


def _docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((KUBERAY / name).read_text()) if d]


def _one(docs: list[dict], kind: str) -> dict:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _ray_cluster_spec(name: str) -> dict:
    docs = _docs(name)
    if name == "rayjob.yaml":
        return _one(docs, "RayJob")["spec"]["rayClusterSpec"]
    return _one(docs, "RayCluster")["spec"]


def _pod_specs(cluster_spec: dict) -> list[tuple[str, dict]]:
    """(group name, pod spec) of the head and of every worker group."""
    pods = [("head", cluster_spec["headGroupSpec"]["template"]["spec"])]
    pods += [(g["groupName"], g["template"]["spec"]) for g in cluster_spec["workerGroupSpecs"]]
    return pods


def _walk(node, path=()):
    """Every (path, value) pair of a parsed YAML document."""
    yield path, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, (*path, i))


def _assert_token_env(env: list[dict], where: str) -> str:
    """Checks RAY_AUTH_MODE=token and RAY_AUTH_TOKEN from a Secret; returns the Secret's name."""
    by_name = {e["name"]: e for e in env or []}
    assert by_name.get("RAY_AUTH_MODE", {}).get("value") == "token", f"{where}: RAY_AUTH_MODE=token missing"
    token = by_name.get("RAY_AUTH_TOKEN", {})
    assert "value" not in token, f"{where}: the token must come from a Secret, not a literal"
    ref = token.get("valueFrom", {}).get("secretKeyRef", {})
    assert ref.get("name") and ref.get("key"), f"{where}: RAY_AUTH_TOKEN must use valueFrom.secretKeyRef"
    return ref["name"]


def _rayjob() -> dict:
    return _one(_docs("rayjob.yaml"), "RayJob")["spec"]


def _rayjob_spec_text() -> str:
    """The experiment spec the RayJob runs: `run env:NAS_SERVICE_SPEC` reads it from the job's runtime env."""
    runtime_env = yaml.safe_load(_rayjob().get("runtimeEnvYAML") or "{}")
    return runtime_env.get("env_vars", {}).get(SPEC_ENV, "")


def _without(node, keys: set[str]):
    """A parsed YAML document without the mapping entries named ``keys``, at any depth."""
    if isinstance(node, dict):
        return {k: _without(v, keys) for k, v in node.items() if k not in keys}
    if isinstance(node, list):
        return [_without(v, keys) for v in node]
    return node


def _comment_commands(path: Path) -> list[str]:
    """The shell commands of a file's header comment, continuation lines (``\\``) joined."""
    commands, current = [], ""
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        current = f"{current} {text}".strip()
        if current.endswith("\\"):
            current = current[:-1]
        else:
            commands.append(current)
            current = ""
    return commands


# ---------------------------------------------------------------------------------------------------------
# Ray cluster launcher


def test_launcher_config_validates_against_rays_schema():
    import jsonschema
    import ray

    schema_path = Path(os.path.dirname(ray.__file__)) / "autoscaler" / "ray-schema.json"
    schema = json.loads(schema_path.read_text())
    jsonschema.validate(_launcher(), schema)


def test_launcher_config_passes_rays_own_validation():
    # What `ray up` does first: fill in the provider's defaults, then validate (schema plus Ray's checks).
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(_launcher()))


def test_launcher_schema_check_can_fail():
    # The schema test above must be able to fail: a misspelt top-level key is refused.
    import jsonschema
    import ray

    schema = json.loads((Path(os.path.dirname(ray.__file__)) / "autoscaler" / "ray-schema.json").read_text())
    bad = {**_launcher(), "worker_start_commands": []}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_launcher_head_has_no_gpus_and_workers_have_them():
    cfg = _launcher()
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    head_cmd = " ".join(cfg["head_start_ray_commands"])
    assert "--num-gpus=0" in head_cmd
    workers = {k: v for k, v in types.items() if k != cfg["head_node_type"]}
    # GPU instance families on AWS (g4dn, g5, g6, p3, p4d, p5): the launcher detects their GPUs.
    assert any(re.match(r"(g\d|p\d)", w["node_config"]["InstanceType"]) for w in workers.values())
    assert cfg["docker"]["image"].endswith("-gpu")


def test_launcher_token_auth_and_private_dashboard():
    cfg = _launcher()
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = [c for c in cfg[key] if "ray start" in c]
        assert start and all("RAY_AUTH_MODE=token" in c for c in start), key
    head_start = " ".join(c for c in cfg["head_start_ray_commands"] if "ray start" in c)
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "0.0.0.0" not in yaml.safe_dump(cfg)
    # The token reaches every node by file_mounts (SSH) at Ray's default path, from a local file.
    assert "~/.ray/auth_token" in cfg["file_mounts"]
    # Nothing but SSH is opened to the outside (the launcher adds intra-cluster traffic itself).
    extra_rules = cfg["provider"].get("security_group", {}).get("IpPermissions", [])
    assert extra_rules == []


def test_launcher_mounts_shared_storage_on_every_node():
    cfg = _launcher()
    init = " ".join(cfg["initialization_commands"])
    assert "mount -t nfs4" in init and SHARED_PATH in init
    assert f"-v {SHARED_PATH}:{SHARED_PATH}" in cfg["docker"]["run_options"]


# ---------------------------------------------------------------------------------------------------------
# KubeRay


@pytest.mark.parametrize("name", ALL_MANIFESTS)
def test_manifests_parse_with_known_kinds(name):
    docs = _docs(name)
    assert docs
    for d in docs:
        assert d["apiVersion"] in ("ray.io/v1", "v1", "networking.k8s.io/v1"), d["apiVersion"]
        assert d["kind"] in ("RayCluster", "RayJob", "PersistentVolumeClaim", "NetworkPolicy"), d["kind"]
        assert d["metadata"]["name"]


@pytest.mark.parametrize("name", [pytest.param(n, id=n) for n in ("raycluster.yaml", "rayjob.yaml")])
def test_every_ray_container_has_the_token_from_a_secret(name):
    spec = _ray_cluster_spec(name)
    assert re.fullmatch(r"2\.(5[2-9]|[6-9]\d)\.\d+", spec["rayVersion"]), "token auth needs Ray >= 2.52"
    for group, pod in _pod_specs(spec):
        for c in pod["containers"]:
            _assert_token_env(c.get("env"), f"{name}:{group}:{c['name']}")
    if "autoscalerOptions" in spec:
        _assert_token_env(spec["autoscalerOptions"].get("env"), f"{name}:autoscaler")
    if name == "rayjob.yaml":
        submitter = _one(_docs(name), "RayJob")["spec"]["submitterPodTemplate"]["spec"]
        for c in submitter["containers"]:
            _assert_token_env(c.get("env"), f"{name}:submitter")


@pytest.mark.parametrize("name", ALL_MANIFESTS)
def test_no_secret_literal_and_no_external_exposure(name):
    docs = _docs(name)
    assert not any(d["kind"] in ("Secret", "Ingress", "Service", "Route") for d in docs)
    for path, value in (pv for d in docs for pv in _walk(d)):
        if path and path[-1] in ("serviceType", "type") and isinstance(value, str):
            assert value not in ("LoadBalancer", "NodePort"), f"{name}: {'.'.join(map(str, path))}={value}"
        if path and path[-1] == "enableIngress":
            assert value is False, f"{name}: enableIngress must be false"
        if path and path[-1] in ("hostPort", "nodePort"):
            pytest.fail(f"{name}: {'.'.join(map(str, path))} exposes a port on the node")


def test_raycluster_dashboard_on_loopback_behind_clusterip():
    spec = _ray_cluster_spec("raycluster.yaml")
    head = spec["headGroupSpec"]
    assert head["serviceType"] == "ClusterIP"
    assert head["rayStartParams"]["dashboard-host"] == "127.0.0.1"


def test_rayjob_dashboard_reachable_only_inside_by_network_policy():
    # A RayJob's operator and submitter reach the dashboard through the head service, so it listens on the
    # pod's address: then a NetworkPolicy must admit only this job's pods (and the operator on 8265).
    docs = _docs("rayjob.yaml")
    spec = _one(docs, "RayJob")["spec"]["rayClusterSpec"]
    assert spec["headGroupSpec"]["serviceType"] == "ClusterIP"
    labels = spec["headGroupSpec"]["template"]["metadata"]["labels"]
    policy = _one(docs, "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items(), "the policy must select the pods"
    for rule in policy["ingress"]:
        sources = rule["from"]
        assert sources and all("ipBlock" not in s for s in sources), "no IP ranges: only pods/namespaces"
        if any("namespaceSelector" in s for s in sources):
            assert [p["port"] for p in rule["ports"]] == [8265]


@pytest.mark.parametrize("name", [pytest.param(n, id=n) for n in ("raycluster.yaml", "rayjob.yaml")])
def test_every_pod_mounts_the_shared_claim_at_the_same_path(name):
    claims = {d["metadata"]["name"] for d in _docs("storage.yaml") if d["kind"] == "PersistentVolumeClaim"}
    pvc = _one(_docs("storage.yaml"), "PersistentVolumeClaim")
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]
    for group, pod in _pod_specs(_ray_cluster_spec(name)):
        shared = {v["name"] for v in pod["volumes"]
                  if v.get("persistentVolumeClaim", {}).get("claimName") in claims}  # fmt: skip
        assert shared, f"{name}:{group}: no volume from the shared claim {claims}"
        for c in pod["containers"]:
            paths = [m["mountPath"] for m in c["volumeMounts"] if m["name"] in shared]
            assert paths == [SHARED_PATH], f"{name}:{group}:{c['name']} mounts it at {paths}"


@pytest.mark.parametrize("name", [pytest.param(n, id=n) for n in ("raycluster.yaml", "rayjob.yaml")])
def test_gpu_worker_group_and_gpu_free_head(name):
    spec = _ray_cluster_spec(name)
    assert spec["headGroupSpec"]["rayStartParams"].get("num-gpus") == "0"
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head["resources"].get("limits", {})
    gpus = [g for g in spec["workerGroupSpecs"]
            if any(int(c["resources"]["limits"].get("nvidia.com/gpu", 0)) > 0
                   for c in g["template"]["spec"]["containers"])]  # fmt: skip
    assert gpus, f"{name}: no worker group asks for nvidia.com/gpu"


def test_rayjob_entrypoint_joins_its_own_cluster():
    # Without an address `nas-service run` inside the job took itself for a local Ray (issue 14, item 2).
    args = shlex.split(_rayjob()["entrypoint"])
    assert args[:3] == ["nas-service", "run", f"env:{SPEC_ENV}"], args
    assert "--address" in args[:-1], f"the entrypoint names no address: {args}"
    assert _rayjob_spec_text(), f"runtimeEnvYAML must carry the spec in env_vars.{SPEC_ENV}"


def test_rayjob_operator_and_submitter_get_the_token_of_the_pods():
    # The operator polls the job's status on the Jobs API: it sends a token only when authOptions asks for
    # one, read from the Secret authOptions.secretName names (KubeRay >= 1.6), which must be the pods' Secret.
    job = _rayjob()
    auth = job["rayClusterSpec"].get("authOptions", {})
    assert auth.get("mode") == "token", "rayClusterSpec.authOptions.mode: token, or the operator gets 401"
    secrets = {_assert_token_env(c.get("env"), f"{group}:{c['name']}")
               for group, pod in _pod_specs(job["rayClusterSpec"]) for c in pod["containers"]}  # fmt: skip
    submitters = job["submitterPodTemplate"]["spec"]["containers"]
    secrets |= {_assert_token_env(c.get("env"), "submitter") for c in submitters}
    assert secrets == {auth.get("secretName")}, f"authOptions: {auth}; the pods' Secrets: {secrets}"
    for c in (c for _, pod in _pod_specs(job["rayClusterSpec"]) for c in pod["containers"]):
        ref = next(e for e in c["env"] if e["name"] == "RAY_AUTH_TOKEN")["valueFrom"]["secretKeyRef"]
        assert ref["key"] == "auth_token", "KubeRay reads the token from the Secret's key auth_token"


def test_rayjob_is_not_retried_on_new_clusters():
    # Each KubeRay retry is a new GPU cluster; a failure of the whole job (spec, scheduling, code) repeats.
    job = _rayjob()
    assert job.get("backoffLimit", 0) == 0, f"backoffLimit {job.get('backoffLimit')}: a new cluster each"
    assert job.get("submissionMode", "K8sJobMode") == "K8sJobMode"
    assert job["shutdownAfterJobFinishes"] is True and job["ttlSecondsAfterFinished"] >= 0


@pytest.mark.parametrize("name", [pytest.param("rayjob", id="rayjob.yaml"),
                                  pytest.param("launcher", id="cifar10_quickstart.yaml")])  # fmt: skip
def test_cluster_quickstart_reads_data_from_nas_data_root_and_writes_to_shared_storage(name):
    # A `root: ~/data/...` resolves on the node that loads the spec, not where trials run; without a root
    # every trial reads $NAS_DATA_ROOT/<data set> on its own node (trainers.datasets.data_root).
    from nas_service.spec import load_spec

    text = _rayjob_spec_text() if name == "rayjob" else CLUSTER_QUICKSTART.read_text()
    assert text, f"{name}: no spec"
    spec = yaml.safe_load(text)
    roots = [".".join(map(str, path)) for path, _ in _walk(spec) if path and path[-1] == "root"]
    assert not roots, f"{name}: data roots named in the spec ({roots}); leave them to $NAS_DATA_ROOT"
    assert spec["storage"].startswith(SHARED_PATH + "/"), spec["storage"]
    # The example's experiment otherwise, so the cluster runs what the docs describe.
    example = yaml.safe_load(EXAMPLE_QUICKSTART.read_text())
    assert _without(spec, {"root", "storage"}) == _without(example, {"root", "storage"})
    assert load_spec(text).name == example["name"]


@pytest.mark.parametrize("name", RAY_MANIFESTS)
def test_every_ray_container_sets_nas_data_root_on_the_shared_volume(name):
    for group, pod in _pod_specs(_ray_cluster_spec(name)):
        for c in pod["containers"]:
            env = {e["name"]: e.get("value") for e in c.get("env") or []}
            assert (env.get("NAS_DATA_ROOT") or "").startswith(SHARED_PATH + "/"), f"{name}:{group}: {env}"


def test_launcher_nodes_set_nas_data_root_on_the_shared_volume():
    cfg = _launcher()
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = " ".join(c for c in cfg[key] if "ray start" in c)
        assert re.search(rf"NAS_DATA_ROOT={SHARED_PATH}/\S+ .*ray start", start), f"{key}: {start}"


@pytest.mark.parametrize("path", [pytest.param(p, id=p.name)
                                  for p in (LAUNCHER, KUBERAY / "raycluster.yaml", CLUSTER_QUICKSTART)])
def test_documented_submit_commands_run_as_written(path):
    # The header's `nas-service submit`: a multi-node cluster refuses local storage without --shared-storage,
    # and the spec it names must leave data roots to $NAS_DATA_ROOT (checked above for cifar10_quickstart).
    submits = [c for c in _comment_commands(path) if "nas-service submit" in c]
    assert submits, f"{path.name}: no submit command in the header"
    for command in submits:
        args = shlex.split(command[command.index("nas-service submit"):])
        assert "--shared-storage" in args, f"{path.name}: {command}"
        assert (ROOT / args[2]).resolve() == CLUSTER_QUICKSTART, f"{path.name}: submits {args[2]}"
