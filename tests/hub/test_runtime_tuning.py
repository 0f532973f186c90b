from __future__ import annotations

import gc
import sys
from collections.abc import Iterator

import pytest

from coldchain.messages import GpsFix, Quantity, Reading, TagRead
from hub.runtime import GC_YOUNG_THRESHOLD, GIL_SWITCH_INTERVAL_S, tune_interpreter_for_ingest


@pytest.fixture
def restored_interpreter() -> Iterator[None]:
    threshold = gc.get_threshold()
    switch_interval = sys.getswitchinterval()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)
    sys.setswitchinterval(switch_interval)


def test_tuning_freezes_what_exists_raises_the_young_threshold_and_shortens_the_switch_interval(
    restored_interpreter: None,
) -> None:
    _, middle, oldest = gc.get_threshold()
    tune_interpreter_for_ingest()
    assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, middle, oldest)
    assert gc.get_freeze_count() > 10_000  # the imported modules and their functions, at least
    assert sys.getswitchinterval() == pytest.approx(GIL_SWITCH_INTERVAL_S)
    assert GIL_SWITCH_INTERVAL_S < 0.005  # CPython's default


def test_wire_items_are_not_tracked_by_the_collector() -> None:
    """Scalars only, so they cannot be part of a cycle: ingest creates millions of them."""
    items = [
        Reading("p1", Quantity.TEMPERATURE, 1_772_323_200_000, 3.0),
        TagRead("r1", "3034257bf400b7800004cb2f", None, 1_772_323_200_000),
        GpsFix("gps", 1_772_323_200_000, None, 30.0, 120.0, 1),
    ]
    assert not any(gc.is_tracked(item) for item in items)
