"""Grove Base Hat for Raspberry Pi: its on-board MCU is a 12-bit, 8-channel ADC on I2C.

Register protocol, from Seeed's firmware source (grove_stm32f030, examples/grove_rpi_base_hat, firmware
version 0x0002) and Seeed's grove.py (grove/adc.py), which reads every register as a 16-bit
little-endian word:
    0x00  product id          0x0004 = Grove Base Hat for Raspberry Pi, 0x0005 = the Pi Zero hat
    0x01  vendor id           0x2886 (Seeed)
    0x02  firmware version    0x0002 now; 0x0001 on the earlier builds
    0x03  name                one character per read ("GROVE BASE HAT RPI"), then 0
    0x10+ch raw 12-bit reading (0..4095) of channel ch
    0x20+ch input voltage in millivolts, computed by the firmware as VDDA * raw / 4096
    0x29  channel 9: the supply in millivolts (grove.py: "output voltage (Grove power supply voltage)");
          VDDA on 0x0002, measured through a divider by some 0x0001 builds
    0x30+ch ratio of input voltage to that supply in 0.1 % steps, 0..1000 (capped at 1000)
    0x40  VDDA, the ADC's reference, in millivolts (0x0002)
Registers the firmware does not know read 0. The MCU configures the analog pins without pulls, so an
unplugged input floats: it reads noise, not 0 (pi.physiology.presence tells the two apart).
The hat answers at 0x04 (STM32 firmware) or 0x08 (MM32 firmware, same register map); we probe both
unless the address is configured. Both MCUs sit on the same board, so both report product id 0x0004.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Protocol

from drivers.errors import HatNotFoundError, I2CError, ImplausibleReadingError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Registers:
    """The hat's register map, declared as data (the simulator in drivers.sim.bus answers the same)."""

    product_id: int = 0x00
    vendor_id: int = 0x01
    version: int = 0x02
    name: int = 0x03
    raw_base: int = 0x10
    voltage_base: int = 0x20
    supply_voltage: int = 0x29
    ratio_base: int = 0x30
    vdda: int = 0x40


REGISTERS = Registers()
PRODUCT_IDS = {0x0004: "Grove Base Hat for Raspberry Pi", 0x0005: "Grove Base Hat for Raspberry Pi Zero"}
VENDOR_ID = 0x2886
ADDRESSES = (0x04, 0x08)
CHANNELS = 8
FULL_SCALE = 4095
NOMINAL_SUPPLY_MV = 3300
# Measured VDDA moves by a few millivolts from one conversion loop to the next; a voltage this far above
# the VDDA read at start-up is a corrupt transfer, not a reading.
SUPPLY_TOLERANCE_MV = 60
# The first firmware builds (0x0001) computed the voltage against a fixed 3300 mV and doubled it for an
# input divider on the Raspberry Pi hat: nothing they report can exceed twice the reference.
LEGACY_MAX_VOLTAGE_MV = 2 * NOMINAL_SUPPLY_MV
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
    (retried or not) so that the sampler can flag quality. A word the hat cannot produce (a raw count
    over 4095, a voltage over the supply) is a failed transfer too: retried, counted, and raised as
    ImplausibleReadingError when it persists, never passed on as a reading.
    """

    def __init__(self, bus: SMBusLike, address: int | None = None, retries: int = 3,
                 retry_delay_s: float = 0.002):
        self.bus = bus
        self.retries = retries
        self.retry_delay_s = retry_delay_s
        self.errors = 0
        self.address, self.product_id = self._detect(address)
        self.name = PRODUCT_IDS[self.product_id]
        self.vendor_id = self.read_register(REGISTERS.vendor_id)
        self.version = self.read_register(REGISTERS.version)
        self.supply_mv, self.max_voltage_mv = self._read_supply()
        log.info("%s at %#04x: vendor %#06x, firmware %#06x, supply %d mV", self.name, self.address,
                 self.vendor_id, self.version, self.supply_mv)

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
                return addr, pid
            seen.append(f"{addr:#04x}: product id {pid:#06x} is not a Grove Base Hat")
        raise HatNotFoundError(f"no Grove Base Hat found ({'; '.join(seen)}); {I2C_HINT}")

    def _read_supply(self) -> tuple[int, int]:
        """(VDDA, the largest voltage reading the firmware can report) in millivolts.

        Firmware 0x0002 reports VDDA at 0x40, and its voltages are VDDA * raw / 4096. Earlier builds have
        no such register (it reads 0): their voltages are bounded by LEGACY_MAX_VOLTAGE_MV.
        """
        mv = self.read_register(REGISTERS.vdda) if self.version >= 0x0002 else 0
        if mv == 0:
            log.info("firmware %#06x reports no VDDA; assuming the nominal %d mV", self.version, NOMINAL_SUPPLY_MV)
            return NOMINAL_SUPPLY_MV, LEGACY_MAX_VOLTAGE_MV
        if not 2000 <= mv <= 3600:  # the MCU's VDDA range
            raise ImplausibleReadingError(f"the hat reports VDDA {mv} mV (register 0x40), outside the MCU's "
                                          "2000-3600 mV")
        return mv, mv + SUPPLY_TOLERANCE_MV

    def _read_word(self, address: int, register: int) -> int:
        low, high = self.bus.read_i2c_block_data(address, register, 2)
        return low | (high << 8)

    def _check_word(self, register: int, value: int) -> None:
        """Raise ImplausibleReadingError for a value the register cannot hold."""
        base, channel = register & 0xF0, register & 0x0F
        if base == REGISTERS.raw_base and channel < CHANNELS and value > FULL_SCALE:
            raise ImplausibleReadingError(f"raw reading {value:#06x} at register {register:#04x} is over "
                                          f"the 12-bit full scale {FULL_SCALE}")
        limit = getattr(self, "max_voltage_mv", None)  # None while the supply itself is being read
        if base == REGISTERS.voltage_base and channel < CHANNELS and limit is not None and value > limit:
            raise ImplausibleReadingError(f"voltage {value} mV at register {register:#04x} is over the "
                                          f"hat's {self.supply_mv} mV supply")

    def read_register(self, register: int) -> int:
        """Read one 16-bit register, retrying transient bus errors and corrupt words.

        Raises I2CError (ImplausibleReadingError for corrupt words) when they persist.
        """
        for attempt in range(self.retries + 1):
            try:
                value = self._read_word(self.address, register)
                self._check_word(register, value)
                return value
            except OSError as exc:  # ImplausibleReadingError is an OSError too: a bad transfer
                self.errors += 1
                if attempt == self.retries:
                    corrupt = isinstance(exc, ImplausibleReadingError)
                    kind = ImplausibleReadingError if corrupt else I2CError
                    hint = "" if corrupt else f"; {I2C_HINT}"
                    raise kind(f"reading register {register:#04x} at {self.address:#04x} failed "
                               f"{attempt + 1} times ({exc.strerror or exc}){hint}") from None
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
        """Input voltage in millivolts, as measured by the hat (at most the supply)."""
        self._check_channel(channel)
        return self.read_register(REGISTERS.voltage_base + channel)

    def read_ratio(self, channel: int) -> int:
        """Input voltage over the supply in 0.1 % steps, 0..1000 (what Seeed's grove.py `ADC.read` returns)."""
        self._check_channel(channel)
        return self.read_register(REGISTERS.ratio_base + channel)

    def firmware_version(self) -> int:
        """The firmware version register (0x0002 for the current STM32 firmware)."""
        return self.read_register(REGISTERS.version)
