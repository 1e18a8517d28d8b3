"""Dynamic micro-batching: lines of concurrent requests translated together by one worker.

The event loop only queues a request and awaits its future; a single worker thread takes
as many queued requests as fit a token budget (waiting at most a few milliseconds for more),
translates their lines in one length-sorted batch and hands each request its own lines.
Requests are batched only with others of the same search settings, and a translation does
not depend on its batch: padding is masked, so a sentence alone and inside a batch gives
the same output (tests/test_search.py, tests/test_serve.py).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from seq2seq.core.search import SearchSettings
from seq2seq.core.translate import EncodedLine, Translation, Translator
from seq2seq.serving.limits import ServeLimits

# Tokenizing a sentence or two takes less time than handing it to a thread; more goes to one,
# so the event loop is never held for long.
INLINE_ENCODE_CHARACTERS = 1000


class QueueFull(Exception):
    """The queue holds `max_queue_lines` lines: the client should retry later (503)."""


class ShuttingDown(Exception):
    """The server is stopping: it finishes queued requests but takes no new ones (503)."""


@dataclass
class Job:
    """One request's lines, waiting for the worker."""

    lines: list[EncodedLine]
    search: SearchSettings
    future: asyncio.Future[list[Translation]]
    loop: asyncio.AbstractEventLoop
    deadline: float  # time.monotonic() after which nobody waits for the answer
    tokens: int = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = sum(len(line.ids) for line in self.lines)

    def resolve(self, result: list[Translation] | BaseException) -> None:
        """Answer the waiting request from any thread (futures belong to their event loop)."""
        self.loop.call_soon_threadsafe(_settle, self.future, result)


def _settle(future: asyncio.Future, result: list[Translation] | BaseException) -> None:
    if future.done():  # the request timed out or its client left
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


class MicroBatcher:
    """A queue in front of one `Translator`, emptied by one worker thread in batches.

    `on_batch` is called from the worker with the number of lines of each batch (metrics).
    """

    def __init__(
        self,
        translator: Translator,
        limits: ServeLimits,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.translator = translator
        self.limits = limits
        self.on_batch = on_batch
        self._pending: deque[Job] = deque()
        self._queued_lines = 0
        self._in_flight = 0  # queued or being translated
        self._last_batch_requests = 0
        self._closed = False
        self._condition = threading.Condition()
        self._worker = threading.Thread(target=self._work, name="seq2seq-batcher", daemon=True)
        self._worker.start()

    @property
    def queued_lines(self) -> int:
        """Lines waiting for the worker (not those being translated)."""
        return self._queued_lines

    async def translate(self, lines: list[str], search: SearchSettings) -> list[Translation]:
        """The translations of `lines`, in order; raises QueueFull, ShuttingDown or TimeoutError."""
        if not lines:
            return []
        deadline = time.monotonic() + self.limits.timeout_seconds
        if sum(map(len, lines)) <= INLINE_ENCODE_CHARACTERS:
            encoded = self.translator.encode(lines, False)
        else:
            # off the event loop
            encoded = await asyncio.to_thread(self.translator.encode, lines, False)
        loop = asyncio.get_running_loop()
        job = Job(encoded, search, loop.create_future(), loop, deadline)
        with self._condition:
            if self._closed:
                raise ShuttingDown()
            if self._queued_lines + len(lines) > self.limits.max_queue_lines:
                raise QueueFull()
            self._pending.append(job)
            self._queued_lines += len(lines)
            self._in_flight += 1
            self._condition.notify()
        try:
            return await asyncio.wait_for(job.future, max(deadline - time.monotonic(), 0))
        finally:
            with self._condition:
                self._in_flight -= 1
                self._condition.notify()  # a gathering worker may now be caught up

    def close(self) -> None:
        """Stop taking requests, finish the queued ones, then stop the worker."""
        with self._condition:
            self._closed = True
            self._condition.notify()
        self._worker.join()

    def _work(self) -> None:
        while (jobs := self._next_batch()) is not None:
            self._translate(jobs)

    def _next_batch(self) -> list[Job] | None:
        """The next batch: the oldest job and, when batching, queued jobs of the same search
        settings while they fit the token budget. None once closed and drained.

        The worker then gathers for up to `batch_wait_ms`: clients whose answers just went out
        send their next requests a few milliseconds later, and the wait lets them join those
        still queued instead of the load splitting into alternating part-batches. It stops
        gathering once it is caught up: every request in flight is in the batch and the batch
        is as large as the previous one, so the clients answered last time are all back (a lone
        request at low load goes at once).
        """
        with self._condition:
            while not self._pending and not self._closed:
                self._condition.wait()
            if not self._pending:
                return None
            batch = [self._pending.popleft()]
            tokens = batch[0].tokens
            give_up = time.monotonic() + self.limits.batch_wait_ms / 1000
            while self.limits.batching and tokens < self.limits.batch_tokens:
                for job in list(self._pending):
                    if (
                        job.search == batch[0].search
                        and tokens + job.tokens <= self.limits.batch_tokens
                    ):
                        self._pending.remove(job)
                        batch.append(job)
                        tokens += job.tokens
                remaining = give_up - time.monotonic()
                caught_up = (
                    len(batch) >= self._in_flight and len(batch) >= self._last_batch_requests
                )
                if remaining <= 0 or self._closed or caught_up:
                    break
                self._condition.wait(remaining)
            self._queued_lines -= sum(len(job.lines) for job in batch)
            self._last_batch_requests = len(batch)
            return batch

    def _translate(self, jobs: list[Job]) -> None:
        now = time.monotonic()
        for job in jobs:
            if job.deadline <= now:
                job.resolve(TimeoutError())  # its request has already been answered 504
        jobs = [job for job in jobs if job.deadline > now]
        lines = [line for job in jobs for line in job.lines]
        if not lines:
            return
        try:
            translations = self.translator.translate_encoded(lines, search=jobs[0].search)
        except Exception as error:  # noqa: BLE001 - every waiting request must be answered
            for job in jobs:
                job.resolve(error)
            return
        if self.on_batch:
            self.on_batch(len(lines))
        start = 0
        for job in jobs:
            job.resolve(translations[start : start + len(job.lines)])
            start += len(job.lines)
