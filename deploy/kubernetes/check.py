#!/usr/bin/env python3
"""keyward's rules for a rendered overlay (validate.sh): check.py sqlite|postgres FILE.

The schemas say a manifest is well-formed; this says it deploys keyward as the README
describes: hardened pods, the right probes, only the public listener open beyond the
namespace, one replica on SQLite and several on PostgreSQL.
"""

import sys

import yaml


def main(overlay, path):
    with open(path, encoding="utf-8") as f:
        objects = {(o["kind"], o["metadata"]["name"]): o for o in yaml.safe_load_all(f) if o}
    errors = []

    def expect(condition, message):
        if not condition:
            errors.append(message)

    deployment = objects[("Deployment", "keyward")]
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"]["labels"]
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    expect(ports == {"public": 8080, "internal": 8081}, f"container ports {ports}")

    security = pod["securityContext"]
    expect(security.get("runAsNonRoot") is True, "pod: runAsNonRoot")
    expect(security.get("runAsUser") == 10001 and security.get("runAsGroup") == 10001, "pod: uid/gid 10001")
    expect(security.get("seccompProfile", {}).get("type") == "RuntimeDefault", "pod: seccomp RuntimeDefault")
    expect(pod.get("automountServiceAccountToken") is False, "pod: no service account token")
    csec = container["securityContext"]
    expect(csec.get("allowPrivilegeEscalation") is False, "container: allowPrivilegeEscalation false")
    expect(csec.get("readOnlyRootFilesystem") is True, "container: readOnlyRootFilesystem")
    expect(csec.get("capabilities", {}).get("drop") == ["ALL"], "container: capabilities drop ALL")
    resources = container.get("resources", {})
    expect({"cpu", "memory"} <= set(resources.get("requests", {})), "container: cpu and memory requests")
    expect("memory" in resources.get("limits", {}), "container: memory limit")

    for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = container.get(probe, {}).get("httpGet", {})
        expect(get.get("path") == path and get.get("port") == "public", f"{probe}: GET {path} on the public port")

    env = {e["name"]: e for e in container.get("env", [])}
    expect("secretKeyRef" in env.get("KEYWARD_MASTER_KEY", {}).get("valueFrom", {}), "master key from a Secret")
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    expect("configMap" in volumes.get(mounts.get("/etc/keyward/config"), {}), "keys.toml from a ConfigMap")
    expect(env.get("KEYWARD_CONFIG", {}).get("value") == "/etc/keyward/config/keys.toml", "KEYWARD_CONFIG")

    data = volumes.get(mounts.get("/data"), {})
    if overlay == "sqlite":
        expect(spec.get("replicas") == 1, "sqlite: exactly one replica")
        expect(spec.get("strategy", {}).get("type") == "Recreate", "sqlite: Recreate strategy")
        claim = data.get("persistentVolumeClaim", {}).get("claimName")
        expect(claim is not None and ("PersistentVolumeClaim", claim) in objects, "sqlite: /data on a claim")
        expect("emptyDir" not in data, "sqlite: /data is not also an emptyDir")
    else:
        expect(spec.get("replicas", 1) >= 2, "postgres: several replicas")
        for name in ("KEYWARD_DATABASE_URL", "PGPASSWORD"):
            expect("secretKeyRef" in env.get(name, {}).get("valueFrom", {}), f"postgres: {name} from a Secret")

    for name, port in (("keyward-public", "public"), ("keyward-internal", "internal")):
        service = objects.get(("Service", name))
        expect(service is not None, f"Service {name}")
        if service:
            expect(service["spec"]["selector"].items() <= labels.items(), f"{name} selects the pods")
            targets = [p["targetPort"] for p in service["spec"]["ports"]]
            expect(targets == [port], f"{name} targets only the {port} port, not {targets}")

    pdb = objects.get(("PodDisruptionBudget", "keyward"))
    expect(pdb is not None and pdb["spec"]["selector"]["matchLabels"].items() <= labels.items(), "PDB")

    policy = objects.get(("NetworkPolicy", "keyward"), {}).get("spec")
    expect(policy is not None and "Ingress" in policy["policyTypes"], "NetworkPolicy on ingress")
    if policy:
        expect(policy["podSelector"]["matchLabels"].items() <= labels.items(), "NetworkPolicy selects the pods")
        for rule in policy.get("ingress", []):
            rule_ports = [p.get("port") for p in rule.get("ports", [])]
            expect(rule_ports != [], "NetworkPolicy: every rule names its ports")
            sources = rule.get("from")
            same_namespace = bool(sources) and all(set(s) == {"podSelector"} for s in sources)
            expect(rule_ports == ["public"] or same_namespace,
                   f"NetworkPolicy: {rule_ports} open beyond the namespace")

    for error in errors:
        print(f"{overlay}: {error}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
