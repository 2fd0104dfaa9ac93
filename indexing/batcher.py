"""Concurrent query embeddings in one forward pass. Django-free.

On a CPU a forward pass of 8 images costs less than 8 passes of one (ViT-B-32 on 2 cores, measured:
17 images/s batched against 11 alone with 2 torch threads, 9 against 7 with 1), so a serving
process whose request threads each embed their own query leaves that difference on the table.
A `QueryBatcher` lets each request thread decode and preprocess its photo itself (in parallel),
then hands the tensor to one worker thread that gathers up to `max_batch` of them, runs one
forward pass and gives each caller its own row. It waits for as many queries as were lately in
flight at once, and at most `max_wait_ms` after the first query arrived or the last forward pass
ended, whichever is later. Waiting only pays when company comes: a query waits only if, within
the last `company_window_s`, some query arrived while another was queued or being embedded.
Searches one at a time (a single inspector, a line PC) go at once instead of paying
`max_wait_ms` each time.

Create one per process, lazily, after any fork (`batcher_for`): a thread does not survive a fork,
and the batcher starts its worker again in a child that inherited it."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from indexing.embedder import Embedder

logger = logging.getLogger(__name__)

Forward = Callable[[Sequence[torch.Tensor]], np.ndarray]

# How often a waiting caller checks that the worker thread is still alive.
LIVENESS_POLL_SECONDS = 0.5
# A lone query waits for company if queries overlapped this recently (QueryBatcher).
COMPANY_WINDOW_SECONDS = 1.0


class BatcherTimeout(TimeoutError):
    """A query waited longer than the batcher's timeout for its forward pass."""


@dataclass(eq=False)
class _Query:
    tensor: torch.Tensor
    arrived: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    vector: np.ndarray | None = None
    error: BaseException | None = None


class QueryBatcher:
    """`embed(tensor)` -> that tensor's (1, dim) row of `forward([...])`, batched with the queries of
    other threads (module docstring: how long it waits for them, and only while queries overlap).
    `max_batch` <= 1 switches batching off: each call runs its own forward pass in the caller's
    thread."""

    def __init__(
        self,
        forward: Forward,
        *,
        max_batch: int,
        max_wait_ms: float,
        timeout_s: float = 60.0,
        company_window_s: float = COMPANY_WINDOW_SECONDS,
    ):
        if max_wait_ms < 0 or timeout_s <= 0:
            raise ValueError("max_wait_ms must be >= 0 and timeout_s > 0")
        self.forward = forward
        self.max_batch = max(1, int(max_batch))
        self.max_wait = max_wait_ms / 1000
        self.timeout = timeout_s
        self.company_window = company_window_s
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._cond = threading.Condition()
        self._pending: deque[_Query] = deque()
        self._worker: threading.Thread | None = None
        self._embedding = False  # a forward pass of the worker is running
        self._overlapped_at = float("-inf")  # when a query last arrived while another was queued or embedding
        self._in_flight = 0  # queries handed in and not answered yet
        self._peak, self._peak_at = 0, float("-inf")  # most queries in flight at once, lately
        self._freed_at = float("-inf")  # when the last forward pass ended

    @property
    def enabled(self) -> bool:
        return self.max_batch > 1

    def embed(self, tensor: torch.Tensor) -> np.ndarray:
        if not self.enabled:
            return self.forward([tensor])
        if self._pid != os.getpid():  # inherited across a fork: the worker thread stayed behind
            self._reset()
        query = _Query(tensor)
        with self._cond:
            self._start_worker_if_needed()
            if self._pending or self._embedding:
                self._overlapped_at = query.arrived
            self._in_flight += 1
            if self._in_flight >= self._peak or query.arrived - self._peak_at > self.company_window:
                # The most queries in flight at once within the window (it decays once no arrival
                # has matched it for a window): how many a batch can expect to gather.
                self._peak, self._peak_at = self._in_flight, query.arrived
            self._pending.append(query)
            self._cond.notify()
        deadline = time.monotonic() + self.timeout
        while not query.done.wait(min(LIVENESS_POLL_SECONDS, max(0.0, deadline - time.monotonic()))):
            with self._cond:
                if query.done.is_set():
                    break
                if self._worker is None or not self._worker.is_alive():
                    # The worker died (it re-raises BaseExceptions such as SystemExit) after taking
                    # this query or before: never wait on it. The next queries get a new worker.
                    self._withdraw(query)
                    self._start_worker_if_needed()
                    break
            if time.monotonic() >= deadline:
                with self._cond:
                    self._withdraw(query)
                raise BatcherTimeout(f"no forward pass answered this query within {self.timeout:.0f} s")
        if not query.done.is_set():
            return self.forward([tensor])
        if query.error is not None:
            raise query.error
        assert query.vector is not None
        return query.vector

    def _withdraw(self, query: _Query) -> None:
        """Under self._cond: take back a query that no forward pass has taken (its caller gives up)."""
        if query in self._pending:
            self._pending.remove(query)
            self._in_flight -= 1

    def _start_worker_if_needed(self) -> None:
        """Under self._cond."""
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._run, name="query-batcher", daemon=True)
            self._worker.start()

    def _next_batch(self) -> list[_Query]:
        with self._cond:
            while not self._pending:
                self._cond.wait()
            # While queries overlap, wait for as many as were lately in flight at once (callers
            # whose answers just went out come back), at most max_wait after the oldest query
            # arrived or the last forward pass ended, whichever is later. Going at once with the
            # queries that queued up during the last pass splits the callers into groups that
            # then take turns in small batches for good (measured: 2.0-2.5 queries per pass with
            # 4 callers per process, 3.1-3.5 with this rule).
            oldest = self._pending[0].arrived
            company_expected = oldest - self._overlapped_at <= self.company_window
            deadline = max(oldest, self._freed_at) + (self.max_wait if company_expected else 0.0)
            want = min(self.max_batch, max(1, self._peak)) if company_expected else 1
            while len(self._pending) < want:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            self._embedding = True
            return [self._pending.popleft() for _ in range(min(self.max_batch, len(self._pending)))]

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            logger.debug("Embedding a batch of %d queries", len(batch))
            try:
                vectors = self.forward([query.tensor for query in batch])
                if len(vectors) != len(batch):
                    raise RuntimeError(f"the forward pass returned {len(vectors)} rows for {len(batch)} queries")
            except BaseException as exc:
                for query in batch:
                    query.error = exc
                    query.done.set()
                if not isinstance(exc, Exception):
                    raise
                continue
            finally:
                with self._cond:
                    self._embedding = False
                    self._freed_at = time.monotonic()
                    self._in_flight -= len(batch)
            for row, query in enumerate(batch):
                query.vector = vectors[row : row + 1].copy()
                query.done.set()


_batchers: dict[tuple[int, int, float], tuple[Embedder, QueryBatcher]] = {}
_batchers_lock = threading.Lock()


def batcher_for(embedder: Embedder, *, max_batch: int, max_wait_ms: float) -> QueryBatcher:
    """The process-wide batcher of `embedder`'s image forward pass with these limits, created on
    first use (in the serving process, after the fork)."""
    key = (id(embedder), max_batch, max_wait_ms)
    with _batchers_lock:
        entry = _batchers.get(key)
        if entry is None or entry[0] is not embedder:
            # The embedder itself is held in the entry, so its id cannot be reused by another.
            entry = (embedder, QueryBatcher(embedder._forward, max_batch=max_batch, max_wait_ms=max_wait_ms))
            _batchers[key] = entry
        return entry[1]
