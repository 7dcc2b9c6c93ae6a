"""Tests of tailclip.engine.batches.read_ahead: the background reader of cached batches on a GPU."""
import threading
import time

import pytest

from tailclip.engine.batches import SplitBatches, read_ahead


def reader_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "tailclip-read-ahead"]


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_items_come_in_order_whatever_the_depth(depth):
    assert list(read_ahead(iter(range(50)), depth)) == list(range(50))
    assert list(read_ahead([], depth)) == []
    assert not reader_threads()


def test_reads_ahead_in_the_background_up_to_depth():
    read = []

    def source():
        for item in range(10):
            read.append(item)
            yield item

    items = read_ahead(source(), 2)
    assert next(items) == 0
    deadline = time.monotonic() + 5
    while len(read) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)
    # Item 0 taken, items 1 and 2 waiting in the queue, item 3 read and waiting for room.
    assert read == [0, 1, 2, 3]
    items.close()


def test_an_error_of_the_reader_is_raised_in_the_consumer_after_the_items_before_it():
    def failing():
        yield from range(3)
        raise OSError("cache file truncated: /data/cache/train.npy")

    received = []
    with pytest.raises(OSError, match="cache file truncated: /data/cache/train.npy"):
        for item in read_ahead(failing(), 2):
            received.append(item)
    assert received == [0, 1, 2]
    assert not reader_threads()


def test_leaving_the_loop_early_stops_the_reader():
    def endless():
        item = 0
        while True:
            yield item
            item += 1

    items = read_ahead(endless(), 2)
    assert [next(items) for _ in range(3)] == [0, 1, 2]
    assert len(reader_threads()) == 1
    items.close()  # as when a loop over the batches breaks (a stop signal)
    assert not reader_threads()


def test_the_jpeg_path_is_never_read_ahead():
    # Its flips come from torch's global generator as images are read: read ahead, a
    # checkpoint would save a generator state that the batches after it have already used.
    with pytest.raises(ValueError, match="read_ahead needs the decoded-image cache"):
        SplitBatches(loader=None, sampler=None, batch_size=8, cached=False, normalize="clip", train=True,
                     seed=0, read_ahead=2)
