"""Tests for serving.batcher: batches form like Triton's, rows go back to the right request."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from serving.batcher import DynamicBatcher


class Recorder:
    """A fake model that remembers its batch sizes and returns the rows' first pixel."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.seconds = seconds
        self.batches: list[int] = []
        self.threads: set[str] = set()

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        self.batches.append(len(images))
        self.threads.add(threading.current_thread().name)
        time.sleep(self.seconds)
        return {"first": images[:, 0].copy(), "count": np.full(len(images), len(images))}


def _images(value: int, n: int = 1) -> np.ndarray:
    return np.full((n, 2), value, dtype=np.int64)


def test_concurrent_requests_share_a_batch_and_get_their_own_rows() -> None:
    model = Recorder()

    async def scenario():
        batcher = DynamicBatcher(model, max_batch_size=8, max_delay=0.05)
        results = await asyncio.gather(*(batcher.submit(_images(i)) for i in range(6)))
        await batcher.stop()
        return results

    results = asyncio.run(scenario())

    assert model.batches == [6]
    assert [int(r["first"][0]) for r in results] == list(range(6))
    assert all(model_thread.startswith("noisyad-infer") for model_thread in model.threads)


def test_batches_never_exceed_the_maximum_and_requests_are_not_split() -> None:
    model = Recorder()

    async def scenario():
        batcher = DynamicBatcher(model, max_batch_size=4, max_delay=0.05)
        sizes = [3, 2, 1, 4, 1]
        results = await asyncio.gather(
            *(batcher.submit(_images(i, n)) for i, n in enumerate(sizes))
        )
        await batcher.stop()
        return sizes, results

    sizes, results = asyncio.run(scenario())

    assert max(model.batches) <= 4
    assert sum(model.batches) == sum(sizes)
    for i, (n, result) in enumerate(zip(sizes, results, strict=True)):
        assert result["first"].tolist() == [i] * n


def test_a_lone_request_waits_at_most_the_delay() -> None:
    model = Recorder()

    async def scenario():
        batcher = DynamicBatcher(model, max_batch_size=32, max_delay=0.02)
        start = time.perf_counter()
        await batcher.submit(_images(1))
        elapsed = time.perf_counter() - start
        await batcher.stop()
        return elapsed

    assert asyncio.run(scenario()) < 0.5
    assert model.batches == [1]


def test_inference_does_not_block_the_event_loop() -> None:
    """While a 0.4 s batch computes on its thread, the loop keeps ticking every ~10 ms."""
    model = Recorder(seconds=0.4)

    async def scenario():
        batcher = DynamicBatcher(model, max_batch_size=4, max_delay=0.0)
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        await batcher.submit(_images(1))
        task.cancel()
        await batcher.stop()
        return ticks

    assert asyncio.run(scenario()) >= 15


def test_a_failing_batch_fails_its_requests_and_the_batcher_goes_on() -> None:
    calls = {"n": 0}

    def flaky(images: np.ndarray) -> dict[str, np.ndarray]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return {"first": images[:, 0]}

    async def scenario():
        batcher = DynamicBatcher(flaky, max_batch_size=4, max_delay=0.0)
        with pytest.raises(RuntimeError, match="boom"):
            await batcher.submit(_images(1))
        result = await batcher.submit(_images(2))
        await batcher.stop()
        return result

    assert asyncio.run(scenario())["first"].tolist() == [2]


def test_oversized_request_is_refused() -> None:
    async def scenario():
        batcher = DynamicBatcher(Recorder(), max_batch_size=2)
        with pytest.raises(ValueError, match="exceed max_batch_size"):
            await batcher.submit(_images(1, 3))

    asyncio.run(scenario())


def test_a_stopped_batcher_takes_no_new_work() -> None:
    async def scenario():
        batcher = DynamicBatcher(Recorder(), max_batch_size=2)
        await batcher.submit(_images(1))
        await batcher.stop()
        assert batcher.closed
        with pytest.raises(RuntimeError, match="shutting down"):
            await batcher.submit(_images(1))

    asyncio.run(scenario())
