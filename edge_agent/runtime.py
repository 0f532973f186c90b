"""Wires a gateway together: drivers -> sampler -> disk buffer -> uplink, plus the local alarm,
remote configuration, health reports and the courier view."""

from __future__ import annotations

import collections
import logging
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Final, cast

import psutil

import coldchain
from coldchain import topics
from coldchain.messages import (
    Command,
    CommandAck,
    GatewayHealth,
    LocalAlarm,
    Observation,
    Quantity,
    Reading,
    SetCustodyMode,
    SetProductRange,
    SetSamplingInterval,
    TagAction,
    TagRead,
    UplinkHealth,
    encode,
)
from coldchain.signals import StopRequest
from edge_agent.alarm import AlarmTransition, CommandHook, RangeAlarm
from edge_agent.config import DEFAULT_INTERVALS_S, AgentConfig, BusConfig
from edge_agent.courier_view import CourierState, CourierView, HandoverView, SensorView
from edge_agent.disk_buffer import DiskBuffer
from edge_agent.drivers import ClockReference, Driver, DriverKind, TagReaderDriver
from edge_agent.sampler import Batcher, DriverLoop, Sampler
from edge_agent.settings import RuntimeSettings, SettingsStore
from edge_agent.uplink import Uplink

log = logging.getLogger(__name__)

DRAIN_TIMEOUT_S: Final = 10.0
"""How long a clean stop waits for receipts of what is buffered (systemd's stop timeout is 90 s)."""
DRAIN_POLL_S: Final = 0.05
RECENT_HANDOVERS: Final = 10


def build_driver(bus: BusConfig) -> Driver:
    """The driver for one configured bus, chosen by its ``kind`` (imported only when used)."""
    match bus.kind:
        case DriverKind.MODBUS_RTU_PROBE:
            from edge_agent.drivers.xymd02_probe import ModbusProbeBus, ProbeSpec  # noqa: PLC0415

            probes = [ProbeSpec(sensor_id=p.sensor_id, address=p.address) for p in bus.probes]
            return ModbusProbeBus(bus.port, bus.baudrate or 9600, probes, response_timeout_s=bus.response_timeout_s)
        case DriverKind.UHF_M100:
            from edge_agent.drivers.uhf_m100 import UhfReader  # noqa: PLC0415

            assert bus.device_id is not None  # checked by check_agent_config
            return UhfReader(
                bus.port,
                bus.device_id,
                baudrate=bus.baudrate or 115200,
                debounce_s=bus.debounce_s,
                response_timeout_s=bus.response_timeout_s,
            )
        case DriverKind.NMEA_GPS:
            from edge_agent.drivers.nmea_gps import NmeaGps  # noqa: PLC0415

            assert bus.device_id is not None
            return NmeaGps(bus.port, bus.device_id, baudrate=bus.baudrate or 9600)


class Agent:
    """One gateway: start, run until stopped, stop without losing what was sampled."""

    def __init__(self, config: AgentConfig, *, demo: bool = False) -> None:
        self.config = config
        self.boot_id = uuid.uuid4().hex
        self._started = time.monotonic()
        state_dir = Path(config.state_dir)
        self._settings_store = SettingsStore(state_dir / "settings.json")
        self.settings = self._settings_store.load(
            RuntimeSettings(
                interval_s=config.sampling.interval_s,
                low_c=config.alarm.low_c,
                high_c=config.alarm.high_c,
                custody_mode=config.custody_mode,
            )
        )
        self._settings_lock = threading.Lock()
        self.buffer = DiskBuffer(state_dir / "buffer.sqlite3", config.gateway_id, self.boot_id, config.buffer)
        self.alarm = RangeAlarm(self.settings.low_c, self.settings.high_c, config.alarm.hysteresis_c)
        self._alarm_hook = CommandHook(config.alarm.hook_command)
        self._latest: dict[str, dict[Quantity, Reading]] = {}
        self._handovers: collections.deque[TagRead] = collections.deque(maxlen=RECENT_HANDOVERS)
        self._handover_armed: tuple[TagAction, float] | None = None
        self._view_lock = threading.Lock()

        self.batcher = Batcher(
            self.buffer, max_items=config.sampling.batch_max_readings, max_age_s=config.sampling.batch_max_age_s
        )
        self.loops: list[DriverLoop] = []
        self._probe_loops: list[DriverLoop] = []
        self._readers: list[TagReaderDriver] = []
        self._clocks: list[ClockReference] = []
        for bus in config.buses:
            driver = build_driver(bus)
            interval = bus.interval_s or DEFAULT_INTERVALS_S.get(bus.kind, self.settings.interval_s)
            # Names key the health report's error counters, so they follow the sensor-id pattern.
            name = bus.device_id or f"{bus.kind.value}.{Path(bus.port).name}"
            loop = DriverLoop(name, driver, interval, self._on_observations)
            self.loops.append(loop)
            match bus.kind:
                case DriverKind.MODBUS_RTU_PROBE:
                    self._probe_loops.append(loop)
                case DriverKind.UHF_M100:
                    self._readers.append(cast(TagReaderDriver, driver))
                case DriverKind.NMEA_GPS:
                    self._clocks.append(cast(ClockReference, driver))
        self._apply_custody_mode(self.settings.custody_mode)
        self.sampler = Sampler(self.loops, self.batcher)
        self.uplink = Uplink(
            config.gateway_id,
            self.boot_id,
            self.buffer,
            config.mqtt,
            config.delivery,
            agent_version=coldchain.__version__,
            on_command=self._on_command,
            allow_placeholder_secret=demo,
        )
        self._process = psutil.Process()
        self._process.cpu_percent(None)  # the first call only starts the measurement
        self._stop_health = threading.Event()
        self._health_thread = threading.Thread(target=self._health_loop, name="health", daemon=True)
        self.courier_view: CourierView | None = None
        if config.courier_view.enabled:
            self.courier_view = CourierView(
                self.courier_state, self.arm_handover, host=config.courier_view.host, port=config.courier_view.port
            )

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start sampling, sending, health reports and the courier view."""
        log.info(
            "gateway %s starting (boot %s, last seq %d)", self.config.gateway_id, self.boot_id, self.buffer.last_seq
        )
        self.uplink.start()
        self.sampler.start()
        self._health_thread.start()
        if self.courier_view is not None:
            self.courier_view.start()
            log.info("courier view at %s", self.courier_view.url)

    def stop(self) -> None:
        """Stop sampling, give the uplink a moment to get what is buffered receipted, then stop it.

        Nothing is lost either way: what is still unreceipted stays on disk for the next start.
        """
        if self.courier_view is not None:
            self.courier_view.stop()
        self.sampler.stop()
        self._stop_health.set()
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while self.buffer.depth()[0] and self.uplink.state().connected and time.monotonic() < deadline:
            time.sleep(DRAIN_POLL_S)
        self.uplink.stop()
        for loop in self.loops:
            loop.driver.close()
        batches, items = self.buffer.depth()
        log.info(
            "gateway %s stopped: %d items sampled, receipted through seq %d, %d batches (%d items) kept on disk",
            self.config.gateway_id,
            self.batcher.items_taken,
            self.uplink.state().acked_seq,
            batches,
            items,
        )
        self.buffer.close()

    def run_until_signal(self) -> None:
        """Run in the foreground until SIGINT or SIGTERM."""
        stop = StopRequest()
        stop.install()
        self.start()
        stop.wait()
        self.stop()

    # -- observations: alarm, view, batch ---------------------------------------------------

    def _on_observations(self, observations: Sequence[Observation]) -> None:
        readings = [o for o in observations if isinstance(o, Reading)]
        with self._view_lock:
            for reading in readings:
                self._latest.setdefault(reading.sensor_id, {})[reading.quantity] = reading
            self._handovers.extend(o for o in observations if isinstance(o, TagRead) and o.action != TagAction.OBSERVE)
        for transition in self.alarm.check(readings):
            self._raise_local_alarm(transition)
        self.batcher.add(observations)

    def _raise_local_alarm(self, transition: AlarmTransition) -> None:
        log.warning(
            "LOCAL ALARM %s: %s at %.1f °C (range %.1f..%.1f °C)",
            transition.state.upper(),
            transition.sensor_id,
            transition.reading.value,
            transition.low_c,
            transition.high_c,
        )
        message = LocalAlarm(
            gateway_id=self.config.gateway_id,
            boot_id=self.boot_id,
            ts_ms=transition.reading.ts_ms,
            sensor_id=transition.sensor_id,
            state=transition.state,
            value=transition.reading.value,
            low_c=transition.low_c,
            high_c=transition.high_c,
        )
        self.uplink.post(topics.Channel.ALARM, encode(message))
        threading.Thread(target=self._alarm_hook, args=(transition,), name="alarm-hook", daemon=True).start()

    # -- remote configuration ----------------------------------------------------------------

    def _on_command(self, command: Command) -> CommandAck:
        """Apply a validated command, persist it, and answer; a refused one changes nothing."""
        now_ms = int(time.time() * 1000)
        change = command.change
        with self._settings_lock:
            if isinstance(change, SetCustodyMode) and not self._readers:
                return CommandAck(
                    command.command_id,
                    self.config.gateway_id,
                    now_ms,
                    False,
                    "no RFID reader on this gateway",
                    self.settings.version,
                )
            updated = self.settings.applied(change)
            try:
                self._settings_store.save(updated)
            except OSError as exc:
                return CommandAck(
                    command.command_id,
                    self.config.gateway_id,
                    now_ms,
                    False,
                    f"cannot persist: {exc.strerror}",
                    self.settings.version,
                )
            self.settings = updated
            match change:
                case SetSamplingInterval(interval_s=interval_s):
                    for loop in self._probe_loops:
                        loop.set_interval(interval_s)
                case SetProductRange(low_c=low_c, high_c=high_c):
                    self.alarm.set_range(low_c, high_c)
                case SetCustodyMode(mode=mode):
                    self._apply_custody_mode(mode)
        log.info("applied command %s: %s (settings version %d)", command.command_id, change, updated.version)
        return CommandAck(command.command_id, self.config.gateway_id, now_ms, True, None, updated.version)

    def _apply_custody_mode(self, mode: TagAction) -> None:
        for reader in self._readers:
            reader.custody_mode = mode

    def arm_handover(self, action: TagAction) -> None:
        """The courier pressed pickup or delivery: the next tag reads within the window record it."""
        window = self.config.courier_view.handover_window_s
        for reader in self._readers:
            reader.arm_handover(action, window)
        with self._view_lock:
            self._handover_armed = (action, time.time() + window)

    # -- health and the courier's view -------------------------------------------------------

    def health(self) -> GatewayHealth:
        """A health report of this moment."""
        batches, items = self.buffer.depth()
        oldest = self.buffer.oldest_created_ms()
        uplink = self.uplink.state()
        errors = {loop.name: {k: v for k, v in loop.driver.counters.items() if v} for loop in self.loops}
        offsets = [clock.clock_offset_ms for clock in self._clocks]
        now = time.time()
        return GatewayHealth(
            gateway_id=self.config.gateway_id,
            boot_id=self.boot_id,
            ts_ms=int(now * 1000),
            uptime_s=round(time.monotonic() - self._started, 1),
            buffer_batches=batches,
            buffer_items=items,
            buffer_bytes=self.buffer.size_bytes,
            oldest_unsent_age_s=None if oldest is None else max(0.0, round(now - oldest / 1000, 1)),
            uplink=UplinkHealth(uplink.connected, uplink.acked_seq, uplink.resends),
            driver_errors=errors,
            clock_offset_ms=next((o for o in offsets if o is not None), None),
            cpu_percent=self._process.cpu_percent(None),
            rss_bytes=self._process.memory_info().rss,
            alarms_active=self.alarm.active,
            released_batches=self.buffer.released_batches,
        )

    def _health_loop(self) -> None:
        while not self._stop_health.wait(self.config.health_interval_s):
            self.uplink.post(topics.Channel.HEALTH, encode(self.health()), retain=True)

    def courier_state(self) -> CourierState:
        """What the courier view shows now."""
        batches, items = self.buffer.depth()
        oldest = self.buffer.oldest_created_ms()
        uplink = self.uplink.state()
        low, high = self.alarm.low_c, self.alarm.high_c
        active = set(self.alarm.active)
        now = time.time()
        with self._view_lock:
            sensors = [
                SensorView(
                    sensor_id=sensor_id,
                    temperature_c=_value(values, Quantity.TEMPERATURE),
                    humidity_rh=_value(values, Quantity.HUMIDITY),
                    ts_ms=max(r.ts_ms for r in values.values()),
                    low_c=low,
                    high_c=high,
                    alarm=sensor_id in active,
                )
                for sensor_id, values in sorted(self._latest.items())
            ]
            handovers = [HandoverView(t.action.value, t.epc_hex, t.epc_uri, t.ts_ms) for t in reversed(self._handovers)]
            armed = self._handover_armed if self._handover_armed and self._handover_armed[1] > now else None
        return CourierState(
            gateway_id=self.config.gateway_id,
            sensors=sensors,
            connected=uplink.connected,
            acked_seq=uplink.acked_seq,
            backlog_batches=batches,
            backlog_items=items,
            oldest_unsent_age_s=None if oldest is None else max(0.0, now - oldest / 1000),
            custody_mode=self.settings.custody_mode.value,
            handover_armed=armed[0].value if armed else None,
            handover_armed_until_ms=int(armed[1] * 1000) if armed else None,
            recent_handovers=handovers,
            alarms_active=sorted(active),
        )


def _value(values: dict[Quantity, Reading], quantity: Quantity) -> float | None:
    reading = values.get(quantity)
    return reading.value if reading else None
