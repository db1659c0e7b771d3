"""MicroBatcher unit tests with fake scoring functions: flush on size, on the wait budget, at once when
idle; overload; deadlines; per-item and whole-batch errors."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from scoreline.errors import InputError, OverloadedError
from scoreline.server.batcher import MicroBatcher


class Recorder:
    """A score function that records each batch and can be held until released."""

    def __init__(self, hold: bool = False) -> None:
        self.batches: list[list] = []
        self.started = threading.Event()
        self.release = threading.Event()
        if not hold:
            self.release.set()

    def __call__(self, items):
        self.batches.append(list(items))
        self.started.set()
        self.release.wait(5)
        return [item * 10 if item >= 0 else InputError(f"bad item {item}") for item in items]


@pytest.fixture
def executor():
    with ThreadPoolExecutor(4) as pool:
        yield pool


def run(coro):
    return asyncio.run(coro)


def test_idle_submission_goes_at_once_without_waiting_for_the_budget(executor):
    score = Recorder()
    # a 10 s budget: if an idle submission waited for it, this test would hang far past 5 s
    batcher = MicroBatcher(score, max_rows=64, max_wait=10.0, executor=executor)

    async def main():
        return await asyncio.wait_for(batcher.submit(4), 5)

    assert run(main()) == 40
    assert score.batches == [[4]]


def test_requests_collect_while_a_batch_runs_and_a_full_batch_flushes(executor):
    score = Recorder(hold=True)
    batcher = MicroBatcher(score, max_rows=4, max_wait=10.0, max_in_flight=2, executor=executor)

    async def main():
        first = asyncio.ensure_future(batcher.submit(0))
        while not score.started.is_set():
            await asyncio.sleep(0.001)
        # batch 1 is running: these collect; the fourth fills a batch, which goes at once
        # (a second slot is free) without waiting for the 10 s budget
        rest = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 8)]
        await asyncio.sleep(0.05)
        assert [len(b) for b in score.batches] == [1, 4]
        assert batcher.queued_rows == 3
        score.release.set()
        return await asyncio.gather(first, *rest)

    assert run(main()) == [i * 10 for i in range(8)]
    assert score.batches == [[0], [1, 2, 3, 4], [5, 6, 7]]


def test_a_partial_batch_is_closed_by_its_wait_budget(executor):
    score = Recorder(hold=True)
    batcher = MicroBatcher(score, max_rows=64, max_wait=0.02, max_in_flight=2, executor=executor)

    async def main():
        first = asyncio.ensure_future(batcher.submit(0))
        while not score.started.is_set():
            await asyncio.sleep(0.001)
        waiting = [asyncio.ensure_future(batcher.submit(i)) for i in (1, 2, 3)]
        await asyncio.sleep(0.005)
        assert len(score.batches) == 1  # the budget (20 ms from the oldest) has not run out
        deadline = time.monotonic() + 5
        while len(score.batches) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.002)
        # batch 1 is still held: only the budget can have closed batch 2
        assert score.batches[1] == [1, 2, 3]
        score.release.set()
        return await asyncio.gather(first, *waiting)

    assert run(main()) == [0, 10, 20, 30]


def test_waiting_rows_go_when_the_running_batch_finishes(executor):
    score = Recorder(hold=True)
    batcher = MicroBatcher(score, max_rows=64, max_wait=10.0, max_in_flight=1, executor=executor)

    async def main():
        first = asyncio.ensure_future(batcher.submit(0))
        while not score.started.is_set():
            await asyncio.sleep(0.001)
        rest = [asyncio.ensure_future(batcher.submit(i)) for i in (1, 2)]
        await asyncio.sleep(0.01)
        score.release.set()
        return await asyncio.gather(first, *rest)

    assert run(main()) == [0, 10, 20]
    assert score.batches == [[0], [1, 2]]


def test_multi_row_items_fill_batches_by_rows(executor):
    score = Recorder(hold=True)
    # max_wait=0: no regrouping, so the leftover item goes as soon as the slot frees
    batcher = MicroBatcher(score, max_rows=10, max_wait=0.0, max_in_flight=1, executor=executor)

    async def main():
        first = asyncio.ensure_future(batcher.submit(0, rows=3))
        while not score.started.is_set():
            await asyncio.sleep(0.001)
        rest = [asyncio.ensure_future(batcher.submit(i, rows=4)) for i in (1, 2, 3)]
        await asyncio.sleep(0.01)
        score.release.set()
        return await asyncio.gather(first, *rest)

    run(main())
    assert score.batches == [[0], [1, 2], [3]]  # 4 + 4 rows fit in 10, a third item would not


def test_an_error_in_one_item_fails_that_item_only(executor):
    batcher = MicroBatcher(Recorder(), executor=executor)

    async def main():
        return await asyncio.gather(batcher.submit(1), batcher.submit(-1), batcher.submit(2), return_exceptions=True)

    good1, bad, good2 = run(main())
    assert (good1, good2) == (10, 20)
    assert isinstance(bad, InputError) and "bad item -1" in bad.message


def test_a_whole_batch_exception_reaches_every_waiter(executor):
    calls = []

    def broken(items):
        calls.append(len(items))
        raise InputError("the batch cannot be scored")

    batcher = MicroBatcher(broken, max_in_flight=1, executor=executor)

    async def main():
        return await asyncio.gather(*(batcher.submit(i) for i in range(5)), return_exceptions=True)

    results = run(main())
    assert all(isinstance(r, InputError) for r in results)
    assert sum(calls) == 5


def test_overload_answers_at_once_with_retry_after(executor):
    score = Recorder(hold=True)
    batcher = MicroBatcher(score, max_rows=2, max_queue=3, max_in_flight=1, executor=executor, retry_after=2.5)

    async def main():
        first = asyncio.ensure_future(batcher.submit(0))
        while not score.started.is_set():
            await asyncio.sleep(0.001)
        queued = [asyncio.ensure_future(batcher.submit(i)) for i in (1, 2, 3)]
        await asyncio.sleep(0)
        with pytest.raises(OverloadedError) as refused:
            await batcher.submit(4)
        score.release.set()
        await asyncio.gather(first, *queued)
        return refused.value

    refused = run(main())
    assert refused.retry_after == 2.5 and refused.kind == "overloaded"


def test_a_request_past_its_deadline_fails_and_is_not_scored(executor):
    score = Recorder(hold=True)
    batcher = MicroBatcher(score, max_in_flight=1, executor=executor)

    async def main():
        first = asyncio.ensure_future(batcher.submit(0))
        while not score.started.is_set():
            await asyncio.sleep(0.001)
        with pytest.raises(OverloadedError, match="deadline"):
            await batcher.submit(7, timeout=0.01)
        score.release.set()
        await first
        await asyncio.sleep(0.01)

    run(main())
    assert [7] not in score.batches and all(7 not in b for b in score.batches)


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError):
        MicroBatcher(lambda items: items, max_rows=0)


class Gated:
    """A score function whose n-th call waits for gates[n] (calls past the gates run freely)."""

    def __init__(self, gates: int) -> None:
        self.gates = [threading.Event() for _ in range(gates)]
        self.started = [threading.Event() for _ in range(gates)]
        self.batches: list[list] = []

    def __call__(self, items):
        n = len(self.batches)
        self.batches.append(list(items))
        if n < len(self.gates):
            self.started[n].set()
            self.gates[n].wait(5)
        return [item * 10 for item in items]


async def _started(event: threading.Event) -> None:
    deadline = time.monotonic() + 5
    while not event.is_set():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.001)


def test_rows_waiting_when_a_bigger_batch_ends_are_regrouped_with_its_returning_clients(executor):
    score = Gated(2)
    batcher = MicroBatcher(score, max_rows=64, max_wait=0.05, max_in_flight=1, executor=executor)

    async def main():
        first = asyncio.ensure_future(batcher.submit(0))
        await _started(score.started[0])
        cohort = [asyncio.ensure_future(batcher.submit(i)) for i in (1, 2, 3)]
        await asyncio.sleep(0.005)
        score.gates[0].set()  # [0] ends with 3 rows waiting (more than it carried): they go at once
        await first
        await _started(score.started[1])
        straggler = asyncio.ensure_future(batcher.submit(20))
        await asyncio.sleep(0.005)
        score.gates[1].set()  # [1, 2, 3] ends with 1 row waiting: it is held for the returning clients
        await asyncio.gather(*cohort)
        returning = [asyncio.ensure_future(batcher.submit(i)) for i in (21, 22)]
        return await asyncio.gather(straggler, *returning)

    assert run(main()) == [200, 210, 220]
    assert score.batches == [[0], [1, 2, 3], [20, 21, 22]]


def test_answered_submissions_are_not_kept_until_their_deadline(executor):
    # A batcher at 10k requests a second must not hold each answer for its whole deadline
    # (5 s by default): the results would pile up by the ten thousand (and slow every GC pass).
    import gc
    import weakref

    class Result:
        pass

    batcher = MicroBatcher(lambda items: [Result() for _ in items], max_rows=8, max_wait=0.001, executor=executor)

    async def main():
        refs = []
        for _ in range(3):
            results = await asyncio.gather(*(batcher.submit(i, timeout=60.0) for i in range(20)))
            refs.extend(weakref.ref(r) for r in results)
            del results
        return refs

    refs = run(main())
    assert len(refs) == 60
    # Now and then asyncio's executor future and its wrapper are left in a reference cycle with
    # the last batch's results list (seen about once in 150 runs on a loaded machine): garbage the
    # collector frees, not something the batcher holds. What this guards against, answers kept
    # in the batcher until their deadline, are live references that no collection frees.
    gc.collect()
    assert [r for r in refs if r() is not None] == []


def test_a_lone_inline_item_is_scored_on_the_loop_and_company_goes_to_the_executor_as_one_batch(executor):
    calls: list[tuple[list, bool]] = []
    loop_thread = []

    def score(items):
        calls.append((list(items), threading.current_thread() is loop_thread[0]))
        return [item * 10 if item >= 0 else InputError(f"bad item {item}") for item in items]

    batcher = MicroBatcher(score, max_rows=64, max_wait=10.0, executor=executor, inline=lambda item: item < 100)

    async def main():
        loop_thread.append(threading.current_thread())
        alone = await batcher.submit(4)
        # the second comes before the first's turn: both go to the executor, as one batch
        together = await asyncio.gather(batcher.submit(5), batcher.submit(6))
        not_inline = await batcher.submit(200)
        with pytest.raises(InputError, match="bad item -3"):
            await batcher.submit(-3)
        return alone, together, not_inline

    assert run(main()) == (40, [50, 60], 2000)
    assert calls == [([4], True), ([5, 6], False), ([200], False), ([-3], True)]


def test_an_inline_item_whose_score_raises_gets_the_exception(executor):
    def score(items):
        raise RuntimeError("engine down")

    batcher = MicroBatcher(score, max_rows=8, executor=executor, inline=lambda item: True)

    async def main():
        with pytest.raises(RuntimeError, match="engine down"):
            await batcher.submit(1, timeout=5.0)
        assert batcher.queued_rows == 0 and batcher.in_flight == 0

    run(main())
