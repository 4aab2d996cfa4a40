"""Kubernetes NetworkPolicy semantics, to judge rendered manifests without a cluster.

`allowed(policies, src, dst, port)` answers as the API's NetworkPolicy reference
defines it: a connection is allowed when the source may send it (no policy that
selects the source lists Egress, or an egress rule of one of them admits the
destination and port) and the destination may take it (the same for Ingress). A peer
matches a rule's `podSelector` (pods of the policy's namespace), `namespaceSelector`
(namespaces by their labels, `kubernetes.io/metadata.name` included), both (pods of
those namespaces), or `ipBlock` (the endpoint's address in `cidr` and in no `except`).
Policies only govern pods of their own namespace; an endpoint elsewhere (the cluster's
DNS, Prometheus, the internet) is governed by nothing here. Named ports are refused
(the kit uses numbers).

Runs in the test process (tests/deploy/test_deploy_network.py).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

Obj = dict[str, Any]


@dataclass(frozen=True)
class Endpoint:
    """A pod (or an address outside the cluster: no namespace) that may connect."""

    name: str
    namespace: str | None
    labels: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    ip: str = ""


def matches(selector: Obj | None, labels: dict[str, str]) -> bool:
    """Whether `labels` meet a label selector (`matchLabels`, `matchExpressions`)."""
    if selector is None:
        return False
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values", [])
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
        if operator not in ("In", "NotIn", "Exists", "DoesNotExist"):
            raise ValueError(f"unknown selector operator {operator}")
    return True


def _namespace_labels(namespace: str) -> dict[str, str]:
    return {"kubernetes.io/metadata.name": namespace}


def _peer_matches(peer: Obj, policy_namespace: str, endpoint: Endpoint) -> bool:
    if "ipBlock" in peer:
        address = ipaddress.ip_address(endpoint.ip)
        block = peer["ipBlock"]
        network = ipaddress.ip_network(block["cidr"])
        return (address.version == network.version and address in network and not any(
            address.version == ipaddress.ip_network(e).version
            and address in ipaddress.ip_network(e) for e in block.get("except", [])))
    if endpoint.namespace is None:
        return False  # not a pod: only an ipBlock names it
    if "namespaceSelector" in peer:
        if not matches(peer["namespaceSelector"], _namespace_labels(endpoint.namespace)):
            return False
    elif endpoint.namespace != policy_namespace:
        return False
    return "podSelector" not in peer or matches(peer["podSelector"], endpoint.labels)


def _port_matches(ports: list[Obj] | None, port: tuple[int, str]) -> bool:
    if not ports:
        return True
    number, protocol = port
    for entry in ports:
        if not isinstance(entry.get("port", 0), int):
            raise ValueError(f"named port {entry['port']}: the evaluator takes numbers")
        if entry.get("protocol", "TCP") != protocol:
            continue
        if "port" not in entry:
            return True
        low = int(entry["port"])
        if low <= number <= int(entry.get("endPort", low)):
            return True
    return False


def _side(policies: list[Obj], pod: Endpoint, peer: Endpoint, port: tuple[int, str],
          direction: str) -> bool:
    """Whether `pod` may take (Ingress) or send (Egress) this connection with `peer`."""
    if pod.namespace is None:
        return True  # outside the cluster: no policy of ours applies
    rules_key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    isolated = False
    for policy in policies:
        namespace = policy["metadata"].get("namespace")
        spec = policy["spec"]
        if namespace != pod.namespace or not matches(spec["podSelector"], pod.labels):
            continue
        types = spec.get("policyTypes") or (["Ingress", "Egress"] if "egress" in spec
                                            else ["Ingress"])
        if direction not in types:
            continue
        isolated = True
        for rule in spec.get(rules_key, []):
            peers = rule.get(peers_key)
            if (not peers or any(_peer_matches(p, namespace, peer) for p in peers)) \
                    and _port_matches(rule.get("ports"), port):
                return True
    return not isolated


def allowed(policies: list[Obj], src: Endpoint, dst: Endpoint, port: tuple[int, str]) -> bool:
    """Whether a connection from `src` to `dst` on (port, protocol) is allowed."""
    return (_side(policies, src, dst, port, "Egress")
            and _side(policies, dst, src, port, "Ingress"))


def isolated(policies: list[Obj], pod: Endpoint, direction: str) -> bool:
    """Whether some policy selects `pod` for `direction` (so it is deny-by-default)."""
    for policy in policies:
        spec = policy["spec"]
        if (policy["metadata"].get("namespace") == pod.namespace
                and matches(spec["podSelector"], pod.labels)
                and direction in (spec.get("policyTypes") or ["Ingress"])):
            return True
    return False
