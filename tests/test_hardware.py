"""Wiring the drivers from the config: sampling rates on real and simulated clocks."""
import logging

from drivers.sim.bus import SimulatedSMBus
from pi.service import config
from pi.service.hardware import build


def test_real_hardware_samples_the_heart_channel_at_200_hz_and_the_gsr_at_50():
    hw = build(config.load(None, ["camera.backend=none", "gpio.pin_factory=mock"]), simulate=False,
               bus=SimulatedSMBus())
    assert hw.sampler.rate_hz == 200 and hw.sampler.gsr_every == 4
    hw.close()


def test_a_sped_up_simulation_ticks_at_the_gsr_rate(caplog):
    caplog.set_level(logging.INFO, logger="pi.service.hardware")
    hw = build(config.load(None, ["sim.speed=20", "sim.faces=null"]), simulate=True)
    assert hw.sampler.rate_hz == 50 and hw.sampler.gsr_every == 1
    assert "sampling the simulated heart channel at 50 Hz, not 200" in caplog.text
    hw.close()
    hw = build(config.load(None, ["sim.speed=1", "sim.faces=null"]), simulate=True)
    assert hw.sampler.rate_hz == 200  # a real-time simulation runs the real rates
    hw.close()
