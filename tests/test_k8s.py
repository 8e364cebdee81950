"""Render the Kubernetes manifests (k8s/overlays/*) with kustomize and validate them strictly.

Every KubeRay object is checked against the KubeRay v1 CRD schemas (shared/schemas/kuberay) twice:
with jsonschema (types, enums, required fields, quantity patterns), and by a walk that rejects
every field the CRD does not declare, since the CRD schemas do not forbid unknown fields and the
API server would silently drop a misspelt one. Core objects, and every pod template inside the
KubeRay objects, are checked against the Kubernetes OpenAPI schemas in strict mode
(kubernetes-validate, offline). Then the project's own rules: non-root containers, secrets only
by reference, no Ray port outside the cluster, one shared storage on every pod, RayJob
entrypoints that are the laptop commands, and a RayService that serves pipelines/serve.yaml.

`k8s_entrypoints()` gives the RayJob entrypoints, so that another test can run them locally
(`from test_k8s import k8s_entrypoints`: pytest puts tests/ on sys.path).
"""

from __future__ import annotations

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

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"
OVERLAYS = ("cpu-dev", "gpu")
RECIPE_OF_OVERLAY = {"cpu-dev": "tiny", "gpu": "7b"}
# The RayJobs, in pipeline order; run_all is the whole DAG in one job. jobs/serve.py has no
# RayJob: serving on the cluster is the RayService.
JOB_SCRIPTS = ("prepare_data", "pretrain", "instruct", "chat", "run_all")
KUBERAY_SCHEMAS = REPO.parent / "shared" / "schemas" / "kuberay"
KUBERAY_KINDS = ("RayCluster", "RayJob", "RayService")
# The Kubernetes version whose OpenAPI schemas the core objects must pass.
K8S_VERSION = "1.32"
# Ray's GCS, dashboard/job API, client server and dashboard agent: they run code for whoever
# reaches them.
RAY_CONTROL_PORTS = {6379, 8265, 10001, 52365}
SERVE_IMPORT_PATH = "pajama.serve.app:build_app"
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
def kuberay_schema(kind: str) -> dict:
    path = KUBERAY_SCHEMAS / f"{kind}_v1.json"
    assert path.is_file(), (
        f"KubeRay CRD schema {path} is missing (shared/ must sit beside the repository)"
    )
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
        "RayCluster/pajama",
        "RayService/pajama-llm",
    } | {f"RayJob/pajama-{script.replace('_', '-')}" for script in JOB_SCRIPTS}
    assert names == expected
    assert len(names) == len(docs), "two objects share a kind and name"
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "pajama", name_of(doc)
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "pajama", name_of(doc)


def test_kuberay_objects_pass_crd_schemas(docs):
    for doc in docs:
        if doc["kind"] not in KUBERAY_KINDS:
            continue
        assert doc["apiVersion"] == "ray.io/v1", name_of(doc)
        schema = kuberay_schema(doc["kind"])
        errors = sorted(
            jsonschema.Draft202012Validator(schema).iter_errors(doc), key=lambda e: list(e.path)
        )
        assert not errors, f"{name_of(doc)}:\n" + "\n".join(
            f"  {'.'.join(str(p) for p in e.path)}: {e.message}" for e in errors
        )


def test_kuberay_objects_have_no_undeclared_fields(docs):
    for doc in docs:
        if doc["kind"] not in KUBERAY_KINDS:
            continue
        schema = kuberay_schema(doc["kind"])
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
    schema = kuberay_schema("RayCluster")["properties"]["spec"]
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


def test_core_objects_pass_strict_kubernetes_schemas(docs):
    for doc in docs:
        if doc["kind"] not in KUBERAY_KINDS:
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


def test_images_match_the_dockerfile_and_project_version(docs):
    version = re.search(r'^version = "(.+)"$', (REPO / "pyproject.toml").read_text(), re.M).group(1)
    dockerfile = (REPO / "Dockerfile").read_text()
    base_image = re.search(r"^ARG BASE_IMAGE=rayproject/ray:(\S+?)-py\d+-cpu$", dockerfile, re.M)
    assert base_image, "Dockerfile: ARG BASE_IMAGE=rayproject/ray:<ray version>-py<python>-cpu"
    for doc in docs:
        for where, cluster in ray_cluster_specs(doc):
            assert cluster["rayVersion"] == base_image.group(1), (
                f"{name_of(doc)} {where}.rayVersion"
            )
        for where, container, _ in containers(doc):
            if "image" in container:
                gpu = "nvidia.com/gpu" in container.get("resources", {}).get("limits", {})
                # An overlay may add a registry (kustomize `images:`); name and tag stay.
                expected = rf"([^/\s]+/)*pajama:{re.escape(version)}-{'gpu' if gpu else 'cpu'}"
                assert re.fullmatch(expected, container["image"]), f"{name_of(doc)} {where}"
    assert re.search(r"^USER ray$", dockerfile, re.M) and not re.search(
        r"^USER root", dockerfile, re.M
    )


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
    assert k8s_entrypoints(overlay) == [
        f"python jobs/{script}.py --recipe {recipe}" for script in JOB_SCRIPTS
    ]
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


def test_rayservice_serves_the_serve_config_on_the_shared_cluster_spec(docs):
    service = one(docs, "RayService", "pajama-llm")
    assert service["spec"]["suspend"] is True, "the app waits for a trained model"
    assert service["spec"]["rayClusterConfig"] == one(docs, "RayCluster", "pajama")["spec"]
    committed_copy = (K8S / "base" / "serve-config.yaml").read_text()
    assert service["spec"]["serveConfigV2"] == committed_copy
    serve_config = yaml.safe_load(committed_copy)
    assert SERVE_IMPORT_PATH in [app["import_path"] for app in serve_config["applications"]]
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


def test_serve_config_copy_is_up_to_date():
    source = REPO / "pipelines" / "serve.yaml"
    if not source.is_file():
        pytest.skip(
            "pipelines/serve.yaml does not exist yet; k8s/base/serve-config.yaml is a placeholder"
        )
    assert (K8S / "base" / "serve-config.yaml").read_text() == source.read_text(), (
        "k8s/base/serve-config.yaml is stale: cp pipelines/serve.yaml k8s/base/serve-config.yaml"
    )


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
    """The gpu overlay changes sizes, recipe and MLflow's store, never the security settings."""

    def without_sizes(docs):
        docs = copy.deepcopy(docs)
        for doc in docs:
            for _, container, _ in containers(doc):
                container.pop("resources", None)
                container.pop("env", None)
                if "image" in container:  # an overlay may push to its own registry
                    container["image"] = container["image"].rsplit("/", 1)[-1]
            for _, template in pod_templates(doc):
                for volume in template["spec"].get("volumes", []):
                    volume.get("emptyDir", {}).pop("sizeLimit", None)
            for _, cluster in ray_cluster_specs(doc):
                for group in cluster.get("workerGroupSpecs", []):
                    group.pop("maxReplicas")
            if doc["kind"] == "RayJob":
                doc["spec"]["entrypoint"] = doc["spec"]["entrypoint"].rsplit(" --recipe ", 1)[0]
            if doc["kind"] == "PersistentVolumeClaim":
                doc["spec"].pop("resources")
                doc["spec"].pop("accessModes")
        return docs

    assert without_sizes(render("cpu-dev")) == without_sizes(render("gpu"))
