"""The runtime's bounded publish buffer (``tachograph.transports.BufferedSender``): events leave in
order from one sender thread, a full buffer refuses with a typed error after ``max_block_s``, a
flush waits for delivery and reports what failed, and ``queued`` is what a crash would lose.

``deliver`` is the sender's seam to the platform (HTTP in production): here a function the test
holds shut with a gate, so the buffer's states can be reached on purpose."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import pytest

from tachograph.errors import DeliveryError, PublishBackpressureError
from tachograph.transports import BufferedSender


class Platform:
    """Takes batches in order; ``gate`` closed holds the sender thread inside a delivery."""

    def __init__(self, refuse: dict[str, str] | None = None) -> None:
        self.batches: list[list[str]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.inside = threading.Event()
        self.refuse = refuse or {}

    def deliver(self, batch: Sequence[tuple[str, bytes]]) -> list[tuple[str, str]]:
        self.inside.set()
        assert self.gate.wait(10), "the test never opened the gate"
        self.batches.append([event_id for event_id, _ in batch])
        return [(event_id, self.refuse[event_id]) for event_id, _ in batch if event_id in self.refuse]

    @property
    def delivered(self) -> list[str]:
        return [event_id for batch in self.batches for event_id in batch]


def test_events_leave_in_order_and_a_flush_waits_until_every_one_is_delivered() -> None:
    platform = Platform()
    sender = BufferedSender(platform.deliver, max_batch=3)
    for n in range(10):
        sender.send(f"e{n}", b"{}")
    sender.flush(5)
    assert platform.delivered == [f"e{n}" for n in range(10)]
    assert all(len(b) <= 3 for b in platform.batches)
    assert sender.queued == 0 and sender.delivered == 10
    sender.close()


def test_a_full_buffer_refuses_after_max_block_s_with_a_backpressure_error_saying_why() -> None:
    platform = Platform()
    platform.gate.clear()
    sender = BufferedSender(platform.deliver, max_events=2, max_batch=1, max_block_s=0.3)
    sender.send("e0", b"{}")
    assert platform.inside.wait(5)  # the thread holds e0 inside a delivery
    sender.send("e1", b"{}")
    sender.send("e2", b"{}")  # two queued: the buffer is full
    assert sender.queued == 3  # what a crash now would lose: e0 in flight, e1 and e2 queued
    t0 = time.monotonic()
    with pytest.raises(PublishBackpressureError) as refused:
        sender.send("e3", b"{}")
    waited = time.monotonic() - t0
    assert 0.3 <= waited < 2, waited
    message = str(refused.value)
    assert "publish buffer full for 0.3 s" in message and "2 events" in message
    assert "limits 2 events" in message and "the platform is not taking events" in message
    platform.gate.set()
    sender.flush(5)
    assert platform.delivered == ["e0", "e1", "e2"]  # the refused event was never queued
    sender.close()


def test_a_send_waits_for_room_when_the_buffer_drains_within_max_block_s() -> None:
    platform = Platform()
    platform.gate.clear()
    sender = BufferedSender(platform.deliver, max_events=1, max_batch=1, max_block_s=5)
    sender.send("e0", b"{}")
    assert platform.inside.wait(5)
    sender.send("e1", b"{}")
    threading.Timer(0.2, platform.gate.set).start()
    t0 = time.monotonic()
    sender.send("e2", b"{}")  # blocks until the platform takes e0 and the thread takes e1
    assert 0.15 <= time.monotonic() - t0 < 5
    sender.close(5)
    assert platform.delivered == ["e0", "e1", "e2"]


def test_the_byte_limit_bounds_the_buffer_too() -> None:
    platform = Platform()
    platform.gate.clear()
    sender = BufferedSender(platform.deliver, max_events=100, max_bytes=10, max_batch=1, max_block_s=0.1)
    sender.send("e0", b"x" * 8)
    assert platform.inside.wait(5)
    sender.send("e1", b"x" * 8)
    with pytest.raises(PublishBackpressureError, match="8 bytes queued; limits 100 events / 10 bytes"):
        sender.send("e2", b"x" * 8)
    platform.gate.set()
    sender.close(5)


def test_a_flush_raises_one_delivery_error_naming_each_refused_event_and_why() -> None:
    platform = Platform(refuse={"e1": "quarantined: seq 1 of run r was already used"})
    sender = BufferedSender(platform.deliver)
    for n in range(3):
        sender.send(f"e{n}", b"{}")
    with pytest.raises(DeliveryError) as failed:
        sender.flush(5)
    assert failed.value.failures == [("e1", "quarantined: seq 1 of run r was already used")]
    assert "1 event(s) not delivered: e1: quarantined: seq 1 of run r was already used" in str(failed.value)
    sender.flush(5)  # reported once: the next flush starts clean
    sender.close()


def test_a_flush_that_times_out_says_how_many_events_are_still_waiting() -> None:
    platform = Platform()
    platform.gate.clear()
    sender = BufferedSender(platform.deliver, max_batch=1)
    sender.send("e0", b"{}")
    sender.send("e1", b"{}")
    with pytest.raises(DeliveryError, match=r"2 event\(s\) not delivered within the flush timeout"):
        sender.flush(0.2)
    platform.gate.set()
    sender.close(5)
    assert platform.delivered == ["e0", "e1"]


def test_a_delivery_that_raises_fails_its_batch_and_the_sender_goes_on() -> None:
    calls: list[int] = []

    def deliver(batch: Sequence[tuple[str, bytes]]) -> list[tuple[str, str]]:
        calls.append(len(batch))
        if len(calls) == 1:
            raise ConnectionError("platform unreachable")
        return []

    sender = BufferedSender(deliver, max_batch=1)
    sender.send("e0", b"{}")
    with pytest.raises(DeliveryError, match="e0: ConnectionError: platform unreachable"):
        sender.flush(5)
    sender.send("e1", b"{}")
    sender.flush(5)
    assert sender.delivered == 1
    sender.close()


def test_a_closed_sender_refuses_new_events() -> None:
    sender = BufferedSender(Platform().deliver)
    sender.close()
    with pytest.raises(DeliveryError, match="e9: the transport is closed"):
        sender.send("e9", b"{}")
