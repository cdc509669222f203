import pytest

from drivers.gsr import GsrSensor


def test_seeed_formula_scaled_to_12_bits():
    gsr = GsrSensor(no_contact_reading=2048)
    r = gsr.convert(1675)
    assert r.contact
    assert r.resistance_ohm == pytest.approx((4096 + 2 * 1675) * 10000 / (2048 - 1675))
    assert r.conductance_us == pytest.approx(1e6 / r.resistance_ohm)
    assert 4.5 < r.conductance_us < 5.5


def test_no_contact_at_and_above_the_calibration_point():
    gsr = GsrSensor(no_contact_reading=2048, contact_margin=24)
    for raw in (2030, 2048, 3000):
        reading = gsr.convert(raw)
        assert not reading.contact and reading.conductance_us is None


def test_calibration_point_is_configurable():
    # a higher no-finger point means the same reading is further from "open circuit": lower resistance
    assert GsrSensor(2100).convert(1700).conductance_us > GsrSensor(2048).convert(1700).conductance_us


@pytest.mark.parametrize("us", [0.5, 2.0, 5.0, 12.0, 25.0])
def test_inverse_used_by_the_simulator_round_trips(us):
    gsr = GsrSensor()
    raw = gsr.reading_for(us)
    resistance = (4096 + 2 * raw) * 10000 / (2048 - raw)
    assert 1e6 / resistance == pytest.approx(us, rel=1e-9)


def test_out_of_range_reading_is_an_error_not_coerced():
    with pytest.raises(ValueError, match="0..4095"):
        GsrSensor().convert(5000)
