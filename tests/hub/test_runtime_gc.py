from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from coldchain.messages import GpsFix, Quantity, Reading, TagRead
from hub.runtime import GC_YOUNG_THRESHOLD, tune_garbage_collector


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_tuning_freezes_what_exists_and_raises_the_young_threshold(restored_gc: None) -> None:
    _, middle, oldest = gc.get_threshold()
    tune_garbage_collector()
    assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, middle, oldest)
    assert gc.get_freeze_count() > 10_000  # the imported modules and their functions, at least


def test_wire_items_are_not_tracked_by_the_collector() -> None:
    """Scalars only, so they cannot be part of a cycle: ingest creates millions of them."""
    items = [
        Reading("p1", Quantity.TEMPERATURE, 1_772_323_200_000, 3.0),
        TagRead("r1", "3034257bf400b7800004cb2f", None, 1_772_323_200_000),
        GpsFix("gps", 1_772_323_200_000, None, 30.0, 120.0, 1),
    ]
    assert not any(gc.is_tracked(item) for item in items)
