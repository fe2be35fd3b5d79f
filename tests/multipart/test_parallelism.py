"""The adaptive parallelism controller alone, fed synthetic part latencies and rates on a synthetic clock
(issue #22): slow start (x4) while part latency stays flat or the rate gains, settling near the knee when
latency rises with no gain, probing upward after settling, halving on SlowDown, and every bound."""

from __future__ import annotations

import logging
import random
import threading
from types import SimpleNamespace

import pytest

from airflow_mpu_provider.multipart import UploadOptions
from airflow_mpu_provider.multipart.adaptive_parts import adaptive_parts_for
from airflow_mpu_provider.multipart.parallelism import AdaptiveParallelism, PermitGate, start_for_round_trip

MB = 1_000_000
PART = 5 * MB


class Link:
    """A synthetic link driven round by round: a round of ``limit`` parts starts together and each part
    takes ``latency_for(limit)`` seconds (times ``jitter``); they finish one after the other, each reported as
    done and the acknowledged bytes as sent. Parts already in flight when the limit changes finish with the
    latency of their round, as on a real link."""

    def __init__(self, latency_for, controller_kwargs: dict | None = None, *, jitter: float = 0.0, seed: int = 1):
        self.now = 0.0
        self.total = 0
        self.latency_for = latency_for
        self.jitter = jitter
        self.random = random.Random(seed)
        self.controller = AdaptiveParallelism(clock=lambda: self.now, epoch=3.0, **(controller_kwargs or {}))
        self.history: list[int] = []  # the limit after every round

    def run_rounds(self, n: int, *, lumpy_bytes: bool = False) -> list[int]:
        for _ in range(n):
            limit = self.controller.limit
            base = self.latency_for(limit)
            latencies = sorted(base * (1 + self.random.uniform(-self.jitter, self.jitter)) for _ in range(limit))
            started = self.now
            tokens = [self.controller.part_started() for _ in latencies]
            for latency, token in zip(latencies, tokens, strict=True):
                self.now = started + latency
                self.controller.part_done(latency, limit, token)
                # lumpy: the store acknowledges in bursts (here every third part's bytes arrive at once)
                if not lumpy_bytes or self.random.random() < 0.33:
                    self.total += PART * (3 if lumpy_bytes else 1)
                self.controller.sent(self.total)
            self.now = started + max(latencies)
            self.history.append(self.controller.limit)
        return self.history


def flat(seconds: float = 1.0):
    """A lossy link far from full: every part takes its time whatever the count (its own RTT and loss)."""
    return lambda parts: seconds


def full_at(capacity: int, seconds: float = 1.0):
    """A link (or store, or CPU) that carries ``capacity`` parts at ``seconds`` each: more only queue."""
    return lambda parts: seconds * max(1.0, parts / capacity)


def test_grows_while_the_rate_grows_x4_in_slow_start_up_to_max_concurrency():
    link = Link(flat(1.0))  # each part in flight adds its share: the rate grows with the count
    history = link.run_rounds(40)
    assert history[:6] == [8, 8, 32, 32, 32, 64]  # slow start: x4 per observation (3 s and half a count)
    assert link.controller.limit == 64 and max(history) == 64  # up to max_concurrency (the default), never beyond
    assert link.controller.history[1][2].endswith("flat: x4")
    assert link.controller.path() == "8 -> 32 -> 64"


def test_grows_while_latency_stays_flat_though_the_rate_it_sees_is_noisy():
    # A lossy link: each part's latency varies by +-30 %, and acknowledged bytes come in bursts, so an
    # epoch's byte rate jumps around; the parts' median latency stays flat, so the count keeps growing.
    link = Link(flat(17.0), jitter=0.3, seed=7)
    history = link.run_rounds(12, lumpy_bytes=True)
    assert link.controller.limit == 64 and link.controller.path() == "8 -> 32 -> 64"  # as without the noise
    assert history == sorted(history)  # never went back down


def test_grows_while_latency_rises_if_the_rate_still_gains():
    link = Link(lambda parts: 1.0 + parts / 40)  # latency rises with the count, but far less than in proportion
    link.run_rounds(30)
    assert link.controller.limit == 64
    assert any("rising, with gain" in why for _, _, why in link.controller.history)


def test_stops_when_latency_rises_with_no_gain_and_holds_near_the_knee():
    link = Link(full_at(14))  # the link is full at 14 parts: beyond, part latency grows with the count
    history = link.run_rounds(30)
    controller = link.controller
    assert not controller.growing and not controller.slow_start
    # 32 still gained (14 parts' worth against 8), 64 did not: back to what fills the best rate at the
    # lowest latency, 14 x 1.25 = 18 (not 32, the count that measured it), then probes of 4 more, undone
    assert controller.path().startswith("8 -> 32 -> 64 -> 18 -> 22 -> 18")
    assert set(history[5:]) == {18, 22} and history[5:].count(18) > history[5:].count(22)
    assert "rising with no gain: back to 18" in " ".join(why for _, _, why in controller.history)


def test_a_cpu_bound_link_from_the_start_keeps_about_the_starting_count():
    link = Link(full_at(1, seconds=0.05))  # loopback: CPU-bound, more parts only queue
    history = link.run_rounds(300)
    assert max(history) <= 32
    assert history.count(8) > len(history) * 0.6  # holds 8; the rest are short probes to 12 and the first 32
    assert link.controller.limit in (8, 12)


def test_probes_upward_after_settling_and_finds_room_that_appeared():
    link = Link(full_at(14))
    link.run_rounds(30)
    settled = link.controller.limit
    assert settled <= 22
    link.latency_for = full_at(40)  # another upload finished: the link now carries 40 parts
    link.run_rounds(60)
    assert link.controller.probes >= 1
    assert link.controller.limit >= 36  # probed, found flat latency, and grew additively to the new knee


def test_a_probe_that_brings_nothing_is_undone():
    link = Link(full_at(16))
    link.run_rounds(40)
    reasons = [why for _, _, why in link.controller.history]
    assert any("probing upward" in why for why in reasons)
    assert any("the probe brought nothing" in why for why in reasons)
    assert 20 <= link.controller.limit <= 24  # 16 x 1.25, and its probe


def test_backs_off_multiplicatively_on_slowdown_and_never_reaches_the_throttled_count_again():
    link = Link(flat(1.0))
    link.run_rounds(3)
    assert link.controller.limit == 32
    assert link.controller.throttled(in_flight=32) == 16  # halved at once
    assert link.controller.throttled(in_flight=32) == 16  # once an observation, not once per throttled part
    link.run_rounds(60)
    assert link.controller.limit <= 31 and link.controller.ceiling == 31
    assert link.controller.throttles == 2 and link.controller.decreases == 1
    assert not link.controller.slow_start and link.controller.step == 1  # below the ceiling a part at a time


def test_a_throttle_burst_leaves_at_most_what_the_store_took():
    controller = AdaptiveParallelism(clock=lambda: 0.0, start=8)
    # Eight parts sent at once to a store that takes 3: the 4th to 8th are refused, meeting 4 to 8 requests
    # there (themselves included), in whatever order their answers come back.
    after = [controller.throttled(in_flight=level) for level in [6, 8, 4, 5, 7]]
    assert after == [4, 4, 3, 3, 3]  # halved at once; then below the smallest count refused
    assert controller.decreases == 1 and controller.ceiling == 3


def test_repeated_slowdown_converges_at_or_below_the_stores_limit():
    store_limit = 5
    link = Link(flat(1.0))
    for _ in range(60):
        if link.controller.limit > store_limit:
            link.controller.throttled(in_flight=link.controller.limit)
        link.run_rounds(1)
    assert link.controller.limit <= store_limit


def test_backs_off_on_rising_latency_without_gain_once_settled():
    link = Link(full_at(1, seconds=0.05))
    link.run_rounds(40)
    assert not link.controller.growing
    link.controller.probe_every = 1000  # no probes: only the latency rule acts now
    settled = link.controller.limit
    link.latency_for = lambda parts: 4 * 0.05 * parts  # parts now take 4x as long, and the rate is no better
    link.run_rounds(80)
    assert link.controller.limit == int(settled * 0.75)
    assert "risen by half with no gain" in link.controller.reason


@pytest.mark.parametrize(
    ("kwargs", "low", "high"),
    [
        ({"ceiling": 10}, 1, 10),  # max_concurrency
        ({"start": 2, "floor": 2, "ceiling": 3}, 2, 3),
        ({"start": 100, "ceiling": 6}, 1, 6),
    ],
)
def test_respects_every_bound(kwargs, low, high):
    link = Link(flat(1.0), kwargs)
    link.run_rounds(20)
    for _ in range(5):
        link.controller.throttled(in_flight=link.controller.limit)
        link.run_rounds(8)
    assert all(low <= limit <= high for limit in link.history)
    assert low <= link.controller.limit <= high


def test_the_ceiling_a_slowdown_set_holds_through_probes():
    link = Link(flat(1.0), {"ceiling": 40})
    link.run_rounds(12)
    link.controller.throttled(in_flight=20)  # throttled at 20: never 20 again
    link.run_rounds(100)
    assert link.controller.ceiling == 19
    assert max(link.history[12:]) <= 19 and link.controller.limit == 19


def test_the_memory_bound_caps_parts_in_flight():
    # max_buffer_bytes over what a file part in flight holds (one 1 MiB read chunk): 6 MiB -> 6 parts
    options = UploadOptions(max_buffer_bytes=6 * 1024 * 1024)
    client = SimpleNamespace(
        meta=SimpleNamespace(events=SimpleNamespace(register_first=lambda *a, **k: None, register=lambda *a, **k: None))
    )
    parts = adaptive_parts_for(options, 8 * 1024 * 1024, client, threading.Event(), logging.getLogger("t"))
    assert parts is not None and parts.controller.ceiling == 6 and parts.controller.limit == 6
    many = adaptive_parts_for(
        UploadOptions(max_concurrency=12), 8 * 1024 * 1024, client, threading.Event(), logging.getLogger("t")
    )
    assert many is not None and many.controller.ceiling == 12
    assert (
        adaptive_parts_for(
            UploadOptions(concurrency=4), 8 * 1024 * 1024, client, threading.Event(), logging.getLogger("t")
        )
        is None
    )


def test_an_observation_waits_for_half_a_round_of_parts_started_at_the_count():
    now = [0.0]
    controller = AdaptiveParallelism(clock=lambda: now[0], epoch=3.0, start=8)
    now[0] = 10.0
    for _ in range(3):
        controller.part_done(1.0)
    assert controller.sent(100 * MB) == 8  # 10 s but three parts of 8: no latency worth deciding on yet
    controller.part_done(1.0)
    assert controller.sent(100 * MB) == 32  # four of 8, flat (the first observation): slow start, x4
    now[0] = 20.0
    for _ in range(8):
        controller.part_done(15.0)  # started at 5 s, before the count became 32: says nothing about 32
    assert controller.sent(200 * MB) == 32 and controller.history[-1][1] == 32
    for _ in range(15):
        controller.part_done(1.0)
    assert controller.sent(250 * MB) == 32  # 15 of 32 started at 32: not yet
    controller.part_done(1.0)
    assert controller.sent(300 * MB) == 64


def test_parts_still_in_flight_count_with_their_age_not_only_the_fastest_that_finished():
    now = [0.0]
    controller = AdaptiveParallelism(clock=lambda: now[0], epoch=3.0, start=8)
    tokens = [controller.part_started() for _ in range(8)]
    now[0] = 10.0
    for token in tokens:
        controller.part_done(10.0, 8, token)
    assert controller.sent(1) == 32  # the first observation: 10 s a part, the lowest so far; x4
    started = now[0]
    tokens = [controller.part_started() for _ in range(32)]
    now[0] = started + 40
    for token in tokens[:16]:  # half of them answered fast (6 s); the other half are still in flight at 40 s
        controller.part_done(6.0, 32, token)
    assert controller.sent(2) == 8  # median 40 s: 4x the latency for the same n / L, so back to 8
    assert "rising with no gain" in controller.reason  # the 16 fast ones alone (6 s) would have gone to 64


@pytest.mark.parametrize(
    ("seconds", "bound", "start"),
    [
        (None, 64, 8),  # nothing measured: the default start
        (0.002, 64, 8),  # loopback
        (0.025, 64, 8),  # a region link (10 ms RTT, a new connection)
        (0.045, 64, 16),
        (0.130, 64, 40),  # cross (60 ms RTT)
        (0.165, 64, 56),  # branch (80 ms RTT)
        (0.400, 64, 64),  # never past the bound (max_concurrency, max_buffer_bytes)
        (0.400, 6, 6),
        (0.002, 4, 4),
    ],
)
def test_the_start_grows_with_the_stores_round_trip(seconds, bound, start):
    assert start_for_round_trip(seconds, bound) == start


def test_the_start_changes_only_before_any_part():
    controller = AdaptiveParallelism(clock=lambda: 0.0, ceiling=40)
    assert controller.begin_at(56, "the store answered in 165 ms") == 40  # within the bounds
    assert controller.history[-1] == (0.0, 40, "the store answered in 165 ms")
    controller.part_started()
    assert controller.begin_at(8, "too late") == 40 and controller.reason != "too late"


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
