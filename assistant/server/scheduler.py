"""Runs generations for the daemon: one model, a bounded queue, one request at a time.

The llama.cpp backend holds one sequence of KV cache (and reuses the previous prompt's prefix),
so requests run one after another on a worker thread. Waiting requests sit in a priority queue:
completions (an editor waiting on a keystroke) go before chat, and otherwise first come first
served. A full queue refuses at once (`QueueFull`, answered 429); after `drain()` every new
request is refused (`Draining`, answered 503) while the ones already accepted finish. Events go
back to the event loop through `call_soon_threadsafe`; a job's `cancel` event, set when its
client goes away, stops the backend between two tokens.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from engine.backend import Backend, GenerationEvent, SamplingParams

log = logging.getLogger(__name__)

# Lower runs first.
PRIORITY_COMPLETION, PRIORITY_CHAT = 0, 1


class QueueFull(Exception):
    """More requests are waiting than the queue holds."""


class Draining(Exception):
    """The daemon is shutting down and takes no new requests."""


@dataclass
class Job:
    """One generation: its prompt, how to sample, and where its events go."""

    prompt: Sequence[int]
    params: SamplingParams
    priority: int
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancel: threading.Event = field(default_factory=threading.Event)
    started: threading.Event = field(default_factory=threading.Event)

    def _put(self, item: GenerationEvent | BaseException | None) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass


class Scheduler:
    """A worker thread draining a priority queue of jobs into one backend."""

    def __init__(self, backend: Backend, *, max_queue: int = 16, on_finish: Callable[[Job, GenerationEvent], None]
                 | None = None) -> None:
        assert max_queue >= 1, max_queue
        self.backend = backend
        self.max_queue = max_queue
        self.slots = 1
        self._on_finish = on_finish
        self._heap: list[tuple[int, int, Job]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._running: Job | None = None
        self._draining = False
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="assistant-scheduler", daemon=True)
        self._thread.start()

    # --- what the app sees --------------------------------------------------------------------

    @property
    def queued(self) -> int:
        with self._cond:
            return len(self._heap)

    @property
    def busy(self) -> int:
        with self._cond:
            return 1 if self._running is not None else 0

    @property
    def draining(self) -> bool:
        return self._draining

    def submit(self, job: Job) -> Job:
        """Queue `job`; raise QueueFull or Draining instead of waiting."""
        with self._cond:
            if self._draining or self._closed:
                raise Draining()
            if len(self._heap) >= self.max_queue:
                raise QueueFull()
            heapq.heappush(self._heap, (job.priority, next(self._seq), job))
            self._cond.notify()
        return job

    def drain(self) -> None:
        """Refuse new jobs from now on; the queued and running ones still finish."""
        with self._cond:
            self._draining = True

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until nothing is queued or running; False if `timeout` passed first."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._heap and self._running is None, timeout)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            for _, _, job in self._heap:
                job.cancel.set()
                job._put(Draining())
            self._heap.clear()
            self._cond.notify_all()
        self._thread.join(timeout=30)

    # --- the worker ---------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._heap or self._closed)
                if self._closed:
                    return
                _, _, job = heapq.heappop(self._heap)
                self._running = job
            try:
                self._run(job)
            finally:
                with self._cond:
                    self._running = None
                    self._cond.notify_all()

    def _run(self, job: Job) -> None:
        job.started.set()
        if job.cancel.is_set():  # its client left while it waited
            ev = GenerationEvent(finish_reason="cancelled")
            if self._on_finish is not None:
                self._on_finish(job, ev)
            job._put(ev)
            job._put(None)
            return
        try:
            for ev in self.backend.generate(job.prompt, job.params, cancel=job.cancel):
                if ev.timings is not None and self._on_finish is not None:
                    self._on_finish(job, ev)
                job._put(ev)
        except Exception as e:  # the request's own fault or ours: the app decides how to answer
            log.exception("generation failed")
            job._put(e)
        job._put(None)
