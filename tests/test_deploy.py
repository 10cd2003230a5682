"""The deploy/ artifacts stay valid: the sample config checks clean and documents every key."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from gateway.cli.main import main
from gateway.config import model as configuration
from gateway.config import toml
from gateway.config.providers import UPSTREAM_KEYS

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
SAMPLE = DEPLOY / "mailgate.toml"


def test_sample_config_passes_check(monkeypatch, capsys):
    """`mailgate check --config deploy/mailgate.toml` is OK with its password variable set."""
    monkeypatch.setenv("MAILGATE_UPSTREAM_PASSWORD", "not-a-real-password")
    assert main(["check", "--config", str(SAMPLE)]) == 0
    assert "OK" in capsys.readouterr().out


def keys_of(cls: type, *, skip: tuple[str, ...] = ("name",)) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if f.name not in skip}


def test_sample_config_documents_every_key():
    """Each key of each section appears in the sample, set or commented out (``key =``)."""
    text = SAMPLE.read_text()
    written = set(re.findall(r"^#?\s*([a-z_0-9]+)\s*=", text, re.MULTILINE))
    expected = (
        keys_of(configuration.ListenerConfig)
        | keys_of(configuration.AuditConfig)
        | keys_of(configuration.MetricsConfig)
        | keys_of(configuration.ClusterConfig)
        | keys_of(configuration.UpstreamConfig, skip=("name", "oauth"))
        | keys_of(configuration.App)
        | keys_of(configuration.Rule, skip=("upstreams", "headers"))
        | {"upstream"}
        | UPSTREAM_KEYS  # the OAuth keys, held in UpstreamConfig.oauth
        | {"rewrite_from", "strip_headers"}  # held in Rule.headers
    )
    assert sorted(expected - written) == []


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed")
def test_haproxy_sample_is_valid():
    """deploy/haproxy.cfg passes `haproxy -c`."""
    check = subprocess.run(
        ["haproxy", "-c", "-f", str(DEPLOY / "haproxy.cfg")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_systemd_file_limit_fits_the_sample_max_connections():
    """LimitNOFILE leaves room for two descriptors per app connection, the pools and the rest."""
    unit = (DEPLOY / "systemd" / "mailgate.service").read_text()
    [limit] = re.findall(r"^LimitNOFILE=(\d+)$", unit, re.MULTILINE)
    config = toml.load(str(SAMPLE))
    pools = sum(u.max_connections for u in config.upstreams.values())
    assert int(limit) >= 2 * config.listener.max_connections + pools + 32 + 150


# --- scaling out: Kubernetes, the systemd template, HAProxy ---------------------------------

KUBERNETES = DEPLOY / "kubernetes"


def manifests() -> dict[str, list[dict]]:
    yaml = pytest.importorskip("yaml")
    return {p.name: list(yaml.safe_load_all(p.read_text())) for p in KUBERNETES.glob("*.yaml")}


def kind(name: str) -> dict:
    [found] = [d for docs in manifests().values() for d in docs if d and d["kind"] == name]
    return found


def test_kubernetes_manifests_parse_and_kustomization_lists_them():
    """Every manifest is valid YAML with a kind, and kustomization.yaml applies each one."""
    found = manifests()
    listed = set(found.pop("kustomization.yaml")[0]["resources"])
    assert listed == set(found)
    assert all(d.get("kind") and d.get("apiVersion") for docs in found.values() for d in docs)


def test_statefulset_runs_three_replicas_each_with_its_own_spool():
    """replicas: 3, one spool volume per pod (volumeClaimTemplates) mounted where [queue] path is."""
    statefulset = kind("StatefulSet")
    assert statefulset["spec"]["replicas"] == 3
    [claim] = statefulset["spec"]["volumeClaimTemplates"]
    [container] = statefulset["spec"]["template"]["spec"]["containers"]
    [mount] = [m for m in container["volumeMounts"] if m["name"] == claim["metadata"]["name"]]
    config = toml.parse(tomllib_loads(kind("ConfigMap")["data"]["mailgate.toml"]), "configmap.yaml")
    assert config.queue.path.startswith(mount["mountPath"] + "/")


def tomllib_loads(text: str) -> dict:
    import tomllib

    return tomllib.loads(text)


def test_prestop_drains_within_the_termination_grace():
    """The preStop hook runs `mailgate queue drain --wait`; the grace period covers its
    --timeout plus listener.shutdown_grace, so SIGTERM comes only after the drain."""
    spec = kind("StatefulSet")["spec"]["template"]["spec"]
    [container] = spec["containers"]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:4] == ["mailgate", "queue", "drain", "--wait"]
    assert command[command.index("--config") + 1] == container["args"][-1]
    timeout = float(command[command.index("--timeout") + 1])
    config = toml.parse(tomllib_loads(kind("ConfigMap")["data"]["mailgate.toml"]), "configmap.yaml")
    assert spec["terminationGracePeriodSeconds"] > timeout + config.listener.shutdown_grace


def test_redis_service_matches_its_deployment():
    """The bundled Redis Service selects the Redis pods and targets their named port."""
    redis, service = (
        kind("Deployment"),
        next(d for d in manifests()["redis.yaml"] if d["kind"] == "Service"),
    )
    labels = redis["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    [container] = redis["spec"]["template"]["spec"]["containers"]
    assert service["spec"]["ports"][0]["targetPort"] in {p["name"] for p in container["ports"]}


def unit_lines(name: str) -> list[str]:
    text = (DEPLOY / "systemd" / name).read_text()
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def unit_values(name: str, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in unit_lines(name) if line.startswith(key + "=")]


def test_systemd_template_gives_each_instance_its_own_config_spool_and_audit():
    """mailgate@.service: /etc/mailgate/%i.toml, and exactly its own state and log folders writable."""
    unit = "mailgate@.service"
    [start] = unit_values(unit, "ExecStart")
    assert start.endswith("run --config /etc/mailgate/%i.toml")
    [state], [logs] = unit_values(unit, "StateDirectory"), unit_values(unit, "LogsDirectory")
    assert (state, logs) == ("mailgate/%i", "mailgate/%i")
    [writable] = unit_values(unit, "ReadWritePaths")
    assert writable.split() == [f"/var/lib/{state}", f"/var/log/{logs}"]
    text = (DEPLOY / "systemd" / unit).read_text()
    assert '[queue] path = "/var/lib/mailgate/NAME/spool"' in text
    assert '[audit] path = "/var/log/mailgate/NAME/audit.jsonl"' in text


def test_systemd_template_keeps_the_single_unit_hardening():
    """Apart from the per-instance lines, the template is the single unit, line for line."""
    per_instance = ("Description", "ExecStart", "StateDirectory", "LogsDirectory", "ReadWritePaths")

    def common(name: str) -> list[str]:
        return [line for line in unit_lines(name) if not line.startswith(per_instance)]

    assert common("mailgate@.service") == common("mailgate.service")


def test_haproxy_balances_three_instances_on_readyz():
    """deploy/haproxy.cfg lists three servers, checked on /readyz with PROXY v2."""
    text = (DEPLOY / "haproxy.cfg").read_text()
    assert len(re.findall(r"^\s+server mailgate\d ", text, re.MULTILINE)) == 3
    assert "uri /readyz" in text and "send-proxy-v2" in text


def test_configmap_shares_limits_through_the_bundled_redis():
    """The replicas' config has [cluster] pointing at the Service redis.yaml defines."""
    config = toml.parse(tomllib_loads(kind("ConfigMap")["data"]["mailgate.toml"]), "configmap.yaml")
    service = next(d for d in manifests()["redis.yaml"] if d["kind"] == "Service")
    assert config.cluster is not None
    port = service["spec"]["ports"][0]["port"]
    assert config.cluster.redis_url == f"redis://{service['metadata']['name']}:{port}/0"
