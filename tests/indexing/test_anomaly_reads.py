"""The anomaly steps of a build read their photos a chunk ahead, many at once
(indexing.services._read_ahead), and extract features in batches that survive a bad photo."""

from __future__ import annotations

import threading
import time

from indexing import services
from indexing.runtime import current_patch_extractor
from tests.helpers import surface_photo


def test_reads_come_back_in_order_with_failures_in_place():
    def read(number: int) -> bytes:
        if number % 7 == 3:
            raise FileNotFoundError(f"photo {number}")
        return str(number).encode()

    chunks = list(services._read_ahead(list(range(40)), read))
    assert [len(chunk) for chunk in chunks] == [16, 16, 8]
    flat = [pair for chunk in chunks for pair in chunk]
    assert [item for item, _ in flat] == list(range(40))
    for item, data in flat:
        if item % 7 == 3:
            assert isinstance(data, FileNotFoundError) and str(item) in str(data)
        else:
            assert data == str(item).encode()
    assert list(services._read_ahead([], read)) == []


def test_reads_run_side_by_side_and_a_chunk_ahead_of_the_caller():
    """Object storage answers each GET after a round trip: eight reads wait for each other at a
    barrier (one at a time, they would time out), and the next chunk is read while the caller is
    still busy with the first."""
    together = threading.Barrier(services.ANOMALY_READ_THREADS, timeout=10)
    next_chunk_read = threading.Event()

    def read(number: int) -> bytes:
        if number < services.ANOMALY_READ_THREADS:
            together.wait()
        if number >= services.ANOMALY_READ_CHUNK:
            next_chunk_read.set()
        return b"x"

    chunks = services._read_ahead(list(range(2 * services.ANOMALY_READ_CHUNK)), read)
    first = next(chunks)
    assert all(data == b"x" for _, data in first)
    assert next_chunk_read.wait(10)  # read while this caller had not asked for the second chunk yet
    assert all(data == b"x" for _, data in next(chunks))


def test_patch_features_leave_out_only_the_photos_that_do_not_decode(settings):
    settings.SIMSEARCH_ANOMALY_INPUT_SIZE = 64
    extractor = current_patch_extractor()
    photos = [surface_photo(1), b"not a photo", surface_photo(2), b"\xff\xd8 broken jpeg", surface_photo(3)]
    features = services._patch_features(extractor, photos)
    assert [f is None for f in features] == [False, True, False, True, False]
    alone = extractor.extract([photos[2]])[0]  # in its place: photo 2's features, not a neighbour's

    def off(a, b):  # type: ignore[no-untyped-def]
        return float(abs(a - b).mean() / abs(b).mean())

    assert features[2].shape == alone.shape and off(features[2], alone) < 0.01 < off(features[0], alone)


def test_a_caller_that_stops_early_does_not_wait_for_reads_nobody_will_use():
    """A build that fails on the first chunk (a normal gone) closes the reader: the reads of the
    next chunk that have not started are dropped, the running ones finish."""
    started = []
    lock = threading.Lock()

    def read(number: int) -> bytes:
        with lock:
            started.append(number)
        if number >= services.ANOMALY_READ_CHUNK:
            time.sleep(0.2)  # a slow GET
        return b"x"

    chunks = services._read_ahead(list(range(2 * services.ANOMALY_READ_CHUNK)), read)
    next(chunks)
    chunks.close()
    assert len(started) <= services.ANOMALY_READ_CHUNK + services.ANOMALY_READ_THREADS
