"""deploy/kubernetes/: every overlay rendered, validated and checked against the service.

Each overlay is rendered by tests/kustomize_lite.py, and by `kubectl kustomize` where
kubectl is installed (the two must agree). Every built-in object validates strictly
(unknown fields refused) against the Kubernetes schemas of the `kubernetes-validate`
package for 1.29 (the first release with sidecar containers on by default) and its
latest; every keda.sh object against KEDA's own CRD schemas
(tests/fixtures/keda-crds/), made strict the same way. Then what the manifests
say is checked against the project: each container runs its Procfile line under
`sh -c`, probes are the health commands, grace periods cover the time limits of the
settings the pod runs with, each worker pool has one ScaledObject reading its own
queues, whose scale-down windows (KEDA's cooldown to zero, the HPA's between 1 and
N pods) are at least the visibility timeout. Without a cluster: the
figure the ScaledObjects read is tested against a real worker in test_keda_figure.py.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlparse

import jsonschema
import pytest
import yaml
from kubernetes_validate import utils as kubernetes_validate

from tasks.queue.routing import queue_for_engine, with_priority_queues
from tasks.settings import Settings
from tests.harness import ROOT, procfile_command
from tests.kustomize_lite import build

DEPLOY = ROOT / "deploy" / "kubernetes"
# Every overlay of the kit, those added later included.
OVERLAYS = tuple(sorted(p.name for p in (DEPLOY / "overlays").iterdir()
                        if (p / "kustomization.yaml").exists()))
KEDA_CRDS = ROOT / "tests" / "fixtures" / "keda-crds"
KUBERNETES_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
IMAGE = "ocr-queue"
# Container name -> the Procfile process (and scripts.health role) it runs.
ROLES = {"api": "api", "worker": "worker", "control": "control", "beat": "beat",
         "flower": "flower", "metrics": "metrics"}
# Trigger metadata each scaler reads (KEDA 2.20's docs, scalers/metrics-api.md and
# scalers/rabbitmq-queue.md): a misspelt key would be ignored by KEDA, so refuse it here.
TRIGGER_KEYS = {
    "metrics-api": {"url", "format", "valueLocation", "targetValue", "activationTargetValue",
                    "unsafeSsl", "timeout", "authMode", "method", "keyParamName",
                    "aggregateFromKubeServiceEndpoints", "aggregationType"},
    "rabbitmq": {"host", "protocol", "mode", "value", "activationValue", "queueName",
                 "vhostName", "useRegex", "pageSize", "operation", "timeout",
                 "excludeUnacknowledged", "unsafeSsl", "hostFromEnv", "usernameFromEnv",
                 "passwordFromEnv"},
}

Obj = dict[str, Any]


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[Obj]]:
    return request.param, build(DEPLOY / "overlays" / request.param)


def _key(obj: Obj) -> tuple[str, str, str, str]:
    meta = obj["metadata"]
    return obj["apiVersion"], obj["kind"], meta.get("namespace", ""), meta["name"]


def _find(objects: list[Obj], kind: str, name: str) -> Obj:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} objects"
    return found[0]


def _pods(objects: list[Obj]) -> Iterator[tuple[Obj, Obj]]:
    for obj in objects:
        if obj["kind"] in ("Deployment", "StatefulSet"):
            yield obj, obj["spec"]["template"]["spec"]


def _service_containers(pod: Obj) -> Iterator[Obj]:
    """Containers of the service's own image that run a Procfile role."""
    for container in pod["containers"]:
        if container["image"].split(":")[0] == IMAGE and container["name"] in ROLES:
            yield container


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed: "
                    "the overlays are rendered by tests/kustomize_lite.py only")
def test_renderer_gives_what_kubectl_kustomize_gives(overlay: tuple[str, list[Obj]]) -> None:
    name, objects = overlay
    out = subprocess.run(["kubectl", "kustomize", str(DEPLOY / "overlays" / name)],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    theirs = {_key(o): o for o in yaml.safe_load_all(out) if o}
    assert {_key(o): o for o in objects} == theirs


def test_built_in_objects_validate_strictly(overlay: tuple[str, list[Obj]]) -> None:
    _, objects = overlay
    checked = 0
    for obj in objects:
        if obj["apiVersion"].startswith("keda.sh/"):
            continue
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)
        checked += 1
    assert checked >= 20


def test_strict_validation_refuses_an_unknown_field() -> None:
    """The control: a misplaced field in a rendered Deployment fails validation."""
    deployment = copy.deepcopy(_find(build(DEPLOY / "overlays" / "cpu-only"), "Deployment",
                                     "ocr-api"))
    deployment["spec"]["template"]["spec"]["containers"][0]["gracePeriod"] = 30
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def _strict(schema: Any) -> Any:
    """The CRD schema with unknown fields refused wherever it lists its properties."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if ("properties" in out and "additionalProperties" not in out
                and not out.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def _keda_schemas() -> dict[tuple[str, str], Any]:
    schemas = {}
    for path in sorted(KEDA_CRDS.glob("keda.sh_*.yaml")):
        crd = yaml.safe_load(path.read_text())
        for version in crd["spec"]["versions"]:
            api = f"{crd['spec']['group']}/{version['name']}"
            schemas[(api, crd["spec"]["names"]["kind"])] = _strict(
                version["schema"]["openAPIV3Schema"])
    return schemas


def test_keda_objects_validate_against_the_crds(overlay: tuple[str, list[Obj]]) -> None:
    _, objects = overlay
    schemas = _keda_schemas()
    keda = [o for o in objects if o["apiVersion"].startswith("keda.sh/")]
    assert keda, "no KEDA object"
    for obj in keda:
        jsonschema.validate(obj, schemas[(obj["apiVersion"], obj["kind"])])
        for trigger in obj.get("spec", {}).get("triggers", []):
            unknown = set(trigger["metadata"]) - TRIGGER_KEYS[trigger["type"]]
            assert not unknown, f"{obj['metadata']['name']}: {unknown}"


def test_strict_keda_schema_refuses_a_misspelt_field() -> None:
    """The control: `activationThreshold` is not a ScaledObject field."""
    scaled = copy.deepcopy(_find(build(DEPLOY / "base"), "ScaledObject", "ocr-worker-cpu"))
    scaled["spec"]["activationThreshold"] = 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(scaled, _keda_schemas()[("keda.sh/v1alpha1", "ScaledObject")])


def test_each_role_runs_its_procfile_line_with_env_only(overlay: tuple[str, list[Obj]]) -> None:
    _, objects = overlay
    roles = set()
    for _, pod in _pods(objects):
        for container in _service_containers(pod):
            role = ROLES[container["name"]]
            # args, not command: the image's ENTRYPOINT (tini) stays the first process
            # and hands SIGTERM on even before the role installs its handlers; exec: the
            # Procfile's process replaces sh (Debian's sh would keep it and ignore it).
            assert container["args"] == ["sh", "-c", f"exec {procfile_command(role)}"]
            assert "command" not in container
            roles.add(role)
    assert roles == set(ROLES.values())


def test_probes_are_the_health_commands(overlay: tuple[str, list[Obj]]) -> None:
    _, objects = overlay
    for _, pod in _pods(objects):
        for container in _service_containers(pod):
            role = ROLES[container["name"]]
            for probe, kind in (("livenessProbe", "live"), ("readinessProbe", "ready"),
                                ("startupProbe", "live")):
                if probe == "startupProbe" and probe not in container:
                    continue
                command = container[probe]["exec"]["command"]
                assert command == ["python", "-m", "scripts.health", role, kind]


def container_env(objects: list[Obj], container: Obj,
                  secret: Callable[[str, str], str]) -> dict[str, str]:
    """The environment Kubernetes gives a container: its ConfigMaps, then its `env`.

    A `secretKeyRef` reads `secret(name, key)`; `$(VAR)` in a value is expanded from the
    variables before it, as the kubelet does.
    """
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        assert set(source) == {"configMapRef"}, f"{container['name']}: envFrom {source}"
        env.update(_find(objects, "ConfigMap", source["configMapRef"]["name"])["data"])
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                                        lambda m: env.get(m.group(1), m.group(0)),
                                        entry["value"])
        else:
            ref = entry["valueFrom"]["secretKeyRef"]
            env[entry["name"]] = secret(ref["name"], ref["key"])
    return env


def _pod_settings(objects: list[Obj], container: Obj) -> tuple[Settings, dict[str, str]]:
    """The settings a container's process reads, every secret a test value."""
    env = container_env(objects, container, lambda name, key: f"test-{key.lower()}")
    return Settings.from_env(env), env


def _worker_pools(objects: list[Obj]) -> Iterator[tuple[Obj, Obj, Settings, dict[str, str]]]:
    for deployment, pod in _pods(objects):
        for container in _service_containers(pod):
            if container["name"] == "worker":
                settings, env = _pod_settings(objects, container)
                yield deployment, pod, settings, env


def test_grace_period_covers_the_longest_task(overlay: tuple[str, list[Obj]]) -> None:
    """SIGTERM lets running pages finish: the pod waits the longest a task may take."""
    _, objects = overlay
    pools = list(_worker_pools(objects))
    assert pools
    for deployment, pod, settings, env in pools:
        settings.check_worker()  # the worker's own start-up check of its limits
        longest = max(settings.hard_time_limit, settings.page_hard_time_limit)
        if env.get("OCR_ENGINE") == "vlm-api":
            longest = max(longest, settings.vlm_api_page_time_limit + 30)
        assert pod["terminationGracePeriodSeconds"] >= longest, deployment["metadata"]["name"]
        assert longest < settings.visibility_timeout


def _queues_of(env: dict[str, str]) -> set[str]:
    """The queues the Procfile's worker line consumes for OCR work (not ocr-control)."""
    listed = [q for q in (env.get("OCR_QUEUES") or "ocr").split(",") if q]
    return {*listed, queue_for_engine(env["OCR_ENGINE"])}


def test_one_scaled_object_per_pool_on_its_own_queues(overlay: tuple[str, list[Obj]]) -> None:
    name, objects = overlay
    scaled = {o["spec"]["scaleTargetRef"]["name"]: o for o in objects
              if o["kind"] == "ScaledObject"}
    metrics = _find(objects, "Service", "ocr-metrics")
    for deployment, _, _, env in _worker_pools(objects):
        target = scaled.pop(deployment["metadata"]["name"])
        spec = target["spec"]
        if spec["minReplicaCount"] == 0:
            for trigger in spec["triggers"]:
                activation = trigger["metadata"].get(
                    "activationTargetValue", trigger["metadata"].get("activationValue", "0"))
                assert float(activation) == 0, "a page below the threshold would wait forever"
        (trigger,) = spec["triggers"]
        queues = _queues_of(env)
        if name == "rabbitmq":
            meta = trigger["metadata"]
            assert trigger["type"] == "rabbitmq" and meta["protocol"] == "http"
            assert meta.get("excludeUnacknowledged", "false") == "false"
            if meta.get("useRegex") == "true":
                assert meta["operation"] == "sum"
                pattern = re.compile(meta["queueName"])
                assert {q for q in queues | {"ocr-rapidocr", "ocr-control"}
                        if pattern.search(q)} == queues
                # quorum queues: each priority's queue counts too
                assert all(pattern.search(q) for q in with_priority_queues(sorted(queues)))
            else:
                assert {meta["queueName"]} == queues
            continue
        assert trigger["type"] == "metrics-api"
        url = urlparse(trigger["metadata"]["url"])
        assert url.hostname == (f"{metrics['metadata']['name']}."
                                f"{metrics['metadata']['namespace']}.svc.cluster.local")
        assert url.port == metrics["spec"]["ports"][0]["port"]
        found = re.fullmatch(r"/v1/queues/([^/]+)/depth", url.path)
        assert found and set(found.group(1).split(",")) == queues
        assert trigger["metadata"]["valueLocation"] == "value"
    assert not scaled, f"ScaledObjects without a worker pool: {sorted(scaled)}"


def _scales_down_too_fast(objects: list[Obj]) -> list[str]:
    """Pools whose scale-down windows are shorter than their visibility timeout.

    Both windows: KEDA's `cooldownPeriod` (1 -> 0 pods) and the HPA's scale-down
    `stabilizationWindowSeconds` (N -> 1; the HPA's own default, 300 s, when unset),
    against OCR_VISIBILITY_TIMEOUT as the pool's pods read it (their ConfigMap and env).
    """
    scaled = {o["spec"]["scaleTargetRef"]["name"]: o["spec"] for o in objects
              if o["kind"] == "ScaledObject"}
    too_fast = []
    for deployment, _, settings, _ in _worker_pools(objects):
        name = deployment["metadata"]["name"]
        spec = scaled[name]
        behavior = spec.get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get(
            "behavior", {})
        window = behavior.get("scaleDown", {}).get("stabilizationWindowSeconds", 300)
        for what, seconds in (("cooldownPeriod", spec.get("cooldownPeriod", 300)),
                              ("stabilizationWindowSeconds", window)):
            if seconds < settings.visibility_timeout:
                too_fast.append(f"{name} {what} {seconds} < {settings.visibility_timeout}")
    return too_fast


def test_no_pool_scales_down_within_the_visibility_timeout(
        overlay: tuple[str, list[Obj]]) -> None:
    """Every pool's scale-down windows are at least its visibility timeout (docs/deploy.md)."""
    _, objects = overlay
    assert len(list(_worker_pools(objects))) >= 2
    assert _scales_down_too_fast(objects) == []


def test_scale_down_windows_follow_the_configmap() -> None:
    """The control: a longer visibility timeout in the ConfigMap makes every window short."""
    objects = build(DEPLOY / "overlays" / "gpu-vllm")
    config = _find(objects, "ConfigMap", "ocr-config")["data"]
    longest = max(max(o["spec"]["cooldownPeriod"], o["spec"]["advanced"][
        "horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"])
        for o in objects if o["kind"] == "ScaledObject")
    # Raised past every window; the time limits stay under it (the settings' own check).
    config["OCR_VISIBILITY_TIMEOUT"] = str(longest + 1)
    too_fast = _scales_down_too_fast(objects)
    pools = [d["metadata"]["name"] for d, *_ in _worker_pools(objects)]
    assert sorted({line.split()[0] for line in too_fast}) == sorted(pools)
    assert len(too_fast) == 2 * len(pools)


def test_gpu_pool_scales_to_zero_with_its_server_beside_it() -> None:
    objects = build(DEPLOY / "overlays" / "gpu-vllm")
    scaled = _find(objects, "ScaledObject", "ocr-worker-vlm-api")["spec"]
    assert scaled["minReplicaCount"] == 0
    pod = _find(objects, "Deployment", "ocr-worker-vlm-api")["spec"]["template"]["spec"]
    (server,) = pod["initContainers"]
    assert server["restartPolicy"] == "Always"  # a sidecar: stops after the worker
    assert server["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "startupProbe" in server  # the worker starts once the model is loaded
    (worker,) = pod["containers"]
    env = {e["name"]: e["value"] for e in worker["env"] if "value" in e}
    port = next(a.split("=")[1] for a in server["args"] if a.startswith("--port="))
    assert env["OCR_VLM_API_URL"] == f"http://127.0.0.1:{port}/v1"
    assert env["OCR_VLM_API_MODEL"] == server["args"][0]
    assert f"--max-num-seqs={env['OCR_VLM_API_IN_FLIGHT']}" in server["args"]


def _role_env(objects: list[Obj], deployment: str) -> dict[str, str]:
    """The settings a Deployment's service container runs with: ocr-config, then its own."""
    config = _find(objects, "ConfigMap", "ocr-config")["data"]
    pod = _find(objects, "Deployment", deployment)["spec"]["template"]["spec"]
    (container,) = list(_service_containers(pod))
    read = [ref["configMapRef"]["name"] for ref in container.get("envFrom", [])
            if "configMapRef" in ref]
    own = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    return {**(config if "ocr-config" in read else {}), **own}


def test_the_gpu_overlay_declares_its_pool_from_zero_to_who_admits_and_marks() -> None:
    gpu = build(DEPLOY / "overlays" / "gpu-vllm")
    for deployment in ("ocr-api", "ocr-worker-cpu", "ocr-control"):
        env = _role_env(gpu, deployment)
        assert env.get("OCR_ENGINES_FROM_ZERO") == "vlm-api", deployment
        declared = {"OCR_ENGINES_FROM_ZERO": env["OCR_ENGINES_FROM_ZERO"]}
        assert Settings.from_env(declared).engines_from_zero == ("vlm-api",)
    # Without the GPU pool no engine is declared: a vlm-api job is refused at the door.
    base = build(DEPLOY / "base")
    assert "OCR_ENGINES_FROM_ZERO" not in _role_env(base, "ocr-api")


def test_beat_is_a_singleton_and_the_api_has_replicas(overlay: tuple[str, list[Obj]]) -> None:
    _, objects = overlay
    beat = _find(objects, "Deployment", "ocr-beat")["spec"]
    assert beat["replicas"] == 1 and beat["strategy"]["type"] == "Recreate"
    assert _find(objects, "Deployment", "ocr-api")["spec"]["replicas"] >= 2
    budgets = {o["spec"]["selector"]["matchLabels"].get("ocr-queue/pool")
               or o["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"]
               for o in objects if o["kind"] == "PodDisruptionBudget"}
    pools = {d["spec"]["template"]["metadata"]["labels"]["ocr-queue/pool"]
             for d, *_ in _worker_pools(objects)}
    assert {"api", "metrics", "control", *pools} <= budgets


def test_every_container_has_requests_and_a_memory_limit(
        overlay: tuple[str, list[Obj]]) -> None:
    _, objects = overlay
    for _, pod in _pods(objects):
        for container in [*pod["containers"], *pod.get("initContainers", [])]:
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), container["name"]
            assert "memory" in resources["limits"], container["name"]
