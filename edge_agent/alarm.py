"""The gateway's own product-range alarm: pure (readings in, transitions out), evaluated on every
reading as it is taken, so it fires within one sampling interval, online or not."""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from coldchain.messages import Quantity, Reading

log = logging.getLogger(__name__)

HOOK_TIMEOUT_S: Final = 5.0
"""A buzzer or LED script that hangs must not hold up sampling."""


@dataclass(frozen=True)
class AlarmTransition:
    """A sensor's alarm was raised or cleared by ``reading``."""

    sensor_id: str
    state: Literal["raised", "cleared"]
    reading: Reading
    low_c: float
    high_c: float


class RangeAlarm:
    """Temperature range check per sensor with hysteresis; the range can change at run time."""

    def __init__(self, low_c: float | None, high_c: float | None, hysteresis_c: float) -> None:
        self.low_c = low_c
        self.high_c = high_c
        self._hysteresis_c = hysteresis_c
        self._active: set[str] = set()

    @property
    def active(self) -> list[str]:
        """Sensors in alarm now, sorted."""
        return sorted(self._active)

    def set_range(self, low_c: float, high_c: float) -> None:
        """Guard a new range from the next reading on."""
        self.low_c, self.high_c = low_c, high_c

    def check(self, readings: Iterable[Reading]) -> list[AlarmTransition]:
        """Feed readings in the order taken; return the raises and clears they cause."""
        low, high = self.low_c, self.high_c
        if low is None or high is None:
            return []
        transitions = []
        for reading in readings:
            if reading.quantity is not Quantity.TEMPERATURE:
                continue
            sensor, value = reading.sensor_id, reading.value
            if sensor not in self._active and not low <= value <= high:
                self._active.add(sensor)
                transitions.append(AlarmTransition(sensor, "raised", reading, low, high))
            elif sensor in self._active and low + self._hysteresis_c <= value <= high - self._hysteresis_c:
                self._active.discard(sensor)
                transitions.append(AlarmTransition(sensor, "cleared", reading, low, high))
        return transitions


class CommandHook:
    """Runs an external command on each transition (a buzzer, an LED, a display)."""

    def __init__(self, command: Sequence[str]) -> None:
        self._command = list(command)

    def __call__(self, transition: AlarmTransition) -> None:
        """Run the command with the transition in ``COLDCHAIN_ALARM_*`` variables; failures are logged."""
        if not self._command:
            return
        env = {
            **os.environ,
            "COLDCHAIN_ALARM_STATE": transition.state,
            "COLDCHAIN_ALARM_SENSOR": transition.sensor_id,
            "COLDCHAIN_ALARM_VALUE": f"{transition.reading.value:.2f}",
            "COLDCHAIN_ALARM_LOW": f"{transition.low_c:.2f}",
            "COLDCHAIN_ALARM_HIGH": f"{transition.high_c:.2f}",
        }
        try:
            subprocess.run(self._command, env=env, timeout=HOOK_TIMEOUT_S, check=True, capture_output=True)  # noqa: S603
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("alarm hook %s failed: %s", self._command[0], exc)
