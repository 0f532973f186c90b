"""Run coldchain commands as real child processes that tests can SIGKILL and restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path


class Child:
    """A ``python -m coldchain ...`` process whose output goes to a log file."""

    def __init__(self, name: str, args: list[str], workdir: Path) -> None:
        self.name = name
        self.args = args
        self.log_path = workdir / f"{name}.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._starts = 0

    def start(self) -> Child:
        self._starts += 1
        log = self.log_path.open("ab")
        log.write(f"--- start {self._starts} ---\n".encode())
        log.flush()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "coldchain", "--log-level", "INFO", *self.args],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        return self

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crash or power cut would end it."""
        assert self._process is not None
        self._process.send_signal(signal.SIGKILL)
        self._process.wait(timeout=10)

    def terminate(self, timeout_s: float = 30) -> int:
        """SIGTERM and wait for a clean exit; return the exit code."""
        assert self._process is not None
        self._process.send_signal(signal.SIGTERM)
        return self._process.wait(timeout=timeout_s)

    def ensure_dead(self) -> None:
        if self._process is not None and self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
