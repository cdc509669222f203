"""Offline simulation of whole collect sessions: a simulated person, the real signal chain (simulated
hat registers -> ADC driver -> sampler) on a manual clock, and the same train-record messages the device
publishes. Used to evaluate the personal model and by the tests; runs far faster than real time."""
from __future__ import annotations

from drivers.grove_adc import GroveBaseHatADC
from drivers.sim.bus import SimulatedSMBus
from drivers.sim.person import SimulatedPerson
from pi.clock import ManualClock
from pi.messaging import messages
from pi.physiology.beat_rate import BeatRateEstimator
from pi.physiology.sampler import HeartInput, Sampler, SecondRecord


def simulate_session(emotion: str, seconds: int, *, seed: int, baseline_us: float, hr_offset: float,
                     user: str = "sim", session_id: str | None = None, device_id: str = "sim-device",
                     rate_hz: int = 50, warm_up_s: int = 5, start_wall: float | None = None) -> list[dict]:
    """Train records of one session of `seconds` in which the person feels `emotion`.

    `start_wall` (epoch seconds) is when the session's first recorded second ends; sessions given
    consecutive times follow one another like a worn protocol and share history (pi.personal.model.timelines).
    """
    clock = ManualClock() if start_wall is None else ManualClock(wall0=start_wall - warm_up_s - 1.0)
    person = SimulatedPerson(emotion, seed=seed, baseline_us=baseline_us, hr_offset=hr_offset)
    bus = SimulatedSMBus(clock=clock)
    person.attach(bus, 0, 4)
    heart = HeartInput("adc", BeatRateEstimator(30, 220, 10), rate_hz, 1650, 200)
    seconds_out: list[SecondRecord] = []
    sampler = Sampler(GroveBaseHatADC(bus, retry_delay_s=0), person.gsr, heart, clock, rate_hz,
                      on_second=seconds_out.append)
    for k in range(1, (seconds + warm_up_s) * rate_hz + 1):
        clock.t = k / rate_hz
        sampler.sample_once(clock.t)
        if k % rate_hz == 0:
            sampler.end_second(clock.t)
    session_id = session_id or f"{user}-{emotion}-{seed}"
    return [messages.train_record(device_id, user, session_id, i, emotion, s)
            for i, s in enumerate(seconds_out[warm_up_s:])]
