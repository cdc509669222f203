"""Builds the drivers from a validated config: real ones on a Pi, simulated ones with --simulate.

The simulated hat, person, camera and button go through the same driver classes as the real devices;
only the bus, the pin factory and the camera object differ. On real hardware the GPIO back end is the one
`gpio.pin_factory` names, built before anything else so that a missing one stops start-up (exit 3) with
the package to install, instead of gpiozero quietly falling back to a back end that cannot see the pins.
"""
from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass

from drivers.beat_input import BeatInputLike
from drivers.camera import Camera, OpenCVCamera, Picamera2Camera
from drivers.grove_adc import GroveBaseHatADC, SMBusLike, open_bus
from drivers.gsr import GsrSensor
from drivers.pins import PinFactoryLike, make_pin_factory
from drivers.sim.bus import SimulatedSMBus
from drivers.sim.camera import SimulatedCamera
from drivers.sim.person import SimulatedPerson
from pi.clock import Clock, SimClock
from pi.errors import CameraError, EmptySceneWarning, NoCameraWarning
from pi.physiology.beat_rate import BeatRateEstimator
from pi.physiology.sampler import HeartInput, Sampler

log = logging.getLogger(__name__)

# A sped-up simulated clock multiplies the sampler's real tick rate; past this many real ticks a second
# Python cannot keep the schedule (ticks get skipped), so a fast simulation samples the heart channel at
# the GSR rate instead. The simulated beat pulse (80 ms) is caught at that rate; real time is unaffected.
SIM_MAX_REAL_TICKS_PER_S = 1000.0


@dataclass
class Hardware:
    """Everything the device touches, typed by what it needs of each part, so a simulator or a test double
    that speaks the same Protocol plugs in where the real device would."""

    clock: Clock
    bus: SMBusLike
    adc: GroveBaseHatADC
    sampler: Sampler
    heart: HeartInput
    camera: Camera | None
    camera_name: str
    pin_factory: PinFactoryLike | None
    person: SimulatedPerson | None = None
    gpio_beats: BeatInputLike | None = None
    owns_pin_factory: bool = False

    @property
    def simulated(self) -> bool:
        return self.person is not None

    def close(self) -> None:
        self.sampler.stop()
        if self.gpio_beats is not None:
            self.gpio_beats.close()
        if self.camera is not None:
            self.camera.close()
        self.bus.close()
        if self.owns_pin_factory and self.pin_factory is not None:
            self.pin_factory.close()


def build(cfg: dict, simulate: bool, bus: SMBusLike | None = None, pin_factory: PinFactoryLike | None = None,
          camera: Camera | None = None) -> Hardware:
    """Open (or simulate) the hat, the heart input, the camera and the GPIO pin factory."""
    sim = cfg["sim"]
    owns_pin_factory = False
    if not simulate and pin_factory is None and needs_gpio(cfg):
        pin_factory = make_pin_factory(cfg["gpio"]["pin_factory"])  # PinFactoryError: exit 3, says what to install
        owns_pin_factory = True
    clock = SimClock(sim["speed"]) if simulate else Clock()
    gsr = GsrSensor(cfg["gsr"]["no_contact_reading"], cfg["gsr"]["contact_margin"])
    person = None
    if simulate:
        person = SimulatedPerson(sim["emotion"], seed=sim["seed"], bpm=sim["bpm"],
                                 finger_off_every_s=sim["finger_off_every_s"], gsr=gsr)
        if bus is None:
            bus = SimulatedSMBus(address=cfg["i2c"]["address"] or 0x04, clock=clock)
            bus.absent = not sim["hat_present"]
            person.attach(bus, cfg["gsr"]["channel"], cfg["heart"]["channel"])
        if pin_factory is None:
            from gpiozero.pins.mock import MockFactory

            pin_factory = MockFactory()
    elif bus is None:
        bus = open_bus(cfg["i2c"]["bus"])
    adc = GroveBaseHatADC(bus, cfg["i2c"]["address"], retries=cfg["i2c"]["retries"])
    hc = cfg["heart"]
    estimator = BeatRateEstimator(hc["min_bpm"], hc["max_bpm"], hc["window_s"])
    rate_hz, gsr_rate_hz = sampling_rates(cfg, simulate)
    heart = HeartInput(hc["source"], estimator, rate_hz, hc["threshold_mv"], hc["hysteresis_mv"])
    gpio_beats = None
    if hc["source"] == "gpio":
        from drivers.beat_input import GpioBeatInput

        gpio_beats = GpioBeatInput(hc["gpio_pin"], estimator.add_beat, clock, pin_factory)
    sampler = Sampler(adc, gsr, heart, clock, rate_hz, cfg["gsr"]["channel"], hc["channel"],
                      gsr_rate_hz=gsr_rate_hz)
    camera_name = "injected"
    if camera is None:
        camera, camera_name = open_camera(cfg, simulate, clock, person)
    return Hardware(clock, bus, adc, sampler, heart, camera, camera_name, pin_factory, person, gpio_beats,
                    owns_pin_factory)


def needs_gpio(cfg: dict) -> bool:
    """Whether anything configured uses a GPIO pin (the button, or the ear clip on heart.source gpio)."""
    return bool(cfg["button"]["enabled"]) or cfg["heart"]["source"] == "gpio"


def sampling_rates(cfg: dict, simulate: bool) -> tuple[float, float]:
    """The sampler's tick (heart-channel) rate and GSR rate; a sped-up simulation ticks at the GSR rate."""
    rate_hz, gsr_rate_hz = cfg["sampling"]["rate_hz"], cfg["sampling"]["gsr_rate_hz"]
    speed = cfg["sim"]["speed"]
    if simulate and rate_hz * speed > SIM_MAX_REAL_TICKS_PER_S and rate_hz > gsr_rate_hz:
        log.info("sim.speed %g: sampling the simulated heart channel at %g Hz, not %g (%g real ticks a second "
                 "would be more than the loop keeps up with)", speed, gsr_rate_hz, rate_hz, rate_hz * speed)
        return gsr_rate_hz, gsr_rate_hz
    return rate_hz, gsr_rate_hz


def open_camera(cfg: dict, simulate: bool, clock: Clock | None, person: SimulatedPerson | None
                ) -> tuple[Camera | None, str]:
    """The configured camera, or None (with a NoCameraWarning) when there is none to be had."""
    cam = cfg["camera"]
    try:
        if simulate:
            faces = cfg["sim"]["faces"]
            if faces is not None and not os.path.exists(faces):
                warnings.warn(f"sim.faces {faces} not found; the simulated camera shows an empty scene",
                              EmptySceneWarning, stacklevel=2)
                faces = None
            feels = (lambda: person.emotion) if person is not None else (lambda: "neutral")
            return SimulatedCamera(faces, emotion=feels, width=cam["width"],
                                   height=cam["height"], seed=cfg["sim"]["seed"]), "simulated"
        if cam["backend"] == "none":
            return None, "none"
        if cam["backend"] == "picamera2":
            return Picamera2Camera(cam["width"], cam["height"]), "picamera2"
        return OpenCVCamera(cam["device"], cam["width"], cam["height"]), "opencv"
    except CameraError as exc:
        warnings.warn(f"no camera ({exc}); detections use physiology alone", NoCameraWarning, stacklevel=2)
        return None, "none"
