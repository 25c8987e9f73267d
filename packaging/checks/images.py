#!/usr/bin/env python3
"""Checks the container images without a Docker engine: the image build
commands docs/install-helm.md gives, the Dockerfile targets they name, and
the command each image runs by default.

- every `docker build --target T -t "$REGISTRY/NAME:$VERSION" .` of the
  guide names a stage T of the Dockerfile, NAME is T, the stage's ENTRYPOINT
  is /usr/local/bin/T, and "$REGISTRY/NAME" / "$VERSION" as the guide sets
  them are the matching chart's default image.repository and appVersion;
- each image's default command (ENTRYPOINT + CMD) is run with the built
  binary (target/debug/T), the config path of CMD pointing at a file made
  here: the relay serves (its /healthz answers) and the agent run by its
  image's command opens a session with it (its /readyz answers); both
  stop on SIGTERM.

Everything listens on 127.0.0.1. Exits non-zero on the first finding."""

import json
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent.parent
GUIDE = ROOT / "docs/install-helm.md"
CHARTS = ROOT / "packaging/helm"


def fail(message):
    print(f"FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def stages():
    """Dockerfile stages by name: their ENTRYPOINT and CMD (exec form)."""
    found, current = {}, None
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        m = re.match(r"FROM\s+\S+(?:\s+AS\s+(\S+))?", line, re.I)
        if m:
            current = found.setdefault(m.group(1) or f"#{len(found)}", {})
            continue
        m = re.match(r"(ENTRYPOINT|CMD)\s+(\[.*\])\s*$", line)
        if m and current is not None:
            current[m.group(1)] = json.loads(m.group(2))
    return found


def guide_builds():
    """(target, image, tag) of each `docker build` in the guide, with the
    shell variables the guide sets expanded."""
    text = GUIDE.read_text()
    variables = dict(re.findall(r"^([A-Z_]+)=(\S+)", text, re.M))
    builds = []
    for line in re.findall(r"^docker build .*$", text, re.M):
        words = shlex.split(line.split("#")[0])
        target = words[words.index("--target") + 1]
        image = re.sub(r"\$\{?([A-Z_]+)\}?", lambda m: variables[m.group(1)], words[words.index("-t") + 1])
        repository, tag = image.rsplit(":", 1)
        builds.append((target, repository, tag))
        if f'docker push "{words[words.index("-t") + 1]}"' not in text:
            fail(f"the guide builds {image} but does not push it")
    return builds


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(url):
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def spawn(command, env, log):
    """The process, its stderr to the file `log` (a pipe nobody reads could
    fill and block it)."""
    with open(log, "w") as out:
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=out)
    process.log = log
    return process


def wait_for(url, process, what):
    for _ in range(150):
        if process.poll() is not None:
            fail(f"{what} exited ({process.returncode}):\n{Path(process.log).read_text()}")
        if answers(url):
            return
        time.sleep(0.1)
    fail(f"{what}: {url} never answered 200")


def default_command(stage, config):
    """ENTRYPOINT + CMD of the stage, run with the built binary, the CMD's
    config file replaced by `config`."""
    binary = Path(stage["ENTRYPOINT"][0]).name
    args = stage["CMD"]
    if "--config" not in args:
        fail(f"{binary}: CMD {args} names no --config")
    args = [str(config) if a == args[args.index("--config") + 1] else a for a in args]
    return [str(ROOT / "target/debug" / binary), *args]


def stop(process, what):
    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        fail(f"{what} ignored SIGTERM")
    if code != 0:
        fail(f"{what} exited {code} on SIGTERM:\n{Path(process.log).read_text()}")


def main():
    found = stages()
    builds = guide_builds()
    if sorted(t for t, _, _ in builds) != ["tether-agent", "tether-relay"]:
        fail(f"the guide must build one image per program, found {builds}")
    for target, repository, tag in builds:
        stage = found.get(target)
        if not stage:
            fail(f"the guide builds --target {target}: no such Dockerfile stage")
        if stage.get("ENTRYPOINT") != [f"/usr/local/bin/{target}"] or "CMD" not in stage:
            fail(f"stage {target}: ENTRYPOINT {stage.get('ENTRYPOINT')} CMD {stage.get('CMD')}")
        if repository.rsplit("/", 1)[1] != target:
            fail(f"image {repository} does not carry its program's name {target}")
        values = yaml.safe_load((CHARTS / target / "values.yaml").read_text())
        chart = yaml.safe_load((CHARTS / target / "Chart.yaml").read_text())
        version = re.search(r'^version = "(.+)"', (ROOT / "Cargo.toml").read_text(), re.M).group(1)
        if chart["appVersion"] != version:
            fail(f"chart {target}: appVersion {chart['appVersion']}, the programs are {version}")
        if (values["image"]["repository"], chart["appVersion"]) != (repository, tag):
            fail(f"chart {target} defaults to {values['image']['repository']}:{chart['appVersion']}, "
                 f"the guide builds {repository}:{tag}")
        print(f"==> {repository}:{tag}: Dockerfile target {target}, "
              f"ENTRYPOINT {stage['ENTRYPOINT'][0]}, the {target} chart's default image")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = {"PATH": "/usr/bin:/bin", "TETHER_LOG": "info"}
        public, admin, agent_admin = free_port(), free_port(), free_port()
        relay_toml = tmp / "relay.toml"
        relay_toml.write_text(
            f'[listen]\npublic = "127.0.0.1:{public}"\nadmin = "127.0.0.1:{admin}"\n'
            f'[store]\nurl = "sqlite://{tmp}/relay.db"\n')
        relay_cmd = default_command(found["tether-relay"], relay_toml)
        relay = spawn(relay_cmd, env, tmp / "relay.log")
        try:
            wait_for(f"http://127.0.0.1:{admin}/healthz", relay, "the relay image's command")
            print(f"==> tether-relay image command {found['tether-relay']['CMD']}: serving")
            token = subprocess.run(
                [relay_cmd[0], "--config", str(relay_toml), "tokens", "create", "--account", "images"],
                env=env, capture_output=True, text=True, check=True).stdout.strip()
            (tmp / "token").write_text(token + "\n")
            agent_toml = tmp / "agent.toml"
            agent_toml.write_text(
                f'[relay]\nurl = "ws://127.0.0.1:{public}/v1/agent/connect"\ntoken_file = "{tmp}/token"\n'
                f'[agent]\nname = "images"\n[admin]\nlisten = "127.0.0.1:{agent_admin}"\n')
            agent = spawn(default_command(found["tether-agent"], agent_toml), env, tmp / "agent.log")
            try:
                wait_for(f"http://127.0.0.1:{agent_admin}/readyz", agent, "the agent image's command")
                print(f"==> tether-agent image command {found['tether-agent']['CMD']}: session with the relay up")
            finally:
                stop(agent, "the agent")
        finally:
            stop(relay, "the relay")


if __name__ == "__main__":
    main()
