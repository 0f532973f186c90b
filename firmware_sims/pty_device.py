"""A pseudo-terminal that plays a serial port: the simulator holds the master, clients open the path."""

from __future__ import annotations

import contextlib
import os
import tty
from dataclasses import dataclass, field
from pathlib import Path


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
