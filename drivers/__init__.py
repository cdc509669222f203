"""Hardware drivers and their faithful simulators.

Every driver takes its bus/pin factory/camera explicitly (no globals), so the simulated device plugs in
through the same code path as the real one.
"""
