"""The MQTT message schemas (flat JSON objects, `schema` = SCHEMA_VERSION). Documented in the README.

Every message carries `msg_id`, stable across retries (device_id/session_or_request/seq), so a consumer
can drop the duplicates that at-least-once (QoS 1) delivery may produce.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

SCHEMA_VERSION = 1


def iso_utc(epoch: float) -> str:
    """UTC ISO 8601 with milliseconds and a Z, e.g. 2026-11-24T04:05:06.789Z."""
    return datetime.fromtimestamp(epoch, tz=timezone.utc).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), digits)


def train_record(device_id: str, user: str, session_id: str, seq: int, label: str, second) -> dict:
    """One labelled second of physiology for `iotsensors/train`."""
    return {
        "schema": SCHEMA_VERSION, "type": "train", "msg_id": f"{device_id}/{session_id}/{seq}",
        "device_id": device_id, "user": user, "session_id": session_id, "seq": seq,
        "timestamp": iso_utc(second.wall), "mood": label,
        "skin_conductance": _round(second.skin_conductance, 4), "bpm": _round(second.bpm, 1),
        "quality": second.quality, "sensor": second.sensor, "contact": _round(second.contact, 2),
        "hr_quality": _round(second.hr_quality, 2), "i2c_errors": second.i2c_errors,
    }


def window_message(device_id: str, user: str, request_id: str, seconds: Sequence, summary: dict,
                   frames: int, faces: int, camera: str) -> dict:
    """A detection window for `iotsensors/infer`: the per-second series and its summary.

    `bpm_series` holds only rates that pass the quality gate (`SecondRecord.gated_bpm`), as `bpm_mean` does.
    """
    return {
        "schema": SCHEMA_VERSION, "type": "window", "msg_id": f"{device_id}/{request_id}/window",
        "device_id": device_id, "user": user, "request_id": request_id,
        "started": iso_utc(seconds[0].wall - 1.0) if seconds else None,
        "ended": iso_utc(seconds[-1].wall) if seconds else None,
        "window_s": len(seconds),
        **{k: _round(v, 6 if k.startswith("feature_") else 4) if isinstance(v, float) else v
           for k, v in summary.items()},
        "skin_conductance_series": [_round(s.skin_conductance, 4) for s in seconds],
        "bpm_series": [_round(s.gated_bpm, 1) for s in seconds],
        "quality_series": [s.quality for s in seconds],
        "frames": frames, "faces": faces, "camera": camera,
    }


def result_message(device_id: str, user: str, request_id: str, wall: float, result: dict,
                   face_classes: Sequence[str], face_probabilities: Sequence[float] | None) -> dict:
    """The outcome of a detection for `iotsensors/infer/result`."""
    message = {
        "schema": SCHEMA_VERSION, "type": "result", "msg_id": f"{device_id}/{request_id}/result",
        "device_id": device_id, "user": user, "request_id": request_id, "timestamp": iso_utc(wall),
    }
    for key, value in result.items():
        message[key] = _round(value, 4) if isinstance(value, float) else value
    for i, name in enumerate(face_classes):
        message[f"face_{name}"] = None if face_probabilities is None else _round(face_probabilities[i], 4)
    return message


def status_message(device_id: str, state: str, wall: float, **extra: Any) -> dict:
    return {"schema": SCHEMA_VERSION, "type": "status", "device_id": device_id, "state": state,
            "timestamp": iso_utc(wall), **extra}


def error_message(device_id: str, wall: float, error: str, source: str, excerpt: str = "") -> dict:
    return {"schema": SCHEMA_VERSION, "type": "error", "device_id": device_id, "timestamp": iso_utc(wall),
            "source": source, "error": error, "payload_excerpt": excerpt[:200]}


def encode(message: dict) -> bytes:
    return json.dumps(message, separators=(",", ":"), allow_nan=False).encode()
