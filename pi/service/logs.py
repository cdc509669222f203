"""Structured logs: one JSON object per line on stderr (journald keeps them), or plain text."""
from __future__ import annotations

import json
import logging
import sys
import time
import warnings


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                 + f".{int(record.msecs):03d}Z",
                 "level": record.levelname, "logger": record.name, "msg": record.getMessage()}
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup(level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)  # DegradedWarning lands in the log as a WARNING line
    logging.getLogger("AWSIoTPythonSDK").setLevel(max(logging.WARNING, root.level))  # chatty at INFO
    warnings.simplefilter("default")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="AWSIoTPythonSDK")
    warnings.formatwarning = lambda message, category, *_, **__: f"{category.__name__}: {message}"
