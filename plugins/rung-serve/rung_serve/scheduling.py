"""How a served model runs its requests: continuous batching for compute backends that can.

`_Model` is one served backend (what the app calls `agenerate`/`astream` on):

- a compute backend with `decode_slots` (rung-torch, rung-hf, rung-jax) gets a `Scheduler`:
  requests join and leave one running decode batch at step boundaries, each in its own KV-cache
  slot, so up to `max_slots` clients share the model at once (`slots`: what the app's gate counts as its
  capacity; more wait in the scheduler's queue);
- another compute backend (one whose `decode_slots` is None: switched off with
  `continuous_batching: false`, or a model it cannot batch) answers one request at a time
  (`turn()` is a lock);
- a hosted backend is proxied, every request at once.

The `Scheduler` owns the backend's `rung.interfaces.DecodeSlots` and one worker thread, the
only one that touches the model: while any slot is active it runs `step()`; at each step
boundary it first frees the slots of requests that were cancelled (a client that disconnected,
a request past its time limit), then admits waiting requests into free slots (prefill), and
hands each step's deltas to their requests' asyncio queues (`loop.call_soon_threadsafe`, once
per event loop per step; a request that does not stream gets its whole reply at once, so its
loop is not woken at every step). The backend's step returns its text before feeding the picked
tokens back (`rung_torch.batching`), so the event loop sends it while the next step computes. A
request a slot cannot decode (log-probabilities, echo: `DecodeSlots.accepts`) runs through the
backend's own `generate`/`stream` on the same thread, the batch pausing meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from rung.records import Completion, Delta, GenerationRequest, Usage

log = logging.getLogger("rung.serve")

DEFAULT_SLOTS = 32
IDLE_EXIT_S = 60.0  # a worker with nothing to do for this long ends (an app dropped leaves no thread behind)


class _Model:
    """One served backend: its name, and how its requests run (see the module docstring)."""

    def __init__(self, name: str, backend: Any, max_slots: int = DEFAULT_SLOTS) -> None:
        self.name, self.backend = name, backend
        compute = hasattr(backend, "framework")
        make_slots = getattr(backend, "decode_slots", None) if compute else None
        slots = make_slots(max_slots) if make_slots else None  # None from the call too: cannot batch
        self.scheduler: Scheduler | None = Scheduler(slots, name) if slots is not None else None
        self.slots: int | None = max_slots if self.scheduler is not None else None
        self.lock: asyncio.Lock | None = asyncio.Lock() if compute and self.scheduler is None else None

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        if self.lock is None:
            yield
        else:
            async with self.lock:
                yield

    async def agenerate(self, request: GenerationRequest) -> Completion:
        if self.scheduler is not None:
            return await self.scheduler.generate(request)
        return await self.backend.agenerate(request)

    def astream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        if self.scheduler is not None:
            return self.scheduler.stream(request)
        return self.backend.astream(request)


class _Ticket:
    """One request's place in the scheduler: its queue of deltas, and its slot once admitted."""

    def __init__(self, request: GenerationRequest, streaming: bool, loop: asyncio.AbstractEventLoop) -> None:
        self.request, self.streaming, self.loop = request, streaming, loop
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.slot: int | None = None
        self.pieces: list[str] = []  # a reply that does not stream, gathered by the worker until it ends
        self.cancelled = False  # set by the asyncio side; the worker frees the slot at its next boundary
        self.finished = False  # set by the asyncio side once the last item arrived

    def deliver(self, item: Any) -> None:
        """From the worker thread: a Delta, a Completion, or an exception to raise."""
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the event loop is closed: nobody is waiting any more
            self.cancelled = True


class Scheduler:
    """Continuous batching of one backend's `DecodeSlots` on a worker thread of its own."""

    def __init__(self, slots: Any, name: str, idle_exit_s: float = IDLE_EXIT_S) -> None:
        self.slots, self.name, self.idle_exit_s = slots, name, idle_exit_s
        self._wake = threading.Condition()
        self._waiting: deque[_Ticket] = deque()  # not yet admitted, in arrival order
        self._cancelled: list[_Ticket] = []
        self._running: dict[int, _Ticket] = {}  # slot -> ticket; the worker's alone
        self._thread: threading.Thread | None = None
        self._closed = False
        # What the batch has done (tests, benchmarks): decoding steps run, the most requests one
        # step decoded, slots freed before their request finished (disconnects, time limits).
        self.steps = 0
        self.peak_active = 0
        self.cancelled_slots = 0

    # -- the asyncio side

    @property
    def active(self) -> int:
        """Requests decoding in a slot now."""
        return self.slots.active

    @property
    def waiting(self) -> int:
        """Requests waiting for a free slot."""
        return len(self._waiting)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        """`request`'s deltas as the batch decodes them; closing the iterator early frees its slot."""
        ticket = self._submit(request, streaming=True)
        try:
            while True:
                item = await ticket.queue.get()
                if isinstance(item, BaseException):
                    ticket.finished = True
                    raise item
                if item.finish_reason is not None:
                    ticket.finished = True
                yield item
                if ticket.finished:
                    return
        finally:
            if not ticket.finished:
                self._cancel(ticket)

    async def generate(self, request: GenerationRequest) -> Completion:
        """`request` decoded to its end; cancelling the await frees its slot."""
        ticket = self._submit(request, streaming=False)
        try:
            item = await ticket.queue.get()  # the whole reply (the worker gathers it), or an error
            ticket.finished = True
            if isinstance(item, BaseException):
                raise item
            return item
        finally:
            if not ticket.finished:
                self._cancel(ticket)

    def close(self) -> None:
        """Stop the worker once the running requests are done (the thread is a daemon, and
        ends by itself when idle)."""
        with self._wake:
            self._closed = True
            thread = self._thread
            self._wake.notify()
        if thread is not None:
            thread.join()

    def _submit(self, request: GenerationRequest, streaming: bool) -> _Ticket:
        ticket = _Ticket(request, streaming, asyncio.get_running_loop())
        with self._wake:
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=f"rung-serve-batch-{self.name}",
                                                daemon=True)
                self._thread.start()
            self._waiting.append(ticket)
            self._wake.notify()
        return ticket

    def _cancel(self, ticket: _Ticket) -> None:
        with self._wake:
            ticket.cancelled = True
            self._cancelled.append(ticket)
            self._wake.notify()

    # -- the worker thread

    def _work(self) -> None:
        while True:
            with self._wake:
                while not self._has_work():
                    if self._closed or (not self._wake.wait(self.idle_exit_s) and not self._has_work()):
                        self._thread = None  # idle (or closed): the next request starts a new one
                        return
                cancelled, self._cancelled = self._cancelled, []
                arriving = []
                free = self.slots.free + sum(1 for t in cancelled if self._running.get(t.slot) is t)
                while self._waiting and (free > 0 or not self.slots.accepts(self._waiting[0].request)):
                    ticket = self._waiting.popleft()
                    if ticket.cancelled:
                        continue
                    arriving.append(ticket)
                    free -= self.slots.accepts(ticket.request)
            for ticket in cancelled:
                self._free(ticket)
            for ticket in arriving:
                self._admit(ticket)
            if self._running:
                self._step()

    def _has_work(self) -> bool:
        return bool(self._waiting or self._cancelled or self._running)

    def _free(self, ticket: _Ticket) -> None:
        slot = ticket.slot
        if slot is not None and self._running.get(slot) is ticket:
            del self._running[slot]
            self.slots.cancel(slot)
            self.cancelled_slots += 1

    def _admit(self, ticket: _Ticket) -> None:
        if ticket.cancelled:
            return
        if not self.slots.accepts(ticket.request):
            self._alone(ticket)
            return
        try:
            ticket.slot = self.slots.add(ticket.request)
        except Exception as exc:  # noqa: BLE001 - the request's own error (a RungError: 400), to its client
            ticket.deliver(exc)
            return
        self._running[ticket.slot] = ticket

    def _alone(self, ticket: _Ticket) -> None:
        """A request no slot decodes: the backend's own generate or stream, on this thread."""
        backend = self.slots.backend
        try:
            if not ticket.streaming:
                ticket.deliver(backend.generate(ticket.request))
                return
            deltas = iter(backend.stream(ticket.request))
            try:
                for delta in deltas:
                    if ticket.cancelled:
                        break
                    ticket.deliver(delta)
            finally:
                close = getattr(deltas, "close", None)
                if close is not None:
                    close()
        except Exception as exc:  # noqa: BLE001 - to the request's client
            ticket.deliver(exc)

    def _step(self) -> None:
        self.steps += 1
        self.peak_active = max(self.peak_active, self.slots.active)
        try:
            deltas = self.slots.step()
        except Exception as exc:  # noqa: BLE001 - every running request gets the error; the batch starts over
            log.exception("rung serve: a decoding step of model %r failed", self.name)
            running, self._running = self._running, {}
            for slot, ticket in running.items():
                with contextlib.suppress(Exception):
                    self.slots.cancel(slot)
                ticket.deliver(exc)
            return
        # One wake-up of each event loop per step, however many requests it serves.
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Ticket, Delta | Completion]]] = {}
        for slot, delta in deltas:
            ticket = self._running.get(slot)
            if ticket is None:
                continue
            item: Delta | Completion = delta
            if delta.finish_reason is not None:
                del self._running[slot]
            if not ticket.streaming:  # gathered here: its loop wakes once, for the whole reply
                ticket.pieces.append(delta.text)
                if delta.finish_reason is None:
                    continue
                item = Completion("".join(ticket.pieces), delta.finish_reason, delta.usage or Usage(), delta.model)
            by_loop.setdefault(ticket.loop, []).append((ticket, item))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:  # the event loop is closed: nobody is waiting any more
                for ticket, _ in items:
                    self._cancel(ticket)


def _put_all(items: list[tuple[_Ticket, Any]]) -> None:
    for ticket, item in items:
        ticket.queue.put_nowait(item)
