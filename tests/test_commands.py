import json

import pytest

from pi.errors import CommandError
from pi.messaging.commands import MAX_COMMAND_BYTES, parse_command

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
