#!/usr/bin/env python3
"""Checks packaging/helm/tether-agent offline: `helm lint --strict` through
the Helm SDK (helm-python-sdk), renders it with several value sets, checks
what the rendering must contain, has the built agent (target/debug) check
the rendered agent.toml, and validates every manifest against the
Kubernetes 1.33 schemas (kubernetes-validate --strict). Exits non-zero on
any finding."""

import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import helm_python as helm
import yaml

CHART = Path(__file__).resolve().parent.parent / "packaging/helm/tether-agent"
KUBE = "1.33.0"

CASES = {
    "defaults": {},
    "existing-secret": {
        "token": {"existingSecret": "agent-token", "existingSecretKey": "tok"},
        "agent": {"name": "eu-prod", "tags": ["eu", "prod"]},
        "customCA": {"configMapName": "corp-ca"},
        "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy.corp:3128"}],
        "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/t"}},
        "config": {
            "routes": {
                "jenkins": {
                    "url": "https://jenkins.corp.internal:8443",
                    "methods": ["GET", "POST"],
                    "paths": ["/api/**"],
                    "headers": {"Authorization": "Bearer ${{ secrets.jenkins_token }}"},
                }
            },
            "secrets": {"jenkins_token": {"env": "JENKINS_TOKEN"}},
        },
    },
    "token-value": {"token": {"value": "tta_0123456789abcdef_x"}, "replicaCount": 1},
}

RELAY_CHART = CHART.parent / "tether-relay"
RELAY_CASES = {
    "relay-defaults": {},
    "relay-secrets": {
        "store": {"existingSecret": "relay-db", "existingSecretKey": "dsn"},
        "peerKey": {"value": "0123456789abcdef-peer"},
        "adminKey": {"existingSecret": "relay-admin"},
        "extraConfig": "[limits]\ncaller_rate = 50\n",
    },
}


def fail(message):
    print(f"FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def main():
    report = helm.lint(str(CHART), strict=True, kube_version=f"v{KUBE}")
    findings = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
    if report.get("errors") or findings:
        fail(f"helm lint --strict: {report}")
    print(f"==> helm lint --strict: clean ({len(report.get('messages', []))} info messages)")

    chart = helm.Chart.load(str(CHART))
    with tempfile.TemporaryDirectory() as tmp:
        for case, values in CASES.items():
            docs = render(chart, values)
            check(case, values, docs)
            agent_check(case, docs, Path(tmp))
            validate(case, docs, tmp)
            kinds = ", ".join(sorted(k for k, _ in docs))
            print(f"==> render {case}: {kinds}; kubernetes-validate -k {KUBE} --strict: valid")
    relay_charts()


def render(chart, values):
    """The chart's manifests rendered with `values`, by (kind, name)."""
    rendered = chart.render(values, name="tether", namespace="portal", is_install=True)
    docs = {}
    for path, text in rendered.items():
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                docs[(doc["kind"], doc["metadata"]["name"])] = doc
    return docs


def validate(case, docs, tmp):
    out = Path(tmp) / f"{case}.yaml"
    out.write_text("\n---\n".join(yaml.safe_dump(d) for d in docs.values()))
    result = subprocess.run(
        ["kubernetes-validate", "-k", KUBE, "--strict", "--quiet", str(out)],
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        fail(f"kubernetes-validate {case}:\n{result.stdout}{result.stderr}")


def relay_charts():
    """packaging/helm/tether-relay: lint, render, the relay accepts the
    rendered relay.toml (as a replica would see it), manifests valid."""
    report = helm.lint(str(RELAY_CHART), strict=True, kube_version=f"v{KUBE}")
    findings = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
    if report.get("errors") or findings:
        fail(f"helm lint --strict (relay): {report}")
    print(f"==> helm lint --strict tether-relay: clean ({len(report.get('messages', []))} info messages)")
    chart = helm.Chart.load(str(RELAY_CHART))
    relay = RELAY_CHART.parent.parent.parent / "target/debug/tether-relay"
    with tempfile.TemporaryDirectory() as tmp:
        for case, values in RELAY_CASES.items():
            docs = render(chart, values)
            sts = docs[("StatefulSet", "tether-tether-relay")]
            peers = docs[("Service", "tether-tether-relay-peers")]
            if peers["spec"]["clusterIP"] != "None" or sts["spec"]["serviceName"] != "tether-tether-relay-peers":
                fail(f"{case}: peers need a headless Service named by the StatefulSet")
            if ("PodDisruptionBudget", "tether-tether-relay") not in docs:
                fail(f"{case}: no PDB")
            env = {e["name"]: e for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]}
            store_secret = env["TETHER_RELAY_STORE_URL"]["valueFrom"]["secretKeyRef"]
            if values.get("store") and store_secret != {"name": "relay-db", "key": "dsn"}:
                fail(f"{case}: store URL secret {store_secret}")
            config = Path(tmp) / f"{case}.toml"
            config.write_text(docs[("ConfigMap", "tether-tether-relay")]["data"]["relay.toml"])
            key = Path(tmp) / "peer.key"
            key.write_text("0123456789abcdef-peer\n")
            text = config.read_text().replace("/etc/tether/peer/key", str(key))
            config.write_text(text)
            result = subprocess.run(
                [str(relay), "--config", str(config), "check"],
                capture_output=True, text=True,
                env={"PATH": "/usr/bin:/bin", "HOSTNAME": "tether-tether-relay-0",
                     "TETHER_RELAY_STORE_URL": "postgres://tether@db/tether",
                     "TETHER_RELAY_ADVERTISE": "http://tether-tether-relay-0.tether-tether-relay-peers.portal.svc:9470"},
            )
            if result.returncode != 0:
                fail(f"{case}: the relay refuses the rendered config:\n{result.stdout}{result.stderr}")
            validate(case, docs, tmp)
            kinds = ", ".join(sorted(k for k, _ in docs))
            print(f"==> render {case}: {kinds}; relay check: {result.stdout.strip()}; kubernetes-validate: valid")


def agent_check(case, docs, tmp):
    """The rendered agent.toml is a config the agent accepts."""
    agent = CHART.parent.parent.parent / "target/debug/tether-agent"
    config = tmp / f"{case}.toml"
    config.write_text(docs[("ConfigMap", "tether-tether-agent")]["data"]["agent.toml"])
    result = subprocess.run(
        [str(agent), "check", "--offline", "--config", str(config)],
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        fail(f"{case}: the agent refuses the rendered config:\n{result.stdout}{result.stderr}")


def check(case, values, docs):
    deployment = docs[("Deployment", "tether-tether-agent")]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    sc = container["securityContext"]
    if not (sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
            and sc["capabilities"]["drop"] == ["ALL"] and pod["securityContext"]["runAsNonRoot"]):
        fail(f"{case}: security context {sc}")
    if container["livenessProbe"]["httpGet"]["path"] != "/healthz" or \
            container["readinessProbe"]["httpGet"]["path"] != "/readyz":
        fail(f"{case}: probes")
    if "podAntiAffinity" not in pod["affinity"]:
        fail(f"{case}: no anti-affinity")
    config = tomllib.loads(docs[("ConfigMap", "tether-tether-agent")]["data"]["agent.toml"])
    if config["relay"]["token_file"] != "/etc/tether/token/token":
        fail(f"{case}: token_file {config['relay']}")
    token_volume = next(v for v in pod["volumes"] if v["name"] == "token")["secret"]
    existing = values.get("token", {}).get("existingSecret")
    if existing:
        if token_volume["secretName"] != existing or token_volume["items"][0]["key"] != "tok":
            fail(f"{case}: token volume {token_volume}")
        if any(kind == "Secret" for kind, _ in docs):
            fail(f"{case}: made a Secret although one exists")
        if config["relay"].get("ca_file") != "/etc/tether/ca/ca.pem":
            fail(f"{case}: custom CA not used for the relay")
        if config["routes"]["jenkins"]["headers"]["Authorization"] != "Bearer ${{ secrets.jenkins_token }}":
            fail(f"{case}: route headers {config['routes']}")
        if config["agent"] != {"name": "eu-prod", "tags": ["eu", "prod"]}:
            fail(f"{case}: agent {config['agent']}")
    elif values.get("token", {}).get("value"):
        if ("Secret", "tether-tether-agent-token") not in docs:
            fail(f"{case}: no chart-made Secret")
        if ("PodDisruptionBudget", "tether-tether-agent") in docs:
            fail(f"{case}: a PDB with one replica blocks node drains")
    else:
        if token_volume["secretName"] != "tether-tether-agent-token":
            fail(f"{case}: token volume {token_volume}")
        if deployment["spec"]["replicas"] != 2 or ("PodDisruptionBudget", "tether-tether-agent") not in docs:
            fail(f"{case}: replicas/PDB")


if __name__ == "__main__":
    main()
