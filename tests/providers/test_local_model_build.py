"""The cached llama-server is trusted only once it has served a completion on
this kind of CPU: a binary that crashes (SIGILL on a VM that advertises AMX
and traps it) is detected, deleted and replaced by a more portable build.

The compiler is replaced by one that writes a stand-in server (a small Python
HTTP server): the real compile takes minutes, and the real smoke test runs
against the stand-in exactly as it runs against llama-server."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

from tokenfan import llama_build, local_model

STAND_IN = """#!{python}
# A stand-in llama-server: /health answers; /completion answers, or {crash}.
import json, os, signal, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

if "--version" in sys.argv:
    print("version: stand-in")
    sys.exit(0)
port = int(sys.argv[sys.argv.index("--port") + 1])

class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _answer(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._answer({{"status": "ok"}})

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        if {crashes}:
            os.kill(os.getpid(), signal.SIGILL)  # the first matrix multiply, with AMX compiled in
        self._answer({{"content": " hello there"}})

HTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


def write_stand_in(target: Path, crashes: bool) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    crash = "dies of SIGILL" if crashes else "never crashes"
    target.write_text(STAND_IN.format(python=sys.executable, crash=crash, crashes=crashes))
    target.chmod(0o755)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TOKENFAN_LLAMA_CACHE", str(tmp_path))
    model = local_model.model_path()
    model.parent.mkdir(parents=True)
    model.write_bytes(b"GGUF stand-in")  # the stand-in server never reads it
    return tmp_path


class Compiler:
    """Records what was built; the first level's build crashes like the AMX one."""

    def __init__(self, crashing_levels: set[str]) -> None:
        self.crashing_levels = crashing_levels
        self.built: list[str] = []

    def __call__(self, level: str, target: Path, niceness: int) -> None:
        self.built.append(level)
        write_stand_in(target, crashes=level in self.crashing_levels)


def test_build_keys_differ_by_level_and_never_ask_for_native() -> None:
    paths = {local_model.server_path(level) for level in llama_build.LEVELS}
    assert len(paths) == len(llama_build.LEVELS)
    assert "-DGGML_NATIVE=OFF" in llama_build.CMAKE_OPTIONS
    assert not any("NATIVE=ON" in option or "march=native" in option for option in llama_build.CMAKE_OPTIONS)
    for level, options in llama_build.LEVELS.items():
        assert not any(o.startswith(("-DGGML_AMX", "-DGGML_AVX512")) and o.endswith("=ON") for o in options), level


def test_a_crashing_cached_binary_is_detected_and_replaced(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(llama_build, "candidate_levels", lambda: ["x86-64-v3", "x86-64"])
    # A binary in the cache from an earlier run, never smoke-tested on this CPU,
    # that dies at its first completion (as the native AMX build did).
    fast = local_model.server_path("x86-64-v3")
    write_stand_in(fast, crashes=True)
    compiler = Compiler(crashing_levels=set())

    server = local_model.ensure_server(compiler=compiler)

    assert server == local_model.server_path("x86-64")
    assert compiler.built == ["x86-64"], "the cached fast binary is not rebuilt but replaced by the portable one"
    assert not fast.parent.exists(), "the crashing binary is deleted, so it is never used again"
    smoke_log = (server.parent / "smoke-test.log").read_text()
    assert smoke_log == "" or "Traceback" not in smoke_log
    # Trusted from now on, on this CPU: no second build, no second smoke test.
    assert local_model.ensure_server(compiler=Compiler(crashing_levels={"x86-64"})) == server


def test_a_fresh_build_that_crashes_falls_back_to_the_portable_level(cache: Path, monkeypatch) -> None:
    monkeypatch.setattr(llama_build, "candidate_levels", lambda: ["x86-64-v3", "x86-64"])
    compiler = Compiler(crashing_levels={"x86-64-v3"})
    assert local_model.ensure_server(compiler=compiler) == local_model.server_path("x86-64")
    assert compiler.built == ["x86-64-v3", "x86-64"]
    # The next run (a new test session) neither rebuilds the fast level nor retries it.
    assert local_model.ensure_server(compiler=compiler) == local_model.server_path("x86-64")
    assert compiler.built == ["x86-64-v3", "x86-64"]


def test_when_no_build_runs_the_error_says_what_happened_and_what_to_do(cache: Path, monkeypatch) -> None:
    monkeypatch.setattr(llama_build, "candidate_levels", lambda: ["x86-64-v3", "x86-64"])
    compiler = Compiler(crashing_levels={"x86-64-v3", "x86-64"})
    with pytest.raises(local_model.LocalModelError) as failure:
        local_model.ensure_server(compiler=compiler)
    message = str(failure.value)
    assert message.count("was killed by SIGILL (exit code -4) in its smoke test") == 2, message
    assert str(cache) in message, "it names the cache"
    # Known now: a second call neither rebuilds nor retries what crashed here.
    with pytest.raises(local_model.LocalModelError, match="failed its smoke test on this CPU before"):
        local_model.ensure_server(compiler=compiler)
    assert compiler.built == ["x86-64-v3", "x86-64"]


def test_a_crash_is_described_not_just_numbered() -> None:
    crash = local_model.describe_exit(-int(signal.SIGILL))
    assert crash.startswith("was killed by SIGILL (exit code -4): it runs an instruction this CPU does not execute")
    assert "python -m tokenfan.local_model build" in crash
    assert local_model.describe_exit(-int(signal.SIGKILL)) == "was killed by SIGKILL (exit code -9)"
    assert local_model.describe_exit(1) == "exited with code 1"
