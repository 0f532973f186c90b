"""A pseudo-terminal that plays a serial port: the simulator holds the master, clients open the path.

``PtyDevice`` is the plug / unplug lifecycle every simulated serial device shares; ``received`` and
``write_all`` are the non-blocking reads and writes their serving threads make on the master.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import tty
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Final, Self

POLL_INTERVAL_S: Final = 0.05
"""Longest a serving thread waits (on the pty, or for its next epoch) before checking for stop(): bounds
stop() latency and, for the GPS, how late an epoch can be sent."""

STOP_JOIN_TIMEOUT_S: Final = 2.0
"""The thread notices stop() within one poll interval; this only guards against a wedged thread."""

READ_CHUNK: Final = 4096
"""Far more than a host sends between two polls, so one read drains the pty."""


@dataclass
class PtyEndpoint:
    """An open pty pair: ``master_fd`` for the simulator, ``path`` for clients (a tty or a symlink to it).

    The slave end stays open here too: with no client holding it, Linux would fail reads on the
    master with EIO, and the simulator must keep serving while clients come and go.
    """

    master_fd: int
    path: Path
    _slave_fd: int = field(repr=False)
    _link: Path | None = field(default=None, repr=False)
    _closed: bool = field(default=False, repr=False)

    def close(self) -> None:
        """Close both ends and remove the symlink if it still points at this pty. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._link is not None and self._link.is_symlink():
            with contextlib.suppress(OSError):
                if os.readlink(self._link) == os.ttyname(self._slave_fd):
                    self._link.unlink()
        os.close(self.master_fd)
        os.close(self._slave_fd)


def open_pty(link: Path | None = None) -> PtyEndpoint:
    """Open a raw pty pair, optionally exposing the slave through the symlink ``link``.

    An existing symlink at ``link`` (left by a crashed run) is replaced; any other file is not.
    """
    master_fd, slave_fd = os.openpty()
    try:
        # Binary frames carry 0x0D, 0x0A, 0x11, 0x13...: no echo, no CR/LF mapping, no flow control.
        tty.setraw(slave_fd)
        tty.setraw(master_fd)
        # A client that stops reading must not be able to wedge the simulator in a write.
        os.set_blocking(master_fd, False)
        slave_path = os.ttyname(slave_fd)
        if link is None:
            return PtyEndpoint(master_fd, Path(slave_path), slave_fd)
        if os.path.lexists(link) and not link.is_symlink():
            raise FileExistsError(f"{link} exists and is not a symlink; refusing to replace it")
        # Build beside the target and rename over it, so a reader never sees a missing or half-made link.
        staging = link.with_name(f".{link.name}.{os.getpid()}.tmp")
        staging.unlink(missing_ok=True)
        staging.symlink_to(slave_path)
        staging.replace(link)
    except BaseException:
        os.close(master_fd)
        os.close(slave_fd)
        raise
    return PtyEndpoint(master_fd, link, slave_fd, link)


def received(fd: int, stopping: threading.Event) -> Iterator[bytes]:
    """What the client writes to the master ``fd``, chunk by chunk, until ``stopping`` is set."""
    while not stopping.is_set():
        readable, _, _ = select.select([fd], [], [], POLL_INTERVAL_S)
        if not readable:
            continue
        try:
            data = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            continue
        yield data


def write_all(fd: int, data: bytes, stopping: threading.Event) -> None:
    """Write all of ``data`` to the non-blocking master ``fd``, giving up once ``stopping`` is set."""
    view = memoryview(data)
    while view and not stopping.is_set():
        _, writable, _ = select.select([], [fd], [], POLL_INTERVAL_S)
        if writable:
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:
                continue


class PtyDevice(ABC):
    """A device served on a pty from a daemon thread, whose cable can be pulled and plugged back in.

    ``start()`` opens the pty (at ``link`` when given) and starts ``_serve`` in a thread named
    ``thread_name``; ``unplug()`` closes it and ``replug()`` opens a new one at the same link while
    the device stays started (its clocks keep running). A subclass implements ``_serve`` and may
    reset its clocks in ``_on_start``.
    """

    thread_name: ClassVar[str]
    """The name of the serving thread."""

    label: ClassVar[str]
    """What the device is called in the log."""

    def __init__(self, link: Path | None) -> None:
        """Nothing is opened until ``start()``."""
        self._link = link
        self._started = False
        self._endpoint: PtyEndpoint | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    @property
    def path(self) -> Path:
        """The serial device clients open (the symlink when ``link`` was given); valid while plugged in."""
        if self._endpoint is None:
            raise RuntimeError("the simulator is not started or is unplugged")
        return self._endpoint.path

    def start(self) -> None:
        """Start the device's clocks, open the pty and start serving in a daemon thread."""
        if self._started:
            raise RuntimeError("the simulator is already started")
        self._on_start()
        self._started = True
        self._plug()

    def stop(self) -> None:
        """Stop serving and close the pty (removing the symlink). Safe to call twice."""
        self._unplug()
        self._started = False

    def unplug(self) -> None:
        """Pull the cable: the pty closes and the link disappears; the device keeps running."""
        if self._endpoint is None:
            raise RuntimeError("the simulator is not plugged in")
        self._unplug()

    def replug(self) -> None:
        """Plug the cable back in: a new pty at the same link path (a new path without a link)."""
        if not self._started or self._endpoint is not None:
            raise RuntimeError("only a started, unplugged simulator can be plugged back in")
        self._plug()

    def __enter__(self) -> Self:
        """Start the simulator."""
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Stop the simulator."""
        self.stop()

    def _on_start(self) -> None:  # noqa: B027 - a hook, empty unless the device keeps a clock
        """Called by ``start()`` before the pty opens: reset the device's clocks."""

    @abstractmethod
    def _serve(self, fd: int, stopping: threading.Event) -> None:
        """Serve the master ``fd`` until ``stopping`` is set; runs in the serving thread."""

    def _plug(self) -> None:
        self._endpoint = open_pty(self._link)
        # A fresh event per plug: a thread from before an unplug that outlived its join cannot be revived.
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(self._endpoint.master_fd, self._stopping), name=self.thread_name, daemon=True
        )
        self._thread.start()

    def _unplug(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(STOP_JOIN_TIMEOUT_S)
            self._thread = None
        if self._endpoint is not None:
            self._endpoint.close()
            self._endpoint = None

    def _run(self, fd: int, stopping: threading.Event) -> None:
        try:
            self._serve(fd, stopping)
        except Exception:
            # A daemon thread's exception would otherwise vanish with only stderr noise.
            logging.getLogger(type(self).__module__).exception("%s stopped on an error", self.label)
