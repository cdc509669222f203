"""The Grove Base Hat driver against the simulated hat: the register map and the bytes on the bus."""
import errno

import pytest

from drivers.grove_adc import REGISTERS, GroveBaseHatADC
from drivers.sim.bus import SimulatedSMBus
from pi.errors import HatNotFoundError, I2CError, ImplausibleReadingError


def make_bus(address=0x04, pid=0x0004, mv=1000.0):
    bus = SimulatedSMBus(address=address, product_id=pid)
    bus.connect(0, lambda t: mv)
    return bus


def test_detects_hat_at_0x04_by_product_id_register():
    bus = make_bus()
    adc = GroveBaseHatADC(bus)
    assert adc.address == 0x04 and adc.product_id == 0x0004
    assert bus.transactions[0] == (0x04, REGISTERS.product_id, 2, [0x04, 0x00])


def test_autodetects_mm32_hat_at_0x08_after_probing_0x04():
    # the MM32 firmware answers at 0x08; the board is still the Base Hat for Raspberry Pi (0x0004)
    bus = make_bus(address=0x08, pid=0x0004)
    adc = GroveBaseHatADC(bus)
    assert adc.address == 0x08 and adc.product_id == 0x0004
    assert adc.name == "Grove Base Hat for Raspberry Pi"


def test_pi_zero_hat_is_product_0x0005():
    adc = GroveBaseHatADC(make_bus(pid=0x0005))
    assert "Zero" in adc.name


def test_identity_registers_answer_like_the_firmware():
    bus = make_bus()
    adc = GroveBaseHatADC(bus)
    assert adc.vendor_id == 0x2886 and adc.version == 0x0002 and adc.supply_mv == 3300
    assert (0x04, 0x01, 2, [0x86, 0x28]) in bus.transactions  # vendor id, little-endian
    assert (0x04, 0x02, 2, [0x02, 0x00]) in bus.transactions  # firmware version 0x0002
    assert (0x04, 0x40, 2, [0xE4, 0x0C]) in bus.transactions  # VDDA 3300 mV
    assert adc.read_register(REGISTERS.supply_voltage) == 3300  # channel 9 is VDDA on firmware 0x0002
    name = []
    assert adc.read_register(REGISTERS.name) == 0  # the first read rewinds the name cursor
    while (c := adc.read_register(REGISTERS.name)) != 0:
        name.append(chr(c))
    assert "".join(name) == "GROVE BASE HAT RPI"
    assert adc.read_register(0x3F) == 0  # a register the firmware does not know


def test_raw_and_voltage_registers_and_their_bytes():
    bus = make_bus(mv=1650.0)
    adc = GroveBaseHatADC(bus, address=0x04)
    assert adc.read_raw(0) == 2048  # 1650 mV of 3300 mV full scale, 12 bits
    assert bus.transactions[-1] == (0x04, 0x10, 2, [0x00, 0x08])  # little-endian word 0x0800
    assert adc.read_voltage_mv(0) == 1650
    assert bus.transactions[-1] == (0x04, 0x20, 2, [0x72, 0x06])  # 0x0672 = 1650
    assert adc.read_ratio(0) == 500  # 0.1 % steps of the supply
    assert bus.transactions[-1] == (0x04, 0x30, 2, [0xF4, 0x01])


def test_voltage_is_computed_from_the_raw_count_and_vdda():
    bus = SimulatedSMBus(vdda_mv=3250)
    bus.connect(0, lambda t: 1000.0)
    adc = GroveBaseHatADC(bus)
    raw = adc.read_raw(0)
    assert raw == int(1000.0 / 3250 * 4096) == 1260
    assert adc.read_voltage_mv(0) == 3250 * raw // 4096 == 999  # integer firmware arithmetic
    assert adc.read_ratio(0) == 1000 * 999 // 3250 == 307
    assert adc.supply_mv == 3250


def test_an_unplugged_input_floats_instead_of_reading_zero():
    bus = make_bus()
    adc = GroveBaseHatADC(bus)
    readings = [adc.read_raw(3) for _ in range(50)]  # nothing connected to A3
    assert bus.transactions[-1][1] == 0x13
    assert max(readings) - min(readings) > 300 and min(readings) > 0
    bus.connect(3, lambda t: 0.0)  # a grounded input does read 0
    assert adc.read_raw(3) == 0


def test_raw_over_full_scale_is_a_bus_error_not_a_reading():
    bus = make_bus()
    adc = GroveBaseHatADC(bus, retries=2, retry_delay_s=0)
    bus.corrupt_next(1, 0xFFFF)
    assert adc.read_raw(0) == 1241  # one corrupt word: retried and counted
    assert adc.errors == 1
    bus.corrupt_next(3, 0x1000)  # 4096, persistently
    with pytest.raises(ImplausibleReadingError, match="over the 12-bit full scale"):
        adc.read_raw(0)


def test_first_firmware_without_vdda_register_gets_its_own_voltage_bound():
    bus = SimulatedSMBus(firmware_version=0x0001)
    bus.connect(0, lambda t: 1000.0)
    adc = GroveBaseHatADC(bus)
    assert adc.supply_mv == 3300 and adc.max_voltage_mv == 6600  # it doubled readings for a divider
    assert 0x40 not in [reg for _, reg, _, _ in bus.transactions]
    assert adc.read_raw(0) == 620 and adc.read_voltage_mv(0) == 999  # the divider halves, the firmware doubles
    assert adc.read_ratio(0) == 0  # no ratio registers yet


def test_voltage_over_the_supply_is_a_bus_error_not_a_reading():
    bus = make_bus()
    adc = GroveBaseHatADC(bus, retries=1, retry_delay_s=0)
    bus.corrupt_next(2, 3500)
    with pytest.raises(ImplausibleReadingError, match="over the hat's 3300 mV supply") as info:
        adc.read_voltage_mv(0)
    assert isinstance(info.value, I2CError) and isinstance(info.value, ValueError)


def test_wrong_product_id_is_not_a_hat():
    with pytest.raises(HatNotFoundError, match="not a Grove Base Hat"):
        GroveBaseHatADC(make_bus(pid=0x1234))


def test_absent_hat_raises_typed_error_with_a_hint():
    bus = make_bus()
    bus.absent = True
    with pytest.raises(HatNotFoundError) as info:
        GroveBaseHatADC(bus)
    message = str(info.value)
    assert "0x04" in message and "0x08" in message and "I2C enabled" in message


def test_transient_eio_is_retried_and_counted():
    bus = make_bus(mv=3300.0)
    adc = GroveBaseHatADC(bus, retries=3, retry_delay_s=0)
    bus.fail_next(2)
    assert adc.read_raw(0) == 4095
    assert adc.errors == 2


def test_persistent_eio_raises_i2c_error_naming_the_register():
    bus = make_bus()
    adc = GroveBaseHatADC(bus, retries=2, retry_delay_s=0)
    bus.fail_next(10, errno.EIO)
    with pytest.raises(I2CError, match="register 0x10 .* failed 3 times"):
        adc.read_raw(0)


def test_channel_out_of_range_is_rejected():
    adc = GroveBaseHatADC(make_bus())
    with pytest.raises(ValueError, match="0..7"):
        adc.read_raw(8)
