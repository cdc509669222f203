"""emotion-edge: the Raspberry Pi daemon that tells how a person feels from face and physiology."""

__version__ = "0.1.0"
