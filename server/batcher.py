"""MicroBatcher: concurrent submissions for one deployment coalesced into one scoring call off the loop.

Flush policy (all times from `time.monotonic()`):
- idle (no batch in flight): a submission is scored at once, so batching adds no latency at low load;
  one that `inline(item)` allows (a one-row item the caller knows to be cheap and free of I/O) waits
  one turn of the event loop instead: if no other submission came in by then, it is scored right
  there on the loop thread (no hand-off to the executor and back: two thread wake-ups saved), else
  it goes with the others to the executor as usual. A batch of more than one item never runs on
  the loop;
- busy: submissions collect while a batch runs; the collected ones go as soon as a batch slot frees,
  when they reach `max_rows`, or when the wait budget `max_wait` (measured from the oldest waiting
  submission) runs out, whichever comes first; at most `max_in_flight` batches run at once;
- regrouping: when a batch finishes and fewer rows wait than it carried, its own clients are about
  to send their next requests, so the waiting rows get `max_wait` more (from the finish) to be
  joined by them. Under a steady closed-loop load this merges the cohorts that "go at once when
  idle" would otherwise keep apart (a stable cycle of small batches, each paying the engine's fixed
  cost per call). It never applies at low load: nothing waits when a lone request's batch ends;
- over `max_queue` waiting rows a submission fails at once with `OverloadedError` (503 +
  Retry-After) instead of letting latency grow without bound;
- a submission that waits past its own deadline fails with `OverloadedError` and is not scored.

`score(items) -> results` runs in an executor thread (the kernels release the GIL) and returns one
result per item, in order; a result that is an exception fails that item only. If `score` itself
raises, every item of that batch gets the exception.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Generic, TypeVar

from scoreline.errors import OverloadedError

__all__ = ["Admission", "MicroBatcher"]

T = TypeVar("T")
R = TypeVar("R")


class _Waiter:
    __slots__ = ("item", "rows", "future", "queued_at")

    def __init__(self, item, rows: int, future: asyncio.Future, queued_at: float) -> None:
        self.item = item
        self.rows = rows
        self.future = future
        self.queued_at = queued_at


class MicroBatcher(Generic[T, R]):
    """Coalesces concurrent `submit` calls into batched `score` calls; see the module docstring.

    Parameters: `score` (items -> results, run in `executor`); `max_rows` per batch (an item larger
    than that is scored alone); `max_wait` seconds of wait budget; `max_queue` waiting rows before
    overload; `max_in_flight` batches scoring at once; `retry_after` seconds suggested on overload;
    `inline(item)`: whether a one-row item still alone one loop turn after it came may be scored on
    the event loop thread (None: never).
    """

    def __init__(
        self,
        score: Callable[[list[T]], Sequence[R | BaseException]],
        *,
        max_rows: int = 64,
        max_wait: float = 0.0005,
        max_queue: int = 2048,
        max_in_flight: int = 1,
        executor: Executor | None = None,
        retry_after: float = 1.0,
        inline: Callable[[T], bool] | None = None,
    ) -> None:
        if max_rows < 1 or max_queue < 1 or max_in_flight < 1 or max_wait < 0:
            raise ValueError("max_rows, max_queue and max_in_flight must be >= 1, max_wait >= 0")
        self._score = score
        self.max_rows = max_rows
        self.max_wait = max_wait
        self.max_queue = max_queue
        self.max_in_flight = max_in_flight
        self._executor = executor
        self._retry_after = retry_after
        self._pending: deque[_Waiter] = deque()
        self._queued_rows = 0
        self._in_flight = 0
        self._timer: asyncio.TimerHandle | None = None
        self._regroup_until = 0.0
        self._deadlines: list[tuple[float, int, asyncio.Future, float]] = []
        self._seq = itertools.count()
        self._sweeper: asyncio.TimerHandle | None = None
        self._inline = inline
        self._inline_turn: asyncio.Handle | None = None

    @property
    def queued_rows(self) -> int:
        """Rows waiting for a batch (not counting those being scored)."""
        return self._queued_rows

    @property
    def in_flight(self) -> int:
        """Batches being scored now."""
        return self._in_flight

    async def submit(self, item: T, *, rows: int = 1, timeout: float | None = None) -> R:
        """Queue `item` (carrying `rows` rows) and wait for its result.

        Raises `OverloadedError` when the queue is full or when `timeout` seconds pass before the
        result is ready, and re-raises the item's own (or its batch's) error.
        """
        if self._queued_rows + rows > self.max_queue and self._pending:
            raise OverloadedError(
                f"scoring queue full ({self._queued_rows} rows waiting); retry later",
                retry_after=self._retry_after,
            )
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        now = time.monotonic()
        self._pending.append(_Waiter(item, rows, future, now))
        self._queued_rows += rows
        if rows == 1 and self._inline is not None and len(self._pending) == 1 and not self._in_flight \
                and not self._regroup_until and self._inline_turn is None and self._inline(item):
            self._inline_turn = loop.call_soon(self._alone, loop)
        else:
            self._schedule(loop)
        if timeout is not None and not future.done():
            # One heap entry (compared in C) instead of a timer per request: asyncio's timers cost
            # a Python-level comparison per heap step and linger in its heap once cancelled.
            heapq.heappush(self._deadlines, (now + timeout, next(self._seq), future, timeout))
            if self._sweeper is None:
                self._sweeper = loop.call_at(now + timeout, self._sweep, loop)
        return await future

    # -- scheduling, always on the event loop ---------------------------------------------------

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        while self._pending and self._in_flight < self.max_in_flight:
            if self._queued_rows < self.max_rows and (self._in_flight or self._regroup_until):
                now = time.monotonic()
                if self._in_flight:
                    wait = self._pending[0].queued_at + self.max_wait - now
                else:
                    wait = self._regroup_until - now
                if wait > 0:
                    if self._timer is None:
                        self._timer = loop.call_later(wait, self._on_timer, loop)
                    return
            self._flush(loop)

    def _alone(self, loop: asyncio.AbstractEventLoop) -> None:
        """One loop turn after an inline-able submission: still alone and idle -> score it here."""
        self._inline_turn = None
        if len(self._pending) != 1 or self._in_flight or self._regroup_until:
            self._schedule(loop)  # others came (their submissions flushed it with them) or a batch runs
            return
        waiter = self._pending.popleft()
        self._queued_rows -= waiter.rows
        if waiter.future.done():  # expired or its client went away: not scored
            return
        try:
            results = self._score([waiter.item])
        except Exception as exc:
            self._settle([waiter], None, exc)
        else:
            self._settle([waiter], results, None)
        self._schedule(loop)

    def _settle(self, batch: list[_Waiter], results, exc: BaseException | None) -> None:
        """Answer a scored batch's waiters (each its result, or all of them ``exc``), then drop the
        answered submissions from the deadline heap."""
        if exc is None and len(results) != len(batch):
            exc = RuntimeError(f"score returned {len(results)} results for {len(batch)} items")
        for i, waiter in enumerate(batch):
            if waiter.future.done():  # expired or its client went away meanwhile
                continue
            result = exc if exc is not None else results[i]
            if isinstance(result, BaseException):
                waiter.future.set_exception(result)
            else:
                waiter.future.set_result(result)
        # Answered submissions leave the deadline heap now, not at the next sweep (up to a deadline
        # away): each one holds its result, and at 10k requests a second seconds' worth of them
        # made every young-generation collection walk ~10^5 objects (12-15 ms pauses, measured).
        deadlines = self._deadlines
        while deadlines and deadlines[0][2].done():
            heapq.heappop(deadlines)

    def _on_timer(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        if self._regroup_until and time.monotonic() >= self._regroup_until:
            self._regroup_until = 0.0
        self._schedule(loop)

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._regroup_until = 0.0
        batch: list[_Waiter] = []
        rows = 0
        while self._pending and (not batch or rows + self._pending[0].rows <= self.max_rows):
            waiter = self._pending.popleft()
            self._queued_rows -= waiter.rows
            if waiter.future.done():  # expired or its client went away: not scored
                continue
            batch.append(waiter)
            rows += waiter.rows
        if not batch:
            return
        self._in_flight += 1
        items = [w.item for w in batch]
        done = loop.run_in_executor(self._executor, self._score, items)
        done.add_done_callback(lambda f: self._deliver(loop, batch, f))

    def _deliver(self, loop: asyncio.AbstractEventLoop, batch: list[_Waiter], done: asyncio.Future) -> None:
        self._in_flight -= 1
        results = None
        try:
            exc = done.exception()
            if exc is None:
                results = done.result()
        except asyncio.CancelledError as cancelled:
            exc = cancelled
        self._settle(batch, results, exc)
        if self._pending and not self._in_flight and self.max_wait > 0:
            finished = sum(w.rows for w in batch)
            if self._queued_rows < finished:
                self._regroup_until = time.monotonic() + self.max_wait
        self._schedule(loop)


    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        """Fail every submission past its deadline (answered ones just leave the heap), then wake
        again at the next deadline, no sooner than `_SWEEP_S` from now."""
        self._sweeper = None
        deadlines = self._deadlines
        now = time.monotonic()
        while deadlines and (deadlines[0][2].done() or deadlines[0][0] <= now):
            _, _, future, timeout = heapq.heappop(deadlines)
            if not future.done():
                future.set_exception(OverloadedError(
                    f"not scored within the {timeout:g} s request deadline", retry_after=self._retry_after))
        if deadlines:
            self._sweeper = loop.call_at(max(deadlines[0][0], now + _SWEEP_S), self._sweep, loop)


# Deadlines are checked at most this often: a request may fail up to this much past its deadline.
_SWEEP_S = 0.001


class Admission:
    """A gate in front of the scoring endpoints, before a body is decoded: at most `limit` requests
    are worked on at once, the next `max_waiting` wait their turn in arrival order (for at most
    `wait` seconds), and any beyond that are refused at once with `OverloadedError` (503 +
    Retry-After).

    Why: decoding and checking a body costs about as much as scoring it (a 50-row batch: a few
    hundred microseconds of Python on the event loop). Without the gate, 256 clients sending 50-row
    batches had every body decoded and checked, and most then refused by the batcher's full queue,
    so the server spent its time on work it threw away (80 good answers/s against 670-800 at
    concurrency 8-64). With it, the work in progress stays at the level that gives the most answers,
    and the rest wait without costing anything but a future.
    """

    def __init__(self, limit: int, max_waiting: int, wait: float, retry_after: float = 1.0) -> None:
        self.limit = limit
        self.max_waiting = max_waiting
        self.wait = wait
        self.retry_after = retry_after
        self.active = 0
        self._waiting: deque[asyncio.Future] = deque()

    async def __aenter__(self) -> None:
        if self.active < self.limit and not self._waiting:
            self.active += 1
            return
        if len(self._waiting) >= self.max_waiting:
            raise OverloadedError(f"over capacity: {self.active} requests in progress and {len(self._waiting)} "
                                  "waiting; retry later", retry_after=self.retry_after)
        future = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        try:
            await asyncio.wait_for(asyncio.shield(future), self.wait)
        except TimeoutError:
            if future.done() and not future.cancelled():
                return  # the slot came as the wait ran out: keep it
            future.cancel()
            raise OverloadedError(f"over capacity: waited {self.wait:.1f}s for a turn; retry later",
                                  retry_after=self.retry_after) from None
        except BaseException:
            if future.done() and not future.cancelled():
                self._release()  # handed a slot while being cancelled: pass it on
            else:
                future.cancel()
            raise

    async def __aexit__(self, *exc) -> None:
        self._release()

    def _release(self) -> None:
        while self._waiting:  # hand the slot straight to the next live waiter
            future = self._waiting.popleft()
            if not future.done():
                future.set_result(None)
                return
        self.active -= 1
