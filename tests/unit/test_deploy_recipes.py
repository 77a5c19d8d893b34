"""The deployment recipes we ship (deploy/, Containerfile) name settings dockyard really has.

Every ``DOCKYARD_*`` variable in a Kubernetes manifest, the compose file, the systemd unit or the
Containerfile, and every YAML settings file they carry, must load into ``Settings``: a renamed or
removed setting breaks this test, not a user's deployment.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from dockyard.config import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
# Not a setting: the variable that names the YAML settings file.
CONFIG_VARIABLE = "DOCKYARD_CONFIG"
HEALTH_PATHS = {"/health/live", "/health/ready"}


def setting_of(variable: str) -> tuple[type[BaseModel], str]:
    """The model and field a ``DOCKYARD_A__B`` variable sets (pydantic-settings' own mapping)."""
    assert variable.startswith("DOCKYARD_"), variable
    path = variable.removeprefix("DOCKYARD_").lower().split("__")
    model: type[BaseModel] = Settings
    for i, name in enumerate(path):
        assert name in model.model_fields, f"{variable}: {model.__name__} has no setting {name!r}"
        if i < len(path) - 1:
            nested = model.model_fields[name].annotation
            assert isinstance(nested, type) and issubclass(nested, BaseModel), (
                f"{variable}: {name} is a value"
            )
            model = nested
    return model, path[-1]


def check_environment(env: dict[str, str | None], where: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each variable is a setting, and the literal values load (those from Secrets are checked
    for their name only)."""
    for variable in env:
        if variable.startswith("DOCKYARD_") and variable != CONFIG_VARIABLE:
            setting_of(variable)
    with monkeypatch.context() as m:
        for variable, value in env.items():
            if variable.startswith("DOCKYARD_") and variable != CONFIG_VARIABLE and value is not None:
                m.setenv(variable, value)
        if env.get("DOCKYARD_STORAGE") == "s3" and "DOCKYARD_S3__BUCKET" not in env:
            m.setenv("DOCKYARD_S3__BUCKET", "from-the-config-file")
        try:
            load_settings()
        except Exception as exc:
            pytest.fail(f"{where}: the settings do not load: {exc}")


def kubernetes_documents() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                yield f"{path.name}:{document['kind']}/{document['metadata']['name']}", document


def test_there_are_recipes_to_check() -> None:
    kinds = {document["kind"] for _, document in kubernetes_documents()}
    assert {"Deployment", "Service", "PersistentVolumeClaim", "Secret", "ConfigMap"} <= kinds
    assert (DEPLOY / "compose.yaml").is_file() and (DEPLOY / "dockyard.service").is_file()
    assert (ROOT / "Containerfile").is_file()


def test_kubernetes_containers_use_real_settings_and_the_health_endpoints(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config_maps = {
        document["metadata"]["name"]: document["data"]
        for _, document in kubernetes_documents()
        if document["kind"] == "ConfigMap"
    }
    deployments = [(where, d) for where, d in kubernetes_documents() if d["kind"] == "Deployment"]
    assert len(deployments) == 2
    for where, deployment in deployments:
        spec = deployment["spec"]["template"]["spec"]
        assert spec["terminationGracePeriodSeconds"] >= 30, where
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        for container in spec["containers"]:
            env = {item["name"]: item.get("value") for item in container.get("env", [])}
            check_environment(env, where, monkeypatch)
            probes = {container[p]["httpGet"]["path"] for p in ("livenessProbe", "readinessProbe")}
            assert probes == HEALTH_PATHS, where
            assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready", where
            mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
            if env.get(CONFIG_VARIABLE):
                mount = mounts[env[CONFIG_VARIABLE]]
                volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
                text = config_maps[volume["configMap"]["name"]][mount["subPath"]]
                check_settings_file(text, f"{where} {env[CONFIG_VARIABLE]}", monkeypatch, env)


def check_settings_file(
    text: str, where: str, monkeypatch: pytest.MonkeyPatch, env: dict[str, str | None] | None = None
) -> None:
    """A YAML settings file loads, with the variables set beside it (Secrets as placeholders)."""
    with monkeypatch.context() as m, tempfile.TemporaryDirectory() as folder:
        for variable, value in (env or {}).items():
            if variable.startswith("DOCKYARD_") and variable != CONFIG_VARIABLE:
                m.setenv(variable, value if value is not None else placeholder(variable))
        path = Path(folder) / "dockyard.yaml"
        path.write_text(text)
        try:
            load_settings(path)
        except Exception as exc:
            pytest.fail(f"{where}: the settings file does not load: {exc}")


def placeholder(variable: str) -> str:
    """A value of the right shape for a variable whose value comes from a Secret."""
    if variable == "DOCKYARD_DATABASE_URL":
        return "postgresql://user:password@db.internal/dockyard"
    return "secret"


def test_the_compose_nodes_use_real_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    nodes = {name: s for name, s in compose["services"].items() if s.get("image") == "dockyard:local"}
    assert len(nodes) == 3
    for name, service in nodes.items():
        assert service["build"]["dockerfile"] == "Containerfile"
        assert (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
        env = {key: str(value) for key, value in service["environment"].items()}
        check_environment(env, f"compose.yaml {name}", monkeypatch)


def unit_directives(text: str) -> list[tuple[str, str]]:
    return [
        (key.strip(), value.strip())
        for line in text.splitlines()
        if line.strip() and not line.startswith(("#", ";", "["))
        for key, _, value in [line.partition("=")]
    ]


def test_the_systemd_unit_runs_serve_with_real_settings_and_hardening(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    directives = unit_directives((DEPLOY / "dockyard.service").read_text())
    values = dict(directives)
    assert values["ExecStart"].split()[1:] == ["serve"]
    assert values["Type"] in {"simple", "notify"} and values["Restart"] == "on-failure"
    assert values["NoNewPrivileges"] == "yes" and values["ProtectSystem"] == "strict"
    assert values["User"] != "root"
    env: dict[str, str | None] = {}
    for key, value in directives:
        if key == "Environment":
            variable, _, setting = value.partition("=")
            env[variable] = setting
    check_environment(env, "dockyard.service", monkeypatch)
    # The settings file the unit names is the one deploy/ ships as its example.
    assert env[CONFIG_VARIABLE] == "/etc/dockyard/dockyard.yaml"
    check_settings_file((DEPLOY / "dockyard.yaml").read_text(), "deploy/dockyard.yaml", monkeypatch)


def test_the_containerfile_sets_real_settings_and_runs_as_a_user(monkeypatch: pytest.MonkeyPatch) -> None:
    text = (ROOT / "Containerfile").read_text()
    env = dict(re.findall(r"\b(DOCKYARD_[A-Z_]+)=(\S+)", text.split("\nENV ", 1)[1].split("\nUSER", 1)[0]))
    assert env["DOCKYARD_LISTEN"] == "0.0.0.0:5000"
    assert env["DOCKYARD_DATA_DIR"] == "/var/lib/dockyard"
    check_environment(dict(env), "Containerfile", monkeypatch)
    assert re.search(r"^USER 10001", text, re.M)
    assert re.search(r'^VOLUME \["/var/lib/dockyard"\]', text, re.M)
    assert re.search(r"^EXPOSE 5000$", text, re.M)
    assert "/health/ready" in text
