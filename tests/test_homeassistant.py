"""Home Assistant MQTT discovery: the payloads carry the keys Home Assistant's discovery schema requires,
and over a real Mosquitto the retained configs are there for a late subscriber, the state topic fills, and
pressing the button entity (publishing its payload_press to its command_topic) runs a detection."""
from __future__ import annotations

import json
import re

from webutil import Daemon

from pi.messaging import homeassistant
from pi.service import config

TOPIC_RE = re.compile(r"^homeassistant/(sensor|button)/[A-Za-z0-9_-]+/[A-Za-z0-9_-]+/config$")


def test_discovery_payloads_follow_the_schema():
    cfg = config.load(None, ["homeassistant.enabled=true", "device.id=pi.kitchen:1"])
    messages = homeassistant.discovery_messages(cfg, "0.1.0")
    components = [topic.split("/")[1] for topic, _ in messages]
    assert components.count("sensor") == 6 and components.count("button") == 1
    unique = set()
    for topic, payload in messages:
        assert TOPIC_RE.fullmatch(topic), topic
        assert {"name", "unique_id", "device", "availability"} <= set(payload)
        assert payload["device"]["identifiers"] == ["emotion_edge_pi_kitchen_1"]
        assert payload["availability"] == [{"topic": "iotsensors/pi.kitchen:1/status",
                                            "value_template": "{{ value_json.state }}",
                                            "payload_available": "online", "payload_not_available": "offline"}]
        unique.add(payload["unique_id"])
        if topic.split("/")[1] == "sensor":
            assert payload["state_topic"] == "iotsensors/pi.kitchen:1/state"
            assert re.fullmatch(r"\{\{ value_json\.[a-z_]+ \}\}", payload["value_template"])
        else:
            assert payload["command_topic"] == "iotsensors/pi.kitchen:1/command"
            assert json.loads(payload["payload_press"]) == {"command": "detect"}
    assert len(unique) == len(messages)
    units = {p["unique_id"].rsplit("_", 1)[-1]: p.get("unit_of_measurement") for _, p in messages}
    assert units["conductance"] == "µS" and units["bpm"] == "bpm"


def test_home_assistant_sees_the_device_and_its_button_runs_a_detection(broker, recorder, tmp_path):
    d = Daemon(broker, tmp_path / "data", "homeassistant.enabled=true", "homeassistant.state_every_s=2",
               "detect.window_s=2")
    try:
        rec = recorder(["homeassistant/#", "iotsensors/#"])  # subscribes after the device published: retained
        assert rec.wait_for(lambda: sum(t.startswith("homeassistant/") for t, _ in rec.messages) >= 7, 20)
        configs = {t: p for t, p in rec.messages if t.startswith("homeassistant/")}
        button = configs["homeassistant/button/emotion-pi-01/detect/config"]
        status_topic = button["availability"][0]["topic"]
        assert rec.wait_for(lambda: any(p.get("state") == "online" for p in rec.on(status_topic)), 10)
        state_topic = configs["homeassistant/sensor/emotion-pi-01/bpm/config"]["state_topic"]
        assert rec.wait_for(lambda: len(rec.on(state_topic)) >= 1, 20)
        assert {"emotion", "confidence_pct", "skin_conductance", "bpm", "arousal",
                "outbox_pending"} <= set(rec.on(state_topic)[-1])
        rec.publish(button["command_topic"], button["payload_press"].encode())  # what Home Assistant sends
        assert rec.wait_for(lambda: len(rec.on("iotsensors/infer/result")) == 1, 30)
        result = rec.on("iotsensors/infer/result")[0]
        assert rec.wait_for(lambda: any(p.get("request_id") == result["request_id"] for p in rec.on(state_topic)),
                            20)
    finally:
        d.stop()
    assert rec.wait_for(lambda: rec.on(status_topic)[-1]["state"] == "offline", 10)
