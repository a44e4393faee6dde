"""Between the HTTP layer and the engine: admission queue, deadlines, micro-batching, coalescing.

`AdmissionQueue` owns the engine's one thread. Requests wait in a bounded queue; a full queue
refuses at once with a Retry-After estimate; a request whose deadline passes while queued is
dropped before it reaches the model; requests that can share a UNet batch are run together.
`InFlight` makes identical requests in flight share one computation.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import queue
import threading
import time
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Generic, TypeVar

import numpy as np

from engines.base import GenerationRequest, ImageEngine
from service.auth import current_key_id
from service.errors import DeadlineExceeded, NotReady, Overloaded

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(eq=False)
class Deadline:
    """When a piece of work stops being wanted, on the loop's clock. Shared work holds one for all
    its waiters, moved later as each joins: it lives as long as its longest waiter."""

    at: float

    def extend(self, at: float) -> None:
        self.at = max(self.at, at)


def request_cost(request: GenerationRequest) -> float:
    """What a request costs the model, in units of one 512x512, 1-step image without guidance: pixels
    x steps, twice under classifier-free guidance. A 1024x1024, 4-step, guided request costs 32."""
    pixels = request.width * request.height / (512 * 512)
    return pixels * request.num_inference_steps * (2 if request.uses_guidance else 1)


@dataclass(eq=False)
class _Job:
    request: GenerationRequest
    future: asyncio.Future[np.ndarray]
    deadline: Deadline
    owner: str | None = None  # the API key id that queued it (None: keys are off)
    enqueued: float = field(default_factory=time.monotonic)

    @property
    def cost(self) -> float:
        return request_cost(self.request)


class DaemonThreadExecutor(Executor):
    """One daemon thread that runs calls in order. Unlike ThreadPoolExecutor, whose threads the
    interpreter joins at exit, a model call still running past the shutdown timeout does not keep
    the process alive."""

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue[tuple[Future, Callable, tuple, dict] | None] = queue.SimpleQueue()
        self._busy = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    @property
    def idle(self) -> bool:
        with self._lock:
            return self._busy == 0

    def submit(self, fn: Callable[..., T], /, *args: object, **kwargs: object) -> Future[T]:
        future: Future[T] = Future()
        with self._lock:
            self._busy += 1
        self._calls.put((future, fn, args, kwargs))
        return future

    def _work(self) -> None:
        while (call := self._calls.get()) is not None:
            future, fn, args, kwargs = call
            try:
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn(*args, **kwargs))
                    except BaseException as exc:
                        future.set_exception(exc)
            finally:
                with self._lock:
                    self._busy -= 1

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False, timeout: float | None = None) -> None:
        self._calls.put(None)
        if wait:
            self._thread.join(timeout)


class AdmissionObserver:
    """Hooks for metrics; the default does nothing."""

    def queued(self, depth: int) -> None: ...
    def refused(self, reason: str) -> None: ...
    def batch_done(self, size: int, queue_waits: list[float], stage_seconds: dict[str, float]) -> None: ...


class AdmissionQueue:
    def __init__(
        self,
        engine: ImageEngine,
        *,
        max_queue: int,
        max_batch: int = 1,
        batch_window_s: float = 0.0,
        observer: AdmissionObserver | None = None,
        max_queue_share: float = 1.0,
    ) -> None:
        self.engine = engine
        self.max_queue = max_queue  # in request_cost units: 32 plain 512x512 images, or one 1024x1024 4-step guided one
        self.max_queue_share = max_queue_share  # of max_queue, per API key
        self.max_batch = max(1, min(max_batch, engine.limits.max_batch))
        self.batch_window_s = batch_window_s if self.max_batch > 1 else 0.0
        self.observer = observer or AdmissionObserver()
        self._pending: list[_Job] = []
        self._running: list[_Job] = []
        self._wakeup = asyncio.Event()
        self._executor = DaemonThreadExecutor("engine")
        self._worker: asyncio.Task[None] | None = None
        self._accepting = True
        self._seconds_per_unit: float | None = None  # moving average of measured batches, per request_cost unit

    # --- the engine's thread, also used to load and warm up -------------------------------------

    async def call_engine(self, fn: Callable[..., T], *args: object) -> T:
        """Run a blocking engine method on the engine's own thread, in a copy of the caller's context
        (as asyncio.to_thread does), so its log lines keep the request id."""
        call = functools.partial(contextvars.copy_context().run, fn, *args)
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    def start(self) -> None:
        self._worker = asyncio.create_task(self._run(), name="admission-queue")

    # --- admission --------------------------------------------------------------------------------

    @property
    def depth(self) -> int:
        return len(self._pending)

    @property
    def busy(self) -> int:
        return len(self._pending) + len(self._running)

    def retry_after(self, jobs: list[_Job] | None = None) -> float:
        """Seconds until `jobs` (by default everything queued and running) are done, by their cost."""
        jobs = self._pending + self._running if jobs is None else jobs
        per_unit = self._seconds_per_unit or 1.0
        return sum(job.cost for job in jobs) * per_unit / self.max_batch

    async def submit(self, request: GenerationRequest, deadline: Deadline) -> np.ndarray:
        """Queue a request and wait for its image; raises Overloaded, NotReady or DeadlineExceeded.

        The queue holds at most max_queue cost units (an empty queue takes any one request); with API
        keys, one key holds at most max_queue_share of them, so one client cannot starve the rest."""
        if not self._accepting:
            self.observer.refused("draining")
            raise NotReady("the service is shutting down; retry on another replica")
        cost, owner = request_cost(request), current_key_id.get()
        if self._pending and sum(job.cost for job in self._pending) + cost > self.max_queue:
            self.observer.refused("queue_full")
            raise Overloaded(f"the queue is full ({self.max_queue} images' worth waiting); retry later", self.retry_after())
        owned = [job for job in self._pending if owner is not None and job.owner == owner]
        if owned and sum(job.cost for job in owned) + cost > self.max_queue_share * self.max_queue:
            self.observer.refused("key_share")
            raise Overloaded(
                f"this API key already holds its share of the queue ({self.max_queue_share:.0%}); retry later",
                self.retry_after(owned + self._running),
            )
        job = _Job(request, asyncio.get_running_loop().create_future(), deadline, owner)
        self._pending.append(job)
        self.observer.queued(len(self._pending))
        self._wakeup.set()
        try:
            return await job.future
        finally:
            # A waiter that gave up (client gone, deadline) frees its place at once.
            if job in self._pending:
                self._pending.remove(job)
                self.observer.queued(len(self._pending))

    # --- the worker ---------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            batch = await self._next_batch()
            if batch:
                await self._execute(batch)

    async def _next_batch(self) -> list[_Job]:
        while not self._live_pending():
            self._wakeup.clear()
            await self._wakeup.wait()
        signature = self._pending[0].request.batch_signature()
        if self.batch_window_s > 0:
            # Wait a short window for batch-mates, unless the batch is already full.
            window_end = asyncio.get_running_loop().time() + self.batch_window_s
            while len(self._matching(signature)) < self.max_batch:
                remaining = window_end - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except asyncio.TimeoutError:
                    break
        batch = self._matching(signature)[: self.max_batch]
        for job in batch:
            self._pending.remove(job)
        self.observer.queued(len(self._pending))
        return batch

    def _live_pending(self) -> bool:
        """Drop jobs whose waiter left or whose deadline passed; True if any remain."""
        now = asyncio.get_running_loop().time()
        for job in list(self._pending):
            if job.future.done():
                self._pending.remove(job)
            elif job.deadline.at <= now:
                self._pending.remove(job)
                self.observer.refused("deadline")
                job.future.set_exception(DeadlineExceeded("the request's deadline passed while it waited in the queue"))
        return bool(self._pending)

    def _matching(self, signature: tuple) -> list[_Job]:
        self._live_pending()
        return [job for job in self._pending if job.request.batch_signature() == signature]

    async def _execute(self, batch: list[_Job]) -> None:
        self._running = batch
        started = time.monotonic()
        try:
            images, stages = await self.call_engine(self._generate, [job.request for job in batch])
        except Exception as exc:
            logger.exception("the engine failed on a batch of %d", len(batch))
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        finally:
            self._running = []
        seconds = time.monotonic() - started
        per_unit = seconds / sum(job.cost for job in batch)
        self._seconds_per_unit = per_unit if self._seconds_per_unit is None else 0.8 * self._seconds_per_unit + 0.2 * per_unit
        self.observer.batch_done(len(batch), [started - job.enqueued for job in batch], stages)
        for job, image in zip(batch, images):
            if not job.future.done():
                job.future.set_result(image)

    def _generate(self, requests: list[GenerationRequest]) -> tuple[list[np.ndarray], dict[str, float]]:
        """On the engine's thread: the images and the stage timings of this very call."""
        return self.engine.generate(requests), self.engine.last_stage_seconds()

    # --- shutdown -------------------------------------------------------------------------------------

    def stop_accepting(self) -> None:
        self._accepting = False

    async def drain(self, timeout: float) -> bool:
        """Wait until queued and running work is done, at most `timeout` seconds; True if it all finished.
        Past the timeout, every waiter still queued or running is answered 503 at once.

        New requests are refused upstream (readiness turns 'draining'); a request that arrived before
        the signal may still join the queue until the timeout, so it is not refused for being slow to read."""
        deadline = time.monotonic() + timeout
        while self.busy and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        finished = not self.busy
        self.stop_accepting()
        self._refuse_waiting("the service shut down before this image was made; retry on another replica")
        return finished

    def _refuse_waiting(self, message: str) -> None:
        for job in [*self._pending, *self._running]:
            if not job.future.done():
                self.observer.refused("shutdown")
                job.future.set_exception(NotReady(message))
        self._pending.clear()

    @property
    def engine_idle(self) -> bool:
        return self._executor.idle

    async def close(self, grace_s: float = 1.0) -> None:
        """Stop the worker, fail what is left, and let the engine's thread finish its call within
        `grace_s` (a call running longer is left behind: the thread is a daemon and the process may exit)."""
        self.stop_accepting()
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        self._refuse_waiting("the service shut down before this request ran")
        await asyncio.to_thread(self._executor.shutdown, wait=True, timeout=grace_s)


class InFlight(Generic[T]):
    """Identical requests in flight are computed once: the first starts the work, the rest join it.

    The work runs as its own task, so one waiter leaving does not stop it for the others; when the
    last waiter leaves, the work is cancelled (a queued request frees its place in the queue).
    """

    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[T]] = {}
        self._deadlines: dict[str, Deadline] = {}
        self._waiters: dict[asyncio.Task[T], int] = {}

    async def run(self, key: str, start: Callable[[Deadline], Awaitable[T]], deadline: float) -> tuple[T, bool]:
        """Returns the result and whether it was shared with an earlier identical request. The work
        gets a Deadline that each waiter pushes out to its own: it is never dropped for one waiter's
        deadline while another still waits."""
        task = self._tasks.get(key)
        shared = task is not None
        if task is None:
            self._deadlines[key] = Deadline(deadline)
            task = asyncio.ensure_future(start(self._deadlines[key]))
            self._tasks[key] = task
            task.add_done_callback(lambda done: self._forget(key, done))
        else:
            self._deadlines[key].extend(deadline)
        self._waiters[task] = self._waiters.get(task, 0) + 1
        try:
            return await asyncio.shield(task), shared
        finally:
            self._waiters[task] -= 1
            if self._waiters[task] == 0:
                del self._waiters[task]
                if not task.done():
                    task.cancel()

    def _forget(self, key: str, task: asyncio.Task[T]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
            del self._deadlines[key]
        if not task.cancelled():
            task.exception()  # retrieved: no "exception was never retrieved" when every waiter left
