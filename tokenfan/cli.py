"""``tokenfan chat``: send a prompt and stream the answer to the terminal.

    tokenfan chat "Tell me about queues"          # live view (rich) on a terminal
    tokenfan chat --raw "..." > answer.txt         # plain text (the default when stdout is not a terminal)
    tokenfan chat --json "..." | jq .              # one JSON object per event
    tokenfan chat --resume 4f0c…                   # attach to an existing chat (replays it, then live)
    echo "a long prompt" | tokenfan chat -         # the prompt from standard input

When the connection drops, it reconnects by itself with ``Last-Event-ID`` (after
the server's ``retry:`` delay, for up to ``--reconnect-timeout`` seconds) and
goes on exactly where it stopped. Ctrl-C detaches: the chat goes on in the
service and ``--resume ID`` picks it up.

Exit status: 0 the answer ended (``done``: stop or length); 1 the chat ended
with an ``error`` event; 2 bad usage; 3 the service could not be reached or
refused the request; 4 the chat was cancelled; 130 interrupted (Ctrl-C).

Environment: ``TOKENFAN_URL`` (default http://127.0.0.1:8000) and
``TOKENFAN_API_KEY`` (sent as ``Authorization: Bearer``; the stream itself is
read with the chat's ``stream_token``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

from tokenfan.chat_stream import (
    DEFAULT_URL,
    EXIT_CANCELLED,
    EXIT_ERROR_EVENT,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    TERMINAL,
    ChatFailed,
    Event,
    StreamReader,
    create_chat,
)

# --- what the user sees ------------------------------------------------------------------


@dataclass
class Progress:
    """What every view tracks: the answer so far and the figures of the status line."""

    chat_id: str = ""
    started: float = field(default_factory=time.monotonic)
    first_token: float | None = None
    rate_from: float | None = None
    ended: float | None = None
    text: str = ""
    chars: int = 0
    tokens: int | None = None
    last_id: int = 0
    state: str = "connecting"
    note: str = ""
    terminal: Event | None = None

    def apply(self, event: Event) -> None:
        now = time.monotonic()
        if event.id is not None and event.type != "error":
            self.last_id = event.id
        if event.type == "token":
            piece = str(event.data.get("text", ""))
            if self.first_token is None:
                self.first_token = self.rate_from = now
            self.text += piece
            self.chars += len(piece)
            self.state = "streaming"
        elif event.type == "reset":
            self.text = ""
            self.chars = 0
            self.rate_from = now
            self.note = f"answer restarted (attempt {event.data.get('attempt')}, {event.data.get('reason')})"
        elif event.type in TERMINAL:
            self.ended = now
            self.terminal = event
            if event.type == "done":
                usage = event.data.get("usage") or {}
                if isinstance(usage.get("completion_tokens"), int):
                    self.tokens = usage["completion_tokens"]
                reason = event.data.get("finish_reason")
                self.state = "cancelled" if reason == "cancelled" else f"done ({reason})"
            else:
                self.state = f"error: {event.data.get('code')}"

    def status(self, kind: str, **details: Any) -> None:
        if kind == "reconnecting":
            self.state = "reconnecting…"
            self.note = f"connection lost after event {details.get('last_id', self.last_id)}"
        elif kind == "resumed":
            self.state = "streaming"
            self.note = f"resumed from event {details.get('last_id', self.last_id)}"

    def rate(self) -> str:
        if self.rate_from is None:
            return ""
        if self.tokens is not None and self.ended is not None:
            seconds = self.ended - self.rate_from
            return f"{self.tokens / seconds:.1f} tok/s" if seconds > 0 else ""
        seconds = time.monotonic() - self.rate_from
        # While streaming the API sends text, not token counts: ~4 characters a token.
        return f"≈{self.chars / 4 / seconds:.0f} tok/s" if seconds > 0.2 else ""

    def parts(self) -> list[str]:
        parts = [self.state, f"chat {self.chat_id[:8]}" if self.chat_id else ""]
        if self.first_token is not None:
            parts.append(f"TTFT {_ms(self.first_token - self.started)}")
        parts += [self.rate(), f"event {self.last_id}" if self.last_id else "", self.note]
        return [p for p in parts if p]

    def exit_code(self) -> int:
        if self.terminal is None:
            return EXIT_UNAVAILABLE
        if self.terminal.type == "error":
            return EXIT_ERROR_EVENT
        return EXIT_CANCELLED if self.terminal.data.get("finish_reason") == "cancelled" else EXIT_OK


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


class View:
    def __init__(self, out: TextIO, err: TextIO) -> None:
        self.out = out
        self.err = err
        self.p = Progress()

    def started(self, chat_id: str) -> None:
        self.p.chat_id = chat_id

    def status(self, kind: str, **details: Any) -> None:
        self.p.status(kind, **details)
        if kind == "reconnecting":
            self.note(f"reconnecting… (after event {details.get('last_id')}: {details.get('reason')})")
        elif kind == "resumed":
            self.note(f"resumed from event {details.get('last_id')}")

    def event(self, event: Event) -> None:
        self.p.apply(event)

    def note(self, text: str) -> None:
        print(f"tokenfan: {text}", file=self.err, flush=True)

    def finish(self) -> int:
        terminal = self.p.terminal
        if terminal is not None and terminal.type == "error":
            self.note(f"error {terminal.data.get('code')}: {terminal.data.get('message')}")
        return self.p.exit_code()

    def failed(self, exc: ChatFailed) -> None:
        self.note(f"{exc.code}: {exc.message}")

    def stop(self) -> None:
        """Called however the command ends."""


class RawView(View):
    """Plain text as it arrives. Text cannot be taken back from a pipe: after a
    ``reset``, what the new attempt repeats of the text already written is not
    written again; if it says something else, a newline and a note (stderr)
    separate the abandoned answer from the new one."""

    def __init__(self, out: TextIO, err: TextIO) -> None:
        super().__init__(out, err)
        self.printed = ""

    def event(self, event: Event) -> None:
        super().event(event)
        if event.type == "token":
            self._sync()

    def _sync(self, final: bool = False) -> None:
        text = self.p.text
        if text.startswith(self.printed):
            self._write(text[len(self.printed) :])
            self.printed = text
        elif final or not self.printed.startswith(text):
            self._write("\n")
            self.note("the answer restarted; the new answer follows")
            self.printed = ""
            self._write(text)
            self.printed = text

    def _write(self, text: str) -> None:
        if text:
            self.out.write(text)
            self.out.flush()

    def finish(self) -> int:
        if self.p.terminal is not None and self.p.terminal.type == "done":
            self._sync(final=True)
        if self.printed:
            self._write("\n")
        return super().finish()


class JsonView(View):
    """One JSON object per event: ``{"chat_id", "id", "event", "data"}``."""

    def event(self, event: Event) -> None:
        super().event(event)
        line = {"chat_id": self.p.chat_id, "id": event.id, "event": event.type, "data": event.data}
        self.out.write(json.dumps(line, ensure_ascii=False) + "\n")
        self.out.flush()


class RichView(View):
    """A live view on a terminal: the end of the answer as it grows and a
    status line under it; when the chat ends, the whole answer and a summary."""

    def __init__(self, out: TextIO, err: TextIO) -> None:
        super().__init__(out, err)
        from rich.console import Console
        from rich.live import Live

        self.console = Console(file=out)
        self.live = Live(self, console=self.console, refresh_per_second=12, transient=True)
        self.live.start()

    def __rich_console__(self, console: Any, options: Any) -> Iterator[Any]:
        from rich.text import Text

        room = max(console.size.height - 2, 3)
        if self.p.text:
            lines = Text(self.p.text).wrap(console, max(options.max_width, 10))
            yield from list(lines)[-room:]
        else:
            yield Text("waiting for the first token…", style="dim")
        yield self._status_line()

    def _status_line(self) -> Any:
        from rich.text import Text

        state = self.p.state
        style = (
            "green"
            if state.startswith("done")
            else "red"
            if state.startswith("error")
            else ("yellow" if state.startswith(("reconnecting", "cancelled")) else "cyan")
        )
        line = Text("● ", style=style)
        parts = self.p.parts()
        line.append(parts[0], style=f"bold {style}")
        for part in parts[1:]:
            line.append("  ·  ", style="dim")
            line.append(part, style="yellow" if part.startswith(("resumed", "connection lost")) else "dim")
        return line

    def note(self, text: str) -> None:
        pass  # the status line shows it

    def failed(self, exc: ChatFailed) -> None:
        self.stop()
        self.console.print(f"[red]✗ {exc.code}:[/red] {exc.message}", highlight=False)

    def finish(self) -> int:
        self.stop()
        from rich.text import Text

        self.console.print(Text(self.p.text), soft_wrap=True)
        terminal = self.p.terminal
        if terminal is not None and terminal.type == "error":
            self.console.print(
                Text(f"✗ {terminal.data.get('code')}: {terminal.data.get('message')}", style="red"), soft_wrap=True
            )
        self.console.print(self._status_line(), soft_wrap=True)
        return self.p.exit_code()

    def stop(self) -> None:
        if self.live.is_started:
            self.live.stop()


# --- the command -----------------------------------------------------------------------


def add_parser(commands: Any) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "chat",
        help="send a prompt and stream the answer (resumes by itself after a dropped connection)",
        description="Send a prompt (or attach to a chat) and stream the answer as it is written; "
        "reconnect with Last-Event-ID when the connection drops.",
        epilog="Exit status: 0 done; 1 the chat ended with an error; 2 bad usage; 3 the service was "
        "unreachable or refused; 4 cancelled; 130 interrupted. Environment: TOKENFAN_URL, TOKENFAN_API_KEY.",
    )
    parser.add_argument("prompt", nargs="?", help='the prompt; "-" reads it from standard input')
    parser.add_argument("--resume", metavar="ID", help="attach to an existing chat: replay it, then follow it live")
    parser.add_argument("--url", default=os.environ.get("TOKENFAN_URL", DEFAULT_URL), help="the API (TOKENFAN_URL)")
    parser.add_argument("--api-key", default=os.environ.get("TOKENFAN_API_KEY"), help="(TOKENFAN_API_KEY)")
    parser.add_argument("--max-tokens", type=int, metavar="N")
    parser.add_argument("--model")
    parser.add_argument("--system", metavar="TEXT", help="a system prompt")
    parser.add_argument("--temperature", type=float)
    output = parser.add_mutually_exclusive_group()
    output.add_argument(
        "--raw", action="store_true", help="plain text only (the default when stdout is not a terminal)"
    )
    output.add_argument("--json", action="store_true", help="one JSON object per event")
    parser.add_argument(
        "--reconnect-timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="give up after S seconds without a connection (default 60)",
    )
    parser.set_defaults(func=cmd_chat, parser=parser)
    return parser


def cmd_chat(args: argparse.Namespace) -> int:
    import httpx

    if (args.prompt is None) == (args.resume is None):
        args.parser.error("give a prompt or --resume ID (not both)")
    body: dict[str, Any] = {}
    if args.prompt is not None:
        prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
        if not prompt.strip():
            args.parser.error("the prompt is empty")
        body["prompt"] = prompt
        for name in ("max_tokens", "model", "system", "temperature"):
            if getattr(args, name) is not None:
                body[name] = getattr(args, name)

    if args.json:
        view: View = JsonView(sys.stdout, sys.stderr)
    elif args.raw or not sys.stdout.isatty():
        view = RawView(sys.stdout, sys.stderr)
    else:
        view = RichView(sys.stdout, sys.stderr)

    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    # The read timeout only has to outlast the server's heartbeats (15 s).
    timeout = httpx.Timeout(10.0, read=60.0)
    chat_id = args.resume or ""
    try:
        with httpx.Client(base_url=args.url.rstrip("/"), headers=headers, timeout=timeout) as client:
            token = None
            if not args.resume:
                chat_id, token = create_chat(client, body)
            view.started(chat_id)
            reader = StreamReader(
                client, chat_id, token=token, reconnect_timeout=args.reconnect_timeout, on_status=view.status
            )
            for event in reader.events():
                view.event(event)
            return view.finish()
    except ChatFailed as exc:
        view.failed(exc)
        return exc.exit_code
    except KeyboardInterrupt:
        view.stop()
        if chat_id:
            print(
                f"\ntokenfan: detached; the chat goes on. Resume with: tokenfan chat --resume {chat_id}",
                file=sys.stderr,
            )
        return EXIT_INTERRUPTED
    finally:
        view.stop()
