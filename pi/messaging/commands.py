"""MQTT commands to the device: parsed strictly, each problem reported with the field it concerns.

    {"command": "detect", "window_s": 10, "request_id": "optional-id"}
    {"command": "collect", "label": "happy", "duration_s": 60}
    {"command": "stop"}            # ends a running collect session early
and, on the feedback topic, a carer's correction of a result:
    {"request_id": "id-of-the-result", "label": "sad"}

Each command is its own small type, so a consumer gets exactly the fields that command has (a Collect
always has a label and a duration). Anything the parser rejects raises CommandError with a message that
names the problem, hostile input included (huge integers, deep nesting, NaN).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import ClassVar, Union

from pi.errors import CommandError

MAX_COMMAND_BYTES = 16 * 1024
MAX_DEPTH = 8  # commands are flat; anything nested deeper is refused before the JSON parser recurses
MAX_INT_DIGITS = 20
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

# the longest detection window anyone may ask for (command, CLI, config): the sampler's records are held in memory
MAX_WINDOW_S = 300.0


@dataclass(frozen=True)
class Detect:
    kind: ClassVar[str] = "detect"
    window_s: float | None = None  # None: detect.window_s from the config
    request_id: str | None = None  # None: the device draws one


@dataclass(frozen=True)
class Collect:
    label: str
    duration_s: float
    kind: ClassVar[str] = "collect"


@dataclass(frozen=True)
class Stop:
    kind: ClassVar[str] = "stop"


@dataclass(frozen=True)
class Feedback:
    request_id: str
    label: str
    kind: ClassVar[str] = "feedback"


Command = Union[Detect, Collect, Stop]
Job = Union[Detect, Collect, Feedback]  # what the daemon's job loop runs


def _number(obj: dict, key: str, low: float, high: float) -> float | None:
    if key not in obj:
        return None
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CommandError(f"'{key}' must be a number, got {type(value).__name__}")
    if not low <= value <= high:  # NaN is refused at parsing; ints are bounded to MAX_INT_DIGITS there
        raise CommandError(f"'{key}' must be between {low:g} and {high:g}, got {float(value):g}")
    return float(value)


def _bounded_int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        raise CommandError(f"an integer with {digits} digits; at most {MAX_INT_DIGITS} are accepted")
    return int(text)


def _no_constant(name: str) -> float:
    raise CommandError(f"{name}, which is not a number JSON allows")


def _depth(text: str) -> int:
    """The deepest bracket nesting outside strings, counted without recursion."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def json_object(payload: bytes, what: str) -> dict:
    """The payload as a JSON object, or a CommandError saying why it is not one (size checked first)."""
    if len(payload) > MAX_COMMAND_BYTES:
        raise CommandError(f"{what} is {len(payload)} bytes; the limit is {MAX_COMMAND_BYTES}")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CommandError(f"{what} is not JSON: not UTF-8 ({exc})") from None
    depth = _depth(text)
    if depth > MAX_DEPTH:
        raise CommandError(f"{what} is nested {depth} levels deep; at most {MAX_DEPTH} are accepted")
    try:
        obj = json.loads(text, parse_int=_bounded_int, parse_constant=_no_constant)
    except CommandError as exc:  # from _bounded_int or _no_constant
        raise CommandError(f"{what} has {exc}") from None
    except json.JSONDecodeError as exc:
        raise CommandError(f"{what} is not JSON: {exc}") from None
    except (ValueError, RecursionError, OverflowError) as exc:  # the parser's own limits, as a backstop
        raise CommandError(f"{what} is not acceptable JSON: {type(exc).__name__}: {exc}") from None
    if not isinstance(obj, dict):
        raise CommandError(f"{what} must be a JSON object, got {type(obj).__name__}")
    return obj


def parse_command(payload: bytes, labels: list[str], max_window_s: float = MAX_WINDOW_S) -> Command:
    """Parse one command payload; raise CommandError naming what is wrong."""
    obj = json_object(payload, "command")
    kind = obj.get("command")
    known = {"detect": {"command", "window_s", "request_id"},
             "collect": {"command", "label", "duration_s"}, "stop": {"command"}}
    if not isinstance(kind, str) or kind not in known:
        raise CommandError(f"'command' must be one of {', '.join(known)}; got {_excerpt(kind)}")
    unknown = set(obj) - known[kind]
    if unknown:
        raise CommandError(f"unknown field(s) for {kind}: {', '.join(sorted(map(_excerpt, unknown)))}")
    if kind == "detect":
        request_id = obj.get("request_id")
        if request_id is not None and (not isinstance(request_id, str) or not REQUEST_ID_RE.fullmatch(request_id)):
            raise CommandError("'request_id' must be 1-64 characters of letters, digits, _ . -")
        return Detect(window_s=_number(obj, "window_s", 1, max_window_s), request_id=request_id)
    if kind == "collect":
        label = obj.get("label")
        if not isinstance(label, str):
            raise CommandError("'label' is required and must be a string")
        if label not in labels:
            raise CommandError(f"unknown label {_excerpt(label)}; known: {', '.join(labels)}")
        duration = _number(obj, "duration_s", 1, 86400)
        if duration is None:
            raise CommandError("'duration_s' is required for collect")
        return Collect(label=label, duration_s=duration)
    return Stop()


def parse_feedback(payload: bytes, labels: list[str]) -> Feedback:
    """A carer's correction: {"request_id": "...", "label": "sad"}; raise CommandError naming the problem."""
    obj = json_object(payload, "feedback")
    unknown = set(obj) - {"request_id", "label"}
    if unknown:
        raise CommandError(f"unknown field(s) in feedback: {', '.join(sorted(map(_excerpt, unknown)))}")
    request_id, label = obj.get("request_id"), obj.get("label")
    if not isinstance(request_id, str) or not REQUEST_ID_RE.fullmatch(request_id):
        raise CommandError("'request_id' is required: 1-64 characters of letters, digits, _ . -")
    if not isinstance(label, str) or label not in labels:
        raise CommandError(f"'label' must be one of {', '.join(labels)}; got {_excerpt(label)}")
    return Feedback(request_id, label)


def _excerpt(value: object, limit: int = 40) -> str:
    """repr() cut short: an error message must not echo a 16 KB field back."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
