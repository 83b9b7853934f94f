"""docker-compose.yml checked without a Docker engine: it parses, its commands exist, its variables are read;
the monitoring it ships (Prometheus scraping the gateway, Grafana's dashboard) reads only series the gateway exports."""

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from app.cli import build_parser
from app.settings import FIELDS
from gateway.metrics import SERIES

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
FLEET = {name: svc for name, svc in SERVICES.items() if svc.get("command", [None])[0] == "maas"}


def test_has_the_services_the_design_needs():
    assert {"redis", "postgres", "migrate", "beat", "controller", "flower", "gateway"} <= set(SERVICES)
    assert {"prometheus", "grafana"} <= set(SERVICES)
    assert [n for n in SERVICES if n.startswith("worker-gpu")], "one worker per GPU"
    assert "--appendonly" in SERVICES["redis"]["command"] and "noeviction" in SERVICES["redis"]["command"]


@pytest.mark.parametrize("name", sorted(FLEET))
def test_every_command_exists_in_the_cli(name):
    build_parser().parse_args(FLEET[name]["command"][1:])  # SystemExit on an unknown command or option


@pytest.mark.parametrize("name", sorted(FLEET))
def test_every_variable_set_is_one_the_settings_read(name):
    known = {var for var, _ in FIELDS}
    assert set(FLEET[name]["environment"]) <= known


def test_workers_reserve_their_own_gpu_and_flower_requires_auth():
    for name, svc in SERVICES.items():
        if name.startswith("worker-gpu"):
            (reservation,) = svc["deploy"]["resources"]["reservations"]["devices"]
            assert reservation["capabilities"] == ["gpu"] and len(reservation["device_ids"]) == 1
    assert "MAAS_FLOWER_BASIC_AUTH" in SERVICES["flower"]["environment"]
    assert "--local" not in SERVICES["flower"]["command"]


def test_redis_needs_a_password_every_service_carries_and_flower_stays_on_loopback():
    command = SERVICES["redis"]["command"]
    assert command[command.index("--requirepass") + 1].startswith("${REDIS_PASSWORD:?")
    for name, svc in FLEET.items():
        env = svc["environment"]
        assert env["REDIS_URL"].startswith("redis://:${REDIS_PASSWORD"), name
        # PostgreSQL may be published beyond loopback (MAAS_SERVICES_BIND): no default password either
        assert env["DATABASE_URL"].startswith("postgresql+psycopg://maas:${POSTGRES_PASSWORD:?"), name
        assert env["MAAS_SIGNING_KEY"].startswith("${MAAS_SIGNING_KEY:?"), name
    assert SERVICES["flower"]["ports"] == ["127.0.0.1:5555:5555"]
    assert SERVICES["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")


def test_beats_tasks_run_on_the_controller_not_on_gpu_workers():
    # Without a controller nothing would run the solves and aging passes; with workers also taking them, a solve
    # would hold a GPU worker's one slot.
    assert SERVICES["controller"]["command"] == ["maas", "controller"]
    for name, svc in SERVICES.items():
        if name.startswith("worker-gpu"):
            assert svc["environment"]["MAAS_WORKER_SYSTEM_TASKS"] == "false"


def test_the_image_holds_every_package_the_commands_import():
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    copied = set(re.findall(r"^COPY (\S+) \1$", (ROOT / "Dockerfile").read_text(), re.MULTILINE))
    assert {pattern.rstrip("*") for pattern in packages["include"]} <= copied


# --- monitoring: gateway, Prometheus, Grafana ---------------------------------------------------------------------
DEPLOY = ROOT / "deploy"
PROMETHEUS_CONFIG = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
DASHBOARD_PATH = DEPLOY / "grafana" / "dashboards" / "maas-fleet.json"


def _required_vars(value: str) -> set[str]:
    """Variables a compose value interpolates as required (``${NAME:?message}``)."""
    return set(re.findall(r"\$\{([A-Z0-9_]+):\?[^}]*\}", value))


def _mounts(service: dict) -> dict[str, str]:
    """Container path -> host path of a service's bind mounts (relative to the repository)."""
    out = {}
    for volume in service.get("volumes", []):
        host, container, *_ = volume.split(":")
        if host.startswith("./"):
            out[container] = host[2:]
    return out


def test_the_gateway_serves_on_all_interfaces_and_requires_api_keys():
    gateway = SERVICES["gateway"]
    assert gateway["command"] == ["maas", "serve", "--host", "0.0.0.0", "--port", "8000"]
    # Bound beyond loopback, `maas serve` refuses to start without keys: compose refuses first, naming them.
    assert "MAAS_API_KEYS" in _required_vars(gateway["environment"]["MAAS_API_KEYS"])
    assert "8000:8000" in gateway["ports"]


def test_prometheus_scrapes_the_gateway_with_a_key_it_accepts():
    prometheus = SERVICES["prometheus"]
    assert prometheus["image"].startswith("prom/prometheus:")
    mounts = _mounts(prometheus)
    config_in_container = next(a for a in prometheus["command"] if a.startswith("--config.file=")).split("=", 1)[1]
    assert mounts[config_in_container] == "deploy/prometheus/prometheus.yml"

    (job,) = [j for j in PROMETHEUS_CONFIG["scrape_configs"] if j["job_name"] == "maas-gateway"]
    port = SERVICES["gateway"]["command"][-1]
    assert job["static_configs"][0]["targets"] == [f"gateway:{port}"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    # The key: a compose secret (a file in the container) made from a variable the gateway also accepts.
    auth = job["authorization"]
    assert auth.get("type", "Bearer") == "Bearer"
    secret = auth["credentials_file"].removeprefix("/run/secrets/")
    assert secret in prometheus["secrets"]
    variable = COMPOSE["secrets"][secret]["environment"]
    assert variable in _required_vars(SERVICES["gateway"]["environment"]["MAAS_API_KEYS"])


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian's prometheus package) is not installed")
def test_promtool_accepts_the_prometheus_config(tmp_path):
    key = tmp_path / "key"
    key.write_text("a-key-of-sixteen-chars")
    job = PROMETHEUS_CONFIG["scrape_configs"][0]
    config = {**PROMETHEUS_CONFIG, "scrape_configs": [{**job, "authorization": {"credentials_file": str(key)}}]}
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    checked = subprocess.run(
        ["promtool", "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_grafana_is_provisioned_with_prometheus_and_the_dashboard():
    grafana = SERVICES["grafana"]
    assert grafana["image"].startswith("grafana/grafana:")
    assert "GRAFANA_ADMIN_PASSWORD" in _required_vars(grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"])
    mounts = _mounts(grafana)
    assert mounts["/etc/grafana/provisioning"] == "deploy/grafana/provisioning"
    provisioning = ROOT / "deploy" / "grafana" / "provisioning"

    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    assert "9090:9090" in SERVICES["prometheus"]["ports"]

    (provider,) = yaml.safe_load((provisioning / "dashboards" / "maas.yml").read_text())["providers"]
    dashboards_dir = mounts[provider["options"]["path"]]
    assert (ROOT / dashboards_dir / DASHBOARD_PATH.name).resolve() == DASHBOARD_PATH
    dashboard = json.loads(DASHBOARD_PATH.read_text())
    (datasource_var,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert datasource_var["current"]["value"] == source["uid"]


#: PromQL words that are not series names: functions are told apart by their "(", these by what they are.
_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool"}
_PROMQL_WORDS |= {"offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression selects (Grafana's $variables allowed)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    expr = re.sub(r"\$\{[^}]*\}|\$\w+", "", expr)  # Grafana variables
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)  # label lists
    words = re.findall(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", expr)
    return {w for w in words if w.lower() not in _PROMQL_WORDS}


def test_metric_names_finds_series_not_functions_labels_or_variables():
    expr = 'histogram_quantile(0.99, sum by (model, le) (rate(x_bucket{model=~"$model",a="b c"}[$__rate_interval])))'
    assert metric_names(expr) == {"x_bucket"}
    assert metric_names("sum(rate(a_total[5m])) / on (job) group_left (model) b + c offset 5m > bool 1e3") == {
        "a_total",
        "b",
        "c",
    }


def _dashboard_queries(dashboard: dict) -> list[str]:
    panels = [p for p in dashboard["panels"] for p in [p, *p.get("panels", [])]]
    exprs = [t["expr"] for p in panels for t in p.get("targets", []) if t.get("expr")]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            exprs.append(re.fullmatch(r"label_values\((\w+),\s*\w+\)", query).group(1))  # type: ignore[union-attr]
    return exprs


def test_the_dashboard_reads_only_series_the_gateway_exports():
    dashboard = json.loads(DASHBOARD_PATH.read_text())
    queries = _dashboard_queries(dashboard)
    used = set().union(*map(metric_names, queries))
    assert used <= set(SERIES), f"not exported by gateway/metrics.py: {sorted(used - set(SERIES))}"
    # The panels the fleet needs are there.
    assert {
        "nv_inference_request_success",
        "nv_inference_request_failure",
        "maas_request_latency_seconds_bucket",
        "maas_queue_depth",
        "nv_inference_pending_request_count",
        "nv_gpu_memory_used_bytes",
        "nv_gpu_memory_total_bytes",
        "maas_replicas",
        "maas_allocation_last_gap",
        "maas_allocation_last_solve_seconds",
        "maas_aging_promotions_total",
        "maas_ledger_resends_total",
    } <= used
    assert any("histogram_quantile(0.99," in q for q in queries) and any(
        "histogram_quantile(0.5," in q for q in queries
    )
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and dashboard["uid"] == "maas-fleet"


def test_several_hosts_share_one_services_host_through_two_variables():
    # GPU hosts point at the services host with MAAS_SERVICES_HOST; without it, the compose network's names.
    for name, svc in FLEET.items():
        env = svc["environment"]
        assert "@${MAAS_SERVICES_HOST:-redis}:6379/" in env["REDIS_URL"], name
        assert "@${MAAS_SERVICES_HOST:-postgres}:5432/" in env["DATABASE_URL"], name
    # The services host publishes Redis and PostgreSQL on loopback unless told its LAN address.
    assert SERVICES["redis"]["ports"] == ["${MAAS_SERVICES_BIND:-127.0.0.1}:6379:6379"]
    assert SERVICES["postgres"]["ports"] == ["${MAAS_SERVICES_BIND:-127.0.0.1}:5432:5432"]
    # A worker names its machine, not its container: the allocator spreads replicas over MAAS_HOST.
    for name in (n for n in SERVICES if n.startswith("worker-gpu")):
        env = SERVICES[name]["environment"]
        assert env["MAAS_WORKER_NAME"].endswith("@" + env["MAAS_HOST"]), name
