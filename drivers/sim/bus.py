"""A simulated I2C bus carrying a Grove Base Hat, speaking the same register protocol as the real one.

Analog inputs are callables `source(t) -> millivolts` evaluated at read time on the simulation clock, so the
registers always hold the value of the signal "now", as the hat's continuously converting ADC does.
Test controls: `transactions` (every transfer, for asserting the bytes on the bus), `fail_next()` to inject
EIO bursts, `absent` to make the hat vanish (reads raise OSError like a NACK on a real bus).
"""
from __future__ import annotations

import errno
import os
import threading
from collections import deque
from typing import Callable

from drivers.grove_adc import CHANNELS, FULL_SCALE, REGISTERS

VoltageSource = Callable[[float], float]


class SimulatedSMBus:
    """SMBus stand-in with one simulated Grove Base Hat on it."""

    def __init__(self, address: int = 0x04, product_id: int = 0x0004, vref_mv: float = 3300.0,
                 clock=None, firmware_version: int = 0x0001, log_size: int = 4096):
        self.address = address
        self.product_id = product_id
        self.vref_mv = vref_mv
        self.firmware_version = firmware_version
        self.clock = clock
        self.sources: dict[int, VoltageSource] = {}
        self.absent = False
        self.transactions: deque[tuple[int, int, int, list[int]]] = deque(maxlen=log_size)
        self._failures = 0
        self._fail_errno = errno.EIO
        self._lock = threading.Lock()
        self.closed = False

    # -- test controls -------------------------------------------------------------------------------
    def connect(self, channel: int, source: VoltageSource) -> None:
        """Feed analog input `channel` from `source(t)`; unconnected inputs read 0 mV."""
        if not 0 <= channel < CHANNELS:
            raise ValueError(f"channel must be 0..{CHANNELS - 1}")
        self.sources[channel] = source

    def fail_next(self, count: int, error: int = errno.EIO) -> None:
        """Make the next `count` transfers fail with OSError(error)."""
        with self._lock:
            self._failures = count
            self._fail_errno = error

    # -- the SMBus interface -------------------------------------------------------------------------
    def _millivolts(self, channel: int) -> float:
        source = self.sources.get(channel)
        if source is None:
            return 0.0
        now = self.clock.monotonic() if self.clock is not None else 0.0
        return min(max(source(now), 0.0), self.vref_mv)

    def _register(self, register: int) -> int:
        if register == REGISTERS.product_id:
            return self.product_id
        if register == REGISTERS.version:
            return self.firmware_version
        base, channel = register & 0xF0, register & 0x0F
        if channel >= CHANNELS or base not in (REGISTERS.raw_base, REGISTERS.voltage_base,
                                               REGISTERS.ratio_base):
            return 0
        mv = self._millivolts(channel)
        if base == REGISTERS.raw_base:
            return int(round(mv / self.vref_mv * FULL_SCALE))
        if base == REGISTERS.voltage_base:
            return int(round(mv))
        return int(round(mv / self.vref_mv * 1000))

    def read_i2c_block_data(self, i2c_addr: int, register: int, length: int) -> list[int]:
        with self._lock:
            if self.closed:
                raise OSError(errno.EBADF, os.strerror(errno.EBADF))
            if self._failures > 0:
                self._failures -= 1
                raise OSError(self._fail_errno, os.strerror(self._fail_errno))
            if self.absent or i2c_addr != self.address:
                raise OSError(errno.EREMOTEIO, os.strerror(errno.EREMOTEIO))
            word = self._register(register)
            data = [word & 0xFF, (word >> 8) & 0xFF, *([0] * max(0, length - 2))][:length]
            self.transactions.append((i2c_addr, register, length, data))
            return data

    def close(self) -> None:
        self.closed = True
