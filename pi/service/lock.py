"""One device process per data directory: the daemon and a CLI `collect` would share the MQTT client id
(a broker, AWS IoT Core included, drops the older of two connections with one id, so each would keep
kicking the other) and the outbox's order. An advisory lock says so clearly instead."""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

from pi.errors import EmotionEdgeError


class DeviceBusyError(EmotionEdgeError):
    """Another emotion-edge process is using this device's data directory."""


class DataDirLock:
    def __init__(self, data_dir: str | Path):
        self.path = Path(data_dir) / "emotion-edge.lock"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = None

    def acquire(self) -> DataDirLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise DeviceBusyError(f"another emotion-edge process (pid {holder}) is using {self.path.parent}; "
                                  "while the service runs, send it MQTT commands instead (see README), or "
                                  "use another device.data_dir and device.id") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
