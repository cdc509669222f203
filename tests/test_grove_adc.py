import errno

import pytest

from drivers.grove_adc import REGISTERS, GroveBaseHatADC
from drivers.sim.bus import SimulatedSMBus
from pi.errors import HatNotFoundError, I2CError


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
    bus = make_bus(address=0x08, pid=0x0005)
    adc = GroveBaseHatADC(bus)
    assert adc.address == 0x08
    assert "Zero" in adc.name


def test_raw_and_voltage_registers_and_their_bytes():
    bus = make_bus(mv=1650.0)
    adc = GroveBaseHatADC(bus, address=0x04)
    assert adc.read_raw(0) == 2048  # 1650 mV of 3300 mV full scale, 12 bits
    assert bus.transactions[-1] == (0x04, 0x10, 2, [0x00, 0x08])  # little-endian word 0x0800
    assert adc.read_voltage_mv(0) == 1650
    assert bus.transactions[-1] == (0x04, 0x20, 2, [0x72, 0x06])  # 0x0672 = 1650
    assert adc.read_raw(3) == 0  # unconnected input
    assert bus.transactions[-1][1] == 0x13


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
