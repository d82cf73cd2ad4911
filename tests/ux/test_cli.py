"""``tokenfan chat`` (``python -m tokenfan chat``) against the real service:
plain text, JSON events, attaching to a chat, a live view on a terminal, exit
codes, and resuming by itself when the API is killed and started again."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import threading
import time

import pytest
from harness import (
    expected_text,
    get_chat,
    prompt_with_length,
    record,
    stub_provider_env,
    wait_chat_status,
    wait_until,
)

from .ux_provider import FAIL_MARK, TOKENS_BEFORE_FAILING
from .uxkit import cli_argv, cli_env, restart_api

pytestmark = pytest.mark.e2e

TOKENS_PER_S = 100
CLI_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def cluster(module_clusters):
    return module_clusters(
        "cli",
        env={
            "TOKENFAN_SIM_TOKENS_PER_S": str(TOKENS_PER_S),
            "TOKENFAN_SSE_RETRY_MS": "200",
            **stub_provider_env("ux_provider:generate", "ux"),
        },
    )


def chat(base_url: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cli_argv(base_url, *args),
        input=stdin,
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=CLI_TIMEOUT_S,
    )


def json_events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def test_raw_prints_exactly_the_answer(cluster):
    prompt = prompt_with_length(40, 90, "cli-raw")
    done = chat(cluster.api.url, "--raw", prompt)
    assert done.returncode == 0, done.stderr
    assert done.stdout == expected_text(prompt, 512) + "\n"
    assert done.stderr == ""


def test_prompt_from_stdin_and_max_tokens(cluster):
    prompt = prompt_with_length(60, 120, "cli-stdin")
    done = chat(cluster.api.url, "--max-tokens", "25", "-", stdin=prompt)
    assert done.returncode == 0, done.stderr  # stdout is a pipe: plain text without --raw
    assert done.stdout == expected_text(prompt, 25) + "\n"


def test_json_events_and_attaching_with_resume(cluster, client):
    prompt = prompt_with_length(40, 90, "cli-json")
    done = chat(cluster.api.url, "--json", prompt)
    assert done.returncode == 0, done.stderr
    events = json_events(done.stdout)
    chat_id = events[0]["chat_id"]
    assert {e["chat_id"] for e in events} == {chat_id}
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))
    assert [e["event"] for e in events] == ["token"] * (len(events) - 1) + ["done"]
    assert events[-1]["data"]["finish_reason"] == "stop"
    assert "".join(e["data"]["text"] for e in events[:-1]) == get_chat(client, cluster.api.url, chat_id)["text"]

    again = chat(cluster.api.url, "--json", "--resume", chat_id)
    assert again.returncode == 0, again.stderr
    assert json_events(again.stdout) == events
    text = chat(cluster.api.url, "--raw", "--resume", chat_id)
    assert text.returncode == 0 and text.stdout == expected_text(prompt, 512) + "\n"


def test_error_event_exits_1(cluster):
    prompt = f"cli {FAIL_MARK} please"
    done = chat(cluster.api.url, "--raw", prompt)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stdout == "".join(expected_text(prompt, TOKENS_BEFORE_FAILING)) + "\n"
    assert "ux_failure" in done.stderr and "failed on purpose" in done.stderr

    events = json_events(chat(cluster.api.url, "--json", prompt).stdout)
    assert events[-1]["event"] == "error" and events[-1]["data"]["code"] == "ux_failure"


def test_refusals_exit_3(cluster):
    unknown = chat(cluster.api.url, "--resume", "0" * 32)
    assert unknown.returncode == 3
    assert "not_found" in unknown.stderr and "HTTP 404" in unknown.stderr

    too_long = chat(cluster.api.url, "--raw", "--max-tokens", "100000", "hi")
    assert too_long.returncode == 3 and "HTTP 422" in too_long.stderr

    nobody = chat("http://127.0.0.1:9", "--raw", "hi")  # the discard port: nothing listens
    assert nobody.returncode == 3 and "unreachable" in nobody.stderr

    usage = chat(cluster.api.url, "--raw")  # neither a prompt nor --resume
    assert usage.returncode == 2


def test_resumes_by_itself_when_the_api_restarts(cluster, client):
    api = cluster.api
    prompt = prompt_with_length(300, 419, "cli-restart")  # 3-4 s at 100 tokens/s
    proc = subprocess.Popen(
        cli_argv(api.url, "--json", prompt),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    lines: list[dict] = []
    reader = threading.Thread(target=lambda: lines.extend(json.loads(line) for line in proc.stdout), daemon=True)
    reader.start()
    try:
        wait_until(lambda: len(lines) >= 5, 15, message="five events from the CLI")
        chat_id = lines[0]["chat_id"]
        assert cluster.redis.hget(f"tf:{{{chat_id}}}:meta", "status") == "running"
        seen_before = len(lines)
        killed_at = time.monotonic()
        new_api = restart_api(cluster, api)
        code = proc.wait(timeout=CLI_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=5)
    stderr = proc.stderr.read()
    record(f"cli: done {time.monotonic() - killed_at:.1f} s after the API was killed (restart included)")

    assert code == 0, stderr
    state = wait_chat_status(client, new_api.url, chat_id, ["done"])
    assert [e["id"] for e in lines] == list(range(1, state["last_seq"] + 1)), "a gap or a repeat"
    assert lines[-1]["event"] == "done"
    assert "".join(e["data"]["text"] for e in lines if e["event"] == "token") == state["text"]
    assert state["text"] == expected_text(prompt, 512)
    assert "reconnecting" in stderr
    resumed = [int(n) for n in re.findall(r"resumed from event (\d+)", stderr)]
    assert resumed and resumed[0] >= seen_before and resumed[-1] < state["last_seq"], stderr


ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")


def test_live_view_on_a_terminal(cluster):
    prompt = prompt_with_length(60, 120, "cli-tty")
    controller, terminal = pty.openpty()
    env = {**cli_env(), "COLUMNS": "100", "LINES": "30", "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(
        cli_argv(cluster.api.url, prompt), stdin=terminal, stdout=terminal, stderr=terminal, env=env
    )
    os.close(terminal)
    output = bytearray()
    deadline = time.monotonic() + CLI_TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(controller, 65536)
                except OSError:  # EIO: the terminal's last writer has gone
                    break
                if not chunk:
                    break
                output += chunk
            elif proc.poll() is not None:
                break
        code = proc.wait(timeout=10)
    finally:
        os.close(controller)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    screen = ANSI.sub("", output.decode(errors="replace")).replace("\r", "")
    assert code == 0, screen[-2000:]
    assert expected_text(prompt, 512) in screen, screen[-2000:]
    assert "done (stop)" in screen and "TTFT" in screen and "tok/s" in screen
    assert "waiting for the first token" in screen or "streaming" in screen  # the live part was drawn
