"""A real Mosquitto, started from a temporary config on a free port."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from contextlib import closing
from pathlib import Path

import pytest

START_TIMEOUT_S = 10.0


def free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require_binary(name: str, package: str) -> str:
    """The path of ``name``; under CI=true a missing binary fails the run instead of skipping."""
    path = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
    if path is None:
        message = f"{name} is not installed (Debian package {package}); `make test` installs it when run as root"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
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
