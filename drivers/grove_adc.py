"""Grove Base Hat for Raspberry Pi: its on-board MCU is a 12-bit, 8-channel ADC on I2C.

Register protocol (firmware of both hat generations, as used by Seeed's grove.py):
    0x00  product id (word)    0x0004 = Grove Base Hat, 0x0005 = Grove Base Hat for Pi Zero
    0x02  firmware version (word)
    0x10+ch raw 12-bit reading (0..4095) of channel ch
    0x20+ch input voltage of channel ch in millivolts
    0x30+ch ratio of input to supply voltage in 0.1 % steps
Each register is a little-endian 16-bit word read as a 2-byte I2C block read. The hat answers at 0x04
(STM32 firmware) or 0x08 (MM32 firmware); we probe both unless the address is configured.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Protocol

from drivers.errors import HatNotFoundError, I2CError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Registers:
    """The hat's register map, declared as data."""

    product_id: int = 0x00
    version: int = 0x02
    raw_base: int = 0x10
    voltage_base: int = 0x20
    ratio_base: int = 0x30


REGISTERS = Registers()
PRODUCT_IDS = {0x0004: "Grove Base Hat for Raspberry Pi", 0x0005: "Grove Base Hat for Raspberry Pi Zero"}
ADDRESSES = (0x04, 0x08)
CHANNELS = 8
FULL_SCALE = 4095
I2C_HINT = ("is I2C enabled (raspi-config > Interface Options > I2C), is the hat seated, and is the "
            "address right (i2cdetect -y 1 shows 04 or 08)?")


class SMBusLike(Protocol):
    """The part of smbus2.SMBus the driver uses; the simulator implements the same."""

    def read_i2c_block_data(self, i2c_addr: int, register: int, length: int) -> list[int]: ...

    def close(self) -> None: ...


def open_bus(bus_number: int) -> SMBusLike:
    """Open /dev/i2c-N with smbus2 (imported here so that the package imports without it)."""
    try:
        from smbus2 import SMBus
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise I2CError("smbus2 is not installed: pip install 'emotion-edge[pi]'") from exc
    try:
        return SMBus(bus_number)
    except (FileNotFoundError, PermissionError) as exc:
        raise I2CError(f"cannot open /dev/i2c-{bus_number}: {exc.strerror}; {I2C_HINT}") from None


class GroveBaseHatADC:
    """Reads channels of the Grove Base Hat ADC over an SMBus-like object.

    `retries` failed reads are retried with a short back-off; `errors` counts the transfers that failed
    (retried or not) so that the sampler can flag quality.
    """

    def __init__(self, bus: SMBusLike, address: int | None = None, retries: int = 3,
                 retry_delay_s: float = 0.002):
        self.bus = bus
        self.retries = retries
        self.retry_delay_s = retry_delay_s
        self.errors = 0
        self.address, self.product_id = self._detect(address)
        self.name = PRODUCT_IDS[self.product_id]

    def _detect(self, address: int | None) -> tuple[int, int]:
        candidates = (address,) if address is not None else ADDRESSES
        seen = []
        for addr in candidates:
            try:
                pid = self._read_word(addr, REGISTERS.product_id)
            except OSError as exc:
                seen.append(f"{addr:#04x}: {exc.strerror or exc}")
                continue
            if pid in PRODUCT_IDS:
                log.info("found %s at %#04x", PRODUCT_IDS[pid], addr)
                return addr, pid
            seen.append(f"{addr:#04x}: product id {pid:#06x} is not a Grove Base Hat")
        raise HatNotFoundError(f"no Grove Base Hat found ({'; '.join(seen)}); {I2C_HINT}")

    def _read_word(self, address: int, register: int) -> int:
        low, high = self.bus.read_i2c_block_data(address, register, 2)
        return low | (high << 8)

    def read_register(self, register: int) -> int:
        """Read one 16-bit register, retrying transient bus errors; raises I2CError when they persist."""
        for attempt in range(self.retries + 1):
            try:
                return self._read_word(self.address, register)
            except OSError as exc:
                self.errors += 1
                if attempt == self.retries:
                    raise I2CError(f"reading register {register:#04x} at {self.address:#04x} failed "
                                   f"{attempt + 1} times ({exc.strerror or exc}); {I2C_HINT}") from None
                time.sleep(self.retry_delay_s * (attempt + 1))
        raise AssertionError("unreachable")

    def _check_channel(self, channel: int) -> None:
        if not 0 <= channel < CHANNELS:
            raise ValueError(f"ADC channel must be 0..{CHANNELS - 1}, got {channel}")

    def read_raw(self, channel: int) -> int:
        """12-bit reading 0..4095."""
        self._check_channel(channel)
        return self.read_register(REGISTERS.raw_base + channel)

    def read_voltage_mv(self, channel: int) -> int:
        """Input voltage in millivolts, as measured by the hat."""
        self._check_channel(channel)
        return self.read_register(REGISTERS.voltage_base + channel)

    def firmware_version(self) -> int:
        return self.read_register(REGISTERS.version)
