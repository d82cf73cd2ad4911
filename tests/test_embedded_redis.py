"""The embedded redis-server: starts, answers, persists, stops, and refuses a
busy port clearly."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import psutil
import pytest
import redis

from tokenfan.embedded_redis import (
    DataDirInUse,
    EmbeddedRedis,
    EmbeddedRedisError,
    free_port,
    port_is_free,
    redis_server_binary,
)


def wait_until(condition, timeout: float = 5.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


def test_binary_is_bundled_and_executable() -> None:
    binary = redis_server_binary()
    assert binary.name == "redis-server"
    assert os.access(binary, os.X_OK)


def test_session_server_answers_redis_py(redis_server: EmbeddedRedis, redis_url: str) -> None:
    assert redis_url == f"redis://127.0.0.1:{redis_server.port}/0"
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.ping() is True
        assert client.info("server")["process_id"] == redis_server.pid
        client.set("test_embedded_redis:key", "value")
        assert client.get("test_embedded_redis:key") == b"value"
        # Persistence is off for the test server.
        assert client.config_get("appendonly")["appendonly"] == "no"
        assert client.config_get("save")["save"] == ""
    finally:
        client.delete("test_embedded_redis:key")
        client.close()


def test_stop_ends_the_process_and_frees_the_port() -> None:
    server = EmbeddedRedis(persistent=False).start()
    pid, port, data_dir = server.pid, server.port, server.data_dir
    assert psutil.Process(pid).name().startswith("redis-server")
    assert data_dir is not None and data_dir.is_dir()

    server.stop()

    # stop() has reaped the child: the PID no longer exists (or, improbably,
    # already belongs to some other program).
    if psutil.pid_exists(pid):
        assert not psutil.Process(pid).name().startswith("redis-server")
    assert wait_until(lambda: port_is_free(port))
    assert not data_dir.exists(), "the temporary data dir should be removed"
    server.stop()  # idempotent


def test_port_in_use_by_a_non_redis_listener_fails_clearly() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen(8)  # accepts connections, never answers
        port = squatter.getsockname()[1]
        server = EmbeddedRedis(port=port, persistent=False)
        started = time.monotonic()
        with pytest.raises(EmbeddedRedisError, match=rf"port {port} .*in use.*does not answer Redis PING"):
            server.start()
        assert time.monotonic() - started < 5, "the failure should be quick, not the start deadline"
        with pytest.raises(EmbeddedRedisError):
            _ = server.pid  # nothing was left running


def test_port_in_use_by_another_redis_fails_clearly(redis_server: EmbeddedRedis) -> None:
    with pytest.raises(EmbeddedRedisError, match="another Redis server"):
        EmbeddedRedis(port=redis_server.port, persistent=False).start()
    # The running server is untouched.
    assert redis.Redis.from_url(redis_server.url).ping() is True


def test_persistent_data_survives_a_restart_and_the_dir_is_locked(tmp_path: Path) -> None:
    data_dir = tmp_path / "redis"
    with EmbeddedRedis(port=free_port(), data_dir=data_dir, persistent=True) as server:
        client = redis.Redis.from_url(server.url)
        assert client.config_get("appendonly")["appendonly"] == "yes"
        client.set("survivor", "1")
        client.close()
        # A second server must not append to the same file.
        with pytest.raises(DataDirInUse):
            EmbeddedRedis(port=free_port(), data_dir=data_dir, persistent=True).start()
    assert (data_dir / "appendonly.aof").is_file()
    assert (data_dir / "redis.log").is_file()

    with EmbeddedRedis(port=free_port(), data_dir=data_dir, persistent=True) as server:
        client = redis.Redis.from_url(server.url)
        assert client.get("survivor") == b"1"
        client.close()
