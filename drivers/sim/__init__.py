"""Simulated hardware that speaks the real devices' protocols: the I2C bus with its hat, a wearer's body, a
camera, a button.
"""
