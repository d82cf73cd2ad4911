"""``python -m bench [--quick] [--only NAMES] [--profile]``: run the scenarios,
print one table, write ``bench/results/bench-<mode>-<time>.json``.

Exit status: 0 when every scenario ran (targets met or not: timings are never
asserted), 1 when one crashed, 130 on Ctrl-C. Every process is stopped on the
way out, whatever happened.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from importlib import metadata

import orjson

from bench.context import Context
from bench.procs import PEER, REPO, RESULTS, Run, raise_fd_limit
from bench.stats import Row, table

SCENARIOS = {
    "ttft": "bench.scenarios.ttft",
    "lag": "bench.scenarios.relay_lag",
    "throughput": "bench.scenarios.throughput",
    "idle": "bench.scenarios.idle",
    "resume": "bench.scenarios.resume",
    "pickup": "bench.scenarios.pickup",
    "fanout": "bench.scenarios.fanout",
    "overload": "bench.scenarios.overload",
}


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in (
        "uvicorn",
        "uvloop",
        "httptools",
        "starlette",
        "fastapi",
        "sse-starlette",
        "redis",
        "hiredis",
        "arq",
        "orjson",
    ):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "-"
    # The peer's side (bench/peer): Node, and what its lock file pins.
    try:
        out["node"] = subprocess.run(["node", "--version"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        out["node"] = "-"
    try:
        packages = orjson.loads((PEER / "package-lock.json").read_bytes())["packages"]
        for name in ("resumable-stream", "redis"):
            out[f"npm:{name}"] = packages.get(f"node_modules/{name}", {}).get("version", "-")
    except (OSError, ValueError, KeyError):
        pass
    return out


def _git() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return (head + ("+dirty" if dirty else "")) if head else "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def _header(quick: bool, load_before: tuple[float, ...], load_after: tuple[float, ...]) -> dict:
    return {
        "mode": "quick" if quick else "full",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "cores": os.cpu_count(),
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "machine": platform.platform(),
        "commit": _git(),
        "versions": _versions(),
    }


def _raise_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwinds through every finally: processes get stopped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="every scenario at small scale (under a minute; CI)")
    parser.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(SCENARIOS)}")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the API process during the throughput scenario (pip install py-spy)",
    )
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}")

    # Ctrl-C and SIGTERM unwind through every finally (even when started with
    # SIGINT ignored, as background jobs of a script are).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    raise_fd_limit()
    load_before = os.getloadavg()
    run = Run("quick" if args.quick else "full")
    ctx = Context(run, quick=args.quick, profile=args.profile)
    rows: list[Row] = []
    failed: list[str] = []
    interrupted = False
    try:
        run.start_redis()
        ctx.log(f"redis on {run.redis_url}; logs in {run.dir}")
        for name in names:
            module = importlib.import_module(SCENARIOS[name])
            try:
                ctx.flush()
                rows += module.run(ctx)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # one scenario's crash must not hide the others' results
                failed.append(name)
                ctx.log(f"scenario {name} FAILED:\n{traceback.format_exc()}")
                rows.append(
                    Row(
                        module.NAME,
                        f"FAILED: {type(exc).__name__}: {str(exc).splitlines()[0][:80] if str(exc) else ''}",
                    )
                )
    except KeyboardInterrupt:
        interrupted = True
        ctx.log("interrupted; stopping every process")
    finally:
        run.close()

    if ctx.peer_skipped:
        rows.append(Row("peer", f"SKIPPED: {ctx.peer_skipped.splitlines()[0]}"))
    header = _header(args.quick, load_before, os.getloadavg())
    print()
    print(
        f"tokenfan bench ({header['mode']}) {header['date']}, {header['cores']} cores, "
        f"load avg {load_before[0]:.2f} before / {header['loadavg_after'][0]:.2f} after, commit {header['commit']}"
    )
    print(table(rows))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"bench-{header['mode']}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_bytes(
        orjson.dumps(
            {"header": header, "rows": [r.as_dict() for r in rows], "details": ctx.details},
            option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS,
        )
    )
    print(f"\nresults: {out.relative_to(REPO)}; process logs: {run.dir.relative_to(REPO)}")
    if interrupted:
        return 130
    if failed:
        print(f"bench: scenario(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
