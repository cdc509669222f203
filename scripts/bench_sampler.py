#!/usr/bin/env python3
"""CPU cost of the sampling loop at several heart-channel rates, printed as JSON.

Runs the real Sampler on the real clock against the simulated hat and person (the GSR at 50 Hz, the heart
channel at each rate) for `--seconds` each, and reports the process's CPU time as a share of one core,
skipped (late) ticks and register reads a second. On a Pi the reads are smbus2 ioctls instead of the
simulator's Python, so treat the figures as the loop's own overhead plus a simulated bus.

    .venv/bin/python scripts/bench_sampler.py --seconds 10 > build/sampler_bench.json
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from drivers.grove_adc import GroveBaseHatADC  # noqa: E402
from drivers.sim.bus import SimulatedSMBus  # noqa: E402
from drivers.sim.person import SimulatedPerson  # noqa: E402
from pi.clock import Clock  # noqa: E402
from pi.physiology.beat_rate import BeatRateEstimator  # noqa: E402
from pi.physiology.sampler import HeartInput, Sampler  # noqa: E402


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run(rate_hz: float, gsr_rate_hz: float, seconds: float) -> dict:
    """Sample for `seconds` of real time at `rate_hz`; CPU share, late ticks and reads of that run."""
    clock = Clock()
    person = SimulatedPerson("neutral", seed=1, bpm=72)
    bus = SimulatedSMBus(clock=clock)
    person.attach(bus, 0, 4)
    adc = GroveBaseHatADC(bus)
    records = []
    heart = HeartInput("adc", BeatRateEstimator(30, 220, 10), rate_hz, 1650, 200)
    sampler = Sampler(adc, person.gsr, heart, clock, rate_hz, 0, 4, on_second=records.append,
                      gsr_rate_hz=gsr_rate_hz)
    bus.transactions = type(bus.transactions)(maxlen=None)  # count every read of the run
    c0, t0 = cpu_seconds(), time.monotonic()
    sampler.start()
    time.sleep(seconds)
    sampler.stop()
    cpu, wall = cpu_seconds() - c0, time.monotonic() - t0
    bpms = [r.bpm for r in records[-3:] if r.bpm is not None]
    return {"rate_hz": rate_hz, "gsr_rate_hz": gsr_rate_hz, "seconds": round(wall, 2),
            "cpu_percent_of_one_core": round(100 * cpu / wall, 2),
            "ticks": sum(r.samples for r in records), "late_ticks": sum(r.late_ticks for r in records),
            "reads_per_s": round(len(bus.transactions) / wall, 1),
            "bpm_last": round(sum(bpms) / len(bpms), 1) if bpms else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rates", default="50,100,200", help="heart-channel rates in Hz, comma-separated")
    args = parser.parse_args()
    runs = [run(float(r), 50.0, args.seconds) for r in args.rates.split(",")]
    print(json.dumps({"machine": platform.machine(), "python": platform.python_version(),
                      "processor": platform.processor() or None, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
