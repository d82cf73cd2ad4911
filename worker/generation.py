"""One attempt at one chat: claim it, stream from the provider, append token
batches, end with ``done`` or ``error``.

Batching: the first token is appended at once (it is what the user waits for);
after it a batch is appended when it holds ``batch_max_tokens`` tokens or
``batch_max_delay_ms`` after its first token, whichever comes first. With a
delay of 0 (the default) it batches like a group commit: each append takes
whatever arrived while the previous one was in flight, so a slow model waits
for no window and a fast one batches by itself.

Cancellation reaches the provider three ways: the append script returns the
chat's cancel flag; a ``cancel <id>`` nudge on the workers' channel; and, while
the provider is silent, a check of the flag every ``cancel_poll_s``. Each
closes the provider's iterator, which is what stops an upstream request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError

from shared.events import EventType
from shared.settings import Settings
from shared.store import FENCED, ChatStore, terminal_meta
from worker import metrics
from worker.providers import ChatRequest, Finish, Provider, ProviderError

log = logging.getLogger("tokenfan.worker")


@dataclass
class _Running:
    attempt: int
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    fenced: bool = False  # the lease renewal found that another attempt owns the chat
    wake: asyncio.Event | None = None  # the generation loop's wake-up, while it streams
    renewed_at: float = field(default_factory=time.monotonic)  # last lease renewal by an append (or the claim)


class _Refused(Exception):
    """The append was refused: another attempt owns the chat, or it ended."""


class Generator:
    """Runs generations for one worker process and knows which are running."""

    def __init__(self, store: ChatStore, provider: Provider, settings: Settings) -> None:
        self.store = store
        self.provider = provider
        self.settings = settings
        self.running: dict[str, _Running] = {}
        # Chats whose lease this process renews: chat id -> attempt (0: picked
        # up, not claimed yet). ``held`` is an immutable copy, read by the
        # renewal thread (worker/coordination.py).
        self._jobs: dict[str, int] = {}
        self.held: tuple[tuple[str, int], ...] = ()
        # The attempt each job run of this process claimed, for arq's end of
        # the run (worker/arq_worker.py: TokenfanWorker.finish_job).
        self.claimed_attempts: dict[str, int] = {}
        self.cancel_poll_s = 1.0
        self._stamp = settings.stamp_events

    @property
    def lease_ms(self) -> int:
        return int(self.settings.lease_s * 1000)

    def cancel(self, chat_id: str) -> None:
        running = self.running.get(chat_id)
        if running is not None:
            running.cancel.set()

    def fenced(self, chat_id: str, attempt: int | None = None) -> None:
        """Another attempt owns the chat (seen by the lease renewal): stop now
        rather than at the next append, which a silent provider may never make."""
        running = self.running.get(chat_id)
        if running is not None and attempt in (None, running.attempt):
            running.fenced = True
            if running.wake is not None:
                running.wake.set()

    def job_picked(self, chat_id: str) -> None:
        """arq started the chat's job here: keep its in-progress key until the claim."""
        self._hold(chat_id, self._jobs.get(chat_id, 0))

    def job_ended(self, chat_id: str) -> int:
        """arq ends the job's run here: the attempt it claimed (0: none)."""
        self._release(chat_id)
        return self.claimed_attempts.pop(chat_id, 0)

    def _hold(self, chat_id: str, attempt: int) -> None:
        self._jobs[chat_id] = attempt
        self.held = tuple(self._jobs.items())

    def _release(self, chat_id: str) -> None:
        if self._jobs.pop(chat_id, None) is not None:
            self.held = tuple(self._jobs.items())

    async def run(self, chat_id: str) -> None:
        claim = await self.store.claim(chat_id, self.lease_ms)
        metrics.claimed(claim.attempt, claim.previous_status)
        if claim.attempt == 0:
            log.info("chat %s not run: %s", chat_id, claim.previous_status)
            self._release(chat_id)
            return
        attempt = claim.attempt
        running = self.running[chat_id] = _Running(attempt)
        self.claimed_attempts[chat_id] = attempt
        self._hold(chat_id, attempt)
        fenced = False
        try:
            if attempt > self.settings.max_attempts:
                await self._append(chat_id, attempt, [], _error("worker_lost", f"gave up after {attempt - 1} attempts"))
                return
            if claim.last_seq > 0:
                # An earlier attempt streamed part of an answer: clients drop it.
                reason = "worker_lost" if claim.previous_status == "running" else "retry"
                await self._append(chat_id, attempt, [(EventType.RESET, {"attempt": attempt, "reason": reason})])
                metrics.reset(reason)
            stored = claim.request
            if stored is None:
                return  # expired while queued
            await self._stream(chat_id, attempt, ChatRequest.from_stored(stored), running)
        except _Refused as refused:
            fenced = refused.args[0] == FENCED
            log.info("chat %s attempt %d stopped: append refused (%s)", chat_id, attempt, refused.args[0])
        except (RedisError, OSError):
            raise  # Redis away: worker/arq_worker.py hands the job back
        except Exception as exc:  # noqa: BLE001 - a bug (ours or a custom provider's) must still end the chat
            log.exception("chat %s attempt %d failed", chat_id, attempt)
            fenced = await self._fail(chat_id, attempt, exc)
        finally:
            if self.running.get(chat_id) is running:
                del self.running[chat_id]
                self._release(chat_id)
            if not fenced:  # a fenced attempt's lease belongs to the new attempt
                try:
                    # Fenced in Redis too: we may have been taken over without knowing.
                    await self.store.release_lease(chat_id, attempt)
                except (RedisError, OSError) as exc:  # the lease lapses by itself
                    log.warning("chat %s: lease not released: %s", chat_id, exc)

    async def _fail(self, chat_id: str, attempt: int, exc: Exception) -> bool:
        """End the chat with ``internal_error`` after an unexpected exception
        (left to arq, it would drop the job and leave the chat running with no
        terminal event). Returns whether this attempt was fenced out."""
        minimal = _error("internal_error", "the worker failed; see its log")  # encodes whatever happened
        for describe in (lambda: _error("internal_error", f"{type(exc).__name__}: {exc}"[:500]), lambda: minimal):
            try:
                await self._append(chat_id, attempt, [], describe())
                return False
            except _Refused as refused:  # ended or taken over meanwhile: nothing to end
                return refused.args[0] == FENCED
            except (RedisError, OSError):
                raise
            except Exception:  # noqa: BLE001 - unencodable (orjson: TypeError) or undescribable
                continue
        return False

    async def _append(self, chat_id, attempt, events, terminal=None):
        """Append events (and maybe a terminal one, with its metadata) or raise _Refused."""
        events = list(events)
        meta = None
        if terminal is not None:
            events.append(terminal)
            meta = terminal_meta(*terminal)
        # A non-final append renews the lease too (no extra round trip), when
        # the last renewal is 1/16 of a lease old: a streaming chat's lease
        # stays that fresh, and most appends skip the renewal's Redis CPU.
        running = self.running.get(chat_id)
        now = time.monotonic()
        renew = terminal is None and running is not None and now - running.renewed_at >= self.settings.lease_s / 16
        result = await self.store.append(chat_id, attempt, events, meta, lease_ms=self.lease_ms if renew else 0)
        if not result.accepted:
            raise _Refused(result.seq)
        if renew and running is not None:
            running.renewed_at = now
        if terminal is not None:
            metrics.terminal_appended(terminal, result.seq)
        return result

    async def _stream(self, chat_id: str, attempt: int, request: ChatRequest, running: _Running) -> None:
        settings = self.settings
        metrics.provider_called()
        batch: list[str] = []
        cancel = running.cancel
        wake = running.wake = asyncio.Event()
        finish: Finish | None = None
        completion_tokens = 0
        stamp = self._stamp
        first_arrival = 0.0  # stamp_events: when the batch's first token came from the provider

        def tokens() -> list[tuple[str, dict]]:
            """The batch as one token event (none when empty); empties the batch."""
            if not batch:
                return []
            data: dict[str, Any] = {"text": "".join(batch)}
            if stamp:
                data["ts"] = first_arrival
            batch.clear()
            return [(EventType.TOKEN, data)]

        async def produce() -> None:
            nonlocal finish, completion_tokens, first_arrival
            try:
                async for piece in self.provider(request):
                    if isinstance(piece, Finish):
                        finish = piece
                    elif piece:
                        if stamp and not batch:
                            first_arrival = time.time()
                        batch.append(piece)
                        completion_tokens += 1
                        wake.set()
            finally:
                wake.set()

        cancel_waiter = asyncio.create_task(_set_on(cancel, wake))
        producer = asyncio.create_task(produce())
        deadline = time.monotonic() + max(settings.job_timeout_s - 10, 1)
        first_flush = True
        batch_started = 0.0
        last_cancel_check = time.monotonic()
        try:
            while True:
                now = time.monotonic()
                if running.fenced:
                    raise _Refused(FENCED)
                if cancel.is_set():
                    producer.cancel()
                    await _quietly(producer)
                    usage = _usage(request, completion_tokens)
                    terminal: tuple[str, dict[str, Any]] = (
                        EventType.DONE,
                        {"finish_reason": "cancelled", "usage": usage},
                    )
                    await self._append(chat_id, attempt, tokens(), terminal)
                    return
                if producer.done():
                    terminal = self._terminal(producer, finish, request, completion_tokens)
                    await self._append(chat_id, attempt, tokens(), terminal)
                    return
                if now > deadline:
                    producer.cancel()
                    await _quietly(producer)
                    terminal = _error("timeout", f"generation ran longer than {settings.job_timeout_s - 10} s")
                    await self._append(chat_id, attempt, tokens(), terminal)
                    return
                if batch and not batch_started:
                    batch_started = now
                due = batch_started + settings.batch_max_delay_ms / 1000
                if batch and (first_flush or len(batch) >= settings.batch_max_tokens or now >= due):
                    if first_flush:
                        metrics.first_token()
                    first_flush = False
                    pieces = tokens()
                    batch_started = 0.0
                    result = await self._append(chat_id, attempt, pieces)
                    last_cancel_check = time.monotonic()
                    if result.cancelled:
                        cancel.set()
                    continue
                if now - last_cancel_check >= self.cancel_poll_s:
                    last_cancel_check = now
                    if await self.store.cancel_requested(chat_id):
                        cancel.set()
                    continue
                timeout = last_cancel_check + self.cancel_poll_s - now
                if batch:
                    timeout = min(timeout, due - now)
                wake.clear()
                try:
                    async with asyncio.timeout(max(timeout, 0)):
                        await wake.wait()
                except TimeoutError:
                    pass
        finally:
            cancel_waiter.cancel()
            if not producer.done():
                producer.cancel()
                await _quietly(producer)

    @staticmethod
    def _terminal(
        producer: asyncio.Task, finish: Finish | None, request: ChatRequest, completion_tokens: int
    ) -> tuple[str, dict[str, Any]]:
        exc = producer.exception()
        if exc is None:
            finish = finish or Finish()
            usage = finish.usage or _usage(request, completion_tokens)
            return (EventType.DONE, {"finish_reason": finish.finish_reason, "usage": usage})
        if isinstance(exc, ProviderError):
            return _error(exc.code, exc.message)
        log.error("provider failed", exc_info=exc)
        return _error("provider_error", f"{type(exc).__name__}: {exc}"[:500])


def _error(code: str, message: str) -> tuple[str, dict[str, Any]]:
    # A lone surrogate (a bad upstream decode) would make the event unencodable.
    message = message.encode("utf-8", "replace").decode("utf-8")
    return (EventType.ERROR, {"code": code, "message": message})


def _usage(request: ChatRequest, completion_tokens: int) -> dict[str, int]:
    prompt_tokens = sum(len(m["content"].split()) for m in request.messages)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}


async def _set_on(source: asyncio.Event, target: asyncio.Event) -> None:
    await source.wait()
    target.set()


async def _quietly(task: asyncio.Task) -> None:
    """Wait for a task we cancelled, without swallowing our own cancellation."""
    try:
        await task
    except asyncio.CancelledError:
        me = asyncio.current_task()
        if me is not None and me.cancelling():
            raise
    except Exception:  # noqa: BLE001 - its outcome was already decided
        pass
