#!/usr/bin/env python3
"""Checks packaging/helm/* offline, as `helm install -f VALUES` would see
them, through the Helm SDK (PyPI helm-python-sdk, no helm binary):

- every chart's ci/*-values.yaml is read with Helm's own values loader,
  linted (`helm lint --strict`) and rendered; what the rendering must
  contain is checked per case;
- the rendered agent.toml / relay.toml is checked by the built binary
  (target/debug: `tether-agent check --offline`, `tether-relay check --offline`), with
  the files it names created under a temporary directory;
- every manifest is validated against the Kubernetes 1.33 schemas
  (kubernetes-validate --strict);
- every key the programs accept (read from their config structs) can be
  written in values.schema.json and reaches a rendered file the program
  accepted; values the charts must refuse (unknown keys, conflicts) fail the
  render.

Exits non-zero on the first finding."""

import json
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import helm_python as helm
import yaml

ROOT = Path(__file__).resolve().parent.parent
AGENT_CHART = ROOT / "packaging/helm/tether-agent"
RELAY_CHART = ROOT / "packaging/helm/tether-relay"
KUBE = "1.33.0"
RELEASE, NAMESPACE = "tether", "portal"

# Values each chart must refuse, with a piece of the message.
AGENT_REFUSED = {
    "replicacount: 3\n": "additional properties 'replicacount' not allowed",
    "config:\n  relay: {url: wss://r.example/v1/agent/connect, pin_interval: 5s}\n":
        "additional properties 'pin_interval' not allowed",
    "config:\n  relay: {url: wss://r.example/v1/agent/connect}\n  routes:\n    x: {url: http://x, timeout: 30}\n":
        "/config/routes/x/timeout",
    "config:\n  relay: {url: wss://r.example/v1/agent/connect, connections: 2.5}\n":
        "/config/relay/connections",
    "{}\n": "config.relay.url is required",
    "config:\n  relay: {url: wss://r.example/v1/agent/connect, token: tta_x}\n":
        "would put the agent token in a ConfigMap",
    "config:\n  relay: {url: wss://r.example/v1/agent/connect, accept_rotation: true}\n":
        "mounted read-only",
    "token: {existingSecret: t}\nconfig:\n  relay: {url: wss://r.example/v1/agent/connect, token_file: /t}\n":
        "not both",
    "proxy: {url: 'http://p:3128'}\nconfig:\n  relay: {url: wss://r.example/v1/agent/connect, proxy: 'http://q:3128'}\n":
        "config.relay.proxy and proxy.* both set",
    "clientCertificate: {secretName: c}\nconfig:\n  relay: {url: wss://r.example/v1/agent/connect, client_cert_file: /c}\n":
        "clientCertificate.secretName both set",
    "auditFile: {enabled: true}\nconfig:\n  relay: {url: wss://r.example/v1/agent/connect}\n  audit: {file: /a}\n":
        "auditFile.enabled both set",
    "serviceMonitor: {enabled: true}\nconfig:\n  relay: {url: wss://r.example/v1/agent/connect}\n":
        "networkPolicy.metricsFrom",
    "config:\n  relay: {url: wss://r.example/v1/agent/connect}\n  admin: {listen: '127.0.0.1:9464'}\n":
        "/config/admin/listen",
}
RELAY_REFUSED = {
    "replicacount: 3\n": "additional properties 'replicacount' not allowed",
    "extraConfig: \"[limits]\\ncaller_rate = 5\\n\"\n": "additional properties 'extraConfig' not allowed",
    "config:\n  limits: {caller_rate: 50, caller_brust: 100}\n": "additional properties 'caller_brust' not allowed",
    "config:\n  listen: {public: '0.0.0.0:1'}\n": "additional properties 'listen' not allowed",
    "routeDomain: '*.routes.example.com'\n": "routeDomain",
    "config:\n  cluster: {replica_id: r0}\n": "additional properties 'replica_id' not allowed",
    "adminKey: {existingSecret: k}\nconfig:\n  admin: {key_file: /k}\n": "adminKey.existingSecret both set",
    "tls: {secretName: t}\nconfig:\n  tls: {cert_file: /c, key_file: /k}\n": "tls.secretName both set",
    "serviceMonitor: {enabled: true}\nadminService: {enabled: false}\n": "adminService.enabled",
}


def fail(message):
    print(f"FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def main():
    helm.disable_logging()
    agent_cases = load_cases(AGENT_CHART)
    relay_cases = load_cases(RELAY_CHART)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cert_pem, key_pem = self_signed(tmp)
        seen = set()
        for case, values in agent_cases.items():
            lint(AGENT_CHART, case, values)
            docs = render(AGENT_CHART, values)
            text = only(docs, "ConfigMap")["data"]["agent.toml"]
            seen |= program_check(AGENT_CHART, case, text, tmp, cert_pem, key_pem)
            agent_checks(case, values, docs)
            validate(case, docs, tmp)
            print(f"==> tether-agent {case}: lint clean; {kinds(docs)}; agent check --offline: ok; "
                  f"kubernetes-validate -k {KUBE} --strict: valid")
        coverage(AGENT_CHART, seen)
        refused(AGENT_CHART, AGENT_REFUSED)

        seen = set()
        for case, values in relay_cases.items():
            lint(RELAY_CHART, case, values)
            docs = render(RELAY_CHART, values)
            text = only(docs, "ConfigMap")["data"]["relay.toml"]
            seen |= program_check(RELAY_CHART, case, text, tmp, cert_pem, key_pem)
            relay_checks(case, values, docs)
            validate(case, docs, tmp)
            print(f"==> tether-relay {case}: lint clean; {kinds(docs)}; relay check: ok; "
                  f"kubernetes-validate -k {KUBE} --strict: valid")
        coverage(RELAY_CHART, seen)
        refused(RELAY_CHART, RELAY_REFUSED)


def load_cases(chart):
    """ci/NAME-values.yaml, read as `helm -f` reads it (numbers and all)."""
    cases = {}
    for path in sorted((chart / "ci").glob("*-values.yaml")):
        cases[path.name.removesuffix("-values.yaml")] = helm.values_from_yaml(path.read_text())
    if not cases:
        fail(f"{chart}: no ci/*-values.yaml")
    return cases


def lint(chart, case, values):
    report = helm.lint(str(chart), strict=True, kube_version=f"v{KUBE}", values=values)
    findings = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
    if report.get("errors") or findings:
        fail(f"helm lint --strict {chart.name} {case}: {report}")


def render(chart, values):
    """The chart's manifests rendered with `values`, as a list."""
    rendered = helm.Chart.load(str(chart)).render(
        values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs = []
    for path, text in rendered.items():
        if not path.endswith("NOTES.txt"):
            docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def refused(chart, cases):
    """Each of these values must fail `helm template`/`install` (and lint)."""
    for text, expected in cases.items():
        values = helm.values_from_yaml(text)
        try:
            render(chart, values)
        except helm.HelmError as e:
            if expected not in str(e):
                fail(f"{chart.name}: {text!r} refused, but not with {expected!r}: {e}")
        else:
            fail(f"{chart.name}: values accepted, must be refused: {text!r}")
        # Lint reports schema errors; a template's `fail` only in `template`
        # and `install` (Helm's lint mode downgrades it).
        if expected.startswith("/") or "additional properties" in expected:
            report = helm.lint(str(chart), strict=True, kube_version=f"v{KUBE}", values=values)
            if not report.get("errors"):
                fail(f"{chart.name}: helm lint accepts {text!r}")
    print(f"==> {chart.name}: {len(cases)} wrong value sets refused by `helm template` "
          "(schema errors by `helm lint` too)")


def only(docs, kind, name_suffix=""):
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(name_suffix)]
    if len(found) != 1:
        fail(f"expected one {kind} *{name_suffix}, found {len(found)}")
    return found[0]


def has(docs, kind):
    return any(d["kind"] == kind for d in docs)


def kinds(docs):
    return ", ".join(sorted(d["kind"] for d in docs))


def validate(case, docs, tmp):
    # The Prometheus Operator's CRD is not in kubernetes-validate's schemas.
    core = [d for d in docs if d["kind"] != "ServiceMonitor"]
    out = tmp / f"{case}.yaml"
    out.write_text("\n---\n".join(yaml.safe_dump(d) for d in core))
    result = subprocess.run(
        ["kubernetes-validate", "-k", KUBE, "--strict", "--quiet", str(out)],
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        fail(f"kubernetes-validate {case}:\n{result.stdout}{result.stderr}")


# ---- the programs accept what the charts render --------------------------

def self_signed(tmp):
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "1", "-subj", "/CN=tether-check", "-keyout", str(tmp / "k.pem"),
         "-out", str(tmp / "c.pem")],
        check=True, capture_output=True,
    )
    return (tmp / "c.pem").read_text(), (tmp / "k.pem").read_text()


def program_check(chart, case, text, tmp, cert_pem, key_pem):
    """Has the built binary check `text` (the file as a pod reads it), with
    every absolute path in it moved under `tmp` and a file there (a PEM
    certificate or key where one is expected). Keys the schema knows ahead
    of this build (see `ahead`) are taken out first. Returns the key paths
    of the file that was checked."""
    config = tomllib.loads(text)
    schema = config_schema(chart)
    for path in ahead(chart) if schema else ():
        drop(config, path.split("."), schema)
    root = tmp / f"{chart.name}-{case}"

    def relocate(value, key):
        if isinstance(value, dict):
            return {k: relocate(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [relocate(v, key) for v in value]
        if isinstance(value, str) and value.startswith("/") and key != "url":
            moved = root / value.lstrip("/")
            moved.parent.mkdir(parents=True, exist_ok=True)
            if "key" in key:
                moved.write_text(key_pem)
            elif "cert" in key or "ca" in key:
                moved.write_text(cert_pem)
            elif key == "token_file":
                moved.write_text("tta_0123456789abcdef_x\n")
            elif key == "policy":
                moved.write_text("package tether\n\ndefault allow := false\n")
            elif key != "file" or "audit" not in str(moved):
                moved.write_text("placeholder\n")
            return str(moved)
        return value

    config = relocate(config, "")
    checked = root / Path(chart.name.replace("tether-", "")).with_suffix(".toml")
    checked.parent.mkdir(parents=True, exist_ok=True)
    checked.write_text(toml_dump(config))
    if chart == AGENT_CHART:
        command = [str(ROOT / "target/debug/tether-agent"), "check", "--offline", "--config", str(checked)]
        env = {"PATH": "/usr/bin:/bin"}
    else:
        # As replica 0 of the StatefulSet sees it (the chart's env).
        command = [str(ROOT / "target/debug/tether-relay"), "--config", str(checked), "check", "--offline"]
        env = {"PATH": "/usr/bin:/bin", "HOSTNAME": f"{RELEASE}-tether-relay-0",
               "TETHER_RELAY_STORE_URL": "postgres://tether@db/tether",
               "TETHER_RELAY_ADVERTISE": "http://tether-relay-0.peers.portal.svc:9470"}
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        fail(f"{chart.name} {case}: the program refuses the rendered file:\n"
             f"{toml_dump(config)}\n{result.stdout}{result.stderr}")
    return key_paths(config, schema) if schema else set()


def toml_dump(value, prefix=""):
    """A small TOML writer for what tomllib read back (tables, strings,
    integers, floats, booleans, lists of those), keeping each type."""
    def scalar(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list):
            return "[" + ", ".join(scalar(x) for x in v) + "]"
        raise TypeError(v)

    def key(k):
        return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else scalar(k)

    lines = [f"{key(k)} = {scalar(v)}" for k, v in value.items() if not isinstance(v, dict)]
    for k, v in value.items():
        if isinstance(v, dict):
            name = f"{prefix}.{key(k)}" if prefix else key(k)
            lines += ["", f"[{name}]", toml_dump(v, name)]
    return "\n".join(lines)


# ---- every key the programs accept ---------------------------------------

# The config structs of each program: (source globs, root struct).
SOURCES = {
    AGENT_CHART: (["src/**/*.rs"], "RawConfig"),
    RELAY_CHART: (["crates/relay/src/**/*.rs"], "RelayConfig"),
}
# Keys the chart sets from values of its own and refuses in `config`.
CHART_OWNED = {
    AGENT_CHART: set(),
    RELAY_CHART: {"listen.public", "listen.admin", "listen.proxy", "listen.route_domain", "store.url",
                  "cluster.replica_id", "cluster.peer_listen", "cluster.advertise",
                  "cluster.peer_key_file"},
}


def program_keys(chart):
    """Every key path the program's TOML accepts (`routes.*.url`, ...),
    read from its serde structs (deny_unknown_fields everywhere): the root
    struct's fields, recursing into the structs and enums they name."""
    patterns, root = SOURCES[chart]
    source = "\n".join(p.read_text() for pattern in patterns for p in sorted(ROOT.glob(pattern)))
    types = {}
    for m in re.finditer(r"((?:#\[[^\]]*\]\s*)*)(?:pub(?:\([a-z]+\))?\s+)?(struct|enum)\s+(\w+)\s*\{", source):
        depth, i = 1, m.end()
        while depth:
            depth += {"{": 1, "}": -1}.get(source[i], 0)
            i += 1
        body = source[m.end():i - 1]
        field_depth = 1 if m.group(2) == "struct" else 2
        fields, depth, attributes = {}, 1, ""
        for line in body.splitlines():
            code = line.split("//")[0]
            if code.strip().startswith("#"):
                attributes += code
            f = re.match(r"\s*(?:pub(?:\([a-z]+\))?\s+)?([a-z_][a-z0-9_]*)\s*:\s*(.+?),?\s*$", code)
            if f and depth == field_depth:
                if "flatten" in attributes or "rename" in attributes:
                    fail(f"program_keys: teach it serde's flatten/rename (field {f.group(1)} of {m.group(3)})")
                fields[f.group(1)] = f.group(2)
            if f or not code.strip().startswith("#"):
                attributes = "" if code.strip() else attributes
            depth += code.count("{") - code.count("}")
        tag = re.search(r'tag\s*=\s*"(\w+)"', m.group(1))
        if tag:
            fields[tag.group(1)] = "String"
        types[m.group(3)] = fields

    keys = set()

    def walk(struct, prefix):
        for name, ty in types[struct].items():
            path = prefix + name
            inner = [t for t in re.findall(r"\w+", ty) if t in types and t != struct]
            if not inner:
                keys.add(path)
            elif "BTreeMap" in ty.split(inner[0])[0] or "HashMap" in ty.split(inner[0])[0]:
                walk(inner[0], path + ".*.")
            else:
                walk(inner[0], path + ".")

    if root not in types:
        fail(f"program_keys: no struct {root} in {patterns}")
    walk(root, "")
    return keys


def config_schema(chart):
    """`config` of values.schema.json and its definitions (None without one;
    `coverage` fails then)."""
    path = chart / "values.schema.json"
    if not path.exists():
        return None
    schema = json.loads(path.read_text())
    return schema["properties"]["config"], schema["definitions"]


def resolve(node, definitions):
    while "$ref" in node:
        node = definitions[node["$ref"].rsplit("/", 1)[1]]
    return node


def branches(node, definitions):
    node = resolve(node, definitions)
    return [resolve(b, definitions) for b in node.get("oneOf", [node])]


def shape(node, definitions):
    """("struct", its properties), ("map", the schema of its values) or
    ("leaf", None): how a schema node holds keys."""
    props = {}
    for branch in branches(node, definitions):
        props.update(branch.get("properties", {}))
    if props:
        return "struct", props
    values = resolve(node, definitions).get("additionalProperties")
    if isinstance(values, dict) and shape(values, definitions)[0] == "struct":
        return "map", values
    return "leaf", None


def schema_keys(chart):
    """Every key path values.schema.json lets `config` hold."""
    node, definitions = config_schema(chart)
    keys = set()

    def walk(node, prefix):
        for name, sub in shape(node, definitions)[1].items():
            form, inner = shape(sub, definitions)
            if form == "struct":
                walk(sub, prefix + name + ".")
            elif form == "map":
                walk(inner, prefix + name + ".*.")
            else:
                keys.add(prefix + name)

    walk(node, "")
    return keys


def key_paths(config, schema):
    """The key paths present in `config`, map keys (route names...) as `*`."""
    node, definitions = schema
    keys = set()

    def walk(value, node, prefix):
        props = shape(node, definitions)[1]
        for name, sub in value.items():
            form, inner = shape(props[name], definitions) if name in props else ("leaf", None)
            if form == "struct" and isinstance(sub, dict):
                walk(sub, props[name], prefix + name + ".")
            elif form == "map" and isinstance(sub, dict):
                for item in sub.values():
                    walk(item, inner, prefix + name + ".*.")
            else:
                keys.add(prefix + name)

    walk(config, node, "")
    return keys


def ahead(chart):
    """Keys the chart's schema knows and this build of the program does not
    yet (another change adds them): rendered, but not given to the program."""
    return schema_keys(chart) - program_keys(chart)


def drop(config, path, schema):
    head, rest = path[0], path[1:]
    if head == "*":
        for item in config.values():
            drop(item, rest, schema)
    elif head in config:
        if rest:
            drop(config[head], rest, schema)
        else:
            del config[head]


def coverage(chart, seen):
    if not config_schema(chart):
        fail(f"{chart.name}: no values.schema.json")
    program = program_keys(chart)
    schema = schema_keys(chart)
    owned = CHART_OWNED[chart]
    missing = program - schema - owned
    if missing:
        fail(f"{chart.name}: keys the program accepts that values.schema.json cannot set: {sorted(missing)}")
    unexercised = program - seen - owned - {"relay.token"}
    if unexercised:
        fail(f"{chart.name}: keys no ci/*-values.yaml brings to a rendered file: {sorted(unexercised)}")
    note = f"; schema ahead of this build: {sorted(schema - program)}" if schema - program else ""
    mine = f" ({len(owned)} of them set by the chart itself)" if owned else ""
    print(f"==> {chart.name}: all {len(program)} keys of the program settable{mine} and "
          f"accepted in a rendered file{note}")


# ---- what each rendering must contain ------------------------------------

def pod_of(docs, kind):
    workload = only(docs, kind)
    return workload, workload["spec"]["template"]["spec"]


def common_pod_checks(case, pod, values):
    container = pod["containers"][0]
    # The image's program accepts the chart's command line.
    program = Path(container["image"].rsplit(":", 1)[0]).name
    result = subprocess.run([str(ROOT / "target/debug" / program), *container["args"], "--help"],
                            capture_output=True, text=True)
    if result.returncode != 0:
        fail(f"{case}: {program} refuses the chart's args {container['args']}: {result.stderr}")
    sc = container["securityContext"]
    if not (sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
            and sc["capabilities"]["drop"] == ["ALL"] and pod["securityContext"]["runAsNonRoot"]):
        fail(f"{case}: security context {sc}")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        if container[probe]["httpGet"]["path"] != path:
            fail(f"{case}: {probe}")
        for k, v in values.get(probe, {}).items():
            if container[probe][k] != v:
                fail(f"{case}: {probe}.{k} is {container[probe][k]}, values say {v}")
    if values.get("startupProbe", {}).get("enabled", True):
        if container.get("startupProbe", {}).get("httpGet", {}).get("path") != "/healthz":
            fail(f"{case}: startupProbe")
    for key in ("priorityClassName", "dnsPolicy", "dnsConfig"):
        if values.get(key) and pod.get(key) != values[key]:
            fail(f"{case}: {key} {pod.get(key)}")
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for extra in values.get("extraVolumes", []):
        if volumes.get(extra["name"]) != extra:
            fail(f"{case}: extraVolume {extra['name']}")
    for extra in values.get("extraVolumeMounts", []):
        if mounts.get(extra["name"]) != extra:
            fail(f"{case}: extraVolumeMount {extra['name']}")
    for name in mounts:
        if name not in volumes:
            fail(f"{case}: mount {name} has no volume")
    return container, mounts, volumes


def labels_checks(case, docs, values):
    for doc in docs:
        labels = doc["metadata"].get("labels", {})
        for k, v in values.get("commonLabels", {}).items():
            if labels.get(k) != v:
                fail(f"{case}: {doc['kind']} lacks common label {k}")


def agent_checks(case, values, docs):
    deployment, pod = pod_of(docs, "Deployment")
    container, mounts, volumes = common_pod_checks(case, pod, values)
    labels_checks(case, docs, values)
    config = tomllib.loads(only(docs, "ConfigMap")["data"]["agent.toml"])
    wanted = values.get("config", {})
    relay = config["relay"]
    if "podAntiAffinity" not in pod["affinity"] and not values.get("affinity"):
        fail(f"{case}: no anti-affinity")
    # Numbers stay integers: what values say is what the file says.
    if relay.get("connections", 2) != wanted["relay"].get("connections", 2) or \
            not isinstance(relay.get("connections", 2), int):
        fail(f"{case}: relay.connections {relay.get('connections')!r}")
    ports = config.get("forward", {}).get("connect_ports")
    if ports is not None and (ports != wanted["forward"]["connect_ports"]
                              or not all(isinstance(p, int) for p in ports)):
        fail(f"{case}: forward.connect_ports {ports!r}")
    admin_port = int(config["admin"]["listen"].rsplit(":", 1)[1])
    if container["ports"][0]["containerPort"] != admin_port:
        fail(f"{case}: container port vs admin.listen")
    service = only(docs, "Service", "-metrics")
    if service["spec"]["ports"][0]["port"] != admin_port:
        fail(f"{case}: metrics Service port")

    if wanted["relay"].get("token_file"):
        if "token" in volumes or relay["token_file"] != wanted["relay"]["token_file"]:
            fail(f"{case}: own token_file")
    else:
        if relay["token_file"] != "/etc/tether/token/token" or mounts["token"]["mountPath"] != "/etc/tether/token":
            fail(f"{case}: token_file {relay}")
        token_volume = volumes["token"]["secret"]
        existing = values.get("token", {}).get("existingSecret")
        if existing:
            if token_volume["secretName"] != existing or \
                    token_volume["items"][0]["key"] != values["token"].get("existingSecretKey", "token"):
                fail(f"{case}: token volume {token_volume}")
            if has(docs, "Secret"):
                fail(f"{case}: made a Secret although one exists")
        elif values.get("token", {}).get("value"):
            if only(docs, "Secret", "-token")["metadata"]["name"] != token_volume["secretName"]:
                fail(f"{case}: chart-made Secret not mounted")
        elif not token_volume["secretName"].endswith("-token"):
            fail(f"{case}: token volume {token_volume}")

    ca = values.get("customCA", {})
    if ca.get("configMapName") or ca.get("secretName"):
        if relay.get("ca_file") != wanted["relay"].get("ca_file", "/etc/tether/ca/ca.pem"):
            fail(f"{case}: custom CA not used for the relay")
        if mounts["ca"]["mountPath"] != "/etc/tether/ca":
            fail(f"{case}: CA mount")
    proxy = values.get("proxy", {})
    if proxy.get("url"):
        if (relay["proxy"], relay.get("proxy_username")) != (proxy["url"], proxy.get("username")):
            fail(f"{case}: proxy {relay}")
        secret = proxy["passwordSecret"]
        if relay["proxy_password_file"] != "/etc/tether/proxy/password" or \
                volumes["proxy-password"]["secret"]["secretName"] != secret["name"] or \
                volumes["proxy-password"]["secret"]["items"] != [{"key": secret["key"], "path": "password"}]:
            fail(f"{case}: proxy password from its Secret")
    cert = values.get("clientCertificate", {})
    if cert.get("secretName"):
        if (relay["client_cert_file"], relay["client_key_file"]) != \
                ("/etc/tether/client/tls.crt", "/etc/tether/client/tls.key") or \
                volumes["client-certificate"]["secret"]["secretName"] != cert["secretName"]:
            fail(f"{case}: client certificate")
    if values.get("auditFile", {}).get("enabled"):
        # A writable volume under the read-only root filesystem.
        if config["audit"]["file"] != "/var/lib/tether/audit/audit.jsonl" or \
                mounts["audit"]["mountPath"] != "/var/lib/tether/audit" or \
                mounts["audit"].get("readOnly") or "emptyDir" not in volumes["audit"]:
            fail(f"{case}: audit file {config.get('audit')} {mounts.get('audit')}")
    for section in ("routes", "secrets", "vault", "aws", "forward"):
        if section in wanted and config[section] != normalise(wanted[section]):
            fail(f"{case}: config.{section} changed on its way:\n{config[section]}\n{wanted[section]}")

    replicas = values.get("replicaCount", 2)
    if deployment["spec"]["replicas"] != replicas:
        fail(f"{case}: replicas")
    if replicas > 1 and values.get("podDisruptionBudget", {}).get("enabled", True):
        pdb = only(docs, "PodDisruptionBudget")
        if pdb["spec"]["unhealthyPodEvictionPolicy"] != "AlwaysAllow":
            fail(f"{case}: PDB blocks drains while pods are unready: {pdb['spec']}")
    elif has(docs, "PodDisruptionBudget"):
        fail(f"{case}: a PDB with one replica blocks node drains")

    if values.get("networkPolicy", {}).get("enabled", True):
        policy = only(docs, "NetworkPolicy")["spec"]
        allowed = values.get("networkPolicy", {}).get("metricsFrom", [])
        if policy["policyTypes"] != ["Ingress"]:
            fail(f"{case}: NetworkPolicy must restrict ingress only: {policy}")
        if allowed:
            if policy["ingress"] != [{"from": allowed, "ports": [{"port": admin_port, "protocol": "TCP"}]}]:
                fail(f"{case}: NetworkPolicy ingress {policy['ingress']}")
        elif policy["ingress"] != []:
            fail(f"{case}: NetworkPolicy admits {policy['ingress']}")
    elif has(docs, "NetworkPolicy"):
        fail(f"{case}: NetworkPolicy although disabled")
    if values.get("serviceMonitor", {}).get("enabled"):
        monitor = only(docs, "ServiceMonitor")["spec"]
        if monitor["endpoints"][0]["port"] != "admin" or \
                not set(monitor["selector"]["matchLabels"].items()) <= set(service["metadata"]["labels"].items()):
            fail(f"{case}: ServiceMonitor does not select the metrics Service")


def normalise(value):
    """Values as Helm read them (whole floats) compared with the TOML."""
    if isinstance(value, dict):
        return {k: normalise(v) for k, v in value.items()}
    if isinstance(value, list):
        return [normalise(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def relay_checks(case, values, docs):
    sts, pod = pod_of(docs, "StatefulSet")
    container, mounts, volumes = common_pod_checks(case, pod, values)
    labels_checks(case, docs, values)
    peers = only(docs, "Service", "-peers")
    if peers["spec"]["clusterIP"] != "None" or sts["spec"]["serviceName"] != peers["metadata"]["name"]:
        fail(f"{case}: peers need a headless Service named by the StatefulSet")
    replicas = values.get("replicaCount", 3)
    if replicas > 1:
        pdb = only(docs, "PodDisruptionBudget")
        if pdb["spec"].get("unhealthyPodEvictionPolicy") != "AlwaysAllow":
            fail(f"{case}: relay PDB {pdb['spec']}")
    env = {e["name"]: e for e in container["env"]}
    store = values.get("store", {})
    store_secret = env["TETHER_RELAY_STORE_URL"]["valueFrom"]["secretKeyRef"]
    if store.get("existingSecret") and store_secret != {"name": store["existingSecret"],
                                                       "key": store.get("existingSecretKey", "url")}:
        fail(f"{case}: store URL secret {store_secret}")
    config = tomllib.loads(only(docs, "ConfigMap")["data"]["relay.toml"])
    wanted = values.get("config", {})
    for section in ("limits", "agents"):
        if section in wanted and config[section] != normalise(wanted[section]):
            fail(f"{case}: config.{section} changed on its way: {config[section]}")
    ports = values.get("ports", {})
    admin_port = ports.get("admin", 9465)
    if config["listen"]["admin"] != f"0.0.0.0:{admin_port}":
        fail(f"{case}: admin listener {config['listen']}")
    if config["listen"].get("route_domain") != (values.get("routeDomain") or None):
        fail(f"{case}: listen.route_domain from routeDomain: {config['listen']}")
    if ports.get("proxy"):
        if config["listen"]["proxy"] != f"0.0.0.0:{ports['proxy']}":
            fail(f"{case}: proxy listener")
        public = only(docs, "Service", "tether-relay")
        if not any(p["name"] == "proxy" for p in public["spec"]["ports"]):
            fail(f"{case}: the forward-proxy port is in no Service")
    if values.get("tls", {}).get("secretName"):
        if config["tls"] != {"cert_file": "/etc/tether/tls/tls.crt", "key_file": "/etc/tether/tls/tls.key"} \
                or volumes["tls"]["secret"]["secretName"] != values["tls"]["secretName"]:
            fail(f"{case}: TLS from its Secret")
    if values.get("adminService", {}).get("enabled", True):
        admin = only(docs, "Service", "-admin")
        if admin["spec"]["ports"][0]["port"] != admin_port or admin["spec"].get("type", "ClusterIP") != "ClusterIP":
            fail(f"{case}: admin Service {admin['spec']}")
        if values.get("serviceMonitor", {}).get("enabled"):
            monitor = only(docs, "ServiceMonitor")["spec"]
            selected = [d for d in docs if d["kind"] == "Service" and
                        set(monitor["selector"]["matchLabels"].items()) <= set(d["metadata"]["labels"].items())]
            if [d["metadata"]["name"] for d in selected] != [admin["metadata"]["name"]] or \
                    monitor["endpoints"][0]["port"] != "admin":
                fail(f"{case}: ServiceMonitor must select the admin Service only: {selected}")


if __name__ == "__main__":
    main()
