"""MQTT commands to the device: parsed strictly, each problem reported with the field it concerns.

    {"command": "detect", "window_s": 10, "request_id": "optional-id"}
    {"command": "collect", "label": "happy", "duration_s": 60}
    {"command": "stop"}            # ends a running collect session early
and, on the feedback topic, a carer's correction of a result:
    {"request_id": "id-of-the-result", "label": "sad"}
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

from pi.errors import CommandError

MAX_COMMAND_BYTES = 16 * 1024
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True)
class Command:
    kind: str
    window_s: float | None = None
    request_id: str | None = None
    label: str | None = None
    duration_s: float | None = None


def _number(obj: dict, key: str, low: float, high: float, default=None) -> float | None:
    if key not in obj:
        return default
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CommandError(f"'{key}' must be a number, got {type(value).__name__}")
    if not low <= value <= high:
        raise CommandError(f"'{key}' must be between {low:g} and {high:g}, got {value:g}")
    return float(value)


def _json_object(payload: bytes, what: str) -> dict:
    """The payload as a JSON object, or a CommandError saying why it is not one (size checked first)."""
    if len(payload) > MAX_COMMAND_BYTES:
        raise CommandError(f"{what} is {len(payload)} bytes; the limit is {MAX_COMMAND_BYTES}")
    try:
        obj = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CommandError(f"{what} is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise CommandError(f"{what} must be a JSON object, got {type(obj).__name__}")
    return obj


def parse_command(payload: bytes, labels: list[str], max_window_s: float = 300.0) -> Command:
    """Parse one command payload; raise CommandError naming what is wrong."""
    obj = _json_object(payload, "command")
    kind = obj.get("command")
    known = {"detect": {"command", "window_s", "request_id"},
             "collect": {"command", "label", "duration_s"}, "stop": {"command"}}
    if not isinstance(kind, str) or kind not in known:
        raise CommandError(f"'command' must be one of {', '.join(known)}; got {kind!r}")
    unknown = set(obj) - known[kind]
    if unknown:
        raise CommandError(f"unknown field(s) for {kind}: {', '.join(sorted(map(str, unknown)))}")
    if kind == "detect":
        request_id = obj.get("request_id")
        if request_id is not None and (not isinstance(request_id, str) or not REQUEST_ID_RE.fullmatch(request_id)):
            raise CommandError("'request_id' must be 1-64 characters of letters, digits, _ . -")
        return Command("detect", window_s=_number(obj, "window_s", 1, max_window_s), request_id=request_id)
    if kind == "collect":
        label = obj.get("label")
        if not isinstance(label, str):
            raise CommandError("'label' is required and must be a string")
        if label not in labels:
            raise CommandError(f"unknown label {label!r}; known: {', '.join(labels)}")
        duration = _number(obj, "duration_s", 1, 86400)
        if duration is None:
            raise CommandError("'duration_s' is required for collect")
        return Command("collect", label=label, duration_s=duration)
    return Command("stop")


@dataclass(frozen=True)
class Feedback:
    request_id: str
    label: str


def parse_feedback(payload: bytes, labels: list[str]) -> Feedback:
    """A carer's correction: {"request_id": "...", "label": "sad"}; raise CommandError naming the problem."""
    obj = _json_object(payload, "feedback")
    unknown = set(obj) - {"request_id", "label"}
    if unknown:
        raise CommandError(f"unknown field(s) in feedback: {', '.join(sorted(map(str, unknown)))}")
    request_id, label = obj.get("request_id"), obj.get("label")
    if not isinstance(request_id, str) or not REQUEST_ID_RE.fullmatch(request_id):
        raise CommandError("'request_id' is required: 1-64 characters of letters, digits, _ . -")
    if not isinstance(label, str) or label not in labels:
        raise CommandError(f"'label' must be one of {', '.join(labels)}; got {label!r}")
    return Feedback(request_id, label)
