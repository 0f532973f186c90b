"""Remotely changeable runtime settings, their atomic store, and the uplink's token bucket."""

from __future__ import annotations

import msgspec
import pytest

from coldchain.messages import SetCustodyMode, SetProductRange, SetSamplingInterval, TagAction
from edge_agent.settings import RuntimeSettings, SettingsStore
from edge_agent.uplink import TokenBucket

DEFAULTS = RuntimeSettings(interval_s=5.0, low_c=2.0, high_c=8.0, custody_mode=TagAction.OBSERVE)


class Clock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------------------------------------
# RuntimeSettings
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (SetSamplingInterval(interval_s=0.5), {"interval_s": 0.5}),
        (SetProductRange(low_c=-20.0, high_c=-15.0), {"low_c": -20.0, "high_c": -15.0}),
        (SetCustodyMode(mode=TagAction.PICKUP), {"custody_mode": TagAction.PICKUP}),
        (SetCustodyMode(mode=TagAction.DELIVERY), {"custody_mode": TagAction.DELIVERY}),
    ],
    ids=["interval", "range", "pickup", "delivery"],
)
def test_applied_changes_one_thing_and_bumps_the_version(change, expected):
    updated = DEFAULTS.applied(change)
    assert updated == msgspec.structs.replace(DEFAULTS, **expected, version=1)
    assert DEFAULTS.version == 0  # the original is untouched
    assert DEFAULTS.interval_s == 5.0


def test_versions_count_every_applied_change():
    settings = DEFAULTS
    changes = [
        SetSamplingInterval(interval_s=10.0),
        SetProductRange(low_c=0.0, high_c=4.0),
        SetCustodyMode(mode=TagAction.DELIVERY),
        SetSamplingInterval(interval_s=10.0),  # the same value again is still a change applied
    ]
    for change in changes:
        settings = settings.applied(change)
    assert settings == RuntimeSettings(
        interval_s=10.0, low_c=0.0, high_c=4.0, custody_mode=TagAction.DELIVERY, version=4
    )


def test_a_range_can_be_set_on_settings_without_one():
    settings = RuntimeSettings(interval_s=5.0, low_c=None, high_c=None, custody_mode=TagAction.OBSERVE)
    updated = settings.applied(SetProductRange(low_c=2.0, high_c=8.0))
    assert (updated.low_c, updated.high_c, updated.version) == (2.0, 8.0, 1)


# ---------------------------------------------------------------------------------------------
# SettingsStore
# ---------------------------------------------------------------------------------------------


def test_store_round_trip(tmp_path):
    store = SettingsStore(tmp_path / "state" / "settings.json")  # the folder is created
    changed = DEFAULTS.applied(SetProductRange(low_c=-20.0, high_c=-15.0)).applied(
        SetCustodyMode(mode=TagAction.PICKUP)
    )
    store.save(changed)
    assert store.load(DEFAULTS) == changed
    assert SettingsStore(tmp_path / "state" / "settings.json").load(DEFAULTS) == changed  # a restart


def test_store_round_trip_without_a_range(tmp_path):
    store = SettingsStore(tmp_path / "settings.json")
    settings = RuntimeSettings(interval_s=1.5, low_c=None, high_c=None, custody_mode=TagAction.OBSERVE, version=3)
    store.save(settings)
    assert store.load(DEFAULTS) == settings


def test_save_overwrites(tmp_path):
    store = SettingsStore(tmp_path / "settings.json")
    first = DEFAULTS.applied(SetSamplingInterval(interval_s=2.0))
    second = first.applied(SetSamplingInterval(interval_s=3.0))
    store.save(first)
    store.save(second)
    assert store.load(DEFAULTS) == second


def test_missing_file_gives_the_defaults(tmp_path):
    assert SettingsStore(tmp_path / "nowhere" / "settings.json").load(DEFAULTS) is DEFAULTS


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{not json",
        b'{"interval_s": 5.0, "low_c": 2.0',  # half a file
        b"[1, 2, 3]",
        b'{"interval_s": "fast", "low_c": 2.0, "high_c": 8.0, "custody_mode": "observe"}',
        b'{"interval_s": 5.0, "low_c": 2.0, "high_c": 8.0, "custody_mode": "teleport"}',
        b'{"interval_s": 5.0, "low_c": 2.0, "high_c": 8.0, "custody_mode": "observe", "extra": 1}',
        b"\xff\xfe\x00garbage",
    ],
    ids=["empty", "not-json", "truncated", "wrong-shape", "wrong-type", "bad-enum", "unknown-field", "binary"],
)
def test_corrupt_file_gives_the_defaults(tmp_path, content):
    path = tmp_path / "settings.json"
    path.write_bytes(content)
    assert SettingsStore(path).load(DEFAULTS) is DEFAULTS


def test_a_directory_in_the_way_gives_the_defaults(tmp_path):
    path = tmp_path / "settings.json"
    path.mkdir()
    assert SettingsStore(path).load(DEFAULTS) is DEFAULTS


def test_save_is_atomic_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "settings.json"
    store = SettingsStore(path)
    for i in range(3):
        store.save(DEFAULTS.applied(SetSamplingInterval(interval_s=float(i + 1))))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["settings.json"]
    assert msgspec.json.decode(path.read_bytes(), type=RuntimeSettings).interval_s == 3.0


def test_a_leftover_temporary_file_from_a_crash_is_ignored_and_replaced(tmp_path):
    path = tmp_path / "settings.json"
    store = SettingsStore(path)
    saved = DEFAULTS.applied(SetSamplingInterval(interval_s=9.0))
    store.save(saved)
    (tmp_path / "settings.tmp").write_bytes(b'{"interval_s": 1')  # a crash mid-write
    assert store.load(DEFAULTS) == saved  # the old file stands
    store.save(saved.applied(SetSamplingInterval(interval_s=2.0)))
    assert store.load(DEFAULTS).interval_s == 2.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["settings.json"]


# ---------------------------------------------------------------------------------------------
# TokenBucket
# ---------------------------------------------------------------------------------------------


def test_bucket_starts_full_and_grants_the_burst():
    bucket = TokenBucket(rate=2.0, burst=5, monotonic=Clock())
    assert bucket.take(3) == 3
    assert bucket.take(10) == 2
    assert bucket.take(1) == 0
    assert bucket.take(0) == 0


def test_bucket_refills_at_the_rate():
    clock = Clock()
    bucket = TokenBucket(rate=2.0, burst=5, monotonic=clock)
    assert bucket.take(5) == 5
    clock.now += 0.25  # half a token
    assert bucket.take(1) == 0
    clock.now += 0.25  # one whole token now, the half above was not lost
    assert bucket.take(5) == 1
    clock.now += 1.0
    assert bucket.take(5) == 2
    clock.now += 1.9
    assert bucket.take(5) == 3  # 3.8 tokens


def test_bucket_never_holds_more_than_the_burst():
    clock = Clock()
    bucket = TokenBucket(rate=10.0, burst=4, monotonic=clock)
    clock.now += 3600
    assert bucket.take(1000) == 4
    assert bucket.take(1) == 0
    clock.now += 3600
    assert bucket.take(2) == 2
    clock.now += 3600
    assert bucket.take(1000) == 4  # still capped after a partial take


def test_bucket_long_run_rate():
    clock = Clock()
    bucket = TokenBucket(rate=50.0, burst=10, monotonic=clock)
    granted = 0
    for _ in range(1000):
        clock.now += 0.01
        granted += bucket.take(100)
    # 10 s at 50 per second plus the initial burst
    assert 10 + 500 - 1 <= granted <= 10 + 500


def test_bucket_with_fractional_rate():
    clock = Clock()
    bucket = TokenBucket(rate=0.5, burst=1, monotonic=clock)
    assert bucket.take(1) == 1
    clock.now += 1.0
    assert bucket.take(1) == 0
    clock.now += 1.0
    assert bucket.take(1) == 1
