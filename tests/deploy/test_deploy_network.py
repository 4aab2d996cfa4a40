"""deploy/kubernetes/: every pod under a default deny, and exactly the fleet's connections allowed.

From each rendered overlay: every pod of the kit is selected for Ingress and Egress by
a policy (the namespace's default deny), and the connections its NetworkPolicies allow
(tests/netpol.py evaluates them as Kubernetes does) are exactly the ones the fleet
makes: each role to the cluster's DNS and to Redis (RabbitMQ too in its overlay), the
ingress controller to the API, Prometheus to the exporter and Flower, KEDA's operator
to the exporter (and RabbitMQ's management API), workers and the control worker out
to public addresses on 80 and 443. Nothing else: not a worker to the cloud metadata
address or the cluster's API, not a pod of another namespace to Redis, not an unknown
pod of the namespace anywhere. A new component must say here what it connects to.
"""

from __future__ import annotations

import copy
from itertools import count
from typing import Any

import pytest

from tests.deploy.test_deploy_manifests import DEPLOY, OVERLAYS
from tests.kustomize_lite import build
from tests.netpol import Endpoint, allowed, isolated

Obj = dict[str, Any]
Port = tuple[int, str]
ROLES = {"api", "worker", "control", "beat", "flower", "metrics"}
DNS = [(53, "UDP"), (53, "TCP")]
WEB = [(443, "TCP"), (80, "TCP")]

# Outside the namespace (their own namespaces' policies are theirs).
KUBE_DNS = Endpoint("kube-dns", "kube-system", {"k8s-app": "kube-dns"}, "10.244.200.10")
INGRESS = Endpoint("ingress-controller", "ingress-nginx",
                   {"app.kubernetes.io/name": "ingress-nginx"}, "10.244.200.20")
PROMETHEUS = Endpoint("prometheus", "monitoring", {"app.kubernetes.io/name": "prometheus"},
                      "10.244.200.30")
KEDA = Endpoint("keda-operator", "keda", {"app.kubernetes.io/name": "keda-operator"},
                "10.244.200.40")
STRANGER = Endpoint("another-namespace", "default", {"app": "other"}, "10.244.200.50")
INTRUDER = Endpoint("debug-pod-in-ocr", "ocr", {"run": "debug"}, "10.244.200.60")
INTERNET = Endpoint("internet", None, ip="93.184.215.14")
INTERNET6 = Endpoint("internet-v6", None, ip="2606:2800:21f:cb07:6820:80da:af6b:8b2c")
METADATA = Endpoint("cloud-metadata", None, ip="169.254.169.254")
METADATA6 = Endpoint("cloud-metadata-v6", None, ip="fd00:ec2::254")
KUBE_API = Endpoint("kube-apiserver-service", None, ip="10.96.0.1")
KUBE_API_NODE = Endpoint("kube-apiserver-endpoint", None, ip="172.18.0.2")
OUTSIDE = (KUBE_DNS, INGRESS, PROMETHEUS, KEDA, STRANGER, INTRUDER, INTERNET, INTERNET6,
           METADATA, METADATA6, KUBE_API, KUBE_API_NODE)
REDIS, SENTINEL = (6379, "TCP"), (26379, "TCP")
PORTS: tuple[Port, ...] = (*DNS, *WEB, REDIS, SENTINEL, (8000, "TCP"), (9808, "TCP"),
                           (5555, "TCP"), (5672, "TCP"), (15672, "TCP"), (6443, "TCP"))


def _pods(objects: list[Obj]) -> list[Endpoint]:
    """A pod of each workload (a CronJob's too); two of a replicated Redis (its members).

    A pod of a replicated Redis (a Sentinel beside its server) is named `<set>-<n>`.
    """
    addresses = count(10)
    pods = []
    for o in objects:
        if o["kind"] not in ("Deployment", "StatefulSet", "CronJob"):
            continue
        template = (o["spec"]["jobTemplate"]["spec"] if o["kind"] == "CronJob"
                    else o["spec"])["template"]
        members = 2 if _runs_sentinel(template["spec"]) else 1
        for n in range(members):
            pods.append(Endpoint(o["metadata"]["name"] + (f"-{n}" if members > 1 else ""),
                                 o["metadata"]["namespace"], template["metadata"]["labels"],
                                 f"10.244.1.{next(addresses)}"))
    return pods


def _runs_sentinel(pod: Obj) -> bool:
    return any(p["containerPort"] == SENTINEL[0] for c in pod["containers"]
               for p in c.get("ports", []))


def _component(pod: Endpoint) -> str:
    return pod.labels.get("app.kubernetes.io/component", "")


def expected(pods: list[Endpoint]) -> set[tuple[str, str, Port]]:
    """The connections the fleet makes, by component."""
    want: set[tuple[str, str, Port]] = set()
    by = {c: [p for p in pods if _component(p) == c] for c in map(_component, pods)}
    unknown = set(by) - ROLES - {"redis", "rabbitmq", "backup"}
    assert not unknown, f"components with no connections declared here: {unknown}"
    redis = by.get("redis", [])
    # a replicated Redis: its members (named <set>-<n>) have Sentinels, reached on 26379
    redis_ports = [REDIS, SENTINEL] if len(redis) > 1 else [REDIS]
    for member in redis if len(redis) > 1 else []:  # replication, Sentinels, names
        want |= {(member.name, KUBE_DNS.name, port) for port in DNS}
        want |= {(member.name, other.name, port) for other in redis if other != member
                 for port in redis_ports}
    for backup in by.get("backup", []):  # Redis's snapshot, to the object store
        want |= {(backup.name, KUBE_DNS.name, port) for port in DNS}
        want |= {(backup.name, r.name, port) for r in redis for port in redis_ports}
        want |= {(backup.name, web.name, (443, "TCP")) for web in (INTERNET, INTERNET6)}
    for pod in pods:
        if _component(pod) not in ROLES:
            continue
        want |= {(pod.name, KUBE_DNS.name, port) for port in DNS}
        want |= {(pod.name, r.name, port) for r in redis for port in redis_ports}
        want |= {(pod.name, rabbit.name, (5672, "TCP")) for rabbit in by.get("rabbitmq", [])}
        if _component(pod) in ("worker", "control"):
            want |= {(pod.name, web.name, port) for web in (INTERNET, INTERNET6)
                     for port in WEB}
    want |= {(INGRESS.name, api.name, (8000, "TCP")) for api in by.get("api", [])}
    for metrics in by.get("metrics", []):
        want |= {(PROMETHEUS.name, metrics.name, (9808, "TCP")),
                 (KEDA.name, metrics.name, (9808, "TCP"))}
    want |= {(PROMETHEUS.name, flower.name, (5555, "TCP")) for flower in by.get("flower", [])}
    want |= {(KEDA.name, rabbit.name, (15672, "TCP")) for rabbit in by.get("rabbitmq", [])}
    return want


def allowed_connections(objects: list[Obj]) -> set[tuple[str, str, Port]]:
    """Every connection the overlay's policies allow that involves one of its pods."""
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    pods = _pods(objects)
    endpoints = [*pods, *OUTSIDE]
    kit = {p.name for p in pods}
    return {(src.name, dst.name, port) for src in endpoints for dst in endpoints
            for port in PORTS
            if src != dst and (src.name in kit or dst.name in kit)
            and allowed(policies, src, dst, port)}


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> list[Obj]:
    return build(DEPLOY / "overlays" / request.param)


def test_every_pod_is_under_a_default_deny(overlay: list[Obj]) -> None:
    policies = [o for o in overlay if o["kind"] == "NetworkPolicy"]
    for pod in [*_pods(overlay), INTRUDER]:
        for direction in ("Ingress", "Egress"):
            assert isolated(policies, pod, direction), f"{pod.name}: no {direction} deny"


def test_exactly_the_fleets_connections_are_allowed(overlay: list[Obj]) -> None:
    pods = _pods(overlay)
    have, want = allowed_connections(overlay), expected(pods)
    assert not want - have, f"needed, not allowed: {sorted(want - have)}"
    assert not have - want, f"allowed, not needed: {sorted(have - want)}"
    workers = [p for p in pods if _component(p) in ("worker", "control")]
    assert workers
    for worker in workers:
        for forbidden in (METADATA, METADATA6, KUBE_API, KUBE_API_NODE):
            assert not any((worker.name, forbidden.name, port) in have for port in PORTS)


def test_the_check_sees_a_missing_and_an_extra_connection() -> None:
    """The control: without the DNS policy, and with an allow-all, the sets differ."""
    objects = build(DEPLOY / "overlays" / "cpu-only")
    want = expected(_pods(objects))
    no_dns = [o for o in objects if o["metadata"]["name"] != "ocr-dns"]
    missing = want - allowed_connections(no_dns)
    assert missing and all(port in DNS for _, _, port in missing)
    open_all = copy.deepcopy(objects)
    open_all.append({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                     "metadata": {"name": "allow-all", "namespace": "ocr"},
                     "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"],
                              "ingress": [{}], "egress": [{}]}})
    extra = allowed_connections(open_all) - want
    assert ("ocr-worker-cpu", METADATA.name, (80, "TCP")) in extra
    assert (STRANGER.name, "ocr-redis", (6379, "TCP")) in extra
