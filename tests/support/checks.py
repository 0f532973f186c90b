"""Assertions shared by the integration tests: the store is exact, the agent stopped clean."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from tests.support.hub import Hub
from tests.support.processes import Child

STOPPED = re.compile(r"(\d+) items sampled, receipted through seq (\d+), (\d+) batches \((\d+) items\) kept on disk")


def wait_until(condition: Callable[[], bool], timeout_s: float, message: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.1)


def stop_agent(agent: Child) -> tuple[int, int]:
    """Stop the agent cleanly; return (readings sampled, last receipted seq) from its final log line."""
    assert agent.terminate() == 0, agent.log()
    match = STOPPED.findall(agent.log())
    assert match, agent.log()
    sampled, acked, unreceipted_batches, _ = (int(x) for x in match[-1])
    assert unreceipted_batches == 0, agent.log()
    return sampled, acked


def assert_store_exact(hub: Hub, gateway_id: str, sampled: int, last_seq: int) -> None:
    """Every batch up to last_seq stored once, every sampled reading stored once, nothing else, in order."""
    seqs = [row[0] for row in hub.query("SELECT seq FROM batches WHERE gateway_id = ? ORDER BY seq", gateway_id)]
    assert seqs == list(range(seqs[0], last_seq + 1))  # a new buffer seeds its first seq from the clock
    assert hub.scalar("SELECT count(*) FROM series_readings WHERE gateway_id = ?", gateway_id) == sampled
    assert hub.scalar("SELECT sum(reading_count) FROM batches WHERE gateway_id = ?", gateway_id) == sampled
    doubled = hub.scalar(
        "SELECT count(*) FROM (SELECT 1 FROM series_readings GROUP BY sensor_id, quantity, ts_ms"
        " HAVING count(*) > 1) AS d"
    )
    assert doubled == 0
    assert hub.scalar("SELECT acked_seq FROM gateways WHERE gateway_id = ?", gateway_id) == last_seq
    assert hub.scalar("SELECT count(*) FROM gaps") == 0
    # in order: taken in seq order, each sensor's timestamps only go forward
    backwards = hub.scalar(
        "SELECT count(*) FROM (SELECT ts_ms < lag(ts_ms) OVER (PARTITION BY sensor_id, quantity ORDER BY seq, id)"
        " AS back FROM series_readings WHERE gateway_id = ?) AS b WHERE back",
        gateway_id,
    )
    assert backwards == 0


def kill_hub_twice_mid_stream(hub: Hub, agent: Child) -> None:
    """SIGKILL the hub twice while the agent streams (after 15 and 30 batches), restart it, then let the
    stream resume and stop the agent; the store must then hold exactly what was sampled."""
    for round_ in range(2):
        target = 15 * (round_ + 1)
        wait_until(lambda t=target: hub.scalar("SELECT count(*) FROM batches") >= t, 30, "stream too slow")
        hub.child.kill()
        time.sleep(2)
        hub.start()
    wait_until(lambda: hub.scalar("SELECT count(*) FROM batches") >= 40, 30, "stream did not resume")
    sampled, last_seq = stop_agent(agent)
    assert_store_exact(hub, "gw-test-1", sampled, last_seq)
