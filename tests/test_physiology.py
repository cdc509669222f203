"""The signal chain on simulated people: simulator -> simulated hat registers -> ADC driver -> sampler."""
import pytest

from drivers.beat_input import GpioBeatInput
from drivers.grove_adc import GroveBaseHatADC
from drivers.sim.bus import SimulatedSMBus
from drivers.sim.person import SimulatedPerson
from pi.physiology.beat_rate import BeatRateEstimator
from pi.physiology.sampler import HeartInput, Sampler


def make_chain(clock, person, rate_hz=50.0, source="adc"):
    bus = SimulatedSMBus(clock=clock)
    person.attach(bus, 0, 4)
    adc = GroveBaseHatADC(bus, retry_delay_s=0)
    heart = HeartInput(source, BeatRateEstimator(30, 220, 10), rate_hz, 1650, 200)
    records = []
    sampler = Sampler(adc, person.gsr, heart, clock, rate_hz, 0, 4, on_second=records.append)
    return sampler, bus, records


def run_seconds(sampler, clock, seconds, rate_hz=50):
    start = clock.t
    n = int(seconds * rate_hz)
    for k in range(1, n + 1):
        clock.t = start + k / rate_hz
        sampler.sample_once(clock.t)
        if k % rate_hz == 0:
            sampler.end_second(clock.t)


@pytest.mark.parametrize("bpm", [40, 60, 90, 120, 150, 180])
def test_bpm_within_2_of_the_simulated_rate(manual_clock, bpm):
    person = SimulatedPerson("neutral", seed=bpm, bpm=bpm)
    sampler, _, records = make_chain(manual_clock, person)
    run_seconds(sampler, manual_clock, 30)
    settled = [r.bpm for r in records[12:]]
    assert all(b is not None for b in settled)
    assert max(abs(b - bpm) for b in settled) <= 2.0, settled


def test_spurious_pulses_are_rejected(manual_clock):
    person = SimulatedPerson("neutral", seed=3, bpm=75, glitch_prob=0.3)
    sampler, _, records = make_chain(manual_clock, person)
    run_seconds(sampler, manual_clock, 30)
    assert abs(records[-1].bpm - 75) <= 2
    assert records[-1].hr_quality < 1.0  # the glitches were seen and dropped


def test_conductance_matches_the_simulated_person(manual_clock):
    person = SimulatedPerson("neutral", seed=1, baseline_us=5.0)
    sampler, _, records = make_chain(manual_clock, person)
    run_seconds(sampler, manual_clock, 10)
    for r in records:
        truth = person.conductance_us(r.t - 0.5)
        assert r.skin_conductance == pytest.approx(truth, rel=0.08)
        assert r.contact == 1.0


def test_emotions_move_the_body_in_the_expected_direction(manual_clock):
    means = {}
    for emotion in ("sad", "neutral", "angry"):
        clock = type(manual_clock)()
        person = SimulatedPerson(emotion, seed=7, baseline_us=4.0, hr_offset=0.0)
        sampler, _, records = make_chain(clock, person)
        run_seconds(sampler, clock, 20)
        tail = records[10:]
        means[emotion] = (sum(r.skin_conductance for r in tail) / len(tail),
                          sum(r.bpm for r in tail) / len(tail))
    assert means["sad"][0] < means["neutral"][0] < means["angry"][0]
    assert means["sad"][1] < means["neutral"][1] < means["angry"][1]


def test_finger_off_episode_is_flagged_and_recovers(manual_clock):
    person = SimulatedPerson("happy", seed=2, finger_off_every_s=30, finger_off_s=8)
    sampler, _, records = make_chain(manual_clock, person)
    run_seconds(sampler, manual_clock, 60)
    off = [r for r in records if 23 <= r.t <= 29]  # episode: 22 s < t < 30 s
    assert off and all(r.quality == "no_contact" and r.skin_conductance is None for r in off)
    assert all(r.bpm is None for r in records if 26 <= r.t <= 29)  # beats stopped too
    back = next(r for r in records if r.t == 45)  # contact again from 30 s; beats re-established
    assert back.quality in ("ok", "poor") and back.bpm is not None


def test_i2c_burst_costs_samples_not_the_loop(manual_clock, caplog):
    person = SimulatedPerson("neutral", seed=4)
    sampler, bus, records = make_chain(manual_clock, person)
    run_seconds(sampler, manual_clock, 3)
    bus.fail_next(40)  # more than the driver's retries for several samples
    run_seconds(sampler, manual_clock, 2)
    run_seconds(sampler, manual_clock, 2)
    assert records[3].i2c_errors > 0 and records[3].quality == "poor"
    assert "I2C:" in caplog.text and "failed sample(s) in the last second" in caplog.text
    assert records[-1].i2c_errors == 0 and records[-1].skin_conductance is not None


def test_gpio_ear_clip_edges_give_bpm(manual_clock):
    from gpiozero.pins.mock import MockFactory

    factory = MockFactory()
    estimator = BeatRateEstimator(30, 220, 10)
    gpio = GpioBeatInput(17, estimator.add_beat, manual_clock, pin_factory=factory)
    pin = factory.pin(17)
    for beat in range(20):
        manual_clock.t = beat * 0.75  # 80 BPM
        pin.drive_high()
        manual_clock.t += 0.05
        pin.drive_low()
    assert estimator.rate(manual_clock.t).bpm == pytest.approx(80, abs=0.5)
    gpio.close()


def test_estimator_recovers_from_a_doubled_reference():
    """A missed-beat start (intervals of 1.6 s) must not lock the rate at half its true value."""
    estimator = BeatRateEstimator(30, 220, 10)
    t = 0.0
    for step in (1.6, 1.6, 0.8):
        estimator.add_beat(t)
        t += step
    for _ in range(39):
        estimator.add_beat(t)
        t += 0.8
    assert estimator.rate(t).bpm == pytest.approx(75, abs=1)
