"""The Pod Security Standards' `restricted` profile, checked on a pod spec without a cluster.

Each rule of the profile as Kubernetes' "Pod Security Standards" page lists it (the
baseline's controls, which `restricted` includes, then its own), applied to every
container, init container and ephemeral container of a pod template:

baseline: no Windows HostProcess; no host network, PID or IPC; not privileged; no
capability added outside the baseline's list; no hostPath volume; no host port;
AppArmor unset, `runtime/default` or `localhost/*`; SELinux type only the container
types, no user or role; `/proc` mount `Default`; seccomp not `Unconfined`; only the
safe sysctls.
restricted: volumes only configMap, csi, downwardAPI, emptyDir, ephemeral,
persistentVolumeClaim, projected, secret; `allowPrivilegeEscalation: false`;
`runAsNonRoot: true` (the pod's, or every container's) and no `runAsUser: 0`; seccomp
`RuntimeDefault` or `Localhost` (the pod's, or every container's); every capability
dropped (`ALL`), only NET_BIND_SERVICE added.

`violations(pod_spec, annotations)` lists what breaks the profile (empty: it
complies). Runs in the test process.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

Obj = dict[str, Any]

BASELINE_CAPABILITIES = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL",
                         "MKNOD", "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP",
                         "SETUID", "SYS_CHROOT"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range",
                "net.ipv4.ip_unprivileged_port_start", "net.ipv4.tcp_syncookies",
                "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout",
                "net.ipv4.tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_probes"}
SELINUX_TYPES = {None, "", "container_t", "container_init_t", "container_kvm_t",
                 "container_engine_t"}
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                      "persistentVolumeClaim", "projected", "secret"}


def pod_templates(obj: Obj) -> Iterator[tuple[str, Obj, Obj]]:
    """(name, pod spec, pod annotations) of each pod a workload object makes."""
    spec = obj.get("spec", {})
    if obj["kind"] == "Pod":
        yield obj["metadata"]["name"], spec, obj["metadata"].get("annotations", {})
    elif obj["kind"] == "CronJob":
        template = spec["jobTemplate"]["spec"]["template"]
        yield obj["metadata"]["name"], template["spec"], template.get("metadata", {}).get(
            "annotations", {})
    elif "template" in spec and "spec" in spec["template"]:
        template = spec["template"]
        yield obj["metadata"]["name"], template["spec"], template.get("metadata", {}).get(
            "annotations", {})


def _containers(pod: Obj) -> Iterator[Obj]:
    for key in ("initContainers", "containers", "ephemeralContainers"):
        yield from pod.get(key, [])


def violations(pod: Obj, annotations: Obj | None = None) -> list[str]:
    """What in `pod` breaks the `restricted` profile (baseline included)."""
    found: list[str] = []
    pod_context = pod.get("securityContext", {})
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            found.append(f"{key}: true")
    if pod_context.get("windowsOptions", {}).get("hostProcess"):
        found.append("pod: windowsOptions.hostProcess")
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            found.append(f"volume {volume['name']}: {sorted(kinds)}")
    for name, value in (annotations or {}).items():
        if name.startswith("container.apparmor.security.beta.kubernetes.io/") and not (
                value == "runtime/default" or value.startswith("localhost/")):
            found.append(f"annotation {name}: {value}")
    for sysctl in pod_context.get("sysctls", []):
        if sysctl["name"] not in SAFE_SYSCTLS:
            found.append(f"sysctl {sysctl['name']}")
    found += _context_problems("pod", pod_context)
    for container in _containers(pod):
        where = f"container {container['name']}"
        context = container.get("securityContext", {})
        found += _context_problems(where, context)
        if context.get("privileged"):
            found.append(f"{where}: privileged")
        if context.get("procMount", "Default") != "Default":
            found.append(f"{where}: procMount {context['procMount']}")
        if context.get("allowPrivilegeEscalation") is not False:
            found.append(f"{where}: allowPrivilegeEscalation is not false")
        capabilities = context.get("capabilities", {})
        if "ALL" not in capabilities.get("drop", []):
            found.append(f"{where}: capabilities not dropped (ALL)")
        added = set(capabilities.get("add", []))
        if added - {"NET_BIND_SERVICE"}:
            found.append(f"{where}: capabilities added {sorted(added)}")
        if added - BASELINE_CAPABILITIES:
            found.append(f"{where}: capabilities outside the baseline {sorted(added)}")
        for port in container.get("ports", []):
            if port.get("hostPort"):
                found.append(f"{where}: hostPort {port['hostPort']}")
        if not (context.get("runAsNonRoot") or pod_context.get("runAsNonRoot")) or \
                context.get("runAsNonRoot") is False:
            found.append(f"{where}: runAsNonRoot is not true")
        seccomp = context.get("seccompProfile", pod_context.get("seccompProfile", {}))
        if seccomp.get("type") not in ("RuntimeDefault", "Localhost"):
            found.append(f"{where}: seccompProfile {seccomp.get('type')}")
    return found


def _context_problems(where: str, context: Obj) -> list[str]:
    found = []
    if context.get("runAsUser") == 0:
        found.append(f"{where}: runAsUser 0")
    selinux = context.get("seLinuxOptions", {})
    if selinux.get("type") not in SELINUX_TYPES or selinux.get("user") or selinux.get("role"):
        found.append(f"{where}: seLinuxOptions {selinux}")
    if context.get("seccompProfile", {}).get("type") == "Unconfined":
        found.append(f"{where}: seccompProfile Unconfined")
    apparmor = context.get("appArmorProfile", {}).get("type")
    if apparmor not in (None, "RuntimeDefault", "Localhost"):
        found.append(f"{where}: appArmorProfile {apparmor}")
    if context.get("windowsOptions", {}).get("hostProcess"):
        found.append(f"{where}: windowsOptions.hostProcess")
    return found
