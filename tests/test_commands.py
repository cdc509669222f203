import json

import pytest

from pi.errors import CommandError
from pi.messaging.commands import (
    MAX_COMMAND_BYTES,
    Collect,
    Detect,
    Feedback,
    Stop,
    parse_command,
    parse_feedback,
)

LABELS = ["happy", "sad", "angry"]


def parse(obj):
    return parse_command(json.dumps(obj).encode() if not isinstance(obj, bytes) else obj, LABELS)


def test_valid_commands():
    assert parse({"command": "detect"}).kind == "detect"
    c = parse({"command": "detect", "window_s": 5, "request_id": "abc-1"})
    assert (c.window_s, c.request_id) == (5.0, "abc-1")
    c = parse({"command": "collect", "label": "sad", "duration_s": 60})
    assert (c.label, c.duration_s) == ("sad", 60.0)
    assert parse({"command": "stop"}).kind == "stop"


def test_each_command_is_its_own_type_with_only_its_fields():
    assert parse({"command": "detect"}) == Detect(None, None)
    assert parse({"command": "collect", "label": "sad", "duration_s": 5}) == Collect("sad", 5.0)
    assert parse({"command": "stop"}) == Stop()
    assert parse_feedback(b'{"request_id": "r1", "label": "sad"}', LABELS) == Feedback("r1", "sad")
    assert not hasattr(Stop(), "label") and not hasattr(Detect(), "duration_s")


@pytest.mark.parametrize("payload,needle", [
    (b"not json", "not JSON"),
    (b"\xff\xfe", "not JSON"),
    (b"[1, 2]", "JSON object"),
    ({"command": "explode"}, "'command' must be one of"),
    ({"command": []}, "'command' must be one of"),
    ({"command": "detect", "request_id": "abc\n"}, "request_id"),
    ({"cmd": "detect"}, "'command' must be one of"),
    ({"command": "detect", "window_s": "10"}, "'window_s' must be a number"),
    ({"command": "detect", "window_s": True}, "'window_s' must be a number"),
    ({"command": "detect", "window_s": 0}, "between"),
    ({"command": "detect", "request_id": "../etc"}, "request_id"),
    ({"command": "detect", "colour": "red"}, "unknown field"),
    ({"command": "collect", "label": "ecstatic", "duration_s": 5}, "unknown label 'ecstatic'"),
    ({"command": "collect", "label": 3, "duration_s": 5}, "'label'"),
    ({"command": "collect", "label": "happy"}, "duration_s"),
    (b"{" + b" " * MAX_COMMAND_BYTES + b"}", "limit"),
])
def test_malformed_commands_say_what_is_wrong(payload, needle):
    with pytest.raises(CommandError, match=needle.replace("(", r"\(").replace(".", r"\.")):
        parse(payload)


# hostile payloads, all under the size limit: before, they raised OverflowError, ValueError (Python's
# integer string limit) or RecursionError, which no caller caught, so the sender got no error reply
@pytest.mark.parametrize("payload,needle", [
    (b'{"command": "detect", "window_s": 1' + b"0" * 400 + b"}", "integer with 401 digits"),
    (b'{"command": "detect", "window_s": 1' + b"0" * 5000 + b"}", "integer with 5001 digits"),
    (b'{"command": "detect", "window_s": ' + b"9" * 400 + b".5}", "between 1 and 300, got inf"),
    (b"[" * 15000, "nested 15000 levels deep"),
    (b'{"command": "detect", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}", "nested 5001 levels deep"),
    (b'{"command": "detect", "window_s": NaN}', "NaN"),
    (b'{"command": "detect", "window_s": -Infinity}', "-Infinity"),
    (b'{"command": "detect", "request_id": "[[[[[[[[[[[[[[["}', "request_id"),  # brackets in a string
])
def test_hostile_commands_are_rejected_naming_the_problem(payload, needle):
    assert len(payload) <= MAX_COMMAND_BYTES
    with pytest.raises(CommandError, match=needle.replace("(", r"\(").replace(".", r"\.")):
        parse(payload)
    with pytest.raises(CommandError):
        parse_feedback(payload, LABELS)
