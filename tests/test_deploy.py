"""deploy/: the Dockerfile installs exactly what the README's quick start installs, runs as a user and checks
health; the Kubernetes manifests pass Kubernetes' own (strict) schemas offline and agree with the gateway
(probe paths, port, a grace period that covers the drain, secrets, selectors); the compose stack's configs
load; and two gateways behind the nginx config of deploy/compose go through a rolling restart without a
failed call. No container daemon or cluster runs here: what needs one is said in docs/deploy.md."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import jsonschema_rs
import pytest
import requests
import yaml

from relaygate.config import Config, parse_config
from relaygate.server.app import default_routes
from relaygate.server.serve import CUT_GRACE
from relaygate.server.workers import check_workers
from relaygate.testing.base import free_port
from relaygate.testing.gateway import GatewayThread

from .process_support import REPO

DEPLOY = REPO / "deploy"
K8S = DEPLOY / "kubernetes"
SCHEMA = json.loads((REPO / "tests/specs/kubernetes-strict.json").read_text())


# ---- Dockerfile ------------------------------------------------------------------------------------------

def shell_steps(script: str) -> list[str]:
    """The commands of a ``a && b && \\`` chain, whitespace normalised."""
    joined = script.replace("\\\n", " ").replace("\n", " ")
    return [" ".join(step.split()) for step in joined.split("&&") if step.strip()]


def readme_quick_start() -> list[str]:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Quick start"):]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None
    return shell_steps(block.group(1))


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of deploy/Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", (DEPLOY / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_the_image_installs_exactly_what_the_quick_start_installs() -> None:
    steps = [s for ins, args in dockerfile() if ins == "RUN" for s in shell_steps(args)]
    pip = [s for s in steps if s.startswith("pip ")]
    readme = readme_quick_start()
    assert pip == [s for s in readme if s.startswith("pip ")]
    assert "--require-hashes" in pip[0] and "-r requirements.lock" in pip[0] and pip[-1] == "pip check"
    # the same venv recipe, in the image's own directory
    assert steps[:2] == ["python3 -m venv /opt/relaygate", ". /opt/relaygate/bin/activate"]
    assert readme[:2] == ["python3 -m venv .venv", ". .venv/bin/activate"]


def test_the_image_is_multi_stage_runs_as_a_user_and_checks_health() -> None:
    ins = dockerfile()
    assert sum(1 for i, _ in ins if i == "FROM") == 2
    user = [a for i, a in ins if i == "USER"]
    assert user == ["10001:10001"]
    assert any(i == "RUN" and "useradd --system --uid 10001" in a for i, a in ins)
    cmd = json.loads(next(a for i, a in ins if i == "CMD"))
    assert cmd[:1] == ["serve"] and "--config" not in cmd  # the embedded default, like `relaygate serve`
    port = cmd[cmd.index("--port") + 1]
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"
    assert [a for i, a in ins if i == "EXPOSE"] == [port]
    health = next(a for i, a in ins if i == "HEALTHCHECK")
    assert f"http://127.0.0.1:{port}/health" in health
    # what the build copies is what the .dockerignore lets in
    allowed = [line[1:].rstrip("/") for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
               if line.startswith("!")]
    copied = [src for i, a in ins if i == "COPY" and not a.startswith("--from") for src in a.split()[:-1]]
    assert copied and set(copied) <= set(allowed)


def test_the_healthcheck_command_passes_on_a_healthy_gateway_and_fails_without_one(
        start_gateway: Any) -> None:
    health = next(a for i, a in dockerfile() if i == "HEALTHCHECK")
    command = json.loads(health[health.index("CMD") + 3:].strip())
    gw: GatewayThread = start_gateway({"models": [{"name": "demo", "deployments": [{"provider": "demo",
                                                                                    "model": "demo"}]}]})

    def run(port: int) -> int:
        argv = [sys.executable if a == "python" else a.replace("127.0.0.1:4000", f"127.0.0.1:{port}")
                for a in command]
        return subprocess.run(argv, capture_output=True, timeout=30).returncode

    assert run(gw.port) == 0
    assert run(free_port()) != 0


# ---- Kubernetes -------------------------------------------------------------------------------------------

def manifests() -> dict[str, dict[str, Any]]:
    """Every object of deploy/kubernetes, by kind."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            out[doc["kind"]] = doc
    return out


def schema_errors(obj: dict[str, Any]) -> list[str]:
    name = SCHEMA["x-kinds"][f"{obj['apiVersion']} {obj['kind']}"]
    validator = jsonschema_rs.validator_for({"$defs": SCHEMA["$defs"], "$ref": f"#/$defs/{name}"})
    return [str(e).splitlines()[0] for e in validator.iter_errors(obj)]


def test_every_manifest_passes_the_kubernetes_schema() -> None:
    objs = manifests()
    assert set(objs) == {"ConfigMap", "Secret", "Deployment", "Service", "PodDisruptionBudget",
                         "HorizontalPodAutoscaler"}
    for kind, obj in objs.items():
        assert schema_errors(obj) == [], kind
    # the schema is strict: a misspelt field or a wrong type is caught
    bad = json.loads(json.dumps(objs["Deployment"]))
    container = bad["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    bad["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "45"
    errors = schema_errors(bad)
    assert any("readinesProbe" in e for e in errors) and any('"45"' in e for e in errors), errors


def config_of(text: str, env: dict[str, str]) -> Config:
    config = parse_config(yaml.safe_load(text), env)
    check_workers(config, config.server.workers)
    return config


def test_the_manifests_agree_with_the_gateway() -> None:
    objs = manifests()
    dep = objs["Deployment"]
    pod = dep["spec"]["template"]["spec"]
    [container] = pod["containers"]
    secret = objs["Secret"]["stringData"]
    env = {e["name"]: secret[e["valueFrom"]["secretKeyRef"]["key"]] for e in container["env"]}
    config = config_of(objs["ConfigMap"]["data"]["relaygate.yaml"], env)
    args = container["args"]
    assert args[args.index("--config") + 1] == "/etc/relaygate/relaygate.yaml"
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert mount["mountPath"] == "/etc/relaygate"
    assert next(v for v in pod["volumes"] if v["name"] == "config")["configMap"]["name"] == "relaygate"
    assert config.state.redis_url and config.database.url.startswith("postgresql://")  # shared by the pods
    port = int(args[args.index("--port") + 1])
    assert container["ports"] == [{"name": "http", "containerPort": port}] and config.server.port == port
    assert pod["securityContext"]["runAsUser"] == 10001 and pod["securityContext"]["runAsNonRoot"]
    # probes on routes the gateway has: readiness turns 503 as the drain begins, liveness stays 200
    routes = default_routes()
    for probe, path in (("readinessProbe", "/health/ready"), ("livenessProbe", "/health")):
        assert container[probe]["httpGet"] == {"path": path, "port": "http"}
        assert "GET" in routes.exact[path]
    # the grace period covers preStop, the drain, the cut of what is left and the log's flush
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    needed = int(pre_stop[1]) + config.server.drain_timeout + 2 * CUT_GRACE
    assert pod["terminationGracePeriodSeconds"] >= needed + 5
    labels = dep["spec"]["template"]["metadata"]["labels"]
    for kind in ("Deployment", "PodDisruptionBudget"):
        assert objs[kind]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert objs["Service"]["spec"]["selector"].items() <= labels.items()
    assert objs["Service"]["spec"]["ports"][0]["targetPort"] == "http"
    target = objs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", dep["metadata"]["name"])
    assert objs["PodDisruptionBudget"]["spec"]["minAvailable"] < dep["spec"]["replicas"]
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert set(kustomization["resources"]) == files


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_renders_the_kustomization_offline() -> None:
    out = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(out.stdout))
    assert kinds == sorted(set(manifests()) - {"Secret"})


# ---- compose ----------------------------------------------------------------------------------------------

def test_the_compose_stack_hangs_together() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"gateway-1", "gateway-2", "nginx", "postgres", "redis", "prometheus", "grafana",
                             "jaeger"}
    for service in services.values():  # every file a service mounts is in the repository
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), source
    nginx = (DEPLOY / "compose/nginx.conf").read_text()
    for name in ("gateway-1", "gateway-2"):
        gw = services[name]
        assert gw["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
        assert gw["depends_on"] == {"postgres": {"condition": "service_healthy"},
                                    "redis": {"condition": "service_healthy"}}
        env = {k: re.sub(r"\$\{(\w+):[-?][^}]*\}", lambda m: "rg-master-" + "ab12" * 8
                         if m.group(1) == "RELAYGATE_MASTER_KEY" else "relaygate", v)
               for k, v in gw["environment"].items()}
        config = config_of((DEPLOY / "compose/relaygate.yaml").read_text(), env)
        assert config.server.workers == 2 and config.state.redis_url == "redis://redis:6379/0"
        assert f"server {name}:{config.server.port} " in nginx
        assert gw["command"][gw["command"].index("--config") + 1] == "/etc/relaygate/relaygate.yaml"
        grace = int(gw["stop_grace_period"].rstrip("s"))
        assert grace >= config.server.drain_timeout + 2 * CUT_GRACE + 5
        # traces go to compose's Jaeger, on the port where it takes OTLP/HTTP
        endpoint = urlsplit(config.tracing.endpoint or "")
        assert (endpoint.hostname, endpoint.port, endpoint.path) == ("jaeger", 4318, "/v1/traces")
        assert services["jaeger"]["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"


def test_the_compose_stacks_prometheus_scrapes_both_gateways_and_grafana_reads_it() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    prometheus = services["prometheus"]
    config_path = prometheus["command"][0].split("=", 1)[1]
    mounted = {v.split(":")[1]: v.split(":")[0] for v in prometheus["volumes"]}
    scrape = yaml.safe_load((DEPLOY / mounted[config_path]).read_text())
    [job] = scrape["scrape_configs"]
    port = config_of((DEPLOY / "compose/relaygate.yaml").read_text(), {
        "RELAYGATE_MASTER_KEY": "rg-master-" + "ab12" * 8, "DATABASE_URL": "postgresql://h/db",
        "REDIS_URL": "redis://redis:6379/0"}).server.port
    assert job["static_configs"] == [{"targets": [f"gateway-1:{port}", f"gateway-2:{port}"]}]
    assert job["metrics_path"] == "/metrics" and "GET" in default_routes().exact["/metrics"]
    # the master key reaches Prometheus as a compose secret (from the same variable the gateways read),
    # mounted where the scrape config reads it
    [secret] = prometheus["secrets"]
    assert secret["target"] == job["authorization"]["credentials_file"]
    assert compose["secrets"][secret["source"]] == {"environment": "RELAYGATE_MASTER_KEY"}
    # Grafana: provisioning finds the dashboard where it is mounted, and a data source on Prometheus's port
    grafana = {v.split(":")[1]: v.split(":")[0] for v in services["grafana"]["volumes"]}
    provisioning = DEPLOY / grafana["/etc/grafana/provisioning"]
    [provider] = yaml.safe_load((provisioning / "dashboards/relaygate.yaml").read_text())["providers"]
    dashboard = next(target for target, source in grafana.items() if source.endswith("relaygate.json"))
    assert Path(dashboard).parent == Path(provider["options"]["path"])
    [source] = yaml.safe_load((provisioning / "datasources/prometheus.yaml").read_text())["datasources"]
    published = prometheus["ports"][0].rsplit(":", 1)[1]
    assert source["type"] == "prometheus" and source["url"] == f"http://prometheus:{published}"
    # the UIs are published on the host's loopback only; the gateways through nginx
    for name in ("prometheus", "grafana", "jaeger"):
        assert all(p.startswith("127.0.0.1:") for p in services[name]["ports"]), name


# ---- a rolling restart behind nginx ---------------------------------------------------------------------

FAIL_TIMEOUT = 2.0  # nginx.conf's fail_timeout


class Instance:
    """One gateway process on a fixed port, restartable."""

    def __init__(self, tmp_path: Path, name: str) -> None:
        self.port = free_port()
        self.dir = tmp_path / name
        self.dir.mkdir()
        self.config = self.dir / "gateway.yaml"
        self.config.write_text(yaml.safe_dump({
            "models": [{"name": "demo", "deployments": [{"provider": "demo", "model": "demo"}]}],
            "database": {"url": f"sqlite:///{self.dir}/gateway.db"}, "server": {"drain_timeout": 10}}))
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        log = open(self.dir / f"gateway-{self.starts}.log", "wb")  # noqa: SIM115 (the process holds it)
        self.starts += 1
        self.proc = subprocess.Popen([sys.executable, "-m", "relaygate", "serve", "--config", str(self.config),
                                      "--port", str(self.port)], env={**os.environ, "PYTHONPATH": str(REPO)},
                                     cwd=self.dir, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 45
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{self.port}/health/ready", timeout=1).ok:
                    return
            except requests.RequestException:
                pass
            assert self.proc.poll() is None and time.monotonic() < deadline, "the gateway did not start"
            time.sleep(0.05)

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


@pytest.fixture
def nginx_in_front(tmp_path: Path) -> Iterator[tuple[int, list[Instance]]]:
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if nginx is None:
        pytest.skip("nginx is not installed")
    instances = [Instance(tmp_path, "one"), Instance(tmp_path, "two")]
    port = free_port()
    site = (DEPLOY / "compose/nginx.conf").read_text().replace("listen 80;", f"listen 127.0.0.1:{port};")
    for i, inst in zip((1, 2), instances, strict=True):
        site = site.replace(f"server gateway-{i}:4000 ", f"server 127.0.0.1:{inst.port} ")
    run = tmp_path / "nginx"
    run.mkdir()
    (run / "site.conf").write_text(site)
    user = "user root root;\n" if os.geteuid() == 0 else ""
    temp = " ".join(f"{k}_temp_path {run}/{k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (run / "nginx.conf").write_text(
        f"{user}daemon off;\nworker_processes 1;\npid {run}/nginx.pid;\nerror_log {run}/error.log warn;\n"
        f"events {{ worker_connections 1024; }}\n"
        f"http {{ access_log off; {temp} include {run}/site.conf; }}\n")
    for inst in instances:
        inst.start()
    proc = subprocess.Popen([nginx, "-p", str(run), "-c", str(run / "nginx.conf")], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                requests.get(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except requests.ConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr
                time.sleep(0.05)
        yield port, instances
    finally:
        proc.terminate()
        proc.wait(10)
        for inst in instances:
            if inst.proc is not None and inst.proc.poll() is None:
                inst.proc.kill()
                inst.proc.wait(10)


def test_a_rolling_restart_behind_nginx_fails_no_call(nginx_in_front: tuple[int, list[Instance]]) -> None:
    port, instances = nginx_in_front
    assert f"fail_timeout={FAIL_TIMEOUT:g}s" in (DEPLOY / "compose/nginx.conf").read_text()
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    outcomes: Counter[str] = Counter()
    stop = asyncio.Event()

    async def client(s: aiohttp.ClientSession, i: int) -> None:
        stream = i % 4 == 0
        body = {"model": "demo", "stream": stream, "messages": [{"role": "user", "content": f"call {i}"}]}
        while not stop.is_set():
            try:
                async with s.post(url, json=body) as r:
                    data = await r.read()
                    ok = r.status == 200 and (not stream or data.rstrip().endswith(b"data: [DONE]"))
                    outcomes["ok" if ok else f"{r.status} {data[:200]!r}"] += 1
            except aiohttp.ClientError as e:
                outcomes[f"{type(e).__name__}: {e}"] += 1
            await asyncio.sleep(0.02)  # steady traffic that leaves the restarting gateway some CPU

    async def scenario() -> list[int]:
        codes = []
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
            clients = [asyncio.ensure_future(client(s, i)) for i in range(8)]
            await asyncio.sleep(1.0)
            for inst in instances:
                codes.append(await asyncio.to_thread(inst.stop))
                await asyncio.to_thread(inst.start)
                await asyncio.sleep(FAIL_TIMEOUT + 1.5)  # the procedure nginx.conf gives, with a second to spare on a busy machine
            stop.set()
            await asyncio.wait_for(asyncio.gather(*clients), 30)
        return codes

    started = time.monotonic()
    codes = asyncio.run(scenario())
    elapsed = time.monotonic() - started
    assert codes == [0, 0]
    errors = (instances[0].dir.parent / "nginx" / "error.log").read_text(errors="replace")[-3000:]
    assert set(outcomes) == {"ok"}, (outcomes, errors)  # nginx's log says why a call failed
    assert all(inst.starts == 2 for inst in instances)
    print(f"rolling restart behind nginx: {outcomes['ok']} calls in {elapsed:.1f} s at c=8, none failed")
