from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from coldchain.messages import Quality, Quantity, Reading, TelemetryBatch
from hub.detectors.base import series_runs
from hub.schema import ROLLUP_BUCKET_MS
from hub.series_fold import SeriesFold

T0 = 1_772_323_200_000 - 1_000  # a second before a bucket starts: runs straddle buckets


def folded_reading_by_reading(batches: list[TelemetryBatch]) -> tuple[set[tuple[object, ...]], set[tuple[object, ...]]]:
    """What the database's own row-by-row upserts make of the readings, in commit order."""
    rollups: dict[tuple[str, str, str, int], list[float]] = {}
    latest: dict[tuple[str, str, str], tuple[int, float, str]] = {}
    for batch in batches:
        for r in batch.readings:
            key = (batch.gateway_id, r.quantity.value, r.sensor_id, r.ts_ms - r.ts_ms % ROLLUP_BUCKET_MS)
            low, high, total, samples = rollups.get(key, [r.value, r.value, 0.0, 0])
            rollups[key] = [min(low, r.value), max(high, r.value), total + r.value, samples + 1]
            series = (batch.gateway_id, r.sensor_id, r.quantity.value)
            if series not in latest or r.ts_ms >= latest[series][0]:
                latest[series] = (r.ts_ms, r.value, r.quality.value)
    return (
        {
            (*key[:2], key[2], key[3], round(lo, 9), round(hi, 9), round(s, 6), n)
            for key, (lo, hi, s, n) in rollups.items()
        },
        {(*series, *row) for series, row in latest.items()},
    )


def fold_of(batches: list[TelemetryBatch]) -> SeriesFold:
    """As ingest folds a group: batch by batch, each grouped by series."""
    fold = SeriesFold()
    for batch in batches:
        fold.add(batch.gateway_id, batch.seq, series_runs(batch.readings))
    return fold


def rounded(fold: SeriesFold) -> set[tuple[object, ...]]:
    return {
        (g, q, s, b, round(lo, 9), round(hi, 9), round(total, 6), n)
        for g, q, s, b, lo, hi, total, n in fold.rollup_rows()
    }


readings = st.builds(
    Reading,
    sensor_id=st.sampled_from(["p1", "p2"]),
    quantity=st.sampled_from(list(Quantity)),
    # Out of order, repeated times and several buckets: the slow path and the tie rule.
    ts_ms=st.integers(T0, T0 + 3 * ROLLUP_BUCKET_MS).map(lambda ts: ts - ts % 500),
    value=st.floats(0, 60, allow_nan=False).map(lambda v: round(v, 1)),
    quality=st.sampled_from(list(Quality)),
)
batches = st.lists(
    st.builds(
        TelemetryBatch,
        gateway_id=st.sampled_from(["gw-a", "gw-b"]),
        boot_id=st.just("boot"),
        seq=st.just(1),
        oldest_held_seq=st.just(1),
        readings=st.lists(readings, max_size=40),
    ),
    max_size=6,
)


@settings(max_examples=300)
@given(batches)
def test_fold_of_runs_equals_folding_reading_by_reading(group: list[TelemetryBatch]) -> None:
    fold = fold_of(group)
    expected_rollups, expected_latest = folded_reading_by_reading(group)
    assert rounded(fold) == expected_rollups
    assert set(fold.latest_rows()) == expected_latest


def test_of_two_readings_at_the_newest_time_the_later_is_latest_and_a_run_across_buckets_splits() -> None:
    bucket = T0 + 1_000  # where a bucket starts
    run = [
        Reading("p1", Quantity.TEMPERATURE, bucket - 2_000, 1.0),
        Reading("p1", Quantity.TEMPERATURE, bucket + 5_000, 7.0, Quality.SUSPECT),
        Reading("p1", Quantity.TEMPERATURE, bucket + 5_000, 6.0),
        Reading("p1", Quantity.TEMPERATURE, bucket + 1_000, 2.0),
    ]
    fold = fold_of([TelemetryBatch("gw-a", "boot", 1, 1, run)])
    assert fold.latest_rows() == [("gw-a", "p1", "temperature", bucket + 5_000, 6.0, "good")]
    assert sorted(fold.rollup_rows()) == [
        ("gw-a", "temperature", "p1", bucket - ROLLUP_BUCKET_MS, 1.0, 1.0, 1.0, 1),
        ("gw-a", "temperature", "p1", bucket, 2.0, 7.0, 15.0, 3),
    ]
    # A later batch's older reading does not replace the latest; its bucket adds up.
    fold.add("gw-a", 2, {("p1", Quantity.TEMPERATURE): [Reading("p1", Quantity.TEMPERATURE, bucket + 4_000, 9.0)]})
    assert fold.latest_rows() == [("gw-a", "p1", "temperature", bucket + 5_000, 6.0, "good")]
    assert ("gw-a", "temperature", "p1", bucket, 2.0, 9.0, 24.0, 4) in fold.rollup_rows()
