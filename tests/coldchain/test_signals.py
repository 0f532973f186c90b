from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from coldchain.signals import WAIT_SLICE_S, StopRequest


@pytest.fixture
def restored_handlers() -> Iterator[None]:
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def test_wait_times_out_without_a_request(restored_handlers: None) -> None:
    stop = StopRequest()
    stop.install()
    began = time.monotonic()
    assert stop.wait(0.25) is False
    assert time.monotonic() - began >= 0.25


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_landing_at_any_moment_of_a_wait_are_seen_within_a_slice(
    restored_handlers: None, sig: signal.Signals
) -> None:
    """Many signals at random moments: the handler takes no lock, so none can hang the waiting thread."""
    rng = random.Random(sig)
    for _ in range(30):
        stop = StopRequest()
        stop.install()
        delay = rng.uniform(0.0, 0.03)
        sender = threading.Timer(delay, os.kill, (os.getpid(), sig))
        sender.start()
        began = time.monotonic()
        assert stop.wait(5.0) is True
        assert time.monotonic() - began < delay + WAIT_SLICE_S + 0.5
        sender.join()


def test_set_ends_a_wait_without_a_signal() -> None:
    stop = StopRequest()
    threading.Timer(0.05, stop.set).start()
    assert stop.wait(5.0) is True
