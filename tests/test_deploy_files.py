"""The Procfile and docker-compose.yml describe the same deployment: these
tests fail when one of them drifts from the other, or from the code."""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from tokenfan.__main__ import build_parser

ROOT = Path(__file__).resolve().parents[1]


def _procfile() -> dict[str, list[str]]:
    processes: dict[str, list[str]] = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9_-]+):\s*(\S.*)", line)
        assert match, f"not a Procfile line: {line!r}"
        name, command = match.groups()
        assert name not in processes, f"process {name!r} defined twice"
        processes[name] = shlex.split(command)
    return processes


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _argv(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def _environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # ["KEY=value", ...]
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


PROCFILE = _procfile()
COMPOSE = _compose()
SERVICES = COMPOSE["services"]
APP_SERVICES = ("api", "worker")


def test_same_processes_in_procfile_and_compose() -> None:
    assert set(PROCFILE) == {"redis", "api", "worker"}
    assert set(SERVICES) == set(PROCFILE)


def test_redis_is_embedded_in_procfile_and_an_image_in_compose() -> None:
    assert PROCFILE["redis"] == ["python", "-m", "tokenfan", "redis"]
    # ... and that command exists in the CLI.
    assert build_parser().parse_args(["redis"]).command == "redis"

    redis = SERVICES["redis"]
    assert redis["image"].startswith("redis:7")
    assert "build" not in redis
    command = _argv(redis.get("command", []))
    assert "--appendonly" in command and command[command.index("--appendonly") + 1] == "yes"
    assert any(str(volume).endswith(":/data") for volume in redis.get("volumes", [])), (
        "the append-only file must live on a volume"
    )
    assert _argv(redis["healthcheck"]["test"])[-2:] == ["redis-cli", "ping"]


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_commands_are_identical(name: str) -> None:
    service = SERVICES[name]
    assert "build" in service, f"{name} should run the project's image"
    assert _argv(service["command"]) == PROCFILE[name]


@pytest.mark.parametrize("name", sorted(PROCFILE))
def test_procfile_modules_exist(name: str) -> None:
    argv = PROCFILE[name]
    assert argv[:2] == ["python", "-m"], f"{name}: expected 'python -m MODULE', got {argv}"
    module = argv[2]
    assert importlib.util.find_spec(module) is not None, f"{name}: no module {module!r}"
    # A package run with -m needs a __main__ module.
    spec = importlib.util.find_spec(module)
    if spec.submodule_search_locations is not None:
        assert importlib.util.find_spec(f"{module}.__main__") is not None, (
            f"{name}: package {module!r} has no __main__.py, so 'python -m {module}' fails"
        )


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_use_the_compose_redis(name: str) -> None:
    service = SERVICES[name]
    url = urlsplit(_environment(service)["TOKENFAN_REDIS_URL"])
    assert url.scheme == "redis"
    assert url.hostname == "redis" and "redis" in SERVICES
    assert (url.port or 6379) == 6379
    depends = service["depends_on"]
    assert "redis" in depends
    if isinstance(depends, dict):
        assert depends["redis"]["condition"] == "service_healthy"


def test_worker_can_be_scaled() -> None:
    worker = SERVICES["worker"]
    assert "container_name" not in worker, "a fixed container name breaks --scale worker=N"
    for mapping in worker.get("ports", []):
        # "8000:8000" or {"published": ...} would bind the same host port N times.
        if isinstance(mapping, dict):
            assert not mapping.get("published"), f"worker publishes a fixed host port: {mapping}"
        else:
            assert str(mapping).count(":") == 0, f"worker publishes a fixed host port: {mapping}"


def test_api_is_reachable_and_health_checked() -> None:
    api = SERVICES["api"]
    env = _environment(api)
    # Inside a container, 127.0.0.1 would be unreachable from the host.
    assert env.get("TOKENFAN_HOST") == "0.0.0.0"
    assert "8000:8000" in [str(port) for port in api["ports"]]
    test = " ".join(_argv(api["healthcheck"]["test"]))
    assert "python" in test and "urllib" in test and ":8000/readyz" in test


def test_dockerfile_basics() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert re.search(r"^RUN pip install \.", text, re.M)
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0"), "the image must not run as root"
    # Every package the project installs is copied into the image.
    for package in ("api", "worker", "shared", "tokenfan"):
        assert re.search(rf"^COPY {package} ", text, re.M), f"Dockerfile does not copy {package}/"


# --- health of every process, the environment, the packaged page -----------------------


def test_worker_is_health_checked_by_a_module_that_exists() -> None:
    test = _argv(SERVICES["worker"]["healthcheck"]["test"])
    assert test[0] == "CMD", "exec form: no shell in the health check"
    assert test[1:] == ["python", "-m", "worker.health"]
    assert importlib.util.find_spec("worker.health") is not None
    # It reads what the worker writes (worker/metrics.py pushes under these names).
    from shared import keys
    from worker.health import healthy
    from worker.metrics import worker_id

    class FakeRedis:
        def __init__(self, keys: set[str]) -> None:
            self.keys = keys

        def smembers(self, name: str) -> set[bytes]:
            assert name == keys.WORKER_METRICS_SET
            return {worker_id().encode()}

        def exists(self, key: str) -> int:
            return int(key in self.keys)

    host = worker_id().rsplit(":", 1)[0]
    assert healthy(FakeRedis({keys.worker_metrics(worker_id())}), host)
    assert not healthy(FakeRedis(set()), host)
    assert not healthy(FakeRedis({keys.worker_metrics(worker_id())}), "another-host")


@pytest.mark.parametrize("name", APP_SERVICES)
def test_compose_environment_names_real_settings(name: str) -> None:
    """A misspelt TOKENFAN_ variable is silently ignored by pydantic-settings:
    every one in the compose file must be a setting, with a valid value."""
    from shared.settings import Settings

    env = {k: v for k, v in _environment(SERVICES[name]).items() if k.startswith("TOKENFAN_")}
    fields = {f"TOKENFAN_{field.upper()}" for field in Settings.model_fields}
    assert set(env) <= fields, sorted(set(env) - fields)
    Settings(_env_file=None, **{k.removeprefix("TOKENFAN_").lower(): v for k, v in env.items()})


def test_compose_documents_the_settings_it_names() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    header = text.split("services:", 1)[0]
    for name in APP_SERVICES:
        for key in _environment(SERVICES[name]):
            stem = key.removeprefix("TOKENFAN_")
            assert key in header or f"_{stem}" in header, f"{key} is set but not documented at the top"


def test_the_web_page_is_packaged() -> None:
    """The Dockerfile runs the installed package (pip install .), not the
    source tree: api/static must be package data."""
    import tomllib

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["api"]
    static = sorted(p for p in (ROOT / "api" / "static").iterdir() if p.is_file())
    assert {p.name for p in static} >= {"index.html", "app.js", "style.css"}
    for path in static:
        relative = path.relative_to(ROOT / "api")
        assert any(relative.match(pattern) for pattern in patterns), f"{relative} is not package data"


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("env", "expected"),
    [({"PORT": "{free}"}, "free"), ({"PORT": "{other}", "TOKENFAN_PORT": "{free}"}, "free")],
    ids=["PORT", "TOKENFAN_PORT-wins"],
)
def test_the_procfile_api_listens_on_port(redis_url: str, env: dict[str, str], expected: str) -> None:
    """Procfile runners (honcho, foreman, Heroku) hand the web process its port
    in $PORT: the Procfile's own command listens there, unless TOKENFAN_PORT says otherwise."""
    import httpx
    from harness import Process, process_env, wait_until

    from tokenfan.embedded_redis import free_port

    ports = {"free": free_port(), "other": free_port()}
    filled = {k: v.format(**ports) for k, v in env.items()}
    assert PROCFILE["api"][:2] == ["python", "-m"]
    proc = Process("api", PROCFILE["api"][2], process_env(redis_url, filled), label="api-port-env")
    try:

        def healthy() -> bool:
            proc.check_alive()
            return httpx.get(f"http://127.0.0.1:{ports[expected]}/healthz", timeout=2.0).status_code == 200

        wait_until(healthy, 30, 0.05, f"{proc} on port {ports[expected]}", ignore=(httpx.TransportError,))
    finally:
        proc.stop()
