"""Wires the hub's parts together: store, ingest over MQTT and the HTTP API."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import uvicorn

from hub.api import create_app
from hub.config import HubConfig
from hub.ingest import MqttIngest, open_pipeline
from hub.store import ReadStore

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling.

    uvicorn re-raises a captured SIGTERM after serving, which would end the process before the
    ingest threads stop; the hub installs its own handlers instead.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HubRuntime:
    """One hub process: ingest in background threads, the API served by uvicorn."""

    def __init__(self, config: HubConfig, *, demo: bool = False) -> None:
        db_path = Path(config.store.path)
        self.pipeline = open_pipeline(db_path, config.ingest)
        self.ingest = MqttIngest(self.pipeline, config.mqtt, config.ingest, allow_placeholder_secret=demo)
        self.read_store = ReadStore(db_path)
        app = create_app(
            self.read_store,
            config.api.tokens,
            mqtt_connected=lambda: self.ingest.connected,
            ingest_counters=self.pipeline.stats.snapshot,
            send_command=self.ingest.send_command,
        )
        self._server = _Server(
            uvicorn.Config(app, host=config.api.host, port=config.api.port, log_level="warning", lifespan="off")
        )
        self._thread: threading.Thread | None = None

    def run(self) -> None:
        """Serve until SIGINT or SIGTERM, then stop cleanly."""

        def _request_exit(_signum: int, _frame: FrameType | None) -> None:
            self._server.should_exit = True

        signal.signal(signal.SIGINT, _request_exit)
        signal.signal(signal.SIGTERM, _request_exit)
        self.ingest.start()
        try:
            self._server.run()
        finally:
            self.ingest.stop()

    def start_in_thread(self) -> None:
        """Start ingest and the API without blocking (the demo runs several parts in one process)."""
        self.ingest.start()
        self._thread = threading.Thread(target=self._server.run, name="hub-api", daemon=True)
        self._thread.start()

    @property
    def api_started(self) -> bool:
        """Whether the API socket is listening."""
        return bool(self._server.started)

    def stop(self) -> None:
        """Stop the API and ingest started by ``start_in_thread``."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.ingest.stop()
