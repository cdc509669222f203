"""A simulated I2C bus carrying a Grove Base Hat, answering like Seeed's firmware (version 0x0002).

What the firmware does, and so the simulator: the ADC converts every channel in a loop; the raw count is
the input over VDDA in 4096 steps (at most 4095); the voltage register is computed from that count as
VDDA * raw / 4096 (integer millivolts), the ratio register as 1000 * voltage / VDDA (capped at 1000);
0x29 and 0x40 read VDDA; vendor id 0x2886 at 0x01, version 0x0002 at 0x02; unknown registers read 0.

`firmware_version=0x0001` gives the first build instead (750549f in Seeed's repository): no 0x29, ratio or
VDDA registers (they read 0), a fixed 3300 mV reference, and on the Raspberry Pi hat an input divider
that halves the input, which the firmware doubles back in the voltage register.

Analog inputs are callables `source(t) -> millivolts` evaluated at read time on the simulation clock, so
the registers always hold the value of the signal "now", as the continuously converting ADC does. The
firmware configures the pins without pulls, so an input with no source floats: it reads a wandering level
with mains hum and sample-to-sample noise, as an unplugged Grove input does (`disconnect()` unplugs one).
Test controls: `transactions` (every transfer, for asserting the bytes on the bus), `fail_next()` to inject
EIO bursts, `corrupt_next()` to return words the hat cannot produce, `absent` to make the hat vanish
(reads raise OSError like a NACK on a real bus).
"""
from __future__ import annotations

import errno
import math
import os
import threading
from collections import deque
from typing import Callable

import numpy as np

from drivers.grove_adc import CHANNELS, FULL_SCALE, REGISTERS, VENDOR_ID

VoltageSource = Callable[[float], float]

NAMES = {0x0004: "GROVE BASE HAT RPI", 0x0005: "GROVE BASE HAT RPI ZERO"}


class FloatingInput:
    """What an unplugged, unpulled ADC pin reads: a slowly wandering level, 50 Hz hum and wideband noise.

    Deterministic for a seed; `t` is the simulation clock's time in seconds.
    """

    def __init__(self, vdda_mv: float, seed: int = 0):
        self.vdda_mv = vdda_mv
        self.rng = np.random.default_rng(seed)
        self.phase = float(self.rng.uniform(0, 2 * math.pi))

    def __call__(self, t: float) -> float:
        wander = 0.5 + 0.3 * math.sin(2 * math.pi * 0.07 * t + self.phase)
        hum = 0.15 * math.sin(2 * math.pi * 50.0 * t)
        return (wander + hum) * self.vdda_mv + float(self.rng.normal(0, 0.08 * self.vdda_mv))


class SimulatedSMBus:
    """SMBus stand-in with one simulated Grove Base Hat on it."""

    def __init__(self, address: int = 0x04, product_id: int = 0x0004, vdda_mv: int = 3300,
                 clock=None, firmware_version: int = 0x0002, log_size: int = 4096, seed: int = 0):
        self.address = address
        self.product_id = product_id
        self.vdda_mv = int(vdda_mv)
        self.firmware_version = firmware_version
        self.clock = clock
        self.seed = seed
        self.sources: dict[int, VoltageSource] = {}
        self.absent = False
        self.transactions: deque[tuple[int, int, int, list[int]]] = deque(maxlen=log_size)
        self._failures = 0
        self._fail_errno = errno.EIO
        self._corrupt = 0
        self._corrupt_word = 0xFFFF
        self._name = ""  # the firmware's name cursor: the first read of 0x03 returns 0 and rewinds it
        self._lock = threading.Lock()
        self.closed = False

    # -- test controls -------------------------------------------------------------------------------
    def connect(self, channel: int, source: VoltageSource) -> None:
        """Feed analog input `channel` from `source(t)` (millivolts)."""
        self._check(channel)
        self.sources[channel] = source

    def disconnect(self, channel: int) -> None:
        """Unplug the sensor on `channel`: the input floats from now on."""
        self._check(channel)
        self.sources[channel] = FloatingInput(self.vdda_mv, seed=self.seed * 16 + channel)

    def fail_next(self, count: int, error: int = errno.EIO) -> None:
        """Make the next `count` transfers fail with OSError(error)."""
        with self._lock:
            self._failures = count
            self._fail_errno = error

    def corrupt_next(self, count: int, word: int = 0xFFFF) -> None:
        """Make the next `count` transfers return `word` (e.g. a bus held high reads 0xFFFF)."""
        with self._lock:
            self._corrupt = count
            self._corrupt_word = word

    @staticmethod
    def _check(channel: int) -> None:
        if not 0 <= channel < CHANNELS:
            raise ValueError(f"channel must be 0..{CHANNELS - 1}")

    # -- the firmware --------------------------------------------------------------------------------
    @property
    def _legacy(self) -> bool:
        return self.firmware_version < 0x0002

    @property
    def _divider(self) -> int:
        return 2 if self._legacy and self.product_id == 0x0004 else 1

    def _raw(self, channel: int) -> int:
        source = self.sources.get(channel)
        if source is None:
            source = self.sources[channel] = FloatingInput(self.vdda_mv, seed=self.seed * 16 + channel)
        now = self.clock.monotonic() if self.clock is not None else 0.0
        mv = min(max(source(now), 0.0), float(self.vdda_mv)) / self._divider
        reference = 3300 if self._legacy else self.vdda_mv
        return min(int(mv / reference * (FULL_SCALE + 1)), FULL_SCALE)

    def _voltage(self, channel: int) -> int:
        reference = 3300 if self._legacy else self.vdda_mv
        return self._divider * reference * self._raw(channel) // (FULL_SCALE + 1)

    def _register(self, register: int) -> int:
        r = REGISTERS
        if register == r.product_id:
            return self.product_id
        if register == r.vendor_id:
            return VENDOR_ID
        if register == r.version:
            return self.firmware_version
        if register == r.name:
            if not self._name:
                self._name = NAMES.get(self.product_id, "")
                return 0
            char, self._name = self._name[0], self._name[1:]
            return ord(char)
        base, channel = register & 0xF0, register & 0x0F
        if self._legacy and (register in (r.supply_voltage, r.vdda) or base == r.ratio_base):
            return 0
        if register in (r.supply_voltage, r.vdda):
            return self.vdda_mv
        if channel >= CHANNELS:  # 0x18/0x28/0x38 are unwired, 0x19 is the board-probe pin (grounded)
            return 0
        if base == r.raw_base:
            return self._raw(channel)
        if base == r.voltage_base:
            return self._voltage(channel)
        if base == r.ratio_base:
            return min(1000, 1000 * self._voltage(channel) // self.vdda_mv)
        return 0

    # -- the SMBus interface -------------------------------------------------------------------------
    def read_i2c_block_data(self, i2c_addr: int, register: int, length: int) -> list[int]:
        with self._lock:
            if self.closed:
                raise OSError(errno.EBADF, os.strerror(errno.EBADF))
            if self._failures > 0:
                self._failures -= 1
                raise OSError(self._fail_errno, os.strerror(self._fail_errno))
            if self.absent or i2c_addr != self.address:
                raise OSError(errno.EREMOTEIO, os.strerror(errno.EREMOTEIO))
            if self._corrupt > 0:
                self._corrupt -= 1
                word = self._corrupt_word
            else:
                word = self._register(register)
            data = [word & 0xFF, (word >> 8) & 0xFF, *([0] * max(0, length - 2))][:length]
            self.transactions.append((i2c_addr, register, length, data))
            return data

    def close(self) -> None:
        self.closed = True
