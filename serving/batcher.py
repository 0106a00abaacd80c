"""Server-side dynamic batching, the way Triton's dynamic batcher works.

Concurrent requests are queued; when an inference instance is free, the oldest request opens
a batch and the batcher adds queued requests until the batch holds ``max_batch_size`` images
or the oldest request has waited ``max_delay`` seconds (Triton's
``max_queue_delay_microseconds``). A request is never split across batches. The batch runs
in a thread pool (ONNX Runtime releases the GIL), so the event loop keeps accepting and
answering requests while the model computes; each request gets back its own rows.

Example:
    >>> batcher = DynamicBatcher(model.run, max_batch_size=32, max_delay=0.002)  # doctest: +SKIP
    >>> outputs = await batcher.submit(images)                                    # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

logger = logging.getLogger(__name__)

Runner = Callable[[np.ndarray], dict[str, np.ndarray]]


@dataclass
class _Pending:
    """One queued request: its images, where its answer goes, and when it arrived."""

    images: np.ndarray
    future: asyncio.Future
    arrived: float = field(default_factory=time.perf_counter)


class DynamicBatcher:
    """Queue requests, run them in batches on worker threads, hand each request its rows.

    Args:
        run: Inference on a ``(N, ...)`` batch returning arrays with N rows each.
        max_batch_size: Most images in one batch (a single request may not exceed it).
        max_delay: Seconds the oldest queued request may wait for more to join its batch.
        instances: Batches computed at the same time (Triton's instance count).
        on_batch: Called with ``(batch size, seconds)`` after each batch (for metrics).
    """

    def __init__(
        self,
        run: Runner,
        max_batch_size: int = 32,
        max_delay: float = 0.002,
        instances: int = 1,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        if max_batch_size < 1 or instances < 1 or max_delay < 0:
            raise ValueError("max_batch_size and instances must be >= 1 and max_delay >= 0")
        self.run = run
        self.max_batch_size = max_batch_size
        self.max_delay = max_delay
        self.instances = instances
        self.on_batch = on_batch
        self._queue: deque[_Pending] = deque()
        self._arrived: asyncio.Event | None = None
        self._slots: asyncio.Semaphore | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._loop_task: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()
        self.closed = False

    @property
    def queued(self) -> int:
        """Requests waiting for a batch."""
        return len(self._queue)

    def start(self) -> None:
        """Start the batching loop on the running event loop (done on first submit too)."""
        if self._loop_task is not None:
            return
        self._arrived = asyncio.Event()
        self._slots = asyncio.Semaphore(self.instances)
        self._executor = ThreadPoolExecutor(self.instances, thread_name_prefix="noisyad-infer")
        self._loop_task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Finish the running batches, fail the queued requests, stop the threads."""
        self.closed = True
        if self._loop_task is None:
            return
        self._loop_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._loop_task
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        while self._queue:
            pending = self._queue.popleft()
            if not pending.future.done():
                pending.future.set_exception(RuntimeError("the server is shutting down"))
        self._executor.shutdown(wait=True)
        self._loop_task = None

    async def submit(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Queue ``images`` (at most ``max_batch_size``) and wait for their outputs."""
        if self.closed:
            raise RuntimeError("the server is shutting down")
        if len(images) > self.max_batch_size:
            raise ValueError(f"{len(images)} images exceed max_batch_size {self.max_batch_size}")
        self.start()
        future = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(images, future))
        self._arrived.set()
        return await future

    async def _wait_for_arrival(self, timeout: float | None) -> bool:
        """Wait until a request is queued (or ``timeout`` passes); True if one arrived."""
        self._arrived.clear()
        try:
            await asyncio.wait_for(self._arrived.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def _queued_images(self) -> int:
        """Images of the queued requests that fit into one batch, oldest first."""
        total = 0
        for pending in self._queue:
            if total + len(pending.images) > self.max_batch_size:
                break
            total += len(pending.images)
        return total

    async def _next_batch(self) -> list[_Pending]:
        """Wait for work, then gather a batch (full, or when the oldest request's delay ends)."""
        while not self._queue:
            await self._wait_for_arrival(None)
        deadline = self._queue[0].arrived + self.max_delay
        while True:
            fitting = self._queued_images()
            if fitting >= self.max_batch_size or fitting < self._total_queued():
                break  # full, or the next request would overflow it: run what fits now
            remaining = deadline - time.perf_counter()
            if remaining <= 0 or not await self._wait_for_arrival(remaining):
                break

        batch, total = [], 0
        while self._queue and total + len(self._queue[0].images) <= self.max_batch_size:
            pending = self._queue.popleft()
            if pending.future.done():  # the client went away while queued
                continue
            batch.append(pending)
            total += len(pending.images)
        return batch

    def _total_queued(self) -> int:
        return sum(len(p.images) for p in self._queue)

    async def _loop(self) -> None:
        """Form batches while an instance is free; each batch runs as its own task."""
        while True:
            await self._slots.acquire()
            try:
                batch = await self._next_batch()
            except BaseException:
                self._slots.release()
                raise
            if not batch:
                self._slots.release()
                continue
            task = asyncio.get_running_loop().create_task(self._execute(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _execute(self, batch: list[_Pending]) -> None:
        """Run one batch on a worker thread and give every request its rows."""
        try:
            images = (
                batch[0].images if len(batch) == 1 else np.concatenate([p.images for p in batch])
            )
            started = time.perf_counter()
            loop = asyncio.get_running_loop()
            outputs = await loop.run_in_executor(self._executor, self.run, images)
            seconds = time.perf_counter() - started
            if self.on_batch is not None:
                self.on_batch(len(images), seconds)
            logger.debug(
                "batch of %d images (%d requests) in %.1f ms",
                len(images),
                len(batch),
                seconds * 1e3,
            )
            start = 0
            for pending in batch:
                stop = start + len(pending.images)
                if not pending.future.done():
                    pending.future.set_result({k: v[start:stop] for k, v in outputs.items()})
                start = stop
        except Exception as exc:
            logger.exception("inference failed for a batch of %d requests", len(batch))
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(exc)
        finally:
            self._slots.release()
