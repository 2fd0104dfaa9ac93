"""The query batcher (indexing/batcher.py), Django-free: the real tiny model where the vectors
matter, a recording fake forward pass where the batches and the timing do."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import numpy as np
import pytest
import torch

from indexing.batcher import BatcherTimeout, QueryBatcher, batcher_for
from indexing.embedder import Embedder, get_embedder
from tests.helpers import image_bytes


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return get_embedder(model_name="simsearch-tiny", pretrained="untrained")


class RecordingForward:
    """Row i of a batch = the number in tensor i, after `delay` seconds; remembers each batch's size
    and the thread that ran it; raises `fail_with` once when set."""

    def __init__(self, delay: float = 0.0):
        self.delay = delay
        self.sizes: list[int] = []
        self.threads: set[str] = set()
        self.fail_with: BaseException | None = None

    def __call__(self, batch: Sequence[torch.Tensor]) -> np.ndarray:
        self.sizes.append(len(batch))
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay)
        if self.fail_with is not None:
            error, self.fail_with = self.fail_with, None
            raise error
        return np.array([[float(tensor.item()), 1.0] for tensor in batch], dtype=np.float32)


def at_once(count: int, call):  # type: ignore[no-untyped-def]
    """`call(i)` in `count` threads started together -> {i: result or exception}."""
    results: dict[int, object] = {}
    barrier = threading.Barrier(count)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = call(i)
        except BaseException as exc:  # noqa: BLE001 - the test looks at what each caller got
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(results) == count
    return results


def test_each_concurrent_caller_gets_its_own_vector_equal_to_an_unbatched_forward(embedder: Embedder) -> None:
    tensors = [embedder.image_tensor(image_bytes(seed=i, size=(64, 48))) for i in range(12)]
    alone = [embedder._forward([tensor]) for tensor in tensors]
    sizes: list[int] = []

    def forward(batch: Sequence[torch.Tensor]) -> np.ndarray:
        sizes.append(len(batch))
        return embedder._forward(batch)

    batcher = QueryBatcher(forward, max_batch=4, max_wait_ms=200)
    results = at_once(len(tensors), lambda i: batcher.embed(tensors[i]))
    for i, expected in enumerate(alone):
        assert results[i].shape == (1, embedder.dim)
        assert np.allclose(results[i], expected, atol=1e-5), i
    assert max(sizes) > 1 and max(sizes) <= 4 and sum(sizes) == len(tensors)


def test_concurrent_queries_share_forward_passes_of_at_most_max_batch() -> None:
    forward = RecordingForward(delay=0.05)
    batcher = QueryBatcher(forward, max_batch=5, max_wait_ms=100)
    results = at_once(20, lambda i: batcher.embed(torch.tensor(float(i))))
    assert {i: float(results[i][0, 0]) for i in results} == {i: float(i) for i in range(20)}
    assert sum(forward.sizes) == 20 and max(forward.sizes) == 5
    assert len(forward.sizes) <= 6  # 20 queries in batches of up to 5, not 20 passes of one
    assert forward.threads == {"query-batcher"}


def test_a_lone_query_waits_at_most_max_wait_for_company_and_only_while_queries_overlap() -> None:
    forward = RecordingForward()
    batcher = QueryBatcher(forward, max_batch=8, max_wait_ms=300, timeout_s=5, company_window_s=0.8)

    def timed(value: float) -> float:
        start = time.monotonic()
        assert float(batcher.embed(torch.tensor(value))[0, 0]) == value
        return time.monotonic() - start

    # One query at a time (nothing has overlapped yet): no waiting for company that never comes.
    assert timed(0.0) < 0.2 and timed(1.0) < 0.2
    assert forward.sizes == [1, 1]
    # Queries overlapped just now: a lone query waits for company, at most max_wait, then goes alone.
    at_once(4, lambda i: batcher.embed(torch.tensor(float(i))))
    assert 0.25 <= timed(7.0) < 1.0
    assert forward.sizes[-1] == 1
    # Once the overlap is older than the window, queries go at once again.
    time.sleep(0.9)
    assert timed(8.0) < 0.2

    eager = QueryBatcher(RecordingForward(), max_batch=8, max_wait_ms=0, timeout_s=5)
    at_once(4, lambda i: eager.embed(torch.tensor(float(i))))
    start = time.monotonic()
    eager.embed(torch.tensor(1.0))
    assert time.monotonic() - start < 0.2


def test_callers_whose_answers_come_back_at_different_speeds_stay_in_one_batch() -> None:
    """Four callers in a closed loop, as clients of one serving process: two send their next query
    20 ms after their answer, two after 200 ms, longer than max_wait. Going at once with whoever
    queued during the last pass splits them into two pairs that take turns in batches of 2 for
    good; the batcher waits (at most max_wait after the pass) for as many as were in flight
    together, so the pairs share a pass at least every other time."""
    forward = RecordingForward(delay=0.16)
    batcher = QueryBatcher(forward, max_batch=8, max_wait_ms=120, timeout_s=5)
    stop = time.monotonic() + 5

    def caller(i: int) -> int:
        answered = 0
        while time.monotonic() < stop:
            assert float(batcher.embed(torch.tensor(float(i)))[0, 0]) == i
            answered += 1
            time.sleep(0.02 if i < 2 else 0.2)
        return answered

    results = at_once(4, caller)
    assert all(isinstance(answered, int) and answered >= 5 for answered in results.values()), results
    settled = forward.sizes[2:-2]  # after the start, before the callers stop one by one
    # This rule: 4, 2, 4, 2, ... (mean 3); going at once: 4, 2, 2, 2, 4, 2, 2, 2, ... (mean 2.5).
    assert settled and sum(settled) / len(settled) >= 2.75, forward.sizes


def test_an_error_in_the_forward_pass_reaches_every_caller_and_the_next_call_works() -> None:
    """Four queries queue up while a first pass holds the worker, go in one pass, which fails:
    each of the four gets the error (not only the first to arrive), and the next call works."""
    forward = RecordingForward()
    gate = threading.Event()
    first_pass = forward.__call__

    def held_then_failing(batch: Sequence[torch.Tensor]) -> np.ndarray:
        if not forward.sizes:  # the first pass waits at the gate; the one after it fails
            forward.sizes.append(len(batch))
            gate.wait(10)
            forward.fail_with = RuntimeError("out of memory")
            return np.array([[float(tensor.item()), 1.0] for tensor in batch], dtype=np.float32)
        return first_pass(batch)

    batcher = QueryBatcher(held_then_failing, max_batch=4, max_wait_ms=200, timeout_s=5)
    holder = threading.Thread(target=batcher.embed, args=(torch.tensor(99.0),))
    holder.start()
    results: dict[int, object] = {}
    callers = threading.Thread(
        target=lambda: results.update(at_once(4, lambda i: batcher.embed(torch.tensor(float(i)))))
    )
    callers.start()
    deadline = time.monotonic() + 10
    while len(batcher._pending) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    gate.set()
    callers.join(20)
    holder.join(20)
    assert forward.sizes == [1, 4]
    assert all(isinstance(result, RuntimeError) and "out of memory" in str(result) for result in results.values())
    assert len(results) == 4
    assert float(batcher.embed(torch.tensor(9.0))[0, 0]) == 9.0


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the worker's own death
def test_a_worker_killed_by_a_base_exception_is_replaced() -> None:
    forward = RecordingForward()
    forward.fail_with = KeyboardInterrupt()
    batcher = QueryBatcher(forward, max_batch=4, max_wait_ms=0, timeout_s=5)
    with pytest.raises(KeyboardInterrupt):
        batcher.embed(torch.tensor(1.0))
    time.sleep(0.1)
    assert float(batcher.embed(torch.tensor(2.0))[0, 0]) == 2.0


def test_a_query_taken_by_a_worker_that_died_falls_back_to_its_own_forward_pass(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    forward = RecordingForward()
    batcher = QueryBatcher(forward, max_batch=4, max_wait_ms=0, timeout_s=10)
    # A worker that takes the query and ends without answering (as one stopped mid-batch would).
    monkeypatch.setattr(batcher, "_run", lambda: batcher._next_batch())
    start = time.monotonic()
    assert float(batcher.embed(torch.tensor(3.0))[0, 0]) == 3.0
    assert time.monotonic() - start < 3  # the liveness check, not the 10 s timeout
    assert forward.threads == {threading.current_thread().name}


def test_a_forward_pass_that_never_returns_times_out() -> None:
    release = threading.Event()

    def stuck(batch: Sequence[torch.Tensor]) -> np.ndarray:
        release.wait(30)
        return np.zeros((len(batch), 2), dtype=np.float32)

    batcher = QueryBatcher(stuck, max_batch=4, max_wait_ms=0, timeout_s=0.6)
    start = time.monotonic()
    try:
        with pytest.raises(BatcherTimeout):
            batcher.embed(torch.tensor(1.0))
        assert time.monotonic() - start < 3
    finally:
        release.set()


def test_batching_off_runs_each_query_in_its_callers_thread() -> None:
    forward = RecordingForward()
    for size in (0, 1):
        batcher = QueryBatcher(forward, max_batch=size, max_wait_ms=5)
        assert not batcher.enabled
        assert float(batcher.embed(torch.tensor(4.0))[0, 0]) == 4.0
    assert forward.threads == {threading.current_thread().name} and forward.sizes == [1, 1]


def test_one_batcher_per_embedder_and_limits(embedder: Embedder) -> None:
    first = batcher_for(embedder, max_batch=8, max_wait_ms=5)
    assert batcher_for(embedder, max_batch=8, max_wait_ms=5) is first
    assert batcher_for(embedder, max_batch=4, max_wait_ms=5) is not first
    assert first.max_batch == 8 and first.max_wait == 0.005
