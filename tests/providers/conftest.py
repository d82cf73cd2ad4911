"""Fixtures of the real-LLM tests: llama.cpp's ``llama-server`` with
SmolLM2-135M (both from PyPI, built once per machine by
``tokenfan/local_model.py``) on loopback, and clusters of real tokenfan
processes whose workers use the ``openai`` or ``anthropic`` provider against it.

When the server is not in the cache yet it is compiled in the background from
the end of collection on, at the lowest CPU priority, while the rest of the
suite runs; the first test here that needs it waits for it (with a timeout
long enough for the compile). When it cannot be had, every test here FAILS
with the reason: these tests never skip.

No ``__init__.py`` in this folder on purpose: tests/ is on sys.path, and a
package here must never be able to shadow an SDK."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import httpx
import pytest
from llm_support import MEASUREMENTS, LlamaServer, SilentServer

from tokenfan import local_model

HERE = Path(__file__).resolve().parent
# The compile (minutes, once per machine) runs in the background at the lowest
# CPU priority while the rest of the suite runs: only the first test here that
# needs the server waits for what is left of it, with this timeout.
BUILD_WAIT_TIMEOUT_S = 1800


class _Build:
    """ensure_all() in a thread; its outcome for the fixtures."""

    def __init__(self) -> None:
        self.thread: threading.Thread | None = None
        self.result: tuple[Path, Path] | None = None
        self.error: str | None = None
        self.seconds = 0.0
        self.waited = 0.0

    def start(self) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="llama-build", daemon=True)
            self.thread.start()

    def _run(self) -> None:
        started = time.monotonic()
        try:
            self.result = local_model.ensure_all(niceness=19)
        except Exception as exc:  # noqa: BLE001 - reported by every test that needs it
            self.error = f"{type(exc).__name__}: {exc}"
        self.seconds = time.monotonic() - started

    def wait(self) -> None:
        self.start()
        started = time.monotonic()
        self.thread.join()
        self.waited = time.monotonic() - started


_build = _Build()
_llamas: list[LlamaServer] = []  # every model server started, for the failure report
_reported_dead: list[LlamaServer] = []


def _in_this_folder(item: pytest.Item) -> bool:
    return HERE in Path(str(item.path)).resolve().parents


def _needs_llama(item: pytest.Item) -> bool:
    return _in_this_folder(item) and "llama_files" in getattr(item, "fixturenames", ())


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """The tests that need llama-server run last, so that on a machine that
    has not compiled it yet the compile overlaps every other test."""
    items[:] = [i for i in items if not _needs_llama(i)] + [i for i in items if _needs_llama(i)]


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.option.collectonly:
        return
    needing = [item for item in session.items if _needs_llama(item)]
    if not needing:
        return
    needing[0].add_marker(pytest.mark.timeout(BUILD_WAIT_TIMEOUT_S))
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and not local_model.server_path().is_file():
        reporter.write_line(
            f"tests/providers: compiling llama-server into {local_model.cache_root()} in the background "
            f"(once per machine; at nice 19 while the other tests run; log beside it)"
        )
    _build.start()


@pytest.fixture(scope="session")
def llama_files() -> tuple[Path, Path]:
    _build.wait()
    if _build.error is not None:
        pytest.fail(
            "the real model server (llama.cpp's llama-server + SmolLM2 from PyPI) could not be had, "
            f"so the provider tests cannot run: {_build.error}\n"
            "Build it by hand to see why: python -m tokenfan.local_model build",
            pytrace=False,
        )
    return _build.result  # type: ignore[return-value]


@pytest.fixture(scope="session")
def start_llama(llama_files) -> Iterator[Callable[..., LlamaServer]]:
    """Start llama-servers (stopped by PID at the end of the session)."""
    servers: list[LlamaServer] = []

    def start(name: str, port: int | None = None, wait: bool = True, **kw) -> LlamaServer:
        server = LlamaServer(llama_files, name, port, **kw)
        servers.append(server)
        _llamas.append(server)
        return server.wait_ready() if wait else server

    try:
        yield start
    finally:
        for server in servers:
            server.stop()


@pytest.fixture(scope="session")
def llama(start_llama) -> LlamaServer:
    """The model as it is: it stops when it has said its piece."""
    return start_llama("main")


@pytest.fixture(scope="session")
def llama_long(start_llama) -> LlamaServer:
    """The model made to talk until max_tokens (``--ignore-eos``): long
    streams for resume, cancel, kill and the measurements."""
    return start_llama("long", ctx=8192, parallel=2, extra=("--ignore-eos",))


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=httpx.Timeout(30.0)) as c:
        yield c


@pytest.fixture
def silent_server() -> Iterator[SilentServer]:
    with closing(SilentServer()) as server:
        yield server


def pytest_terminal_summary(terminalreporter) -> None:
    if _build.thread is not None and not _build.thread.is_alive():
        state = _build.error or f"{_build.result[0]} and {_build.result[1]}"
        terminalreporter.write_line(
            f"tests/providers: llama-server and model ready after {_build.seconds:.1f} s "
            f"(tests waited {_build.waited:.1f} s for them): {state}"
        )
    if MEASUREMENTS:
        terminalreporter.section("real LLM: through tokenfan vs directly")
        for line in MEASUREMENTS:
            terminalreporter.write_line(line)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On failure, what became of a model server that died (a crash says why,
    not only its exit code); tests/conftest.py adds the processes' logs."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and _in_this_folder(item):
        for server in _llamas:
            code = server.popen.poll()
            if code is not None and code != 0 and server not in _reported_dead:
                _reported_dead.append(server)
                report.sections.append((f"{server} {local_model.describe_exit(code)}", server.tail()))
