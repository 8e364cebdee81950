"""Render the Kubernetes manifests (k8s/overlays/*) with kustomize and validate them strictly.

Every custom resource, KubeRay's (shared/schemas/kuberay) and the Prometheus Operator's PodMonitors
(shared/schemas/prometheus-operator), is checked against its v1 CRD schema twice: with jsonschema
(types, enums, required fields, quantity patterns), and by a walk that rejects every field the CRD
does not declare, since the CRD schemas do not forbid unknown fields and the API server would
silently drop a misspelt one. Core objects, and every pod template inside the KubeRay objects, are
checked against the Kubernetes OpenAPI schemas in strict mode (kubernetes-validate, offline). Then
the project's own rules: non-root containers, secrets only by reference, Ray token authentication,
no Ray port outside the cluster, one shared storage on every pod, RayJob entrypoints that are the
laptop commands, a RayService that serves pipelines/serve.yaml (the gpu overlay: its copy with
engine vllm, from the serving image of Dockerfile.serve-gpu) with GCS fault tolerance and the API
key, Prometheus scraping of every Ray pod, and a Grafana dashboard whose queries name only metrics
that exist.

`k8s_entrypoints()` gives the RayJob entrypoints, so that another test can run them locally
(`from test_k8s import k8s_entrypoints`: pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import ast
import copy
import fnmatch
import functools
import json
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import jsonschema
import kubernetes_validate
import pytest
import yaml
from pajama.serve.options import HIGH_THROUGHPUT_ENV

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"
OVERLAYS = ("cpu-dev", "gpu")
RECIPE_OF_OVERLAY = {"cpu-dev": "tiny", "gpu": "7b"}
# The RayJobs, in pipeline order; run_all is the whole DAG in one job. jobs/serve.py has no
# RayJob: serving on the cluster is the RayService.
JOB_SCRIPTS = ("prepare_data", "pretrain", "instruct", "chat", "run_all")
SCHEMAS = REPO.parent / "shared" / "schemas"
KUBERAY_KINDS = ("RayCluster", "RayJob", "RayService")
# Custom resources: kind -> (apiVersion, the folder of shared/schemas with its v1 CRD schema).
CRDS = {
    **{kind: ("ray.io/v1", "kuberay") for kind in KUBERAY_KINDS},
    **{
        kind: ("monitoring.coreos.com/v1", "prometheus-operator")
        for kind in ("PodMonitor", "ServiceMonitor")
    },
}
# The Kubernetes version whose OpenAPI schemas the core objects must pass.
K8S_VERSION = "1.32"
# Ray's GCS, dashboard/job API, client server and dashboard agent: they run code for whoever
# reaches them.
RAY_CONTROL_PORTS = {6379, 8265, 10001, 52365}
SERVE_IMPORT_PATH = "pajama.serve.app:build_app"
# The serveConfigV2 each overlay's RayService serves: the base's byte copy of pipelines/serve.yaml,
# or the gpu overlay's, which differs from it only in SERVE_CONFIG_CHANGES.
SERVE_CONFIG_OF_OVERLAY = {
    "cpu-dev": K8S / "base" / "serve-config.yaml",
    "gpu": K8S / "overlays" / "gpu" / "serve-config.yaml",
}
# What the gpu overlay's copy changes: vLLM, and GPUs asked for explicitly (its GPU nodes autoscale
# from zero, so `auto` would find none when the app is built).
SERVE_CONFIG_CHANGES = {"engine": "vllm", "num_gpus": 1}
# The image variant of an overlay's RayService, where it has its own (Dockerfile.serve-gpu: vLLM
# and transformers 5); every other Pajama pod runs Dockerfile's -cpu or -gpu variant.
SERVING_IMAGE_OF_OVERLAY = {"gpu": "serve-gpu"}
# The only pods that do not run the Pajama image, and the pinned releases they must run.
THIRD_PARTY_IMAGES = {"Deployment/pajama-redis": r"([^/\s]+/)*redis:\d+\.\d+\.\d+(-alpine)?"}
# The label that admits the RayService's head to Redis (k8s/base/rayservice.yaml).
REDIS_CLIENT_LABEL = {"pajama-redis-client": "yes"}
SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|API_KEY|ACCESS_KEY|CREDENTIAL", re.I)
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
URI_WITH_PASSWORD = re.compile(r"://[^/\s:@]+:[^/\s@]+@")
# Kubernetes' resource.Quantity syntax (as in the KubeRay CRDs).
QUANTITY = re.compile(
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)


# ---------------------------------------------------------------- rendering


def kustomize_command() -> list[str] | None:
    """`kustomize build`, or the kustomize built into kubectl; None when neither is installed."""
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


@functools.cache
def _rendered(overlay: str) -> list[dict]:
    command = kustomize_command()
    if command is None:
        pytest.skip("neither kustomize nor kubectl (with its built-in kustomize v5) is on PATH")
    done = subprocess.run(
        [*command, str(K8S / "overlays" / overlay)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, (
        f"{' '.join(command)} k8s/overlays/{overlay} failed:\n{done.stderr}"
    )
    docs = [doc for doc in yaml.load_all(done.stdout, Loader=YAML_LOADER) if doc]
    assert docs, f"k8s/overlays/{overlay} rendered no objects"
    return docs


def render(overlay: str) -> list[dict]:
    """The overlay's objects as kustomize renders them (a fresh copy each call)."""
    return copy.deepcopy(_rendered(overlay))


def k8s_entrypoints(overlay: str = "cpu-dev") -> list[str]:
    """The overlay's RayJob entrypoints in pipeline order (prepare_data ... chat, then run_all).

    Each is a command to run from the repository root, e.g. `python jobs/pretrain.py --recipe tiny`.
    """
    by_script = {}
    for job in of_kind(render(overlay), "RayJob"):
        entrypoint = job["spec"]["entrypoint"]
        match = re.fullmatch(r"python jobs/(\w+)\.py( .*)?", entrypoint)
        assert match, (
            f"{name_of(job)}: entrypoint {entrypoint!r} is not `python jobs/<name>.py ...`"
        )
        by_script[match.group(1)] = entrypoint
    assert set(by_script) == set(JOB_SCRIPTS), (
        f"RayJobs run {sorted(by_script)}, expected {sorted(JOB_SCRIPTS)}"
    )
    return [by_script[script] for script in JOB_SCRIPTS]


def of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs: list[dict], kind: str, name: str) -> dict:
    found = [doc for doc in docs if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def name_of(doc: dict) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


def ray_cluster_specs(doc: dict) -> list[tuple[str, dict]]:
    """(where, RayCluster spec) for every Ray cluster an object creates."""
    spec = doc.get("spec", {})
    if doc["kind"] == "RayCluster":
        return [("spec", spec)]
    if doc["kind"] == "RayJob" and "rayClusterSpec" in spec:
        return [("spec.rayClusterSpec", spec["rayClusterSpec"])]
    if doc["kind"] == "RayService" and "rayClusterConfig" in spec:
        return [("spec.rayClusterConfig", spec["rayClusterConfig"])]
    return []


def ray_node_templates(doc: dict) -> list[tuple[str, dict]]:
    """(where, pod template) for the Ray head and worker pods of every cluster of an object."""
    templates = []
    for where, cluster in ray_cluster_specs(doc):
        templates.append((f"{where}.headGroupSpec.template", cluster["headGroupSpec"]["template"]))
        for group in cluster.get("workerGroupSpecs", []):
            templates.append(
                (f"{where}.workerGroupSpecs[{group['groupName']}].template", group["template"])
            )
    return templates


def pod_templates(doc: dict) -> list[tuple[str, dict]]:
    """(where, pod template) for every pod an object makes: Ray nodes, submitters, Deployments."""
    templates = ray_node_templates(doc)
    if doc["kind"] == "RayJob" and "submitterPodTemplate" in doc["spec"]:
        templates.append(("spec.submitterPodTemplate", doc["spec"]["submitterPodTemplate"]))
    if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        templates.append(("spec.template", doc["spec"]["template"]))
    return templates


def containers(doc: dict) -> list[tuple[str, dict, dict]]:
    """(where, container, pod spec) for every container of an object, the autoscaler included."""
    found = []
    for where, template in pod_templates(doc):
        pod = template["spec"]
        for field in ("initContainers", "containers", "ephemeralContainers"):
            for container in pod.get(field, []):
                found.append((f"{where}.spec.{field}[{container['name']}]", container, pod))
    for where, cluster in ray_cluster_specs(doc):
        if cluster.get("enableInTreeAutoscaling"):
            # KubeRay builds the autoscaler sidecar of the head pod from autoscalerOptions.
            head_pod = cluster["headGroupSpec"]["template"]["spec"]
            found.append(
                (f"{where}.autoscalerOptions", cluster.get("autoscalerOptions", {}), head_pod)
            )
    return found


@pytest.fixture(params=OVERLAYS)
def overlay(request) -> str:
    return request.param


@pytest.fixture
def docs(overlay) -> list[dict]:
    return render(overlay)


# ---------------------------------------------------------------- schemas


@functools.cache
def crd_schema(kind: str) -> dict:
    path = SCHEMAS / CRDS[kind][1] / f"{kind}_v1.json"
    assert path.is_file(), f"CRD schema {path} is missing (shared/ must sit beside the repository)"
    return json.loads(path.read_text())


def undeclared_fields(value, schema: dict, path: str) -> list[str]:
    """Fields the structural CRD schema does not declare, duplicate keys of map/set lists, and
    fields guarded by CEL rules (x-kubernetes-validations), which jsonschema cannot evaluate.

    The API server prunes undeclared fields silently (except under
    x-kubernetes-preserve-unknown-fields), so every one found here is a setting that would be lost.
    """
    if schema.get("x-kubernetes-preserve-unknown-fields") or schema.get(
        "x-kubernetes-int-or-string"
    ):
        return []
    problems = []
    if "x-kubernetes-validations" in schema:
        rules = [rule["rule"] for rule in schema["x-kubernetes-validations"]]
        problems.append(
            f"{path}: guarded by CEL rules {rules} that this test cannot check; review them by hand"
        )
    if isinstance(value, dict):
        if "properties" in schema:
            for key, item in value.items():
                if key in schema["properties"]:
                    problems += undeclared_fields(item, schema["properties"][key], f"{path}.{key}")
                else:
                    problems.append(f"{path}.{key}: not a field of the CRD schema")
        elif isinstance(schema.get("additionalProperties"), dict):
            for key, item in value.items():
                problems += undeclared_fields(item, schema["additionalProperties"], f"{path}.{key}")
        elif value:
            problems.append(f"{path}: the CRD schema declares no fields here, all would be pruned")
    elif isinstance(value, list) and "items" in schema:
        list_type = schema.get("x-kubernetes-list-type")
        if list_type == "map":
            keys = [
                tuple(item.get(k) for k in schema.get("x-kubernetes-list-map-keys", []))
                for item in value
            ]
            problems += [
                f"{path}: duplicate list-map key {k}"
                for k in {k for k in keys if keys.count(k) > 1}
            ]
        elif list_type == "set":
            dumped = [json.dumps(item, sort_keys=True) for item in value]
            problems += [
                f"{path}: duplicate set item {d}"
                for d in {d for d in dumped if dumped.count(d) > 1}
            ]
        for index, item in enumerate(value):
            problems += undeclared_fields(item, schema["items"], f"{path}[{index}]")
    return problems


def core_strict_errors(obj: dict) -> str | None:
    """None if `obj` passes the strict Kubernetes OpenAPI schema of its kind, else the error."""
    # Ray clusters repeat the same pod templates; each distinct object is validated once.
    return _core_strict_errors(json.dumps(obj, sort_keys=True))


@functools.cache
def _core_strict_errors(obj_json: str) -> str | None:
    obj = json.loads(obj_json)
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        return f"{'.'.join(str(p) for p in error.path)}: {error.message}"
    except kubernetes_validate.SchemaNotFoundError as error:
        return error.message
    return None


def test_renders_the_expected_objects(overlay, docs):
    names = {name_of(doc) for doc in docs}
    expected = {
        "Namespace/pajama",
        "ConfigMap/pajama-storage",
        "PersistentVolumeClaim/pajama-shared",
        "PersistentVolumeClaim/mlflow-data",
        "Deployment/mlflow",
        "Service/mlflow",
        "NetworkPolicy/ray-ingress",
        "NetworkPolicy/mlflow-ingress",
        "NetworkPolicy/redis-ingress",
        "PersistentVolumeClaim/pajama-redis-data",
        "Deployment/pajama-redis",
        "Service/pajama-redis",
        "PodMonitor/ray-head",
        "PodMonitor/ray-workers",
        "ConfigMap/pajama-grafana-dashboard",
        "RayCluster/pajama",
        "RayService/pajama-llm",
    } | {f"RayJob/pajama-{script.replace('_', '-')}" for script in JOB_SCRIPTS}
    assert names == expected
    assert len(names) == len(docs), "two objects share a kind and name"
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "pajama", name_of(doc)
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "pajama", name_of(doc)


def test_custom_resources_pass_crd_schemas(docs):
    for doc in docs:
        if doc["kind"] not in CRDS:
            continue
        assert doc["apiVersion"] == CRDS[doc["kind"]][0], name_of(doc)
        schema = crd_schema(doc["kind"])
        errors = sorted(
            jsonschema.Draft202012Validator(schema).iter_errors(doc), key=lambda e: list(e.path)
        )
        assert not errors, f"{name_of(doc)}:\n" + "\n".join(
            f"  {'.'.join(str(p) for p in e.path)}: {e.message}" for e in errors
        )


def test_custom_resources_have_no_undeclared_fields(docs):
    for doc in docs:
        if doc["kind"] not in CRDS:
            continue
        schema = crd_schema(doc["kind"])
        assert set(doc) <= {"apiVersion", "kind", "metadata", "spec"}, (
            f"{name_of(doc)}: {sorted(doc)}"
        )
        problems = undeclared_fields(doc["spec"], schema["properties"]["spec"], "spec")
        assert not problems, f"{name_of(doc)}:\n  " + "\n  ".join(problems)
        # The CRD leaves the root metadata to the API server: it is a standard ObjectMeta.
        as_core = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc["metadata"]}
        assert core_strict_errors(as_core) is None, (
            f"{name_of(doc)}.metadata: {core_strict_errors(as_core)}"
        )


def test_undeclared_field_walk_catches_typos():
    schema = crd_schema("RayCluster")["properties"]["spec"]
    spec = {
        "enableInTreeAutoscaling": True,
        "autoscalerOptions": {"idleTimeoutSecond": 60},
        "headGroupSpec": {
            "rayStartParams": {"any-flag": "1"},
            "template": {
                "metadata": {"labels": {"a": "b"}},
                "spec": {
                    "containers": [
                        {
                            "name": "ray-head",
                            "resources": {"limits": {"cpu": 1}},
                            "imagePolicy": "x",
                        }
                    ]
                },
            },
        },
    }
    assert undeclared_fields(spec, schema, "spec") == [
        "spec.autoscalerOptions.idleTimeoutSecond: not a field of the CRD schema",
        "spec.headGroupSpec.template.spec.containers[0].imagePolicy: not a field of the CRD schema",
    ]
    assert undeclared_fields({"managedBy": "x"}, schema, "spec")[0].startswith(
        "spec.managedBy: guarded by CEL rules"
    )
    spec["headGroupSpec"]["template"]["spec"]["containers"].append({"name": "ray-head"})
    assert "spec.headGroupSpec.template.spec.containers: duplicate list-map key ('ray-head',)" in (
        undeclared_fields(spec, schema, "spec")
    )


def test_undeclared_field_walk_catches_monitor_typos():
    schema = crd_schema("PodMonitor")["properties"]["spec"]
    spec = {
        "selector": {"matchLabels": {"ray.io/node-type": "head"}},
        "podMetricsEndpoints": [{"port": "metrics", "relabellings": []}],
    }
    assert undeclared_fields(spec, schema, "spec") == [
        "spec.podMetricsEndpoints[0].relabellings: not a field of the CRD schema"
    ]


def test_core_objects_pass_strict_kubernetes_schemas(docs):
    for doc in docs:
        if doc["kind"] not in CRDS:
            assert core_strict_errors(doc) is None, f"{name_of(doc)}: {core_strict_errors(doc)}"


def test_pod_templates_in_kuberay_objects_pass_strict_kubernetes_schemas(docs):
    checked = 0
    for doc in docs:
        if doc["kind"] not in KUBERAY_KINDS:
            continue
        for where, template in pod_templates(doc):
            as_core = {
                "apiVersion": "v1",
                "kind": "PodTemplate",
                "metadata": {"name": "t"},
                "template": template,
            }
            error = core_strict_errors(as_core)
            assert error is None, f"{name_of(doc)} {where}: {error}"
            checked += 1
    assert checked >= 3 * 7, "expected the pod templates of every Ray cluster and RayJob submitter"


def test_strict_core_check_catches_typos():
    pod = {
        "apiVersion": "v1",
        "kind": "PodTemplate",
        "metadata": {"name": "t"},
        "template": {"spec": {"containers": [{"name": "c", "securityContxt": {}}]}},
    }
    assert "securityContxt" in core_strict_errors(pod)


# ---------------------------------------------------------------- security


def test_every_container_runs_non_root_without_privileges(docs):
    checked = 0
    for doc in docs:
        for where, container, pod in containers(doc):
            context = container.get("securityContext", {})
            label = f"{name_of(doc)} {where}"
            assert context.get("runAsNonRoot") is True, (
                f"{label}: securityContext.runAsNonRoot must be true"
            )
            assert context.get("allowPrivilegeEscalation") is False, (
                f"{label}: allowPrivilegeEscalation must be false"
            )
            assert "ALL" in context.get("capabilities", {}).get("drop", []), (
                f"{label}: must drop ALL capabilities"
            )
            assert not context.get("privileged"), label
            assert not context.get("capabilities", {}).get("add"), label
            assert context.get("runAsUser", pod.get("securityContext", {}).get("runAsUser")) != 0, (
                label
            )
            checked += 1
        for where, template in pod_templates(doc):
            pod = template["spec"]
            label = f"{name_of(doc)} {where}"
            assert pod["securityContext"]["runAsNonRoot"] is True, label
            assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, label
            assert not any(pod.get(f) for f in ("hostNetwork", "hostPID", "hostIPC")), label
            assert not any("hostPath" in volume for volume in pod.get("volumes", [])), label
    assert checked > 0


def test_no_ray_port_leaves_the_cluster(docs):
    for service in of_kind(docs, "Service"):
        if service["spec"].get("type", "ClusterIP") in ("LoadBalancer", "NodePort"):
            ports = {p["port"] for p in service["spec"]["ports"]} | {
                p.get("targetPort") for p in service["spec"]["ports"]
            }
            assert not ports & RAY_CONTROL_PORTS, (
                f"{name_of(service)} exposes Ray's {sorted(ports & RAY_CONTROL_PORTS)}"
            )
    assert one(docs, "Service", "mlflow")["spec"]["type"] == "ClusterIP", (
        "MLflow has no login: ClusterIP only"
    )
    assert not of_kind(docs, "Ingress")
    # KubeRay creates the head and Serve Services from these fields; unset means ClusterIP.
    for doc in docs:
        for where, cluster in ray_cluster_specs(doc):
            head = cluster["headGroupSpec"]
            assert head.get("serviceType") == "ClusterIP", (
                f"{name_of(doc)} {where}.headGroupSpec.serviceType"
            )
            assert (
                head.get("headService", {}).get("spec", {}).get("type", "ClusterIP") == "ClusterIP"
            )
            assert not head.get("enableIngress"), (
                f"{name_of(doc)} {where}: no Ingress to the dashboard"
            )
    for service in of_kind(docs, "RayService"):
        assert (
            service["spec"].get("serveService", {}).get("spec", {}).get("type", "ClusterIP")
            == "ClusterIP"
        )


def test_network_policies_cover_ray_and_mlflow(docs):
    selectors = {
        name_of(p): p["spec"]["podSelector"]["matchLabels"] for p in of_kind(docs, "NetworkPolicy")
    }
    assert {"ray.io/is-ray-node": "yes"} in selectors.values()
    mlflow_labels = one(docs, "Deployment", "mlflow")["spec"]["template"]["metadata"]["labels"]
    assert any(s.items() <= mlflow_labels.items() for s in selectors.values())
    for policy in of_kind(docs, "NetworkPolicy"):
        assert policy["spec"]["policyTypes"] == ["Ingress"], name_of(policy)


def test_no_literal_secrets(docs):
    assert not of_kind(docs, "Secret"), "Secrets are created out of band, never committed"
    for doc in docs:
        for where, container, _ in containers(doc):
            for env in container.get("env", []):
                if SECRET_NAME.search(env["name"]):
                    assert "value" not in env and "secretKeyRef" in env.get("valueFrom", {}), (
                        f"{name_of(doc)} {where}: {env['name']} must come from a secretKeyRef"
                    )
        if doc["kind"] == "RayJob":
            env_vars = yaml.safe_load(doc["spec"]["runtimeEnvYAML"]).get("env_vars", {})
            assert not [k for k in env_vars if SECRET_NAME.search(k)], (
                f"{name_of(doc)}: secret in runtimeEnvYAML"
            )
    for config_map in of_kind(docs, "ConfigMap"):
        assert not [k for k in config_map["data"] if SECRET_NAME.search(k)], name_of(config_map)
    assert not URI_WITH_PASSWORD.search(yaml.safe_dump_all(docs)), "a URI carries a password"


def test_resources_are_requested_and_limited(docs):
    for doc in docs:
        for where, container, pod in containers(doc):
            label = f"{name_of(doc)} {where}"
            resources = container.get("resources", {})
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(bound, {})), (
                    f"{label}: {bound} need cpu and memory"
                )
                for amount in resources[bound].values():
                    assert QUANTITY.match(str(amount)), f"{label}: {amount!r} is not a quantity"
            if "nvidia.com/gpu" in resources.get("limits", {}):
                tolerated = {t.get("key") for t in pod.get("tolerations", [])}
                assert "nvidia.com/gpu" in tolerated, (
                    f"{label}: GPU pods must tolerate the nvidia.com/gpu taint"
                )
    for claim in of_kind(docs, "PersistentVolumeClaim"):
        assert QUANTITY.match(str(claim["spec"]["resources"]["requests"]["storage"])), name_of(
            claim
        )


# ---------------------------------------------------------------- Ray


def test_cluster_autoscales_cpu_and_gpu_groups(overlay, docs):
    spec = one(docs, "RayCluster", "pajama")["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["autoscalerOptions"]["idleTimeoutSeconds"] > 0
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", "the head runs no tasks"
    groups = {group["groupName"]: group for group in spec["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    for group in groups.values():
        assert 0 <= group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"], group[
            "groupName"
        ]
    gpu_limits = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert int(gpu_limits["nvidia.com/gpu"]) >= 1
    assert (
        "nvidia.com/gpu"
        not in groups["cpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    )
    # A dev cluster has no GPUs; the gpu overlay must fit pipelines/7b.yaml's 64 training workers.
    gpus = int(gpu_limits["nvidia.com/gpu"]) * groups["gpu"]["maxReplicas"]
    assert (gpus == 0) if overlay == "cpu-dev" else (gpus >= 64)


def api_key_env() -> str:
    """The variable the serving ingress reads its API key from (the serve config's api_key_env)."""
    serve_config = yaml.safe_load((K8S / "base" / "serve-config.yaml").read_text())
    (app,) = [a for a in serve_config["applications"] if a["import_path"] == SERVE_IMPORT_PATH]
    return app["args"]["api_key_env"]


def pod_labels(doc: dict) -> list[tuple[str, dict, dict]]:
    """(where, pod template, labels the pods will carry) for every pod an object makes, with the
    labels KubeRay adds to Ray nodes."""
    found = []
    node_templates = {where for where, _ in ray_node_templates(doc)}
    for where, template in pod_templates(doc):
        labels = dict(template.get("metadata", {}).get("labels", {}))
        if where in node_templates:
            node_type = "head" if where.endswith("headGroupSpec.template") else "worker"
            labels |= {"ray.io/is-ray-node": "yes", "ray.io/node-type": node_type}
        found.append((where, template, labels))
    return found


def quantity(amount) -> float:
    """A Kubernetes quantity ("8Gi", "500m", 2) as a number."""
    number, unit = re.fullmatch(r"([0-9.]+)([KMGTPE]i|[kMGTPEm]?)", str(amount)).groups()
    binary = {f"{p}i": 2 ** (10 * (i + 1)) for i, p in enumerate("KMGTPE")}
    decimal = {p: 10 ** (3 * (i + 1)) for i, p in enumerate("kMGTPE")}
    return float(number) * {**binary, **decimal, "m": 1e-3, "": 1}[unit]


def test_object_store_fits_in_shared_memory(docs):
    """Ray puts its object store in /dev/shm, sized at 30% of the pod's memory (200 GB at most)."""
    for doc in of_kind(docs, "RayCluster"):
        for where, template in ray_node_templates(doc):
            pod = template["spec"]
            (container,) = pod["containers"]
            shm_volume = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}["/dev/shm"]
            (empty_dir,) = [v["emptyDir"] for v in pod["volumes"] if v["name"] == shm_volume]
            memory, shm = (
                quantity(container["resources"]["limits"]["memory"]),
                quantity(empty_dir["sizeLimit"]),
            )
            assert empty_dir["medium"] == "Memory", where
            assert min(0.3 * memory, 200e9) <= shm < memory, (
                f"{where}: /dev/shm {shm:.3g} B for {memory:.3g} B"
            )


def project_version() -> str:
    return re.search(r'^version = "(.+)"$', (REPO / "pyproject.toml").read_text(), re.M).group(1)


def test_images_match_the_dockerfile_and_project_version(overlay, docs):
    version = project_version()
    dockerfile = (REPO / "Dockerfile").read_text()
    base_image = re.search(r"^ARG BASE_IMAGE=rayproject/ray:(\S+?)-py\d+-cpu$", dockerfile, re.M)
    assert base_image, "Dockerfile: ARG BASE_IMAGE=rayproject/ray:<ray version>-py<python>-cpu"
    serving_dockerfile = (REPO / "Dockerfile.serve-gpu").read_text()
    serving_base = re.search(
        r"^ARG BASE_IMAGE=rayproject/ray-llm:(\S+?)-py\d+-cu\d+$", serving_dockerfile, re.M
    )
    assert serving_base, (
        "Dockerfile.serve-gpu: ARG BASE_IMAGE=rayproject/ray-llm:<ray version>-py<python>-cu<cuda>"
    )
    assert serving_base.group(1) == base_image.group(1), "one Ray release for every image"
    for doc in docs:
        for where, cluster in ray_cluster_specs(doc):
            assert cluster["rayVersion"] == base_image.group(1), (
                f"{name_of(doc)} {where}.rayVersion"
            )
        for where, container, _ in containers(doc):
            if name_of(doc) in THIRD_PARTY_IMAGES:
                assert re.fullmatch(THIRD_PARTY_IMAGES[name_of(doc)], container["image"]), (
                    f"{name_of(doc)} {where}: pin the image to a release"
                )
            elif "image" in container:
                gpu = "nvidia.com/gpu" in container.get("resources", {}).get("limits", {})
                variant = "gpu" if gpu else "cpu"
                if doc["kind"] == "RayService" and overlay in SERVING_IMAGE_OF_OVERLAY:
                    variant = SERVING_IMAGE_OF_OVERLAY[overlay]  # on every node of its cluster
                # An overlay may add a registry (kustomize `images:`); name and tag stay.
                expected = rf"([^/\s]+/)*pajama:{re.escape(version)}-{variant}"
                assert re.fullmatch(expected, container["image"]), f"{name_of(doc)} {where}"
    for text in (dockerfile, serving_dockerfile):
        assert re.search(r"^USER ray$", text, re.M) and not re.search(r"^USER root", text, re.M)
    # The serving image is built as Dockerfile.serve-gpu's header says, with the tag used here.
    assert f"-t pajama:{version}-serve-gpu ." in serving_dockerfile


def test_serving_image_keeps_the_base_images_packages_and_pyprojects_ranges():
    """Dockerfile.serve-gpu installs Pajama without its dependencies (their pins would downgrade the
    image's transformers and torch), then the serving dependencies the image lacks, each in the
    range pyproject.toml gives it (mlflow-skinny: the mlflow client, in mlflow's range), with every
    installed package held at its version."""
    dockerfile = (REPO / "Dockerfile.serve-gpu").read_text()
    (run,) = re.findall(r"^RUN (.*?)(?<!\\)$", dockerfile, re.M | re.S)
    steps = [step.strip() for step in run.replace("\\\n", " ").split("&&")]
    freeze, no_deps, constrained = [step for step in steps if step.startswith("pip ")]
    constraints = freeze.removeprefix("pip list --format=freeze > ")
    assert constraints != freeze, "the constraints are what the image has installed"
    assert no_deps == "pip install --no-cache-dir --no-deps ."
    assert constrained.startswith(f"pip install --no-cache-dir -c {constraints} ")
    pyproject = re.search(
        r"^dependencies = \[(.*?)^\]", (REPO / "pyproject.toml").read_text(), re.M | re.S
    ).group(1)
    ranges = dict(re.findall(r'^\s*"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?([^";]*)"', pyproject, re.M))
    installed = re.findall(r'"([A-Za-z0-9_.-]+)([^"]*)"', constrained)
    assert installed
    for name, specifier in installed:
        assert specifier == ranges[{"mlflow-skinny": "mlflow"}.get(name, name)], name


def test_every_ray_pod_shares_one_storage_and_tracking_server(docs):
    storage = one(docs, "ConfigMap", "pajama-storage")["data"]
    mount_paths = set()
    for doc in docs:
        for where, template in ray_node_templates(doc):
            pod = template["spec"]
            claims = {
                v["name"]: v["persistentVolumeClaim"]["claimName"]
                for v in pod["volumes"]
                if "persistentVolumeClaim" in v
            }
            for container in pod["containers"]:
                label = f"{name_of(doc)} {where} {container['name']}"
                assert {"configMapRef": {"name": "pajama-storage"}} in container.get(
                    "envFrom", []
                ), label
                mount_paths |= {
                    m["mountPath"]
                    for m in container["volumeMounts"]
                    if claims.get(m["name"]) == "pajama-shared"
                }
    assert len(mount_paths) == 1, (
        f"the shared volume must be mounted at one path everywhere, found {mount_paths}"
    )
    assert storage["PAJAMA_STORAGE_URI"] == mount_paths.pop()
    tracking = urlparse(storage["MLFLOW_TRACKING_URI"])
    service = one(docs, "Service", "mlflow")
    assert tracking.hostname == "mlflow" and tracking.port in {
        p["port"] for p in service["spec"]["ports"]
    }


def test_rayjobs_run_the_stage_commands_on_their_own_cluster(overlay, docs):
    recipe = RECIPE_OF_OVERLAY[overlay]
    assert (REPO / "pipelines" / f"{recipe}.yaml").is_file()
    # run_all promotes the run's models to the alias the RayService serves.
    promote = {"run_all": " --set project.promote_to=production"}
    assert k8s_entrypoints(overlay) == [
        f"python jobs/{script}.py{promote.get(script, '')} --recipe {recipe}" for script in JOB_SCRIPTS
    ]
    serve_config = yaml.safe_load((REPO / "pipelines" / "serve.yaml").read_text())
    assert all(m["source"].endswith("@production")
               for app in serve_config["applications"] for m in app["args"]["models"])
    cluster_spec = one(docs, "RayCluster", "pajama")["spec"]
    workdir = re.search(r"^WORKDIR (\S+)$", (REPO / "Dockerfile").read_text(), re.M).group(1)
    for job in of_kind(docs, "RayJob"):
        spec, label = job["spec"], name_of(job)
        assert spec["rayClusterSpec"] == cluster_spec, (
            f"{label}: rayClusterSpec is not RayCluster/pajama's spec"
        )
        assert "clusterSelector" not in spec, label
        assert spec["suspend"] is True, f"{label}: applying the manifests must not start a stage"
        assert spec["shutdownAfterJobFinishes"] is True, label
        assert spec["ttlSecondsAfterFinished"] > 0, label
        assert 0 <= spec["backoffLimit"] <= 3, label
        runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
        assert runtime_env["working_dir"] == workdir, (
            f"{label}: working_dir must be the image's repo copy"
        )
        assert all(isinstance(v, str) for v in runtime_env.get("env_vars", {}).values()), label


def test_rayjob_scripts_exist():
    if not list((REPO / "jobs").glob("*.py")):
        pytest.skip("jobs/ has no scripts yet")
    for script in JOB_SCRIPTS:
        assert (REPO / "jobs" / f"{script}.py").is_file(), (
            f"a RayJob runs jobs/{script}.py, which does not exist"
        )


def test_rayservice_serves_the_serve_config_on_the_shared_cluster_spec(overlay, docs):
    service = one(docs, "RayService", "pajama-llm")
    assert service["spec"]["suspend"] is True, "the app waits for a trained model"
    committed_copy = SERVE_CONFIG_OF_OVERLAY[overlay].read_text()
    assert service["spec"]["serveConfigV2"] == committed_copy
    serve_config = yaml.safe_load(committed_copy)
    assert SERVE_IMPORT_PATH in [app["import_path"] for app in serve_config["applications"]]
    # The shared spec plus exactly the RayService's additions (k8s/base/rayservice.yaml, and the
    # serving image where the overlay has one); the overlays paste those over the copied spec, so
    # an env or head label the shared spec gained would be overwritten there: this comparison
    # catches it.
    cluster = copy.deepcopy(service["spec"]["rayClusterConfig"])
    shared = copy.deepcopy(one(docs, "RayCluster", "pajama")["spec"])
    cluster.pop("gcsFaultToleranceOptions")
    assert cluster["headGroupSpec"]["template"].pop("metadata") == {"labels": REDIS_CLIENT_LABEL}
    for _, template in ray_node_templates({"kind": "RayCluster", "spec": cluster}):
        for container in template["spec"]["containers"]:
            env = container.pop("env")
            assert [variable["name"] for variable in env] == [api_key_env(), *HIGH_THROUGHPUT_ENV]
            assert {v["name"]: v["value"] for v in env[1:]} == HIGH_THROUGHPUT_ENV
    if overlay in SERVING_IMAGE_OF_OVERLAY:  # which image: test_images_match_the_dockerfile_...
        for spec in (cluster, shared):
            for _, template in ray_node_templates({"kind": "RayCluster", "spec": spec}):
                for container in template["spec"]["containers"]:
                    container.pop("image")
    assert cluster == shared
    # KubeRay's Serve Service sends traffic to port 8000 of the pod IP: a proxy bound to loopback
    # (or moved off 8000) would be unreachable. Unset, Serve's deploy schema binds 0.0.0.0:8000.
    http_options = serve_config.get("http_options", {})
    assert http_options.get("host", "0.0.0.0") == "0.0.0.0", (
        "serveConfigV2 http_options.host must stay unset"
    )
    assert http_options.get("port", 8000) == 8000, "serveConfigV2 http_options.port must stay 8000"
    head_ports = {
        p["containerPort"]
        for p in service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"][
            "containers"
        ][0]["ports"]
    }
    assert 8000 in head_ports, "Serve's HTTP proxy listens on 8000"


def test_every_ray_cluster_requires_a_token(docs):
    """Ray token authentication: KubeRay makes a token Secret per cluster and hands it to every Ray
    container and RayJob submitter. Kubernetes-delegated tokens are unsupported for RayJob and
    RayService, and a fixed secretName would give every cluster the same token."""
    for doc in docs:
        for where, cluster in ray_cluster_specs(doc):
            assert cluster.get("authOptions") == {"mode": "token"}, f"{name_of(doc)} {where}"
            version = tuple(int(part) for part in cluster["rayVersion"].split(".")[:2])
            assert version >= (2, 52), "Ray token authentication needs Ray 2.52 or later"


def test_rayservice_keeps_gcs_state_in_a_private_redis(docs):
    service = one(docs, "RayService", "pajama-llm")
    options = service["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"]
    assert options.get("backend", "redis") == "redis"
    host, port = options["redisAddress"].rsplit(":", 1)
    redis_service = one(docs, "Service", host)
    assert redis_service["spec"]["type"] == "ClusterIP"
    assert int(port) in {p["port"] for p in redis_service["spec"]["ports"]}
    redis = one(docs, "Deployment", host)
    redis_labels = redis["spec"]["template"]["metadata"]["labels"]
    assert redis_service["spec"]["selector"].items() <= redis_labels.items()
    (container,) = redis["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    # Ray authenticates with the password Redis requires: the same key of the same Secret.
    assert options["redisPassword"] == {"valueFrom": env["REDIS_PASSWORD"]["valueFrom"]}
    assert "requirepass $REDIS_PASSWORD" in container["command"][-1]
    # Only the RayService's cluster uses Redis: the RayJobs' clusters are short-lived.
    for doc in docs:
        if doc["kind"] != "RayService":
            for where, cluster in ray_cluster_specs(doc):
                assert "gcsFaultToleranceOptions" not in cluster, f"{name_of(doc)} {where}"
    # NetworkPolicy: Redis admits, on its port only, the pods that carry the RayService head's
    # label (the head and KubeRay's Redis cleanup Job, built from it), and no other pod here.
    (policy,) = [
        p
        for p in of_kind(docs, "NetworkPolicy")
        if p["spec"]["podSelector"]["matchLabels"].items() <= redis_labels.items()
    ]
    (rule,) = policy["spec"]["ingress"]
    (peer,) = rule["from"]
    assert set(peer) == {"podSelector"}, "no other namespace, no IP block"
    assert rule["ports"] == [{"port": int(port), "protocol": "TCP"}]
    admitted = peer["podSelector"]["matchLabels"]
    for doc in docs:
        for where, template, labels in pod_labels(doc):
            head_of_service = doc["kind"] == "RayService" and "headGroupSpec" in where
            assert (admitted.items() <= labels.items()) == head_of_service, (
                f"{name_of(doc)} {where}: admitted to Redis: {not head_of_service}"
            )


def test_rayservice_pods_take_the_api_key_from_a_secret(overlay, docs):
    name = api_key_env()
    service = one(docs, "RayService", "pajama-llm")
    templates = ray_node_templates(service)
    assert len(templates) == 3
    for where, template in templates:
        for container in template["spec"]["containers"]:
            (env,) = [e for e in container.get("env", []) if e["name"] == name]
            # Dev clusters may serve without a key; production pods do not start without one.
            assert env["valueFrom"]["secretKeyRef"] == {
                "name": "pajama-api-key",
                "key": "api-key",
                "optional": overlay == "cpu-dev",
            }, where
    for doc in docs:
        if doc["kind"] != "RayService":
            for where, container, _ in containers(doc):
                assert name not in {e["name"] for e in container.get("env", [])}, (
                    f"{name_of(doc)} {where}: only the serving pods get the API key"
                )


def test_serve_config_copy_is_up_to_date():
    source = REPO / "pipelines" / "serve.yaml"
    if not source.is_file():
        pytest.skip(
            "pipelines/serve.yaml does not exist yet; k8s/base/serve-config.yaml is a placeholder"
        )
    assert (K8S / "base" / "serve-config.yaml").read_text() == source.read_text(), (
        "k8s/base/serve-config.yaml is stale: cp pipelines/serve.yaml k8s/base/serve-config.yaml"
    )


def test_gpu_overlay_serve_config_is_pipelines_serve_yaml_with_vllm():
    """k8s/overlays/gpu/serve-config.yaml is pipelines/serve.yaml with SERVE_CONFIG_CHANGES' values
    on their own lines, comments kept, and nothing else changed."""
    source = (REPO / "pipelines" / "serve.yaml").read_text()
    gpu_copy = SERVE_CONFIG_OF_OVERLAY["gpu"].read_text()
    changed_value = re.compile(rf"^(\s*)({'|'.join(SERVE_CONFIG_CHANGES)}): *\S+ *(#|$)", re.M)
    assert changed_value.sub(r"\1\2: \3", gpu_copy) == changed_value.sub(r"\1\2: \3", source), (
        "k8s/overlays/gpu/serve-config.yaml is stale: copy pipelines/serve.yaml there and set "
        f"{SERVE_CONFIG_CHANGES}"
    )
    expected = yaml.safe_load(source)
    for app in expected["applications"]:
        if app["import_path"] == SERVE_IMPORT_PATH:
            app["args"] |= SERVE_CONFIG_CHANGES
    assert yaml.safe_load(gpu_copy) == expected


def test_gpu_overlay_serves_with_vllm_from_the_serving_image():
    docs = render("gpu")
    service = one(docs, "RayService", "pajama-llm")
    serve_config = yaml.safe_load(service["spec"]["serveConfigV2"])
    (app,) = [a for a in serve_config["applications"] if a["import_path"] == SERVE_IMPORT_PATH]
    assert app["args"]["engine"] == "vllm" and app["args"]["num_gpus"] >= 1
    images = {container["image"] for _, container, _ in containers(service) if "image" in container}
    assert len(images) == 1 and images.pop().endswith(f":{project_version()}-serve-gpu"), "on every Ray node"
    # Training keeps transformers 4.57 (MLflow's log_model): the RayCluster and the RayJobs.
    for doc in docs:
        if doc["kind"] in ("RayCluster", "RayJob"):
            for where, container, _ in containers(doc):
                assert "serve-gpu" not in container.get("image", ""), f"{name_of(doc)} {where}"


# ---------------------------------------------------------------- observability

# Ray's own metrics the Grafana dashboard may use, as Prometheus names them (Ray prefixes "ray_";
# counters end in _total, histograms are read through _bucket/_sum/_count). Ray core node metrics,
# Ray Serve's built-ins and Ray Train V2's, as Ray's own dashboards query them.
RAY_BUILTIN_METRICS = {
    "ray_node_cpu_utilization",
    "ray_node_cpu_count",
    "ray_node_mem_used",
    "ray_node_mem_total",
    "ray_node_gpus_utilization",
    "ray_node_gram_used",
    "ray_node_gram_available",
    "ray_node_network_receive_speed",
    "ray_node_network_send_speed",
    "ray_object_store_memory",
    "ray_resources",
    "ray_tasks",
    "ray_actors",
    "ray_serve_num_http_requests_total",
    "ray_serve_num_http_error_requests_total",
    "ray_serve_http_request_latency_ms_bucket",
    "ray_serve_num_ongoing_http_requests",
    "ray_serve_deployment_queued_queries",
    "ray_serve_deployment_replica_healthy",
    "ray_serve_deployment_request_counter_total",
    "ray_serve_deployment_error_counter_total",
    "ray_serve_deployment_processing_latency_ms_bucket",
    "ray_serve_replica_processing_queries",
    "ray_train_report_total_blocked_time_s",
    "ray_train_checkpoint_sync_total_time_s",
    "ray_train_controller_state",
}
# PromQL words that look like metric names: aggregation operators, modifiers, set operators.
PROMQL_KEYWORDS = {
    *("sum", "avg", "min", "max", "count", "group", "stddev", "stdvar", "topk", "bottomk"),
    *("quantile", "count_values", "by", "without", "on", "ignoring", "group_left"),
    *("group_right", "and", "or", "unless", "bool", "offset"),
}


@functools.cache
def pajama_metrics() -> dict[str, frozenset[str]]:
    """The metrics Pajama defines with ray.serve.metrics/ray.util.metrics: name in the code ->
    the names Prometheus gets."""
    exported = {
        "Counter": ("_total",),
        "Gauge": ("",),
        "Histogram": ("_bucket", "_sum", "_count"),
    }
    metrics = {}
    for path in (REPO / "platform" / "pajama").rglob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {
            alias.asname or alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom)
            and node.module in ("ray.serve.metrics", "ray.util.metrics")
            for alias in node.names
        }
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in imported & set(exported)
            ):
                (name, *_) = node.args
                assert isinstance(name, ast.Constant), f"{path}: a metric name that is not literal"
                metrics[name.value] = frozenset(
                    f"ray_{name.value}{suffix}" for suffix in exported[node.func.id]
                )
    return metrics


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # strings (label values)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", expr)  # label matchers, range selectors
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = re.findall(r"(?<![\w.$])([A-Za-z_:][\w:]*)\b(?!\s*\()", expr)  # not functions
    return set(names) - PROMQL_KEYWORDS


def test_promql_metric_names():
    assert promql_metric_names(
        'histogram_quantile(0.95, sum by (le, route) (rate(ray_a_bucket{x=~"$y"}[5m]))) '
        '/ on() sum without (a) (ray_b{c="d"}) * 1e-3 > bool 0 or vector(0)'
    ) == {"ray_a_bucket", "ray_b"}


def dashboards(docs: list[dict]) -> list[tuple[str, dict]]:
    """(where, dashboard) for every Grafana dashboard the sidecar would load."""
    found = []
    for config_map in of_kind(docs, "ConfigMap"):
        if config_map["metadata"].get("labels", {}).get("grafana_dashboard") == "1":
            for key, text in config_map["data"].items():
                found.append((f"{name_of(config_map)}[{key}]", json.loads(text)))
    return found


def test_grafana_dashboard_queries_only_metrics_that_exist(docs):
    ((where, dashboard),) = dashboards(docs)
    assert pajama_metrics(), "no metrics found in platform/pajama: has their import moved?"
    known = RAY_BUILTIN_METRICS.union(*pajama_metrics().values())
    panels = [
        panel for top in dashboard["panels"] for panel in (top, *top.get("panels", []))
    ]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), f"{where}: panel ids repeat"
    used = set()
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel.get("targets"), f"{where}: panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            names = promql_metric_names(target["expr"])
            assert names and names <= known, (
                f"{where}: panel {panel['title']!r} reads {sorted(names - known)}, which no code "
                "or Ray built-in exports"
            )
            used |= names
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((\w+), *\w+\)", variable["query"]["query"])
            assert match and match.group(1) in known, f"{where}: variable {variable['name']}"
    # Every metric Pajama defines has a panel.
    unused = sorted(name for name, exported in pajama_metrics().items() if not exported & used)
    assert not unused, f"{where}: no panel reads {unused}"


def test_prometheus_scrapes_every_ray_pod(docs):
    monitors = {
        monitor["spec"]["selector"]["matchLabels"].get("ray.io/node-type"): monitor
        for monitor in of_kind(docs, "PodMonitor")
    }
    assert set(monitors) == {"head", "worker"}
    scraped_ports = set()
    for node_type, monitor in monitors.items():
        spec = monitor["spec"]
        assert spec["selector"] == {"matchLabels": {"ray.io/node-type": node_type}}
        assert "namespaceSelector" not in spec, "a PodMonitor selects its own namespace's pods"
        endpoints = spec["podMetricsEndpoints"]
        assert "metrics" in [endpoint["port"] for endpoint in endpoints]
        for endpoint in endpoints:
            # The dashboard filters by ray_io_cluster, KubeRay's ray.io/cluster pod label.
            assert {
                "sourceLabels": ["__meta_kubernetes_pod_label_ray_io_cluster"],
                "targetLabel": "ray_io_cluster",
            } in endpoint["relabelings"], name_of(monitor)
        # Every head (worker) of every Ray cluster declares the ports its monitor scrapes; the
        # metrics port is the one Ray exports on (metrics-export-port, 8080 unless set).
        for doc in docs:
            for where, cluster in ray_cluster_specs(doc):
                groups = (
                    [cluster["headGroupSpec"]]
                    if node_type == "head"
                    else cluster.get("workerGroupSpecs", [])
                )
                for group in groups:
                    ray_container = group["template"]["spec"]["containers"][0]
                    ports = {p["name"]: p["containerPort"] for p in ray_container.get("ports", [])}
                    start_params = group.get("rayStartParams", {})
                    export_port = int(start_params.get("metrics-export-port", 8080))
                    assert ports.get("metrics") == export_port, f"{name_of(doc)} {where}"
                    for endpoint in endpoints:
                        assert endpoint["port"] in ports, (
                            f"{name_of(doc)} {where}: no port {endpoint['port']}"
                        )
                        scraped_ports.add(ports[endpoint["port"]])
    # The Ray pods' NetworkPolicy admits Prometheus, from its own namespace, to these ports only.
    ray_policy = one(docs, "NetworkPolicy", "ray-ingress")
    prometheus = {"app.kubernetes.io/name": "prometheus"}
    (rule,) = [
        rule
        for rule in ray_policy["spec"]["ingress"]
        if any(peer.get("podSelector", {}).get("matchLabels") == prometheus for peer in rule["from"])
    ]
    assert all(peer.get("namespaceSelector") for peer in rule["from"]), "not from every namespace"
    assert {p["port"] for p in rule["ports"]} == scraped_ports
    assert not scraped_ports & RAY_CONTROL_PORTS


# ---------------------------------------------------------------- MLflow


def test_mlflow_server_is_reachable_in_cluster_and_keeps_its_data(overlay, docs):
    deployment = one(docs, "Deployment", "mlflow")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    command = container["command"]
    assert command[:2] == ["mlflow", "server"] and command[command.index("--host") + 1] == "0.0.0.0"
    env = {e["name"]: e for e in container["env"]}
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims == {"mlflow-data"}
    assert any(env["MLFLOW_ARTIFACTS_DESTINATION"]["value"].startswith(m + "/") for m in mounts)
    backend = env["MLFLOW_BACKEND_STORE_URI"]["value"]
    if overlay == "cpu-dev":
        assert backend.startswith("sqlite:///") and any(
            backend[len("sqlite:///") :].startswith(m + "/") for m in mounts
        )
        assert deployment["spec"]["strategy"]["type"] == "Recreate", "SQLite allows one writer"
    else:
        assert backend.startswith("postgresql://") and not URI_WITH_PASSWORD.search(backend)
        assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "password"
    # MLflow's DNS-rebinding guard must accept the Host header the Ray pods send.
    tracking_host = urlparse(
        one(docs, "ConfigMap", "pajama-storage")["data"]["MLFLOW_TRACKING_URI"]
    ).netloc
    allowed = env["MLFLOW_SERVER_ALLOWED_HOSTS"]["value"].split(",")
    assert any(fnmatch.fnmatch(tracking_host, pattern) for pattern in allowed), allowed
    assert any(
        fnmatch.fnmatch("mlflow.pajama.svc.cluster.local:5000", pattern) for pattern in allowed
    )
    service = one(docs, "Service", "mlflow")
    assert (
        service["spec"]["selector"].items()
        <= deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    port_names = {p["name"] for p in container["ports"]}
    assert all(p["targetPort"] in port_names for p in service["spec"]["ports"])


def test_overlays_differ_only_where_intended():
    """The gpu overlay changes sizes, recipe, MLflow's store and the serving engine and image, never
    the security settings."""

    def without_sizes(docs):
        docs = copy.deepcopy(docs)
        for doc in docs:
            for _, container, _ in containers(doc):
                container.pop("resources", None)
                container.pop("env", None)
                if "image" in container:  # an overlay may push to its own registry
                    container["image"] = container["image"].rsplit("/", 1)[-1]
                    if doc["kind"] == "RayService":  # and serve from its own image
                        container["image"] = container["image"].split(":")[0]
            for _, template in pod_templates(doc):
                for volume in template["spec"].get("volumes", []):
                    volume.get("emptyDir", {}).pop("sizeLimit", None)
            for _, cluster in ray_cluster_specs(doc):
                for group in cluster.get("workerGroupSpecs", []):
                    group.pop("maxReplicas")
            if doc["kind"] == "RayJob":
                doc["spec"]["entrypoint"] = doc["spec"]["entrypoint"].rsplit(" --recipe ", 1)[0]
            if doc["kind"] == "RayService":  # its own serve config (checked above)
                doc["spec"].pop("serveConfigV2")
            if doc["kind"] == "PersistentVolumeClaim":
                doc["spec"].pop("resources")
                doc["spec"].pop("accessModes")
        return docs

    assert without_sizes(render("cpu-dev")) == without_sizes(render("gpu"))
