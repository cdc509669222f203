"""Where results go: the real stdout, while everything else that prints goes to stderr.

Third-party libraries print too (the AWS IoT SDK prints its socket errors), so the CLI points sys.stdout at
stderr for the duration of a command and writes results here; stdout stays machine-readable.
"""
from __future__ import annotations

import sys
from typing import TextIO

RESULTS: TextIO = sys.stdout


def emit(text: str) -> None:
    """One result line on the real stdout."""
    RESULTS.write(text + "\n")
    RESULTS.flush()
