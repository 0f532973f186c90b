"""The thermal model: determinism, convergence, doors and cooling failures."""

from __future__ import annotations

import math

import pytest

from firmware_sims.thermal import DOOR_OPEN_RH, ThermalModel


def _series(model: ThermalModel, times: range) -> list[tuple[float, float]]:
    return [model.sample(float(t)) for t in times]


def test_same_seed_same_readings_other_seed_other_readings() -> None:
    times = range(0, 7200, 30)
    first = _series(ThermalModel(seed=7, door_rate_per_hour=4.0), times)
    again = _series(ThermalModel(seed=7, door_rate_per_hour=4.0), times)
    other = _series(ThermalModel(seed=8, door_rate_per_hour=4.0), times)
    assert first == again
    assert first != other


def test_noise_has_the_requested_spread() -> None:
    model = ThermalModel(noise_c=0.5)
    temps = [model.sample(float(t))[0] for t in range(2000)]
    mean = sum(temps) / len(temps)
    spread = math.sqrt(sum((t - mean) ** 2 for t in temps) / len(temps))
    assert mean == pytest.approx(4.0, abs=0.1)
    assert spread == pytest.approx(0.5, rel=0.15)


def test_pull_down_converges_to_the_set_point() -> None:
    model = ThermalModel(set_point_c=-18.0, initial_c=25.0, time_constant_s=600.0, noise_c=0.0, noise_rh=0.0)
    temp_at_one_tau, _ = model.sample(600.0)
    # A first-order lag covers 1 - 1/e of the gap in one time constant.
    assert temp_at_one_tau == pytest.approx(-18.0 + 43.0 / math.e, abs=1e-6)
    temp_late, _ = model.sample(6000.0)
    assert temp_late == pytest.approx(-18.0, abs=0.01)


def test_result_does_not_depend_on_sampling_rate() -> None:
    doors = ((100.0, 240.0), (1000.0, 30.0))
    coarse = ThermalModel(noise_c=0.0, noise_rh=0.0, door_openings=doors)
    fine = ThermalModel(noise_c=0.0, noise_rh=0.0, door_openings=doors)
    for t in range(1, 2001):
        fine.sample(float(t))
    assert coarse.sample(2000.0) == pytest.approx(fine.sample(2000.0), abs=1e-9)


def test_door_open_warms_and_humidifies_then_recovers() -> None:
    model = ThermalModel(noise_c=0.0, noise_rh=0.0, door_openings=((100.0, 300.0),))
    before = model.sample(100.0)
    assert not model.door_open(99.0)
    assert model.door_open(250.0)
    at_close = model.sample(400.0)
    assert not model.door_open(400.0)
    assert at_close[0] > before[0] + 10.0
    assert before[1] < at_close[1] < DOOR_OPEN_RH
    recovered = model.sample(400.0 + 6 * 900.0)
    assert recovered[0] == pytest.approx(4.0, abs=0.1)
    assert recovered[1] == pytest.approx(85.0, abs=0.5)


def test_cooling_failure_warms_slowly_toward_ambient() -> None:
    model = ThermalModel(noise_c=0.0, noise_rh=0.0, cooling_failures=((0.0, 7200.0),))
    assert not model.cooling_on(10.0)
    after_ten_minutes, _ = model.sample(600.0)
    after_two_hours, _ = model.sample(7200.0)
    assert 4.0 < after_ten_minutes < 6.0
    assert after_ten_minutes < after_two_hours < 25.0
    assert model.cooling_on(7200.0)


def test_random_doors_follow_the_rate() -> None:
    model = ThermalModel(door_rate_per_hour=6.0, seed=1)
    hours = 200
    openings = sum(1 for minute in range(hours * 60) if model.door_open(minute * 60.0 + 0.5))
    assert openings > 0
    # ~6 arrivals an hour, each open ~1 minute: about 6 % of minute marks fall inside one.
    assert 0.03 < openings / (hours * 60) < 0.12


def test_no_random_doors_at_rate_zero() -> None:
    model = ThermalModel(door_rate_per_hour=0.0)
    assert not any(model.door_open(float(t)) for t in range(0, 86400, 10))


def test_samples_must_go_forward() -> None:
    model = ThermalModel()
    model.sample(10.0)
    with pytest.raises(ValueError, match="time order"):
        model.sample(9.0)


def test_humidity_stays_within_physical_bounds() -> None:
    model = ThermalModel(humidity_set_point=99.9, noise_rh=5.0)
    assert all(0.0 <= model.sample(float(t))[1] <= 100.0 for t in range(500))


@pytest.mark.parametrize(
    "kwargs",
    [{"time_constant_s": 0.0}, {"noise_c": -1.0}, {"door_rate_per_hour": -1.0}, {"humidity_set_point": 101.0}],
)
def test_invalid_parameters_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        ThermalModel(**kwargs)  # type: ignore[arg-type]
