"""docker/compose.yaml is valid and production-shaped: checked with `docker-compose config` (no engine needed)."""

import os
import shutil
import subprocess

import pytest
import yaml

from tests.conftest import REPO, missing

SECRETS = ("POSTGRES_PASSWORD", "AIRFLOW_JWT_SECRET", "AIRFLOW_FERNET_KEY", "MLFLOW_TRACKING_USERNAME",
           "MLFLOW_TRACKING_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY")


def compose_config(env: dict) -> subprocess.CompletedProcess:
    command = ["docker-compose"] if shutil.which("docker-compose") else ["docker", "compose"]
    if not shutil.which(command[0]):
        missing("neither docker-compose nor docker compose (apt-get install docker-compose)")
    return subprocess.run([*command, "-f", str(REPO / "docker" / "compose.yaml"), "config"], env=env,
                          capture_output=True, text=True, cwd=REPO / "docker")


@pytest.fixture(scope="module")
def services() -> dict:
    env = {**{k: v for k, v in os.environ.items() if k not in SECRETS}, **{name: f"test-{name}" for name in SECRETS}}
    done = compose_config(env)
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)["services"]


def test_every_part_of_a_night_is_a_service(services):
    assert {"postgres", "redis", "airflow-init", "airflow-api-server", "airflow-scheduler", "airflow-dag-processor",
            "airflow-triggerer", "airflow-worker", "mlflow", "app"} <= set(services)


def test_airflow_is_celery_on_postgres_and_redis_with_one_shared_secret(services):
    airflow = {name: s["environment"] for name, s in services.items() if name.startswith("airflow-")}
    for key in ("AIRFLOW__CORE__EXECUTOR", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CELERY__BROKER_URL",
                "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__CORE__FERNET_KEY", "RECSYS_CONFIG"):
        assert len({env[key] for env in airflow.values()}) == 1, key
    some = next(iter(airflow.values()))
    assert some["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert some["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg://")
    assert some["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://redis:")


def test_only_the_ui_and_the_user_page_publish_ports_and_on_loopback_only(services):
    published = {name: s.get("ports", []) for name, s in services.items() if s.get("ports")}
    assert set(published) == {"airflow-api-server", "app"}
    for ports in published.values():
        assert all(str(p.get("host_ip") if isinstance(p, dict) else p).startswith("127.0.0.1") for p in ports), ports


def test_mlflow_is_an_authenticated_server_on_postgres_proxying_its_artifacts(services):
    command = " ".join(services["mlflow"]["command"])
    assert "--app-name basic-auth" in command and "--artifacts-destination" in command
    assert "--backend-store-uri postgresql+psycopg://" in command


def test_the_image_installs_from_the_lock_that_make_setup_uses():
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    assert "COPY requirements.lock" in dockerfile and "pip install -r requirements.lock" in dockerfile


def test_a_missing_secret_stops_compose_naming_it():
    env = {k: v for k, v in os.environ.items() if k not in SECRETS}
    done = compose_config(env)
    assert done.returncode != 0 and "set " in done.stderr
