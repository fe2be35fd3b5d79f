"""The adaptive parallelism controller alone, fed synthetic rates on a synthetic clock (issue #22)."""

from __future__ import annotations

import threading

import pytest

from airflow_mpu_provider.multipart.parallelism import AdaptiveParallelism, PermitGate

MB = 1_000_000


class Link:
    """A synthetic link: ``rate_for(parts in flight)`` bytes/s; drives the controller epoch by epoch."""

    def __init__(self, controller_kwargs: dict | None = None, rate_for=None) -> None:
        self.now = 0.0
        self.total = 0
        self.controller = AdaptiveParallelism(clock=lambda: self.now, epoch=3.0, **(controller_kwargs or {}))
        self.rate_for = rate_for
        self.history: list[int] = []

    def run_epochs(self, n: int, latency_for=lambda limit: 1.0) -> list[int]:
        for _ in range(n):
            limit = self.controller.limit
            for _ in range(3):  # three reports per epoch, a second apart
                self.now += 1.0
                self.total += int(self.rate_for(limit))
                for _ in range(limit):  # a round of parts a second
                    self.controller.part_done(latency_for(limit))
                self.controller.sent(self.total)
            self.history.append(self.controller.limit)
        return self.history


def per_connection(rate: float, cap: float):
    """Each part in flight gets ``rate`` until the link's ``cap``."""
    return lambda parts: min(parts * rate, cap)


def test_grows_while_the_rate_grows():
    link = Link(rate_for=per_connection(1 * MB, 1000 * MB))  # a lossy link: every part adds its share
    history = link.run_epochs(20)
    assert history[:4] == [12, 16, 20, 24]  # additive increase, a step an epoch
    assert link.controller.limit == 64  # up to max_concurrency (the default ceiling), never beyond
    assert max(history) == 64


def test_stops_and_holds_when_the_rate_flattens():
    link = Link(rate_for=per_connection(1 * MB, 14 * MB))  # the link is full at 14 parts
    history = link.run_epochs(12)
    assert not link.controller.growing
    assert 12 <= link.controller.limit <= 16  # the smallest count that gave the full rate (+ at most a step)
    assert set(history[-6:]) == {link.controller.limit}  # settled: it holds


def test_a_flat_link_from_the_start_keeps_the_starting_count():
    link = Link(rate_for=lambda parts: 50 * MB)  # loopback: CPU-bound, more parts add nothing
    link.run_epochs(8)
    assert link.controller.limit == 8 and not link.controller.growing


def test_backs_off_multiplicatively_on_slowdown_and_never_reaches_the_throttled_count_again():
    link = Link(rate_for=per_connection(1 * MB, 1000 * MB))
    link.run_epochs(4)
    assert link.controller.limit == 24
    assert link.controller.throttled(in_flight=24) == 12  # halved at once
    assert link.controller.throttled(in_flight=24) == 12  # once per epoch, not once per throttled part
    link.run_epochs(30)
    assert link.controller.limit <= 23 and link.controller.ceiling == 23
    assert link.controller.throttles == 2 and link.controller.decreases == 1


def test_repeated_slowdown_converges_at_or_below_the_stores_limit():
    store_limit = 5
    link = Link(rate_for=per_connection(1 * MB, 1000 * MB))
    for _ in range(40):
        if link.controller.limit > store_limit:
            link.controller.throttled(in_flight=link.controller.limit)
        link.run_epochs(1)
    assert link.controller.limit <= store_limit


def test_backs_off_on_rising_latency_without_gain():
    link = Link(rate_for=lambda parts: 50 * MB)
    link.run_epochs(3)
    settled = link.controller.limit
    link.run_epochs(2, latency_for=lambda limit: 4.0)  # parts now take 4x as long, and the rate is no better
    assert link.controller.limit == int(settled * 0.75)


@pytest.mark.parametrize(
    ("kwargs", "low", "high"),
    [({"ceiling": 10}, 1, 10), ({"start": 2, "floor": 2, "ceiling": 3}, 2, 3), ({"start": 100, "ceiling": 6}, 1, 6)],
)
def test_respects_every_bound(kwargs, low, high):
    link = Link(kwargs, rate_for=per_connection(1 * MB, 1000 * MB))
    link.run_epochs(10)
    for _ in range(5):
        link.controller.throttled(in_flight=link.controller.limit)
        link.run_epochs(2)
    assert all(low <= limit <= high for limit in link.history)
    assert low <= link.controller.limit <= high


def test_an_epoch_waits_for_half_a_round_of_parts():
    now = [0.0]
    controller = AdaptiveParallelism(clock=lambda: now[0], epoch=3.0, start=8)
    now[0] = 10.0
    controller.part_done(1.0)
    assert controller.sent(100 * MB) == 8  # 10 s but one part: no rate worth deciding on yet
    for _ in range(3):
        controller.part_done(1.0)
    assert controller.sent(100 * MB) == 12


def test_bounds_are_checked():
    with pytest.raises(ValueError, match="floor"):
        AdaptiveParallelism(floor=5, ceiling=4)


def test_permit_gate_follows_a_limit_that_changes_at_runtime():
    limit = [2]
    gate = PermitGate(lambda: limit[0])
    assert gate.acquire() and gate.acquire()
    third = threading.Thread(target=gate.acquire)
    third.start()
    third.join(0.5)
    assert third.is_alive() and gate.in_flight == 2  # held back at the limit
    limit[0] = 3
    gate.wake()
    third.join(30)
    assert not third.is_alive() and gate.in_flight == 3 and gate.most_in_flight == 3
    stop = threading.Event()
    stop.set()
    assert PermitGate(lambda: 1, stop).acquire() is True  # room: a stop does not refuse a free permit
    full = PermitGate(lambda: 1, stop)
    full.acquire()
    assert full.acquire() is False  # no room and stopped: give up instead of waiting
