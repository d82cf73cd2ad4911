"""``--profile``: py-spy samples a server process during a measurement window
(from outside, ``--nonblocking``: it never pauses the process) and the top
functions by own time and by total time are printed and kept in the JSON.

py-spy is not a dependency (``pip install py-spy``); without it the profile is
skipped with a note. Profiling costs the profiled process a little CPU: take
the numbers of a run without ``--profile``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from bench.context import Context

TOP = 20


def _py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


def start(ctx: Context, pid: int, duration_s: float, label: str) -> dict[str, Any] | None:
    exe = _py_spy()
    if exe is None:
        ctx.log("profile: py-spy not found (pip install py-spy); skipped")
        return None
    out = ctx.run.dir / f"profile-{label}.txt"
    proc = subprocess.Popen(
        [
            exe,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, round(duration_s))),
            "--rate",
            "250",
            "--nonblocking",
            "--format",
            "raw",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(ctx.run.dir / f"profile-{label}.log", "wb"),
    )
    return {"proc": proc, "out": out, "label": label}


def finish(ctx: Context, spy: dict[str, Any]) -> dict[str, Any]:
    try:
        spy["proc"].wait(timeout=60)
    except subprocess.TimeoutExpired:
        spy["proc"].kill()
        spy["proc"].wait()
    out: Path = spy["out"]
    if not out.exists():
        ctx.log(f"profile: py-spy wrote nothing (see {out.with_suffix('.log')})")
        return {}
    summary = summarise(out.read_text())
    print(f"\nprofile of {spy['label']} ({summary['samples']} samples; {out}):", file=sys.stderr)
    print("  own time:", file=sys.stderr)
    for name, share in summary["own"]:
        print(f"    {share:6.1%}  {name}", file=sys.stderr)
    print("  total time:", file=sys.stderr)
    for name, share in summary["total"]:
        print(f"    {share:6.1%}  {name}", file=sys.stderr)
    return {"file": str(out), **summary}


def _frame_name(frame: str) -> str:
    """``func (path/to/file.py:123)`` -> ``func (file.py)``: aggregate per function."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = path.split("/")
    short = "/".join(parts[-2:]) if len(parts) > 1 else path
    return f"{name} ({short})"


def summarise(raw: str) -> dict[str, Any]:
    """py-spy's raw format: one line per distinct stack, ``f1;f2;...;fn count``."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = [_frame_name(f) for f in stack.split(";")]
        own[frames[-1]] += n
        for f in set(frames):
            total[f] += n
    return {
        "samples": samples,
        "own": [(k, v / samples) for k, v in own.most_common(TOP)] if samples else [],
        "total": [(k, v / samples) for k, v in total.most_common(TOP * 2)] if samples else [],
    }
