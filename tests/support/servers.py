"""Real servers on free ports: Mosquitto from a temporary config, VictoriaMetrics on a temporary data directory."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from contextlib import closing
from pathlib import Path
from typing import Any, NoReturn

import pytest

START_TIMEOUT_S = 10.0


def free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def unavailable(message: str, *, module: bool = False) -> NoReturn:
    """Something a test needs is missing: under CI=true that fails the run; elsewhere the test is skipped."""
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message, allow_module_level=module)


def require_binary(name: str, package: str) -> str:
    """The path of ``name``; under CI=true a missing binary fails the run instead of skipping."""
    path = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
    if path is None:
        unavailable(f"{name} is not installed (Debian package {package}); `make test` installs it when run as root")
    return path


def wait_for_port(port: int, timeout_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with closing(socket.socket()) as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s} s")


class Mosquitto:
    """One Mosquitto process; ``stop``/``start`` keep the port so clients reconnect to it."""

    def __init__(
        self,
        binary: str,
        workdir: Path,
        *,
        max_queued_messages: int = 1000,
        password_file: Path | None = None,
        acl_file: Path | None = None,
        persistence: bool = False,
    ) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.log_path = workdir / "mosquitto.log"
        self.config_path = workdir / "mosquitto.conf"
        lines = [
            f"listener {self.port} 127.0.0.1",
            # Persistence keeps the hub's session (and what is queued for it) across a broker restart.
            f"persistence {'true' if persistence else 'false'}",
            f"persistence_location {workdir}/",
            # As root, mosquitto would switch to the mosquitto user, who cannot enter pytest's 0700
            # temporary directories; as any other user this line has no effect.
            "user root",
            f"max_queued_messages {max_queued_messages}",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
        ]
        if password_file is None:
            lines.append("allow_anonymous true")
        else:
            lines += ["allow_anonymous false", f"password_file {password_file}"]
        if acl_file is not None:
            lines.append(f"acl_file {acl_file}")
        self.config_path.write_text("\n".join(lines) + "\n")
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [self.binary, "-c", str(self.config_path)], stdout=subprocess.DEVNULL, stderr=log
            )
        wait_for_port(self.port)

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._process = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class VictoriaMetrics:
    """One single-node VictoriaMetrics; ``stop``/``start`` keep the port and the data, so a test can
    simulate an outage of the time-series store and its return."""

    def __init__(self, binary: str, workdir: Path, *, dedup: bool = True) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.storage_path = workdir / "vm-data"
        self.log_path = workdir / "victoria-metrics.log"
        self.args = [
            binary,
            f"-storageDataPath={self.storage_path}",
            f"-httpListenAddr=127.0.0.1:{self.port}",
            # Tests write readings at any time they like: nothing is too old to keep.
            "-retentionPeriod=100y",
            # Queries see a sample as soon as it is flushed, not 30 s later, and never from a stale cache.
            "-search.latencyOffset=0s",
            "-search.disableCache",
            "-loggerLevel=INFO",
        ]
        if dedup:
            # What docs/series-export.md asks of production: a batch sent twice (at-least-once) counts once.
            self.args.append("-dedup.minScrapeInterval=1ms")
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._healthy():
            if self._process.poll() is not None:
                raise RuntimeError(f"victoria-metrics exited with {self._process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"victoria-metrics not healthy on {self.url} after {START_TIMEOUT_S} s")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM: VictoriaMetrics finishes the requests in flight and flushes to disk."""
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=30)
            self._process = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    def flush(self) -> None:
        """Make everything written so far searchable (VictoriaMetrics buffers recent samples for ~1 s)."""
        with urllib.request.urlopen(f"{self.url}/internal/force_flush", timeout=10) as response:
            assert response.status == 200

    def export(self, selector: str) -> list[dict[str, Any]]:
        """Every raw sample of the series matching ``selector`` (``/api/v1/export``), after a flush:
        one ``{"metric": {...labels}, "values": [...], "timestamps": [...]}`` per series."""
        self.flush()
        data = urllib.parse.urlencode({"match[]": selector}).encode()
        with urllib.request.urlopen(f"{self.url}/api/v1/export", data=data, timeout=30) as response:
            return [json.loads(line) for line in response.read().splitlines() if line.strip()]

    def sample_count(self, selector: str) -> int:
        """How many raw samples the series matching ``selector`` hold."""
        return sum(len(series["values"]) for series in self.export(selector))

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query (``/api/v1/query``) at the current time; the ``result`` list."""
        self.flush()
        data = urllib.parse.urlencode({"query": promql}).encode()
        with urllib.request.urlopen(f"{self.url}/api/v1/query", data=data, timeout=30) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
