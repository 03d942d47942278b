"""docker/compose.yaml, the images and prefect.yaml, checked as files (no Docker engine
runs here; tests/test_real_servers.py starts the same servers as processes).

What must hold: every service is there; nobody gets in by default (ports published on
127.0.0.1 only, every secret an environment reference compose refuses to start
without, none written in any file, MLflow behind its basic-auth app and Prefect behind
an API auth string); the trainer reserves an NVIDIA GPU; nothing runs as root; the
images install the package from its wheel, not editable."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from insight.config import REPO_ROOT

DOCKER = REPO_ROOT / "docker"
COMPOSE = yaml.safe_load((DOCKER / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]
OURS = ("prefect-server", "prefect-worker", "mlflow", "trainer")
SECRETS = ("POSTGRES_PASSWORD", "PREFECT_AUTH_STRING", "MLFLOW_ADMIN_PASSWORD",
           "MLFLOW_SECRET_KEY")
_REF = re.compile(r"\$\{(\w+)(?::([-?])([^}]*))?\}")


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR:?message}` (an unset or empty
    VAR with `:?` is an error that stops `docker compose up`)."""
    def one(m):
        name, op, arg = m.group(1), m.group(2), m.group(3)
        got = env.get(name, "")
        if op == "?" and not got:
            raise ValueError(f"{name}: {arg}")
        return got or (arg if op == "-" else "")
    return _REF.sub(one, value)


def strings(node):
    if isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)
    elif isinstance(node, str):
        yield node


def test_every_service_of_the_deployment_is_there():
    assert set(SERVICES) == {"postgres", "prefect-server", "prefect-worker", "mlflow",
                             "trainer"}
    assert SERVICES["trainer"]["build"]["dockerfile"] == "docker/Dockerfile.gpu"
    assert SERVICES["prefect-worker"]["build"]["dockerfile"] == "docker/Dockerfile"


def test_published_ports_bind_to_localhost_unless_configured():
    env = {name: "s3cret" for name in SECRETS}
    published = {name: [interpolate(p, env) for p in svc.get("ports", [])]
                 for name, svc in SERVICES.items()}
    assert published["prefect-server"] == ["127.0.0.1:4200:4200"]
    assert published["mlflow"] == ["127.0.0.1:5000:5000"]
    assert all(not ports for name, ports in published.items()
               if name not in ("prefect-server", "mlflow"))      # Postgres: network only
    opened = {name: [interpolate(p, {**env, "BIND_ADDRESS": "0.0.0.0"}) for p in ports]
              for name, ports in ((n, s.get("ports", [])) for n, s in SERVICES.items())}
    assert opened["mlflow"] == ["0.0.0.0:5000:5000"]


@pytest.mark.parametrize("missing", SECRETS)
def test_compose_refuses_to_start_with_a_secret_unset(missing):
    env = {name: "s3cret" for name in SECRETS if name != missing}
    refused = []
    for text in strings(COMPOSE):
        try:
            interpolate(text, env)
        except ValueError as err:
            refused.append(str(err))
    assert refused and all(r.startswith(f"{missing}:") for r in refused)
    assert all("docker/.env" in r for r in refused)               # says where to set it


def test_no_secret_is_written_in_any_file():
    secret_key = re.compile(r"PASSWORD|SECRET|AUTH_STRING")
    for name, svc in SERVICES.items():
        for key, value in (svc.get("environment") or {}).items():
            if secret_key.search(key):
                assert _REF.fullmatch(value) and ":?" in value, (name, key, value)
    for text in strings(COMPOSE):
        for url in re.findall(r"\w+://[^ ]*@", text):             # credentials in URLs
            assert "${POSTGRES_PASSWORD:?" in url, url
    example = dict(line.split("=", 1) for line in
                   (DOCKER / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    assert {name: example[name] for name in SECRETS} == {name: "" for name in SECRETS}
    assert "admin_password" not in (DOCKER / "mlflow-auth.ini").read_text()


def test_the_env_file_is_never_committed_nor_copied_into_an_image():
    for path in ("docker/.env", ".env"):
        assert subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO_ROOT).returncode == 0
    ignored = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    assert {".env", "docker/.env", ".git", "runs"} <= set(ignored)


def test_mlflow_runs_its_basic_auth_app_and_prefect_asks_for_an_auth_string():
    from mlflow.environment_variables import (MLFLOW_AUTH_ADMIN_PASSWORD,
                                              MLFLOW_AUTH_CONFIG_PATH,
                                              MLFLOW_FLASK_SERVER_SECRET_KEY)
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_SERVER_API_AUTH_STRING

    mlflow = SERVICES["mlflow"]
    assert "--app-name=basic-auth" in mlflow["command"]
    assert {MLFLOW_AUTH_ADMIN_PASSWORD.name, MLFLOW_AUTH_CONFIG_PATH.name,
            MLFLOW_FLASK_SERVER_SECRET_KEY.name} <= set(mlflow["environment"])
    assert any(c.startswith("--backend-store-uri=postgresql://") for c in mlflow["command"])
    assert "mlartifacts:/mlartifacts" in mlflow["volumes"]
    server = SERVICES["prefect-server"]["environment"]
    assert PREFECT_SERVER_API_AUTH_STRING.name in server
    assert server["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")
    for client in ("prefect-worker", "trainer"):
        env = SERVICES[client]["environment"]
        assert PREFECT_API_AUTH_STRING.name in env and env["PREFECT_API_URL"].startswith(
            "http://prefect-server:4200")


def test_the_trainer_reserves_an_nvidia_gpu():
    (device,) = SERVICES["trainer"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert interpolate(str(device["count"]), {}) == "1"
    assert "deploy" not in SERVICES["prefect-worker"]


def test_nothing_runs_as_root():
    for name, svc in SERVICES.items():
        assert svc.get("user") not in (None, "root", "0", "0:0"), name
    for dockerfile in ("Dockerfile", "Dockerfile.gpu"):
        text = (DOCKER / dockerfile).read_text()
        users = re.findall(r"^USER (\S+)", text, flags=re.M)
        assert users and users[-1] not in ("root", "0"), dockerfile


def test_the_images_install_the_wheel_not_an_editable_checkout():
    for dockerfile in ("Dockerfile", "Dockerfile.gpu"):
        text = (DOCKER / dockerfile).read_text()
        assert "pip wheel" in text and "/wheels/insight_rlvr-" in text, dockerfile
        assert not re.search(r"pip install[^\n]*(-e|--editable)\b", text), dockerfile
        final = text.rsplit("\nFROM ", 1)[1]       # the runtime stage has no source tree
        assert "COPY insight" not in final and "COPY --from=wheel /wheels" in final


PREFECT_YAML = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())


def test_prefect_yaml_deploys_the_training_flow_to_a_process_and_a_docker_pool():
    from prefect.flows import load_flow_from_entrypoint

    from flows.train import train_flow
    deployments = {d["name"]: d for d in PREFECT_YAML["deployments"]}
    pools = {d["work_pool"]["name"]: d for d in deployments.values()}
    workers = {svc["command"][svc["command"].index("--pool") + 1]
               for svc in SERVICES.values() if "worker" in svc.get("command", [])}
    assert workers <= set(pools)                  # compose's workers serve its pools
    docker = [d for d in deployments.values() if "image" in d["work_pool"]["job_variables"]]
    assert len(docker) == 1 and docker[0]["work_pool"]["job_variables"]["image"] == \
        "insight-rlvr:gpu"
    for d in deployments.values():
        flow = load_flow_from_entrypoint(d["entrypoint"])
        assert flow.name == train_flow.name
        assert set(d["parameters"]) <= set(train_flow.parameters.properties)
        assert d["concurrency_limit"]["limit"] == 1
