"""Capped exponential backoff with full jitter."""

from __future__ import annotations

import random

import pytest

from edge_agent.backoff import BACKOFF_BASE_S, BACKOFF_CAP_S, Backoff


def ceilings(base: float, cap: float, count: int) -> list[float]:
    return [min(cap, base * 2**n) for n in range(count)]


def test_delays_stay_within_the_growing_window():
    backoff = Backoff(0.5, 10.0, random.Random(7))
    for ceiling in ceilings(0.5, 10.0, 40):
        delay = backoff.next_delay()
        assert 0 <= delay <= ceiling


def test_delays_are_full_jitter_over_the_exact_window():
    # same seed, same draws: each delay is uniform(0, min(cap, base * 2**attempt))
    backoff = Backoff(0.25, 30.0, random.Random(42))
    reference = random.Random(42)
    for ceiling in ceilings(0.25, 30.0, 20):
        assert backoff.next_delay() == reference.uniform(0, ceiling)


def test_window_reaches_the_cap_and_stays_there():
    rng = random.Random(1)
    backoff = Backoff(1.0, 8.0, rng)
    delays = [backoff.next_delay() for _ in range(2000)]
    tail = delays[10:]
    assert max(tail) <= 8.0
    assert max(tail) > 7.5  # the window really is the cap, not something narrower
    assert min(delays[:1]) <= 1.0


def test_many_attempts_do_not_overflow():
    backoff = Backoff(0.5, 60.0, random.Random(3))
    for _ in range(2000):
        assert 0 <= backoff.next_delay() <= 60.0


def test_reset_starts_again_from_the_base():
    backoff = Backoff(1.0, 100.0, random.Random(9))
    for _ in range(6):
        backoff.next_delay()
    backoff.reset()
    reference = random.Random(9)
    for _ in range(6):
        reference.uniform(0, 1)  # consume the same draws as before the reset
    for ceiling in ceilings(1.0, 100.0, 5):
        assert backoff.next_delay() == reference.uniform(0, ceiling)


def test_first_delay_after_reset_is_within_the_base():
    backoff = Backoff(2.0, 60.0, random.Random(11))
    for _ in range(10):
        backoff.next_delay()
    for _ in range(200):
        backoff.reset()
        assert backoff.next_delay() <= 2.0


def test_defaults():
    assert 0 < BACKOFF_BASE_S <= BACKOFF_CAP_S
    backoff = Backoff(rng=random.Random(5))
    reference = random.Random(5)
    for ceiling in ceilings(BACKOFF_BASE_S, BACKOFF_CAP_S, 12):
        assert backoff.next_delay() == reference.uniform(0, ceiling)


@pytest.mark.parametrize(("base_s", "cap_s"), [(0, 10), (-1, 10), (5, 4), (0.0, 0.0)])
def test_bad_parameters_are_refused(base_s, cap_s):
    with pytest.raises(ValueError, match="base_s"):
        Backoff(base_s, cap_s)


def test_base_equal_to_cap_is_allowed():
    backoff = Backoff(3.0, 3.0, random.Random(0))
    assert all(0 <= backoff.next_delay() <= 3.0 for _ in range(50))
