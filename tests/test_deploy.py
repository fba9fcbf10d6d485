"""The deployment artifacts of ``deploy/`` (issue 14), checked offline, without a container
engine or a cluster: the alert rules and Prometheus's configuration with ``promtool``, the
dashboard's JSON and its queries, every metric name against the metric catalogue, the compose
stack and the Dockerfile against the CLI and the settings, and the Kubernetes manifests against
the Kubernetes schemas (``kubernetes-validate``) and what a cluster would refuse or get wrong
(selectors, probes, references, commands, the image)."""

from __future__ import annotations

import json
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath
from typing import Any

import click
import httpx
import jsonschema
import pytest
import yaml

from worker.config import Settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
KUBE = DEPLOY / "kubernetes"
DASHBOARD = DEPLOY / "grafana" / "provisioner.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
KUBERNETES_VERSION = "1.30"

# -- the metric catalogue (issue 14) ---------------------------------------------------------
# The names and labels both the instrumentation and these artifacts use. docs/metrics.md
# states them once it exists (then its names are the ones checked); until then, this copy.
COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"
CATALOGUE: dict[str, tuple[str, frozenset[str]]] = {
    name: (kind, frozenset(labels))
    for name, kind, labels in [
        ("provisioner_events_received_total", COUNTER, {"outcome"}),
        ("provisioner_events_refused_total", COUNTER, {"reason"}),
        ("provisioner_events_applied_total", COUNTER, {"outcome"}),
        ("provisioner_reconciles_total", COUNTER, {"app", "outcome"}),
        ("provisioner_reconcile_duration_seconds", HISTOGRAM, {"app"}),
        ("provisioner_scim_requests_total", COUNTER, {"app", "method", "status"}),
        ("provisioner_scim_request_duration_seconds", HISTOGRAM, {"app", "method"}),
        ("provisioner_scim_throttled_total", COUNTER, {"app"}),
        ("provisioner_scim_retry_after_pauses_total", COUNTER, {"app"}),
        ("provisioner_ratelimit_waits_total", COUNTER, {"app"}),
        ("provisioner_ratelimit_wait_seconds_total", COUNTER, {"app"}),
        ("provisioner_sync_lag_seconds", HISTOGRAM, {"app", "since"}),
        ("provisioner_journal_events", GAUGE, set()),
        ("provisioner_pending_batches", GAUGE, set()),
        ("provisioner_reconcile_keys", GAUGE, {"state"}),
        ("provisioner_apps_quarantined", GAUGE, set()),
        ("provisioner_breaker_open", GAUGE, {"app"}),
        ("provisioner_app_rate_limit_requests_per_second", GAUGE, {"app"}),
        ("provisioner_app_pace_requests_per_second", GAUGE, {"app"}),
        ("provisioner_workers_alive", GAUGE, set()),
    ]
}
RECONCILE_KEY_STATES = {"dirty", "in_flight", "delayed", "parked", "held", "deferred"}
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")
TARGET_LABELS = {"instance", "job", "pod"}  # added by the scrape
WORKER_METRICS_PORT = 9808  # PROVISIONER_METRICS_PORT's default
WORKER_ROUTES = {"/metrics", "/healthz"}  # a worker's metrics listener


def catalogue_names() -> set[str]:
    """The metric names of docs/metrics.md when it exists, else of ``CATALOGUE``."""
    doc = ROOT / "docs" / "metrics.md"
    if doc.exists():
        names = set(re.findall(r"\bprovisioner_[a-z0-9_]+[a-z0-9]", doc.read_text()))
        return {strip_series(name, names) for name in names}
    return set(CATALOGUE)


def strip_series(name: str, known: set[str] | dict[str, Any]) -> str:
    """A histogram's series (``_bucket``, ``_sum``, ``_count``) as its metric's name."""
    for suffix in HISTOGRAM_SERIES:
        base = name.removesuffix(suffix)
        if base != name and base in known:
            return base
    return name


SELECTOR = re.compile(r"\b(provisioner_[a-z0-9_]*[a-z0-9])\s*(\{[^}]*\})?")
MATCHER = re.compile(r"([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*\"([^\"]*)\"")


def metrics_used(expr: str) -> Iterator[tuple[str, dict[str, str]]]:
    """``(metric name, {label: value matched})`` of every provisioner selector in ``expr``."""
    for match in SELECTOR.finditer(expr):
        labels = {m.group(1): m.group(3) for m in MATCHER.finditer(match.group(2) or "")}
        yield match.group(1), labels


def check_expression(expr: str, where: str) -> set[str]:
    """Every provisioner metric of ``expr`` is in the catalogue, with the catalogue's labels
    (and states); returns the metric names used."""
    names = catalogue_names()
    used = set()
    for raw, labels in metrics_used(expr):
        name = strip_series(raw, CATALOGUE)
        assert name in names, f"{where}: {raw} is not in the metric catalogue"
        assert name in CATALOGUE, f"{where}: {raw} is not in the test's copy of the catalogue"
        kind, known = CATALOGUE[name]
        assert raw == name or kind == HISTOGRAM, f"{where}: {raw}: {name} is not a histogram"
        allowed = known | TARGET_LABELS | ({"le"} if raw.endswith("_bucket") else set())
        for label in labels:
            assert label in allowed, f"{where}: {raw} has no label {label!r}"
        if name == "provisioner_reconcile_keys" and "state" in labels:
            states = set(labels["state"].split("|"))
            assert states <= RECONCILE_KEY_STATES, f"{where}: unknown states {states}"
        used.add(name)
    return used


# -- the CLI, in process -----------------------------------------------------------------------
def cli_command(args: list[str]) -> list[str]:
    """Parse ``provisioner ARGS`` as Click would, without running it: the command path, or an
    assertion naming what the CLI refuses (an unknown command or option, a missing argument)."""
    from worker.cli.main import cli

    command: click.Command = cli
    words, path = list(args), []
    while isinstance(command, click.Group):
        assert words, f"`provisioner {' '.join(path)}` needs a command"
        name = words.pop(0)
        found = command.get_command(click.Context(command), name)
        assert found is not None, f"`provisioner {' '.join([*path, name])}`: no such command"
        path.append(name)
        command = found
    try:
        command.make_context(f"provisioner {' '.join(path)}", words)
    except click.ClickException as error:
        raise AssertionError(f"`provisioner {' '.join(args)}`: {error.format_message()}") from None
    return path


def test_cli_parser_refuses_what_the_cli_refuses() -> None:
    assert cli_command(["worker", "--concurrency", "6"]) == ["worker"]
    assert cli_command(["apps", "reauth", "x", "--token-file", "f"]) == ["apps", "reauth"]
    for wrong in (["wroker"], ["worker", "--threads", "2"], ["apps", "reauth", "x"], ["apps"]):
        with pytest.raises(AssertionError):
            cli_command(wrong)


def test_help_of_every_deployed_command(capsys: pytest.CaptureFixture[str]) -> None:
    """The commands the artifacts run answer ``--help`` in process (exit 0)."""
    from worker.cli.main import main

    for path in (["worker"], ["webhook"], ["replay"], ["status"], ["apps", "activate"],
                 ["apps", "reauth"], ["apps", "deactivate"], ["approve"], ["reject"],
                 ["retry"], ["audit"]):  # fmt: skip
        assert main([*path, "--help"]) == 0, path
        assert "Usage: provisioner " + " ".join(path) in capsys.readouterr().out


SETTINGS = Settings.variables()


def metrics_port_default() -> int:
    """PROVISIONER_METRICS_PORT's default in the code when it is a setting, else the
    catalogue's."""
    name = SETTINGS.get("PROVISIONER_METRICS_PORT")
    if name is None:
        return WORKER_METRICS_PORT
    return int(Settings.model_fields[name].default)


def test_worker_metrics_port_is_the_catalogues() -> None:
    assert metrics_port_default() == WORKER_METRICS_PORT


# -- Prometheus: rules and configuration -----------------------------------------------------
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus; CI has it)")
    return path


def test_promtool_checks_the_rules() -> None:
    run = subprocess.run([promtool(), "check", "rules", str(ALERTS)], capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr


def test_promtool_checks_the_configuration() -> None:
    run = subprocess.run([promtool(), "check", "config", str(PROMETHEUS)], capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


CLI_MENTION = re.compile(r"`provisioner ([^`]*)`")


def test_alerts_use_the_catalogue_and_say_what_to_do() -> None:
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "two alerts of the same name"
    used: dict[str, set[str]] = {}
    for rule in rules:
        where = f"alert {rule['alert']}"
        used[rule["alert"]] = check_expression(rule["expr"], where)
        assert rule["labels"]["severity"] in ("critical", "warning"), where
        annotations = rule["annotations"]
        assert annotations["summary"] and len(annotations["description"]) > 80, where
        for command in CLI_MENTION.findall(annotations["description"]):
            cli_command(re.sub(r"\{\{[^}]*\}\}", "APP", command).split())
    every = set().union(*used.values())
    # what the issue asks an operator to be woken for
    for metric in ("provisioner_sync_lag_seconds", "provisioner_apps_quarantined",
                   "provisioner_breaker_open", "provisioner_workers_alive",
                   "provisioner_pending_batches"):  # fmt: skip
        assert metric in every, f"no alert on {metric}"
    states = " ".join(rule["expr"] for rule in rules)
    for state in ("held", "parked", "dirty"):
        assert f'state="{state}"' in states, f"no alert on {state} keys"
    descriptions = " ".join(rule["annotations"]["description"] for rule in rules)
    for command in ("provisioner status", "provisioner approve", "provisioner reject",
                    "provisioner apps reauth", "provisioner retry"):  # fmt: skip
        assert f"`{command}" in descriptions, f"no alert tells to run {command}"


def test_prometheus_scrapes_the_ports_the_stack_serves() -> None:
    conf = yaml.safe_load(PROMETHEUS.read_text())
    jobs = {job["job_name"]: job for job in conf["scrape_configs"]}
    worker = jobs["provisioner-worker"]["dns_sd_configs"][0]
    compose = yaml.safe_load(COMPOSE.read_text())["services"]
    assert worker["names"] == ["worker"] and "worker" in compose
    assert worker["port"] == metrics_port_default()
    (target,) = jobs["provisioner-webhook"]["static_configs"][0]["targets"]
    host, port = target.split(":")
    assert host in compose
    assert f"--port={port}" in option_pairs(compose[host]["command"])
    assert (PROMETHEUS.parent / conf["rule_files"][0]).resolve() == ALERTS.resolve()


# -- the dashboard -----------------------------------------------------------------------------
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__range"}
SUBSTITUTES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def dashboard_queries() -> list[tuple[str, str]]:
    return [(f"panel {panel['id']} ({panel['title']})", target["expr"])
            for panel in all_panels(dashboard()["panels"])
            for target in panel.get("targets", [])]  # fmt: skip


def test_dashboard_is_valid_with_unique_panel_ids() -> None:
    board = dashboard()
    panels = list(all_panels(board["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    variables = {var["name"]: var for var in board["templating"]["list"]}
    datasource = [var for var in variables.values() if var["type"] == "datasource"]
    assert [var["query"] for var in datasource] == ["prometheus"]
    uid = "${" + datasource[0]["name"] + "}"
    for panel in panels:
        position = panel["gridPos"]
        assert position["x"] >= 0 and position["x"] + position["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == uid, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid, panel["title"]
    for where, expr in dashboard_queries():
        for name in re.findall(r"\$\{?([A-Za-z_]\w*)", expr):
            assert name in variables or name in GRAFANA_BUILTINS, f"{where}: ${name} undefined"


def test_dashboard_shows_what_the_issue_asks_with_the_catalogues_names() -> None:
    used = set()
    for where, expr in dashboard_queries():
        used |= check_expression(expr, where)
    assert not set(CATALOGUE) - used, f"metrics without a panel: {set(CATALOGUE) - used}"
    text = " ".join(expr for _, expr in dashboard_queries())
    assert "provisioner_scim_requests_total" in text and "provisioner_app_rate_limit" in text
    for state in ("dirty", "parked", "held"):
        assert state in text


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    """Each query, its Grafana variables replaced, as a recording rule: promtool parses it."""
    tool = promtool()
    variables = {var["name"]: var for var in dashboard()["templating"]["list"]}
    rules = []
    for number, (_, expr) in enumerate(dashboard_queries()):
        for name, value in SUBSTITUTES.items():
            expr = expr.replace(name, value)
        for name, var in variables.items():
            value = ".*" if var.get("includeAll") else var.get("current", {}).get("value", "x")
            expr = expr.replace(f"${name}", value)
        rules.append({"record": f"dashboard:query_{number}", "expr": expr})
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    run = subprocess.run([tool, "check", "rules", str(path)], capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr


# -- the image -------------------------------------------------------------------------------
def dockerfile_stages() -> dict[str, list[tuple[str, str]]]:
    """``{stage: [(INSTRUCTION, arguments)]}`` in order, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, arguments = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            current = []
            words = arguments.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else str(len(stages))
            stages[name] = current
        current.append((instruction, arguments.strip()))
    return stages


def test_dockerfile_one_image_non_root_no_healthcheck_no_devstack() -> None:
    stages = dockerfile_stages()
    final_name, final = list(stages.items())[-1]
    assert final_name == "runtime", "the default target is the runtime image"
    instructions = [(i, a) for stage in stages.values() for i, a in stage]
    assert not [a for i, a in instructions if i == "HEALTHCHECK"], "probes are the orchestrator's"

    def lineage(name: str) -> list[tuple[str, str]]:
        stage = stages[name]
        parent = stage[0][1].split()[0]
        return (lineage(parent) if parent in stages else []) + stage

    runtime = lineage("runtime")
    assert runtime[0][1].split()[0] == "${PYTHON_IMAGE}", "the runtime's base image"
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", DOCKERFILE.read_text(), re.M)
    users = [a for i, a in runtime if i == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image runs as root"
    assert [a for i, a in runtime if i == "ENTRYPOINT"][-1] == '["provisioner"]'
    scripts = re.search(
        r"\[project\.scripts\]\s*\nprovisioner = ", (ROOT / "pyproject.toml").read_text()
    )
    assert scripts, "the entrypoint is the package's console script"
    exposed = {port for i, a in runtime if i == "EXPOSE" for port in a.split()}
    assert {"8000", str(metrics_port_default())} <= exposed
    # the runtime's packages come from a builder that installs the product alone
    (source,) = [re.search(r"--from=(\S+)", a).group(1)  # type: ignore[union-attr]
                 for i, a in final if i == "COPY" and "--from=" in a]  # fmt: skip
    built = " ".join(a for i, a in lineage(source) if i == "RUN")
    assert "pip install ." in built and "devstack" not in built
    assert "devstack" in stages, "the stand-in application's target"


def test_dockerfile_copies_what_the_dockerignore_keeps() -> None:
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]  # fmt: skip

    def excluded(path: str) -> bool:
        result = False
        for pattern in ignored:
            negated = pattern.startswith("!")
            pattern = pattern.lstrip("!")
            if fnmatch(path, pattern) or fnmatch(path.split("/")[0], pattern):
                result = not negated
        return result

    copied = []
    for stage in dockerfile_stages().values():
        for instruction, arguments in stage:
            if instruction == "COPY" and "--from=" not in arguments:
                copied += arguments.split()[:-1]
    assert set(copied) == {"pyproject.toml", "README.md", "worker", "producers"}
    for path in copied:
        assert (ROOT / path).exists() and not excluded(path), path
    for path in (".venv", "var", "tests", ".git", "benchmarks"):
        assert excluded(path), f".dockerignore lets {path} into the build context"


# -- the compose stack -----------------------------------------------------------------------
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def option_pairs(args: list[str]) -> set[str]:
    """``--option value`` pairs of a command as ``--option=value``."""
    return {f"{a}={b}" for a, b in zip(args, args[1:], strict=False) if a.startswith("--")}


def redis_conf() -> dict[str, str]:
    lines = (DEPLOY / "redis.conf").read_text().splitlines()
    pairs = [line.split(None, 1) for line in lines if line.strip() and not line.startswith("#")]
    return {key: value.strip() for key, value in pairs}


def test_redis_conf_is_durable_and_never_evicts() -> None:
    conf = redis_conf()
    assert conf["appendonly"] == "yes"
    assert conf["appendfsync"] in ("always", "everysec")
    assert conf["maxmemory-policy"] == "noeviction"


def test_compose_services_run_the_image_and_commands_of_the_cli() -> None:
    stack = compose()
    services = stack["services"]
    stages = dockerfile_stages()
    built: dict[str, str] = {}
    for name, service in services.items():
        if "build" in service:
            build = service["build"]
            assert (COMPOSE.parent / build["context"]).resolve() == ROOT, name
            assert build["dockerfile"] == "deploy/Dockerfile", name
            assert build.get("target", "runtime") in stages, name
            built[service["image"]] = build.get("target", "runtime")
    ours = {name: s for name, s in services.items() if s["image"].startswith("scim-provisioner")}
    assert {"webhook", "worker", "activate", "scim"} <= set(ours)
    for name, service in ours.items():
        assert service["image"] in built, f"{name}: its image is built by no service"
        if "entrypoint" not in service:  # the image's: provisioner
            assert built[service["image"]] == "runtime", f"{name} runs the devstack image"
            cli_command(service["command"])
        for variable in service.get("environment", {}):
            assert variable in SETTINGS, f"{name}: {variable} is not a setting"
    assert services["worker"]["deploy"]["replicas"] == 2
    assert services["webhook"]["command"][:3] == ["webhook", "--host", "0.0.0.0"]
    grace = services["worker"]["stop_grace_period"]
    assert int(grace.removesuffix("s")) > Settings().lease_seconds
    # Redis: the durable configuration of deploy/redis.conf
    redis = services["redis"]
    mounts = dict(volume.split(":")[:2] for volume in redis["volumes"])
    assert redis["command"][1] == mounts["./redis.conf"]
    ports = {p.split(":")[-1] for s in services.values() for p in s.get("ports", [])}
    assert "8000" in ports and "8000" in services["webhook"]["command"]


def test_compose_files_secrets_and_the_activation_fit_together() -> None:
    stack = compose()
    services, secrets = stack["services"], stack["secrets"]
    for name, secret in secrets.items():
        assert (COMPOSE.parent / secret["file"]).read_text().strip(), name
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE.parent / source).exists(), f"{name}: {source} is missing"
            else:
                assert source in stack["volumes"], f"{name}: volume {source} is not declared"
        for secret in service.get("secrets", []):
            assert secret in secrets, f"{name}: secret {secret} is not declared"
        for key in ("depends_on",):
            for other in service.get(key, {}):
                assert other in services, f"{name} depends on {other}, which does not exist"

    def mounted(service: dict[str, Any], path: str) -> bool:
        targets = [v.split(":")[1] for v in service.get("volumes", [])]
        targets += [f"/run/secrets/{s}" for s in service.get("secrets", [])]
        return any(path == t or path.startswith(t.rstrip("/") + "/") for t in targets)

    webhook = services["webhook"]
    assert mounted(webhook, webhook["environment"]["PROVISIONER_WEBHOOK_SECRET_FILE"])
    activate = services["activate"]
    assert cli_command(activate["command"]) == ["apps", "activate"]
    options = option_pairs(activate["command"])
    base_url = next(o.split("=", 1)[1] for o in options if o.startswith("--base-url="))
    url = httpx.URL(base_url)
    assert url.scheme == "https", "apps activate refuses plain http beyond loopback"
    assert url.host in services and f"--port={url.port}" in option_pairs(
        services[url.host]["command"]
    )
    for option in ("--token-file", "--ca-file"):
        path = next(o.split("=", 1)[1] for o in options if o.startswith(option + "="))
        # the app's files are read by every worker at the same path
        assert mounted(activate, path) and mounted(services["worker"], path), path
    scim = services["scim"]
    script = scim["command"][0]
    source = next(v.split(":")[0] for v in scim["volumes"] if v.split(":")[1] == script)
    assert (COMPOSE.parent / source).is_file()
    prometheus = services["prometheus"]
    targets = {v.split(":")[1]: v.split(":")[0] for v in prometheus["volumes"]}
    assert targets["/etc/prometheus/prometheus.yml"] == "./prometheus/prometheus.yml"
    assert targets["/etc/prometheus/alerts.yml"] == "./prometheus/alerts.yml"
    grafana = {v.split(":")[1]: v.split(":")[0] for v in services["grafana"]["volumes"]}
    provider = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/dashboards/provisioner.yml").read_text()
    )["providers"][0]
    assert (
        grafana[provider["options"]["path"] + "/provisioner.json"] == "./grafana/provisioner.json"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_stand_in_application_answers_over_tls(tmp_path: Path) -> None:
    """deploy/compose/scim_tls.py serves the local SCIM app over HTTPS with its bearer token."""
    pytest.importorskip("scim2_server", reason="the devstack extra is not installed")
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    (tmp_path / "token").write_text("t0ken\n")
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(DEPLOY / "compose" / "scim_tls.py"), "--host", "127.0.0.1",
         "--port", str(port), "--token-file", str(tmp_path / "token"),
         "--cert", str(tmp_path / "server.pem"), "--key", str(tmp_path / "server.pem")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        url = f"https://127.0.0.1:{port}/v2/ServiceProviderConfig"
        verify = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        with httpx.Client(verify=verify, timeout=5) as client:
            deadline = time.monotonic() + 20
            while True:
                try:
                    answer = client.get(url, headers={"Authorization": "Bearer t0ken"})
                    break
                except httpx.TransportError:
                    assert process.poll() is None, process.stdout.read()  # type: ignore[union-attr]
                    assert time.monotonic() < deadline, "the stand-in application never answered"
                    time.sleep(0.1)
            assert answer.status_code == 200, answer.text
            users = url.replace("ServiceProviderConfig", "Users")
            assert client.get(users, headers={"Authorization": "Bearer t0ken"}).status_code == 200
            assert client.get(users).status_code == 401  # the token is required
    finally:
        process.terminate()
        process.wait(timeout=10)


# -- Kubernetes --------------------------------------------------------------------------------
def kustomization() -> dict[str, Any]:
    return yaml.safe_load((KUBE / "kustomization.yaml").read_text())


def load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def kube_objects() -> list[dict[str, Any]]:
    """The kustomization's resources, then the manifests applied by hand (jobs/)."""
    objects = [doc for name in kustomization()["resources"] for doc in load(KUBE / name)]
    return objects + [doc for path in sorted((KUBE / "jobs").glob("*.yaml")) for doc in load(path)]


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in kube_objects() if o["kind"] == kind}


def pod_templates() -> dict[str, dict[str, Any]]:
    """``{workload name: pod template}`` of the Deployments and Jobs."""
    workloads = {**by_kind("Deployment"), **by_kind("Job")}
    return {name: workload["spec"]["template"] for name, workload in workloads.items()}


def containers() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    for name, template in pod_templates().items():
        for container in template["spec"]["containers"]:
            yield name, template, container


def test_kustomization_lists_every_manifest_and_builds() -> None:
    resources = kustomization()["resources"]
    on_disk = sorted(p.name for p in KUBE.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(resources) == on_disk
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return  # the resources list is all that can be checked
    run = subprocess.run([kubectl, "kustomize", str(KUBE)], capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    if run.returncode != 0 and "unknown command" in run.stderr:
        return  # a kubectl without kustomize
    assert run.returncode == 0, run.stderr
    built = [doc for doc in yaml.safe_load_all(run.stdout) if doc]
    expected = [doc for name in resources for doc in load(KUBE / name)]
    assert sorted((o["kind"], o["metadata"]["name"]) for o in built) == sorted(
        (o["kind"], o["metadata"]["name"]) for o in expected
    )
    for obj in built:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == kustomization()["namespace"], obj["kind"]
    images = {c["image"] for o in built if o["kind"] == "Deployment"
              for c in o["spec"]["template"]["spec"]["containers"]}  # fmt: skip
    (image,) = kustomization()["images"]
    assert images == {f"{image['name']}:{image['newTag']}"}


def test_manifests_are_valid_against_the_kubernetes_schemas() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for obj in kube_objects():
        if obj["apiVersion"].startswith("keda.sh/"):
            continue  # a CRD: test_keda_scaled_object
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            raise AssertionError(f"{obj['kind']} {obj['metadata']['name']}: {error}") from None


def test_the_schema_validation_catches_a_typo() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    deployment = by_kind("Deployment")["provisioner-worker"]
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["paht"] = (
        "/"
    )
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


# The fields of KEDA's ScaledObject (keda.sh/v1alpha1) these manifests use, as KEDA's CRD types
# them; unknown fields are refused as the API server's structural schema would prune them.
SCALED_OBJECT = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "name": {"type": "string"},
                    },
                },
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "fallback": {
                    "type": "object",
                    "required": ["failureThreshold", "replicas"],
                    "additionalProperties": False,
                    "properties": {
                        "failureThreshold": {"type": "integer"},
                        "replicas": {"type": "integer"},
                    },
                },
                "advanced": {"type": "object"},
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "properties": {
                            "type": {"enum": ["prometheus", "redis"]},
                            # KEDA's trigger metadata is a map of strings
                            "metadata": {
                                "type": "object",
                                "additionalProperties": {"type": "string"},
                            },
                        },
                    },
                },
            },
        },
    },
}


def test_keda_scaled_object() -> None:
    (scaled,) = by_kind("ScaledObject").values()
    jsonschema.validate(scaled, SCALED_OBJECT)
    spec = scaled["spec"]
    target = by_kind("Deployment")[spec["scaleTargetRef"]["name"]]
    assert target["metadata"]["labels"]["app.kubernetes.io/component"] == "worker"
    assert "replicas" not in target["spec"], "KEDA owns the workers' replicas"
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    for trigger in spec["triggers"]:
        metadata = trigger["metadata"]
        assert float(metadata["threshold"]) > 0
        used = check_expression(metadata["query"], "ScaledObject query")
        assert {"provisioner_reconcile_keys", "provisioner_pending_batches"} <= used


def test_the_guide_gives_the_autoscalers_figures() -> None:
    """deploy/README.md's "Autoscaling" states the ScaledObject's threshold and replica range
    (both sized from the scale-out benchmark there)."""
    (scaled,) = by_kind("ScaledObject").values()
    spec = scaled["spec"]
    guide = " ".join((DEPLOY / "README.md").read_text().split())
    for trigger in spec["triggers"]:
        assert f"{int(trigger['metadata']['threshold']):,} per replica" in guide
    assert f"{spec['minReplicaCount']} to {spec['maxReplicaCount']} replicas" in guide


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def test_selectors_match_the_pods() -> None:
    templates = {name: t["metadata"]["labels"] for name, t in pod_templates().items()}
    for name, deployment in by_kind("Deployment").items():
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert matches(selector, templates[name]), f"{name}: its selector misses its pods"
        others = [n for n, labels in templates.items() if n != name and matches(selector, labels)]
        assert not others, f"{name}'s selector also takes the pods of {others}"
    for name, budget in by_kind("PodDisruptionBudget").items():
        selector = budget["spec"]["selector"]["matchLabels"]
        covered = [n for n, labels in templates.items() if matches(selector, labels)]
        assert len(covered) == 1, f"PodDisruptionBudget {name} covers {covered}"
    for name, service in by_kind("Service").items():
        pods = [
            n for n, labels in templates.items() if matches(service["spec"]["selector"], labels)
        ]
        assert pods == ["provisioner-webhook"], f"Service {name} selects {pods}"
        (container,) = pod_templates()[pods[0]]["spec"]["containers"]
        port_names = {port["name"] for port in container["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names, f"Service {name}: {port['targetPort']}"


def webhook_routes() -> set[str]:
    from producers.webhook import Receiver

    return set(Receiver(auth=None).routes)  # type: ignore[arg-type]


def test_probes_point_at_real_routes_and_ports() -> None:
    receiver_routes = webhook_routes()
    assert {"/healthz", "/readyz", "/v1/events"} <= receiver_routes
    seen = set()
    for name, template, container in containers():
        ports = {port["name"]: port["containerPort"] for port in container.get("ports", [])}
        args = container["args"]
        role = args[0]
        probes = {kind: container[kind] for kind in ("startupProbe", "livenessProbe",
                  "readinessProbe") if kind in container}  # fmt: skip
        annotations = template["metadata"].get("annotations", {})
        if role == "worker":
            routes, port = WORKER_ROUTES, metrics_port_default()
            assert "livenessProbe" in probes, name
        elif role == "webhook":
            routes = receiver_routes | {"/metrics"}  # the receiver's /metrics: the catalogue
            port = int(next(o.split("=")[1] for o in option_pairs(args) if o.startswith("--port=")))
            assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz", name
            assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz", name
        else:
            assert not probes, f"{name}: a one-off command has no probe"
            continue
        seen.add(role)
        assert port in ports.values(), f"{name}: port {port} is not declared"
        for kind, probe in probes.items():
            target = probe["httpGet"]["port"]
            number = ports[target] if isinstance(target, str) else target
            assert number == port, f"{name} {kind}: port {target}"
            assert probe["httpGet"]["path"] in routes, f"{name} {kind}: no such route"
        if annotations.get("prometheus.io/scrape") == "true":
            assert int(annotations["prometheus.io/port"]) == port, name
            assert annotations["prometheus.io/path"] in routes, name
    assert seen == {"worker", "webhook"}


def test_containers_run_the_cli_from_the_same_image_securely() -> None:
    images = set()
    settings = Settings()
    for name, template, container in containers():
        images.add(container["image"])
        assert "command" not in container, f"{name}: the image's entrypoint is provisioner"
        cli_command(container["args"])
        pod = template["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] != 0, name
        assert pod["automountServiceAccountToken"] is False, name
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True, name
        assert security["allowPrivilegeEscalation"] is False, name
        assert security["capabilities"]["drop"] == ["ALL"], name
        resources = container["resources"]
        assert resources["requests"]["cpu"] and resources["requests"]["memory"], name
        assert resources["limits"]["memory"], name
        if container["args"][0] == "worker":
            # SIGTERM: Celery's warm shutdown lets the tasks in flight finish
            lease = float(by_kind("ConfigMap")["provisioner-settings"]["data"].get(
                "PROVISIONER_LEASE_SECONDS", settings.lease_seconds))  # fmt: skip
            assert pod["terminationGracePeriodSeconds"] > lease, name
    (image,) = images
    (override,) = kustomization()["images"]
    assert image.rpartition(":")[0] == override["name"], "kustomize's images: names another"


def secret_file(
    path: str, mounts: dict[str, dict[str, Any]], secrets: dict[str, set[str]], where: str
) -> None:
    """``path`` is a key of a Secret mounted as a directory (not a subPath: it is updated)."""
    folder, key = str(PurePosixPath(path).parent), PurePosixPath(path).name
    volume = mounts.get(folder)
    assert volume and "secret" in volume, f"{where}: {path} is not a mounted secret"
    assert key in secrets[volume["secret"]["secretName"]], f"{where}: no key {key}"


def test_references_exist_and_variables_are_settings() -> None:
    secrets = {name: set(s.get("stringData", {})) | set(s.get("data", {}))
               for name, s in by_kind("Secret").items()}  # fmt: skip
    config_maps = by_kind("ConfigMap")
    for name, data in ((n, c["data"]) for n, c in config_maps.items()):
        for variable in data:
            assert variable in SETTINGS, f"ConfigMap {name}: {variable} is not a setting"
    for name, template, container in containers():
        where = f"{name}/{container['name']}"
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
        for source in container.get("envFrom", []):
            assert source["configMapRef"]["name"] in config_maps, where
        for variable in container.get("env", []):
            assert variable["name"] in SETTINGS, f"{where}: {variable['name']} is not a setting"
            ref = variable.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["key"] in secrets.get(ref["name"], set()), f"{where}: {ref}"
        for volume in volumes.values():
            if "secret" in volume:
                assert volume["secret"]["secretName"] in secrets, f"{where}: {volume}"

        env = {v["name"]: v.get("value") for v in container.get("env", [])}
        if container["args"][0] == "webhook":
            secret_file(env["PROVISIONER_WEBHOOK_SECRET_FILE"], mounts, secrets, where)
        for option in option_pairs(container["args"]):
            if option.startswith("--token-file="):
                secret_file(option.split("=", 1)[1], mounts, secrets, where)
                # the path is kept and read by every worker: they mount it at the same place
                (worker,) = [c for n, t, c in containers() if c["args"][0] == "worker"]
                worker_mounts = {m["mountPath"] for m in worker["volumeMounts"]}
                assert str(PurePosixPath(option.split("=", 1)[1]).parent) in worker_mounts


# -- systemd -----------------------------------------------------------------------------------
def test_systemd_units_run_commands_of_the_cli_with_known_settings() -> None:
    for unit in sorted((DEPLOY / "systemd").glob("*.service")):
        lines = [line.partition("=") for line in unit.read_text().splitlines() if "=" in line]
        entries = [
            (key.strip(), value.strip()) for key, _, value in lines if not key.startswith("#")
        ]
        (command,) = [value for key, value in entries if key == "ExecStart"]
        program, *args = command.split()
        assert program.endswith("/bin/provisioner"), unit.name
        cli_command([arg.replace("%i", "1").replace("%H", "host") for arg in args])
        for key, value in entries:
            if key == "Environment":
                variable, _, setting = value.partition("=")
                assert variable in SETTINGS, f"{unit.name}: {variable} is not a setting"
                if variable == "PROVISIONER_METRICS_PORT":
                    assert 0 < int(setting.replace("%i", "9")) < 65536
