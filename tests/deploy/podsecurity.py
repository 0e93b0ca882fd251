"""The Kubernetes Pod Security Standards, baseline and restricted, as an offline checker.

Written from the standard's rules (https://kubernetes.io/docs/concepts/security/pod-security-standards/,
policy version "latest" as of Kubernetes 1.33), the checks the pod-security admission
controller makes when a namespace says ``pod-security.kubernetes.io/enforce: restricted``.
Windows-only fields are checked only where they can make a Linux pod fail (hostProcess).

``violations(template)`` takes a pod template (``metadata`` for the AppArmor annotations,
``spec``) and returns one message per violated rule, naming the field; empty means the
pod would be admitted.
"""

from __future__ import annotations

from typing import Any

# Capabilities baseline lets a container add; restricted only NET_BIND_SERVICE.
BASELINE_CAPABILITIES = frozenset({
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE",
    "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
})
RESTRICTED_CAPABILITIES = frozenset({"NET_BIND_SERVICE"})
SAFE_SYSCTLS = frozenset({
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
})
SELINUX_TYPES = frozenset({"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"})
RESTRICTED_VOLUME_TYPES = frozenset({
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret",
})
APPARMOR_ANNOTATION = "container.apparmor.security.beta.kubernetes.io/"
# Keys of a Volume that are not its source.
_VOLUME_META = frozenset({"name"})


def _containers(spec: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for field in ("initContainers", "containers", "ephemeralContainers"):
        for c in spec.get(field) or []:
            out.append((f"spec.{field}[{c.get('name')}]", c))
    return out


def _apparmor_ok(profile: dict[str, Any] | None) -> bool:
    return profile is None or profile.get("type") in ("RuntimeDefault", "Localhost")


def _selinux_ok(opts: dict[str, Any] | None) -> bool:
    if not opts:
        return True
    return opts.get("type", "") in SELINUX_TYPES and not opts.get("user") and not opts.get("role")


def _baseline_pod(template: dict[str, Any]) -> list[str]:
    spec = template.get("spec") or {}
    psc = spec.get("securityContext") or {}
    found = []
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            found.append(f"spec.{field}: host namespaces are forbidden")
    if (psc.get("windowsOptions") or {}).get("hostProcess"):
        found.append("spec.securityContext.windowsOptions.hostProcess: forbidden")
    for vol in spec.get("volumes") or []:
        if "hostPath" in vol:
            found.append(f"spec.volumes[{vol.get('name')}]: hostPath volumes are forbidden")
    for key, value in ((template.get("metadata") or {}).get("annotations") or {}).items():
        if key.startswith(APPARMOR_ANNOTATION) and not (value == "runtime/default" or value.startswith("localhost/")):
            found.append(f"metadata.annotations[{key}]: AppArmor profile {value!r} is not allowed")
    if not _apparmor_ok(psc.get("appArmorProfile")):
        found.append("spec.securityContext.appArmorProfile: must be RuntimeDefault or Localhost")
    if not _selinux_ok(psc.get("seLinuxOptions")):
        found.append("spec.securityContext.seLinuxOptions: type, user or role not allowed")
    if (psc.get("seccompProfile") or {}).get("type") == "Unconfined":
        found.append("spec.securityContext.seccompProfile: Unconfined is forbidden")
    for sysctl in psc.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            found.append(f"spec.securityContext.sysctls: {sysctl.get('name')} is not a safe sysctl")
    return found


def _baseline_container(where: str, ctr: dict[str, Any]) -> list[str]:
    sc = ctr.get("securityContext") or {}
    found = []
    if sc.get("privileged"):
        found.append(f"{where}.securityContext.privileged: forbidden")
    if (sc.get("windowsOptions") or {}).get("hostProcess"):
        found.append(f"{where}.securityContext.windowsOptions.hostProcess: forbidden")
    added = set((sc.get("capabilities") or {}).get("add") or [])
    if added - BASELINE_CAPABILITIES:
        found.append(f"{where}.securityContext.capabilities.add: {sorted(added - BASELINE_CAPABILITIES)}")
    for port in ctr.get("ports") or []:
        if port.get("hostPort"):
            found.append(f"{where}.ports[{port.get('name', port.get('containerPort'))}].hostPort: forbidden")
    if not _apparmor_ok(sc.get("appArmorProfile")):
        found.append(f"{where}.securityContext.appArmorProfile: must be RuntimeDefault or Localhost")
    if not _selinux_ok(sc.get("seLinuxOptions")):
        found.append(f"{where}.securityContext.seLinuxOptions: type, user or role not allowed")
    if sc.get("procMount", "Default") != "Default":
        found.append(f"{where}.securityContext.procMount: must be Default")
    if (sc.get("seccompProfile") or {}).get("type") == "Unconfined":
        found.append(f"{where}.securityContext.seccompProfile: Unconfined is forbidden")
    return found


def _restricted_pod(spec: dict[str, Any]) -> list[str]:
    psc = spec.get("securityContext") or {}
    found = []
    for vol in spec.get("volumes") or []:
        kinds = set(vol) - _VOLUME_META
        if kinds - RESTRICTED_VOLUME_TYPES:
            found.append(f"spec.volumes[{vol.get('name')}]: volume type {sorted(kinds)} is not allowed")
    if psc.get("runAsUser") == 0:
        found.append("spec.securityContext.runAsUser: must not be 0")
    return found


def _restricted_container(where: str, ctr: dict[str, Any], psc: dict[str, Any]) -> list[str]:
    sc = ctr.get("securityContext") or {}
    found = []
    if sc.get("allowPrivilegeEscalation") is not False:
        found.append(f"{where}.securityContext.allowPrivilegeEscalation: must be false")
    non_root = sc.get("runAsNonRoot", psc.get("runAsNonRoot"))
    if non_root is not True:
        found.append(f"{where}.securityContext.runAsNonRoot: must be true (here or for the pod)")
    if sc.get("runAsUser") == 0:
        found.append(f"{where}.securityContext.runAsUser: must not be 0")
    seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
    if seccomp not in ("RuntimeDefault", "Localhost"):
        found.append(f"{where}.securityContext.seccompProfile: RuntimeDefault or Localhost (here or for the pod)")
    caps = sc.get("capabilities") or {}
    if "ALL" not in (caps.get("drop") or []):
        found.append(f"{where}.securityContext.capabilities.drop: must include ALL")
    added = set(caps.get("add") or [])
    if added - RESTRICTED_CAPABILITIES:
        found.append(f"{where}.securityContext.capabilities.add: only NET_BIND_SERVICE, not {sorted(added)}")
    return found


def violations(template: dict[str, Any], level: str = "restricted") -> list[str]:
    """Every rule of ``level`` (baseline or restricted) the pod template breaks."""
    assert level in ("baseline", "restricted"), level
    spec = template.get("spec") or {}
    psc = spec.get("securityContext") or {}
    found = _baseline_pod(template)
    for where, ctr in _containers(spec):
        found += _baseline_container(where, ctr)
    if level == "restricted":
        found += _restricted_pod(spec)
        for where, ctr in _containers(spec):
            found += _restricted_container(where, ctr, psc)
    return found
