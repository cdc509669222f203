"""Configuration: one YAML file, validated and normalised before any hardware is touched.

A file sets only the keys it changes; `DEFAULTS` (documented in config.yaml and the README) fill the rest.
Every problem is collected and keyed by its dotted path, then raised together as one `ConfigError`, so a
user fixes a broken file in one go. `--set a.b=value` overrides go through the same validation.
"""
from __future__ import annotations

import copy
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from pi import resources
from pi.errors import ConfigError
from pi.messaging.commands import MAX_WINDOW_S
from pi.vision.fer import FER_CLASSES

LABEL_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


@dataclass(frozen=True)
class Field:
    """One config key: its type, default and constraints. `kind` is one of str, int, float, bool, list."""

    kind: str
    default: Any
    doc: str
    choices: tuple = ()
    min: float | None = None
    max: float | None = None
    nullable: bool = False
    check: Callable[[Any], str | None] | None = field(default=None, compare=False)
    secret: bool = False  # never shown: masked in check-config's output and in every error message


MASK = "********"


def _shown(spec: Field, value: Any) -> str:
    """How a value may appear in a message: secrets never do."""
    return f"<{type(value).__name__} hidden>" if spec.secret else repr(value)


def _label_list(value: list) -> str | None:
    if not value:
        return "must name at least one label"
    bad = [v for v in value if not isinstance(v, str) or not LABEL_RE.fullmatch(v)]
    if bad:
        return f"labels must be lower-case words (a-z, 0-9, _ or -), got {bad!r}"
    if len(set(value)) != len(value):
        return "labels must be unique"
    return None


def _view_scales(value: list) -> str | None:
    from pi.vision.fer import FaceViews  # the one place that knows what a valid zoom is

    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value):
        return f"must be a list of numbers, got {value!r}"
    try:
        FaceViews(tuple(float(v) for v in value))
    except ValueError as exc:
        return str(exc)
    return None


def _i2c_address(value: int) -> str | None:
    return None if value in (0x04, 0x08) else f"must be 0x04 (STM32 hat) or 0x08 (MM32 hat), got {value:#04x}"


def _topic(value: str) -> str | None:
    if not value or any(c in value for c in "#+\0") or len(value.encode()) > 256:
        return "must be a non-empty MQTT topic without wildcards (# +), at most 256 bytes"
    return None


def _timezone(value: str) -> str | None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        return f"unknown time zone {value!r} (an IANA name such as Europe/Oslo)"
    return None


def _bind_address(value: str) -> str | None:
    import ipaddress

    try:
        ipaddress.ip_address(value)
    except ValueError:
        return f"must be an IP address such as 127.0.0.1 or 0.0.0.0, got {value!r}"
    return None


def _token(value: str) -> str | None:
    if len(value) < 16 or not re.fullmatch(r"[A-Za-z0-9_.~+/=-]+", value):
        return "must be at least 16 characters of letters, digits and _ . ~ + / = - (emotion-edge web-token " \
               "makes one)"
    return None


EMAIL_RE = re.compile(r"^[^@\s<>,;]+@[^@\s<>,;]+$")


def _address(value: str) -> str | None:
    return None if EMAIL_RE.fullmatch(value) else f"must be an e-mail address, got {value!r}"


def _address_list(value: list) -> str | None:
    bad = [v for v in value if not isinstance(v, str) or not EMAIL_RE.fullmatch(v)]
    return f"must be a list of e-mail addresses, got {bad!r}" if bad else None


SCHEMA: dict[str, dict[str, Field]] = {
    "device": {
        "id": Field("str", "emotion-pi-01", "device id: MQTT client id and `device_id` in every message",
                    check=lambda v: None if re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", v) else
                    "must be 1-64 characters of letters, digits, _ . : -"),
        "user": Field("str", "default", "the wearer; every record carries it and personal models are per user",
                      check=lambda v: None if re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", v) else
                      "must be 1-64 characters of letters, digits, _ . -"),
        "data_dir": Field("str", None, "local store; default $STATE_DIRECTORY or ~/.local/share/emotion-edge",
                          nullable=True),
    },
    "mqtt": {
        "host": Field("str", "127.0.0.1", "broker host name or address"),
        "port": Field("int", 1883, "broker port", min=1, max=65535),
        "keepalive": Field("int", 60, "MQTT keep-alive in seconds", min=5, max=1200),
        "qos": Field("int", 1, "QoS of every publish (AWS IoT Core allows 0 and 1)", choices=(0, 1)),
        "username": Field("str", None, "optional user name", nullable=True),
        "password": Field("str", None, "optional password (prefer password_file: a config file is easier to leak)",
                          nullable=True, secret=True),
        "password_file": Field("str", None, "file holding the password (first line; mode 600, owned by the "
                               "service user)", nullable=True),
        "train_topic": Field("str", "iotsensors/train", "labelled per-second records", check=_topic),
        "infer_topic": Field("str", "iotsensors/infer", "detection windows", check=_topic),
        "result_topic": Field("str", "iotsensors/infer/result", "detection results", check=_topic),
        "command_topic": Field("str", "iotsensors/{device_id}/command", "commands to this device",
                               check=_topic),
        "status_topic": Field("str", "iotsensors/{device_id}/status", "retained online/offline status",
                              check=_topic),
        "error_topic": Field("str", "iotsensors/{device_id}/error", "rejected commands and faults",
                             check=_topic),
        "feedback_topic": Field("str", "iotsensors/{device_id}/feedback", "carer corrections of results",
                                check=_topic),
        "report_topic": Field("str", "iotsensors/{device_id}/report", "summaries of `emotion-edge sleep report "
                              "--publish`", check=_topic),
        "publish_timeout": Field("float", 10.0, "seconds to wait for PUBACKs before exiting", min=0.1, max=600),
        "reconnect_max_delay": Field("float", 30.0, "upper bound of the reconnect back-off", min=1, max=600),
        "profile": Field("str", "generic", "generic broker, or aws-iot-core (mutual TLS, thing name = "
                         "device.id, keep-alive 30-1200 s, QoS 0/1, 128 KB payloads)",
                         choices=("generic", "aws-iot-core")),
        "transport": Field("str", "paho", "paho (paho-mqtt, any broker) or awsiot (AWSIoTPythonSDK v1)",
                           choices=("paho", "awsiot")),
        "tls": Field("bool", False, "connect with TLS (mutual TLS when cert_file/key_file are set)"),
        "ca_file": Field("str", None, "CA certificate that signed the broker's (AWS: AmazonRootCA1.pem)",
                         nullable=True),
        "cert_file": Field("str", None, "the device certificate (PEM)", nullable=True),
        "key_file": Field("str", None, "the device's private key (PEM, mode 600)", nullable=True),
        "alpn": Field("str", None, "ALPN protocol; AWS IoT Core on port 443 needs x-amzn-mqtt-ca",
                      nullable=True),
        "outbox_max_messages": Field("int", 100000, "unsent messages kept on disk; past it the oldest "
                                     "training records are dropped first (logged, counted)", min=100),
        "inflight": Field("int", 20, "messages sent but not yet acknowledged", min=1, max=1000),
    },
    "i2c": {
        "bus": Field("int", 1, "I2C bus number (/dev/i2c-N)", min=0, max=31),
        "address": Field("int", None, "hat address 0x04 or 0x08; null probes both", nullable=True,
                         check=_i2c_address),
        "retries": Field("int", 3, "retries of a failed register read", min=0, max=10),
    },
    "sampling": {
        "rate_hz": Field("float", 200.0, "samples per second of the heart channel (the sampler's tick): 200 Hz "
                         "puts a sample in every beat pulse of 10 ms or more", min=10, max=500),
        "gsr_rate_hz": Field("float", 50.0, "samples per second of the GSR channel; must divide rate_hz",
                             min=1, max=500),
    },
    "gsr": {
        "channel": Field("int", 0, "ADC channel of the GSR sensor (A0)", min=0, max=7),
        "no_contact_reading": Field("int", 2048, "12-bit reading with no finger (the sensor's calibration "
                                    "point, set with its potentiometer)", min=1024, max=4095),
        "contact_margin": Field("int", 24, "readings within this of the no-contact point mean no contact",
                                min=1, max=1000),
    },
    "heart": {
        "source": Field("str", "adc", "adc: ear clip pulses via the ADC; gpio: ear clip on a GPIO pin; "
                        "ppg: analog PPG sensor via the ADC", choices=("adc", "gpio", "ppg")),
        "channel": Field("int", 4, "ADC channel of the heart-rate sensor (A4)", min=0, max=7),
        "threshold_mv": Field("float", 1650.0, "pulse threshold on the sampled voltage", min=10, max=3300),
        "hysteresis_mv": Field("float", 200.0, "hysteresis around the threshold", min=0, max=1500),
        "gpio_pin": Field("int", 22, "BCM pin of the ear clip when source is gpio", min=0, max=27),
        "min_bpm": Field("float", 30.0, "slowest plausible heart rate", min=20, max=100),
        "max_bpm": Field("float", 220.0, "fastest plausible heart rate", min=100, max=300),
        "window_s": Field("float", 10.0, "seconds of beats behind each BPM figure", min=3, max=60),
    },
    "gpio": {
        "pin_factory": Field("str", "lgpio", "gpiozero back end for the button and heart.source gpio: lgpio "
                             "(python3-lgpio, Raspberry Pi OS bookworm), rpigpio (python3-rpi.gpio), pigpio "
                             "(python3-pigpio + pigpiod) or native; --simulate always uses gpiozero's mock "
                             "pins. A missing back end stops start-up with the package to install",
                             choices=("lgpio", "rpigpio", "pigpio", "native", "mock")),
    },
    "camera": {
        "backend": Field("str", "opencv", "opencv, picamera2 or none", choices=("opencv", "picamera2", "none")),
        "device": Field("int", 0, "OpenCV VideoCapture index", min=0, max=63),
        "width": Field("int", 640, "frame width", min=64, max=4096),
        "height": Field("int", 480, "frame height", min=48, max=4096),
        "frames_per_window": Field("int", 5, "frames grabbed during one detection window", min=0, max=100),
    },
    "face": {
        "model": Field("str", None, "TFLite expression model; null is the shipped models/fer_int8.tflite "
                       "(a relative path is taken from the current directory)", nullable=True),
        "metadata": Field("str", None, "the model's metadata JSON; null is the shipped models/fer.json",
                          nullable=True),
        "registrar": Field("str", None, "TFLite face registrar for face.align learned; null is the shipped "
                           "models/face_register_int8.tflite", nullable=True),
        "registrar_metadata": Field("str", None, "the registrar's metadata JSON; null is face_register.json "
                                    "beside face.registrar (the shipped models/face_register.json)",
                                    nullable=True),
        "threads": Field("int", 1, "interpreter threads", min=1, max=4),
        "detect_width": Field("int", 320, "frames are downscaled to this width for Haar detection",
                              min=80, max=4096),
        "min_face": Field("int", 48, "smallest face side in pixels at detection scale (48 at width 320 is "
                          "96 px of a 640x480 frame, a face about 1 m away)", min=12, max=1000),
        "scale_factor": Field("float", 1.1, "Haar image-pyramid step", min=1.01, max=2.0),
        "flip_average": Field("bool", False, "also classify the mirrored face and average, one more invoke per "
                              "view (the shipped model already averages its mirror image inside its graph: "
                              "models/fer.json views_in_graph)"),
        "view_scales": Field("list", [1.0], "zooms of the face classified and averaged, 1.0 = as cropped; "
                             "extra test-time views for a model without views in its graph, one invoke each",
                             check=_view_scales),
        "margin": Field("float", None, "null crops the face with FER2013's own framing, measured where the Haar "
                        "box falls on FER2013's faces (models/fer_framing.json); a number instead grows the box "
                        "by that share of its side on each edge (negative: cuts inside it)", nullable=True,
                        min=-0.3, max=1),
        "align": Field("str", "learned", "none; rotate: turn the face upright from its eyes (OpenCV's eye "
                       "cascade) before cropping; eyes: also frame it by the eyes, where FER2013's eyes sit; "
                       "learned: reframe it where FER2013 would have framed it, predicted from the face by the "
                       "shipped registrar (models/face_register.json); learned+turn: and turn it as predicted",
                       choices=("none", "rotate", "eyes", "learned", "learned+turn")),
        "normalise": Field("str", "none", "photometric normalisation of the cropped face",
                           choices=("none", "equalize", "clahe")),
        "normalised_view": Field("str", "equalize", "also classify the cropped face normalised (equalize or clahe) "
                                 "and average the two answers, its contrast restored in flat or dim light; "
                                 "one more invoke per view (README: face pipeline)",
                                 choices=("none", "equalize", "clahe")),
        "pick": Field("str", "confident", "which of several detections is the face: the one the cascade is "
                      "surest of, or the largest", choices=("confident", "largest")),
    },
    "button": {
        "enabled": Field("bool", True, "listen to the 'detect my emotion' button"),
        "pin": Field("int", 5, "BCM pin of the button (Grove hat port D5)", min=0, max=27),
        "bounce_s": Field("float", 0.05, "debounce time", min=0, max=1),
    },
    "collect": {
        "labels": Field("list", ["happy", "sad", "angry", "neutral", "baseline"],
                        "labels a collect session may carry", check=_label_list),
    },
    "detect": {
        "window_s": Field("float", 10.0, "length of a detection window", min=1, max=MAX_WINDOW_S),
        "emotions": Field("list", ["happy", "sad", "angry", "neutral"], "emotions a result may name",
                          check=_label_list),
        "uncertain_below": Field("float", 0.4, "confidence under which the result is 'uncertain'",
                                 min=0, max=1),
    },
    "fusion": {
        "face_weight": Field("float", 1.0, "weight of the face model in log-linear pooling", min=0, max=10),
        "physiology_weight": Field("float", 1.0, "weight of the personal physiology model", min=0, max=10),
    },
    "feedback": {
        "min_examples": Field("int", 6, "corrections needed before the first refit", min=3, max=10000),
        "refit_every": Field("int", 3, "refit after this many new corrections", min=1, max=10000),
        "holdout_fraction": Field("float", 0.34, "newest share of corrections held out to judge a refit",
                                  min=0.1, max=0.5),
    },
    "sleep": {
        "morning_hours": Field("float", 3.0, "hours after a night's wake time (the tracker's endTime) whose "
                               "detections give that morning's emotion score", min=0.25, max=12),
        "timezone": Field("str", None, "IANA zone of the sleep tracker's local times and of the day boundary "
                          "for self-reports; null = this device's own zone", nullable=True, check=_timezone),
    },
    "sim": {
        "emotion": Field("str", "neutral", "what the simulated person feels", choices=FER_CLASSES),
        "speed": Field("float", 1.0, "simulated seconds per real second", min=0.1, max=200),
        "seed": Field("int", 0, "random seed of the simulated person"),
        "bpm": Field("float", None, "force the simulated heart rate (else it follows the emotion)",
                     nullable=True, min=30, max=220),
        "finger_off_every_s": Field("float", 0.0, "a finger-off episode this often (0 never)", min=0),
        "faces": Field("str", "sample", "faces the simulated camera shows: `sample` (70 FER2013 PublicTest "
                       "faces shipped with the package), a dataset .npz in the FER2013 format (for example "
                       "../shared/datasets/fer2013/fer2013_publictest.npz), or null for an empty scene",
                       nullable=True),
        "button_every_s": Field("float", 0.0, "press the simulated button this often in `run` (0 never)",
                                min=0),
        "hat_present": Field("bool", True, "false simulates a Pi without the Grove Base Hat"),
    },
    "web": {
        "enabled": Field("bool", True, "serve the carer's dashboard and its JSON API from the daemon"),
        "bind": Field("str", "127.0.0.1", "address to listen on; anything but loopback needs a token "
                      "(web.token or `emotion-edge web-token`)", check=_bind_address),
        "port": Field("int", 8080, "TCP port of the dashboard (0: any free port, logged at start)", min=0,
                      max=65535),
        "token": Field("str", None, "bearer token every request must carry; null uses the token file that "
                       "`emotion-edge web-token` writes in the data directory, if there is one",
                       nullable=True, secret=True, check=_token),
        "detect_per_minute": Field("int", 6, "detections the dashboard may start per minute (rate limit)",
                                   min=1, max=600),
        "max_clients": Field("int", 32, "live event streams served at once; more are refused with 503",
                             min=1, max=1000),
    },
    "alerts": {
        "enabled": Field("bool", True, "evaluate the alert rules and publish each firing to alerts.topic"),
        "topic": Field("str", "iotsensors/{device_id}/alert", "alerts (QoS 1, through the outbox)",
                       check=_topic),
        "negative_emotions": Field("list", ["sad", "angry"], "emotions the repeated-negative rule watches",
                                   check=_label_list),
        "negative_confidence": Field("float", 0.6, "confidence a result needs to count for that rule",
                                     min=0, max=1),
        "negative_consecutive": Field("int", 3, "consecutive such results that fire it (0: rule off)",
                                      min=0, max=1000),
        "arousal_high_minutes": Field("float", 5.0, "minutes of high arousal (per-second population rule) "
                                      "that fire an alert (0: rule off)", min=0, max=1440),
        "no_contact_minutes": Field("float", 2.0, "minutes without skin contact during a collect session or "
                                    "detection that fire an alert (0: rule off)", min=0, max=1440),
        "min_interval_s": Field("float", 600.0, "a rule fires at most once in this many seconds",
                                min=0, max=604800),
    },
    "email": {
        "enabled": Field("bool", False, "send each alert by e-mail over SMTP with STARTTLS"),
        "host": Field("str", None, "SMTP server", nullable=True),
        "port": Field("int", 587, "SMTP submission port (STARTTLS)", min=1, max=65535),
        "user": Field("str", None, "SMTP user name (null: no login)", nullable=True),
        "password": Field("str", None, "SMTP password (prefer password_file)", nullable=True, secret=True),
        "password_file": Field("str", None, "file holding the SMTP password (first line; mode 600)",
                               nullable=True),
        "from": Field("str", None, "sender address", nullable=True, check=_address),
        "to": Field("list", [], "recipient addresses", check=_address_list),
        "ca_file": Field("str", None, "CA that signed the SMTP server's certificate (null: the system's)",
                         nullable=True),
        "timeout_s": Field("float", 20.0, "SMTP connection timeout", min=1, max=300),
    },
    "homeassistant": {
        "enabled": Field("bool", False, "publish Home Assistant MQTT discovery (retained) and a state topic"),
        "discovery_prefix": Field("str", "homeassistant", "Home Assistant's discovery prefix", check=_topic),
        "state_topic": Field("str", "iotsensors/{device_id}/state", "retained state the entities read",
                             check=_topic),
        "state_every_s": Field("float", 10.0, "how often the state is published while connected", min=1,
                               max=3600),
    },
    "log": {
        "level": Field("str", "INFO", "log level", choices=("DEBUG", "INFO", "WARNING", "ERROR")),
        "format": Field("str", "json", "json lines or plain text", choices=("json", "text")),
    },
}


def defaults() -> dict[str, dict[str, Any]]:
    """The documented default configuration as a fresh nested dict."""
    return {s: {k: copy.deepcopy(f.default) for k, f in keys.items()} for s, keys in SCHEMA.items()}


_KINDS = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,), "list": (list,)}


def _check_value(path: str, spec: Field, value: Any) -> tuple[Any, str | None]:
    if value is None:
        return None, None if spec.nullable else "must not be null"
    if isinstance(value, bool) and spec.kind in ("int", "float"):
        return value, f"expected {spec.kind}, got a boolean"
    if not isinstance(value, _KINDS[spec.kind]):
        return value, f"expected {spec.kind}, got {type(value).__name__} {_shown(spec, value)}"
    if spec.kind == "float":
        value = float(value)  # type: ignore[arg-type]  # an int or float: checked just above
        if not math.isfinite(value):
            return value, f"must be a finite number, got {value!r}"
    if spec.choices and value not in spec.choices:
        return value, f"must be one of {', '.join(map(str, spec.choices))}; got {_shown(spec, value)}"
    if spec.min is not None and value < spec.min:
        return value, f"must be >= {spec.min}; got {value!r}"
    if spec.max is not None and value > spec.max:
        return value, f"must be <= {spec.max}; got {value!r}"
    if spec.check is not None:
        problem = spec.check(value)
        if problem:
            return value, problem
    return value, None


def validate(raw: Any, source: str = "config") -> dict[str, dict[str, Any]]:
    """Merge `raw` over the defaults and validate; raise ConfigError naming every bad key."""
    problems: dict[str, str] = {}
    merged = defaults()
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError({source: f"top level must be a mapping of sections, got {type(raw).__name__}"})
    for section, values in raw.items():
        if section not in SCHEMA:
            problems[str(section)] = f"unknown section (known: {', '.join(SCHEMA)})"
            continue
        if values is None:
            continue
        if not isinstance(values, dict):
            problems[section] = f"must be a mapping, got {type(values).__name__}"
            continue
        for key, value in values.items():
            path = f"{section}.{key}"
            spec = SCHEMA[section].get(key)
            if spec is None:
                problems[path] = f"unknown key (known: {', '.join(SCHEMA[section])})"
                continue
            value, problem = _check_value(path, spec, value)
            if problem:
                problems[path] = problem
            else:
                merged[section][key] = value
    if not problems:
        problems.update(_cross_checks(merged))
    if problems:
        raise ConfigError(problems)
    return merged


def _cross_checks(cfg: dict) -> dict[str, str]:
    problems = {}
    if cfg["heart"]["min_bpm"] >= cfg["heart"]["max_bpm"]:
        problems["heart.min_bpm"] = "must be below heart.max_bpm"
    every = cfg["sampling"]["rate_hz"] / cfg["sampling"]["gsr_rate_hz"]
    if every < 1 or abs(every - round(every)) > 1e-9:
        problems["sampling.gsr_rate_hz"] = (f"must divide sampling.rate_hz ({cfg['sampling']['rate_hz']:g}) "
                                            "evenly, e.g. 50 of 200")
    if cfg["heart"]["source"] != "gpio" and cfg["heart"]["channel"] == cfg["gsr"]["channel"]:
        problems["heart.channel"] = "must differ from gsr.channel"
    heart, button = cfg["heart"], cfg["button"]
    if heart["source"] == "gpio" and button["enabled"] and heart["gpio_pin"] == button["pin"]:
        problems["heart.gpio_pin"] = "must differ from button.pin"
    topics = {k: cfg["mqtt"][k] for k in ("train_topic", "infer_topic", "result_topic", "command_topic",
                                          "status_topic", "error_topic", "feedback_topic", "report_topic")}
    seen: dict[str, str] = {}
    for key, topic in topics.items():  # e.g. command == error would feed every rejection back as a command
        if topic in seen:
            problems[f"mqtt.{key}"] = f"must differ from mqtt.{seen[topic]} (both {topic!r})"
        seen.setdefault(topic, key)
    problems.update(_mqtt_checks(cfg["mqtt"]))
    problems.update(_password_file_checks(cfg["mqtt"]))
    problems.update(_password_file_checks(cfg["email"], "email"))
    problems.update(_carer_checks(cfg))
    return problems


def _carer_checks(cfg: dict) -> dict[str, str]:
    """Alerts name known emotions, e-mail has what it needs, the new topics stay apart from the others."""
    problems = {}
    unknown = [e for e in cfg["alerts"]["negative_emotions"] if e not in cfg["detect"]["emotions"]]
    if unknown:
        problems["alerts.negative_emotions"] = (f"{unknown} are not in detect.emotions "
                                                f"({', '.join(cfg['detect']['emotions'])})")
    email = cfg["email"]
    if email["enabled"]:
        for key in ("host", "from"):
            if not email[key]:
                problems[f"email.{key}"] = "required when email.enabled is true"
        if not email["to"]:
            problems["email.to"] = "name at least one recipient when email.enabled is true"
        if email["user"] and email["password"] is None and email["password_file"] is None:
            problems["email.password_file"] = "email.user is set: give its password in a file (mode 600)"
    if email["ca_file"] and not os.path.isfile(email["ca_file"]):
        problems["email.ca_file"] = f"file not found: {email['ca_file']}"
    if cfg["homeassistant"]["enabled"] and cfg["mqtt"]["profile"] == "aws-iot-core":
        problems["homeassistant.enabled"] = ("Home Assistant discovery needs a local broker: AWS IoT Core's policy "
                                             "(scripts/aws/iot-policy.json) allows no homeassistant/ topics")
    mqtt_topics = {cfg["mqtt"][k] for k in cfg["mqtt"] if k.endswith("_topic")}
    for key in ("alerts.topic", "homeassistant.state_topic"):
        section, name = key.split(".")
        if cfg[section][name] in mqtt_topics:
            problems[key] = f"must differ from the mqtt.*_topic keys (both {cfg[section][name]!r})"
    return problems


def _password_file_checks(m: dict, section: str = "mqtt") -> dict[str, str]:
    """The password file exists, is private, and is not combined with an inline password."""
    from pi.messaging.tls import key_permission_problem

    path = m["password_file"]
    if path is None:
        return {}
    if m["password"] is not None:
        return {f"{section}.password_file": f"set {section}.password or {section}.password_file, not both"}
    if not os.path.isfile(path):
        return {f"{section}.password_file": f"file not found: {path}"}
    if not os.access(path, os.R_OK):
        return {f"{section}.password_file": f"not readable by this user: {path}"}
    problem = key_permission_problem(path, "password file")
    return {f"{section}.password_file": problem} if problem else {}


def read_password_file(path: str, key: str = "mqtt.password_file") -> str:
    """The first line of a password file, without its line ending."""
    try:
        with open(path, encoding="utf-8") as f:
            password = f.readline().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError({key: f"cannot read {path}: {exc}"}) from None
    if not password:
        raise ConfigError({key: f"{path} is empty"})
    return password


WEB_TOKEN_FILE = "web-token"  # in the data directory, mode 600: written by `emotion-edge web-token`
LOOPBACK = ("127.", "::1")


def web_token_path(cfg: dict) -> Path:
    return Path(cfg["device"]["data_dir"]) / WEB_TOKEN_FILE


def _resolve_web_token(cfg: dict) -> None:
    """web.token, else the data directory's token file; a non-loopback dashboard without one is an error."""
    from pi.messaging.tls import key_permission_problem

    web = cfg["web"]
    path = web_token_path(cfg)
    if web["enabled"] and web["token"] is None and path.is_file():
        problem = key_permission_problem(path, "web token file")
        if problem:
            raise ConfigError({"web.token": problem})
        web["token"] = read_password_file(str(path), "web.token")
    if web["enabled"] and web["token"] is None and not web["bind"].startswith(LOOPBACK):
        raise ConfigError({"web.bind": f"{web['bind']} is reachable from other machines, and no token is set: "
                           f"run `emotion-edge web-token` (it stores a strong token in {path}, mode 600, and "
                           "prints it), or set web.token, or bind to 127.0.0.1"})


def _mqtt_checks(m: dict) -> dict[str, str]:
    """TLS files exist (and the key is private); the AWS IoT Core profile's rules hold."""
    from pi.messaging.tls import AWS_ALPN, key_permission_problem

    problems = {}
    if m["profile"] == "aws-iot-core":
        if not m["tls"]:
            problems["mqtt.tls"] = "must be true for aws-iot-core (mutual TLS)"
        if m["port"] not in (8883, 443):
            problems["mqtt.port"] = "aws-iot-core listens on 8883 (or 443 with ALPN)"
        if m["port"] == 443 and m["alpn"] != AWS_ALPN:
            problems["mqtt.alpn"] = f"port 443 needs alpn {AWS_ALPN}"
        if not 30 <= m["keepalive"] <= 1200:
            problems["mqtt.keepalive"] = "aws-iot-core accepts 30..1200 s"
        for key in ("ca_file", "cert_file", "key_file"):
            if not m[key]:
                problems[f"mqtt.{key}"] = "required by aws-iot-core"
    if m["transport"] == "awsiot" and not m["tls"]:
        problems["mqtt.transport"] = "awsiot (AWSIoTPythonSDK) needs tls: true and certificates"
    if m["tls"]:
        if not m["ca_file"]:
            problems.setdefault("mqtt.ca_file", "required when tls is true")
        if bool(m["cert_file"]) != bool(m["key_file"]):
            problems["mqtt.key_file" if m["cert_file"] else "mqtt.cert_file"] = \
                "cert_file and key_file go together"
        for key in ("ca_file", "cert_file", "key_file"):
            path = m[key]
            if path and f"mqtt.{key}" not in problems:
                if not os.path.isfile(path):
                    problems[f"mqtt.{key}"] = f"file not found: {path}"
                elif not os.access(path, os.R_OK):
                    problems[f"mqtt.{key}"] = f"not readable by this user: {path}"
        if m["key_file"] and os.path.isfile(m["key_file"]) and "mqtt.key_file" not in problems:
            problem = key_permission_problem(m["key_file"])
            if problem:
                problems["mqtt.key_file"] = problem
    return problems


def parse_override(text: str) -> tuple[str, str, Any]:
    """Parse `section.key=value` (value read as a YAML scalar) from --set."""
    if "=" not in text:
        raise ConfigError({text: "--set needs KEY=VALUE, e.g. mqtt.port=1884"})
    key, _, value = text.partition("=")
    parts = key.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError({key: "--set keys are section.key, e.g. sim.emotion"})
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as exc:
        spec = SCHEMA.get(parts[0], {}).get(parts[1])
        why = "(the value is a secret and not shown)" if spec is not None and spec.secret else str(exc)
        raise ConfigError({key: f"value is not valid YAML: {why}"}) from None
    return parts[0], parts[1], parsed


def load(path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """Load a YAML file (None = defaults only), apply --set overrides, validate and resolve paths."""
    raw: dict = {}
    if path is not None:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError({str(path): f"cannot read config file: {exc.strerror}"}) from None
        except UnicodeDecodeError as exc:
            line = p.read_bytes()[:exc.start].count(b"\n") + 1
            raise ConfigError({str(path): f"not UTF-8 text: byte {exc.object[exc.start]:#04x} at line {line} "
                               f"(offset {exc.start}); save the file as UTF-8"}) from None
        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError({str(path): f"not valid YAML: {exc}"}) from None
        if not isinstance(raw, dict):
            raise ConfigError({str(path): "top level must be a mapping of sections"})
    raw = copy.deepcopy(raw)
    for text in overrides:
        section, key, value = parse_override(text)
        if not isinstance(raw.get(section, {}), dict):
            raw[section] = {}
        raw.setdefault(section, {})
        if raw[section] is None:
            raw[section] = {}
        raw[section][key] = value
    cfg = validate(raw, source=str(path or "config"))
    return resolve(cfg)


def resolve(cfg: dict) -> dict:
    """Fill derived values: topic templates, the data directory, the shipped files' paths."""
    device_id = cfg["device"]["id"]
    for key in ("command_topic", "status_topic", "error_topic", "feedback_topic", "report_topic"):
        cfg["mqtt"][key] = cfg["mqtt"][key].replace("{device_id}", device_id)
    if cfg["device"]["data_dir"] is None:
        state = os.environ.get("STATE_DIRECTORY")
        cfg["device"]["data_dir"] = state or str(Path.home() / ".local" / "share" / "emotion-edge")
    if cfg["mqtt"]["password_file"] is not None:
        cfg["mqtt"]["password"] = read_password_file(cfg["mqtt"]["password_file"])
    if cfg["email"]["password_file"] is not None:
        cfg["email"]["password"] = read_password_file(cfg["email"]["password_file"], "email.password_file")
    for section, key in (("alerts", "topic"), ("homeassistant", "state_topic")):
        cfg[section][key] = cfg[section][key].replace("{device_id}", device_id)
    _resolve_web_token(cfg)
    face = cfg["face"]
    face["model"] = str(Path(face["model"]).resolve()) if face["model"] else str(resources.shipped(resources.FER_MODEL))
    face["metadata"] = (str(Path(face["metadata"]).resolve()) if face["metadata"]
                        else str(resources.shipped(resources.FER_METADATA)))
    face["registrar"] = (str(Path(face["registrar"]).resolve()) if face["registrar"]
                         else str(resources.shipped(resources.REGISTRAR_MODEL)))
    face["registrar_metadata"] = str(Path(face["registrar_metadata"]).resolve() if face["registrar_metadata"]
                                     else resources.registrar_metadata_for(face["registrar"]))
    faces = cfg["sim"]["faces"]
    if faces == "sample":
        cfg["sim"]["faces"] = str(resources.shipped(resources.FACE_SAMPLE))
    elif faces is not None:
        cfg["sim"]["faces"] = str(Path(faces).resolve())
    return cfg


def masked(cfg: dict) -> dict:
    """A copy with every secret that is set replaced by a mask: what may be printed or logged."""
    out = copy.deepcopy(cfg)
    for section, keys in SCHEMA.items():
        for key, spec in keys.items():
            if spec.secret and out.get(section, {}).get(key) is not None:
                out[section][key] = MASK
    return out


def dump(cfg: dict) -> str:
    """The effective configuration as YAML (what check-config prints), secrets masked."""
    return yaml.safe_dump(masked(cfg), sort_keys=False)
