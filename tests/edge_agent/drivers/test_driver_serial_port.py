"""ReopeningSerial: failures are counted and absorbed, and the port comes back after a capped backoff."""

from __future__ import annotations

import itertools

import pytest

from edge_agent.drivers.serial_port import ReopeningSerial, silent_interval_s


def echo(request: bytes) -> bytes:
    return request


def make_port(factory, clock, **kwargs) -> ReopeningSerial:
    return ReopeningSerial("/dev/ttyUSB0", 9600, serial_factory=factory, monotonic=clock, sleep=clock.sleep, **kwargs)


def test_silent_interval_is_three_and_a_half_characters_up_to_19200_baud() -> None:
    assert silent_interval_s(9600) == pytest.approx(3.5 * 11 / 9600)
    assert silent_interval_s(19200) == pytest.approx(3.5 * 11 / 19200)
    assert silent_interval_s(115200) == 0.00175


def test_opens_lazily_and_exchanges(make_factory, clock) -> None:
    factory = make_factory(echo)
    port = make_port(factory, clock)
    assert factory.attempts == 0
    assert not port.is_open
    assert port.send(b"\x01\x02")
    assert port.read(0.1) == b"\x01\x02"
    assert port.read(0.1) == b""
    assert port.counters == {"serial_error": 0, "reopen": 0}


def test_stale_input_is_flushed_before_the_request(make_factory, clock) -> None:
    factory = make_factory(echo)
    port = make_port(factory, clock)
    assert port.send(b"first")
    factory.opened[0].inject(b"late answer")
    assert port.send(b"second")
    assert factory.opened[0].calls[-2:] == ["reset_input_buffer", "write"]
    assert port.read(0.1) == b"second"


def test_requests_keep_the_inter_frame_silence(make_factory, clock) -> None:
    port = make_port(make_factory(echo), clock)
    assert port.send(b"a")
    start = clock.now
    assert port.send(b"b")
    assert clock.now - start == pytest.approx(silent_interval_s(9600))


def test_open_failures_back_off_doubling_up_to_the_cap(make_factory, clock) -> None:
    factory = make_factory(echo, failures=10)
    port = make_port(factory, clock, open_backoff_s=1.0, max_open_backoff_s=4.0)
    attempt_times = []
    for _ in range(200):
        before = factory.attempts
        port.send(b"x")
        if factory.attempts > before:
            attempt_times.append(clock.now)
        clock.sleep(0.25)
    gaps = [later - earlier for earlier, later in itertools.pairwise(attempt_times)]
    assert gaps[:5] == pytest.approx([1.0, 2.0, 4.0, 4.0, 4.0])
    assert port.is_open
    assert port.counters == {"serial_error": 10, "reopen": 0}


@pytest.mark.parametrize("failing_call", ["write", "reset_input_buffer", "read"])
def test_a_vanishing_device_is_closed_counted_and_reopened(make_factory, clock, failing_call: str) -> None:
    factory = make_factory(echo)
    port = make_port(factory, clock, open_backoff_s=0.5)
    assert port.send(b"ok")
    assert port.read(0.1) == b"ok"
    factory.opened[0].fail_on = failing_call
    port.send(b"lost")
    port.read(0.1)
    assert not port.is_open
    assert factory.opened[0].closed
    assert port.counters == {"serial_error": 1, "reopen": 0}
    assert not port.send(b"too early"), "still backing off"
    clock.sleep(0.5)
    assert port.send(b"back")
    assert port.read(0.1) == b"back"
    assert len(factory.opened) == 2
    assert port.counters == {"serial_error": 1, "reopen": 1}


def test_close_then_send_opens_again(make_factory, clock) -> None:
    factory = make_factory(echo)
    port = make_port(factory, clock)
    assert port.send(b"a")
    port.close()
    assert not port.is_open
    assert port.read(0.1) == b""
    assert port.send(b"b")
    assert len(factory.opened) == 2
