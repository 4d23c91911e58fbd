"""Runs generations for the daemon: one model, a bounded queue, and as many requests at once as
the backend has slots.

The llama.cpp backend holds one sequence of KV cache (and reuses the previous prompt's prefix),
so there requests run one after another on a worker thread. A remote backend (engine.remote)
batches on its server, so `workers` threads each run one request to its end, that many in
flight at once. The native backend with several
slots runs them together (`engine.native.BatchDecoder`, continuous batching): between two decode
steps the worker admits waiting requests into free slots, each step prefills a chunk of the new
prompts and decodes one token of every running request, and a request whose client left is
cancelled and frees its slot at the next step. Waiting requests sit in a priority queue:
completions (an editor waiting on a keystroke) go before chat, and otherwise first come first
served. A full queue refuses at once (`QueueFull`, answered 429); after `drain()` every new
request is refused (`Draining`, answered 503) while the ones already accepted finish. Events go
back to the event loop through `call_soon_threadsafe` (a batched step's events in one call, so
the loop wakes once per step, not once per stream); a job's `cancel` event, set when its client
goes away, stops the backend between two tokens.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from engine.backend import Backend, EngineError, GenerationEvent, SamplingParams

if TYPE_CHECKING:
    from engine.native import BatchDecoder

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
        _deliver([(self, item)])


def _deliver(items: list[tuple[Job, GenerationEvent | BaseException | None]]) -> None:
    """Hand one decode step's events to their jobs' event loop in one wake-up of it (a wake-up
    per event costs the loop a system call and a turn each)."""
    if not items:
        return
    try:
        items[0][0].loop.call_soon_threadsafe(_put_all, items)
    except RuntimeError:  # the loop is closed: nobody is listening any more
        pass


def _put_all(items: list[tuple[Job, GenerationEvent | BaseException | None]]) -> None:
    for job, item in items:
        job.events.put_nowait(item)


class Scheduler:
    """Worker threads draining a priority queue of jobs into one backend: one job at a time per
    worker (`workers` of them) or, with a `decoder`, one worker stepping as many jobs as it has slots."""

    def __init__(self, backend: Backend, *, max_queue: int = 16, on_finish: Callable[[Job, GenerationEvent], None]
                 | None = None, decoder: BatchDecoder | None = None, workers: int = 1) -> None:
        """The native backend runs its kernels on a thread of its own, whichever thread steps it
        (engine.native._EngineThread), so the workers here are plain threads."""
        assert max_queue >= 1 and workers >= 1, (max_queue, workers)
        assert decoder is None or workers == 1, workers
        self.backend = backend
        self.decoder = decoder
        self.max_queue = max_queue
        self.slots = decoder.n_slots if decoder is not None else workers
        self._on_finish = on_finish
        self._heap: list[tuple[int, int, Job]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._running: dict[int, Job] = {}  # slot -> job
        self._draining = False
        self._closed = False
        if decoder is not None:
            targets = [self._work_batched]
        else:
            targets = [lambda slot=slot: self._work(slot) for slot in range(workers)]
        self._threads = [threading.Thread(target=t, name=f"assistant-scheduler-{i}", daemon=True)
                         for i, t in enumerate(targets)]
        for t in self._threads:
            t.start()

    # --- what the app sees --------------------------------------------------------------------

    @property
    def queued(self) -> int:
        with self._cond:
            return len(self._heap)

    @property
    def busy(self) -> int:
        with self._cond:
            return len(self._running)

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
            return self._cond.wait_for(lambda: not self._heap and not self._running, timeout)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            for _, _, job in self._heap:
                job.cancel.set()
                job._put(Draining())
            self._heap.clear()
            for job in self._running.values():
                job.cancel.set()
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout=30)

    # --- the workers --------------------------------------------------------------------------

    def _finish(self, job: Job, ev: GenerationEvent) -> None:
        if ev.timings is not None and self._on_finish is not None:
            self._on_finish(job, ev)

    def _cancelled_before_start(self, job: Job) -> bool:
        job.started.set()
        if not job.cancel.is_set():  # its client is still there
            return False
        ev = GenerationEvent(finish_reason="cancelled")
        if self._on_finish is not None:
            self._on_finish(job, ev)
        job._put(ev)
        job._put(None)
        return True

    def _work(self, slot: int) -> None:
        """One job at a time, to its end (`slot`: this worker's key among the running jobs)."""
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._heap or self._closed)
                if self._closed:
                    return
                _, _, job = heapq.heappop(self._heap)
                self._running[slot] = job
            try:
                self._run(job)
            finally:
                with self._cond:
                    self._running.pop(slot, None)
                    self._cond.notify_all()

    def _run(self, job: Job) -> None:
        if self._cancelled_before_start(job):
            return
        try:
            for ev in self.backend.generate(job.prompt, job.params, cancel=job.cancel):
                self._finish(job, ev)
                job._put(ev)
        except EngineError as e:  # said for a person (a prompt over the context, a remote that failed)
            log.warning("generation failed: %s", e)
            job._put(e)
        except Exception as e:  # our own fault: the app answers 500
            log.exception("generation failed")
            job._put(e)
        job._put(None)

    def _work_batched(self) -> None:
        """Continuous batching: admit jobs into free slots between steps, step while any runs."""
        decoder = self.decoder
        assert decoder is not None
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._heap or self._running or self._closed)
                if self._closed and not self._running:
                    return
                admitted = []
                while self._heap and len(self._running) + len(admitted) < self.slots:
                    admitted.append(heapq.heappop(self._heap)[2])
            for job in admitted:
                if self._cancelled_before_start(job):
                    continue
                try:
                    slot = decoder.add(job.prompt, job.params, cancel=job.cancel)
                except Exception as e:  # the request's own fault (a prompt over the context)
                    job._put(e)
                    job._put(None)
                    continue
                with self._cond:
                    self._running[slot] = job
            if not self._running:
                with self._cond:
                    self._cond.notify_all()
                continue
            try:
                events = decoder.step()
            except Exception as e:  # our own fault: every running request is told, and the slots reset
                log.exception("batched generation failed")
                with self._cond:
                    jobs, self._running = list(self._running.values()), {}
                    self._cond.notify_all()
                for job in jobs:
                    job.cancel.set()
                    job._put(e)
                    job._put(None)
                self.decoder = decoder = type(decoder)(decoder.backend)
                continue
            ended, out = [], []
            for slot, ev in events:
                job = self._running[slot]
                if isinstance(ev, BaseException):
                    log.error("generation failed: %s", ev)
                    out.append((job, ev))
                    ended.append(slot)
                    continue
                self._finish(job, ev)
                out.append((job, ev))
                if ev.finish_reason is not None:
                    ended.append(slot)
            if ended:
                with self._cond:
                    for slot in ended:
                        out.append((self._running.pop(slot), None))
                    self._cond.notify_all()
            _deliver(out)
