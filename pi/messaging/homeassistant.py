"""Home Assistant MQTT discovery: the device appears as one device with sensors and a button.

Follows Home Assistant's documented discovery schema: one retained config message per entity on
`<discovery_prefix>/<component>/<node_id>/<object_id>/config`, each with a `unique_id` and the same
`device` block (so they group under one device), and `availability` read from the device's retained
status topic, whose last will says offline when the connection is lost. The sensors read one retained
state message (`homeassistant.state_topic`); the button publishes a detect command to the device's own
command topic, so pressing it in Home Assistant runs a detection like any MQTT command."""
from __future__ import annotations

import re

from pi.messaging.messages import SCHEMA_VERSION, iso_utc

# object_id -> (name, value key in the state message, extra discovery keys)
SENSORS: dict[str, tuple[str, str, dict]] = {
    "emotion": ("Emotion", "emotion", {"icon": "mdi:emoticon-outline"}),
    "confidence": ("Confidence", "confidence_pct", {"unit_of_measurement": "%", "state_class": "measurement",
                                                    "icon": "mdi:percent"}),
    "skin_conductance": ("Skin conductance", "skin_conductance",
                         {"unit_of_measurement": "µS", "state_class": "measurement", "icon": "mdi:water-percent",
                          "suggested_display_precision": 2}),
    "bpm": ("Heart rate", "bpm", {"unit_of_measurement": "bpm", "state_class": "measurement",
                                  "icon": "mdi:heart-pulse", "suggested_display_precision": 0}),
    "arousal": ("Arousal", "arousal", {"device_class": "enum", "options": ["low", "moderate", "high", "unknown"],
                                       "icon": "mdi:pulse"}),
    "outbox_pending": ("Outbox depth", "outbox_pending", {"unit_of_measurement": "messages",
                                                          "state_class": "measurement",
                                                          "entity_category": "diagnostic", "icon": "mdi:tray-full"}),
}


def node_id(device_id: str) -> str:
    """Home Assistant allows [a-zA-Z0-9_-] in node and object ids."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", device_id)


def device_block(device_id: str, version: str) -> dict:
    return {"identifiers": [f"emotion_edge_{node_id(device_id)}"], "name": f"emotion-edge {device_id}",
            "manufacturer": "emotion-edge", "model": "Raspberry Pi 3 with Grove GSR and ear-clip heart rate",
            "sw_version": version}


def discovery_messages(cfg: dict, version: str) -> list[tuple[str, dict]]:
    """(topic, payload) of every entity's retained discovery config."""
    device_id = cfg["device"]["id"]
    prefix, node = cfg["homeassistant"]["discovery_prefix"], node_id(device_id)
    common = {
        "device": device_block(device_id, version),
        "availability": [{"topic": cfg["mqtt"]["status_topic"], "value_template": "{{ value_json.state }}",
                          "payload_available": "online", "payload_not_available": "offline"}],
        "qos": 1,
    }
    out = []
    for object_id, (name, key, extra) in SENSORS.items():
        out.append((f"{prefix}/sensor/{node}/{object_id}/config", {
            "name": name, "unique_id": f"{node}_{object_id}", "object_id": f"{node}_{object_id}",
            "state_topic": cfg["homeassistant"]["state_topic"],
            "value_template": f"{{{{ value_json.{key} }}}}", **extra, **common}))
    out.append((f"{prefix}/button/{node}/detect/config", {
        "name": "Detect my emotion", "unique_id": f"{node}_detect", "object_id": f"{node}_detect",
        "command_topic": cfg["mqtt"]["command_topic"], "payload_press": '{"command": "detect"}',
        "icon": "mdi:account-search", **common}))
    return out


def state_message(device_id: str, wall: float, result: dict | None, second: dict | None,
                  outbox_pending: int) -> dict:
    """What the sensors show: the last result, the last second's physiology, the outbox depth."""
    result, second = result or {}, second or {}
    confidence = result.get("confidence")
    return {"schema": SCHEMA_VERSION, "type": "ha_state", "device_id": device_id, "timestamp": iso_utc(wall),
            "emotion": result.get("emotion"), "confidence": confidence,
            "confidence_pct": None if confidence is None else round(100 * confidence, 1),
            "request_id": result.get("request_id"), "arousal": second.get("arousal", result.get("arousal")),
            "skin_conductance": second.get("skin_conductance"), "bpm": second.get("bpm"),
            "outbox_pending": outbox_pending}
