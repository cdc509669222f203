"""Alert rules, each rate-limited on its own: repeated negative emotion, sustained high arousal, no skin
contact during a session. A firing becomes one `alert` message (schema 1, flat JSON) for
`iotsensors/<device_id>/alert`, handed to `publish` (the outbox: QoS 1, kept while offline) and to every
notifier (e-mail, the dashboard). The device-offline rule lives in the backend (scripts/aws/rules.sql):
an offline device cannot say so itself beyond its last will, which is what that rule watches."""
from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Sequence
from typing import Any, Callable

from pi.messaging.messages import SCHEMA_VERSION, iso_utc
from pi.personal.fusion import arousal_rule

log = logging.getLogger(__name__)

RULES = ("negative_emotion", "arousal_high", "no_contact")


def alert_message(device_id: str, user: str, rule: str, wall: float, text: str, **fields: Any) -> dict:
    """One alert; `msg_id` is stable across retries (device/alert/rule/milliseconds)."""
    return {"schema": SCHEMA_VERSION, "type": "alert", "msg_id": f"{device_id}/alert/{rule}/{int(wall * 1000)}",
            "device_id": device_id, "user": user, "rule": rule, "timestamp": iso_utc(wall), "message": text,
            **fields}


class AlertEngine:
    """Feeds: `on_result(result)` from the job thread, `on_second(record, in_session)` from the hub's.
    Times come from `clock` (monotonic for durations and rate limits, wall for timestamps), so simulated
    speed-ups shorten the minutes too."""

    def __init__(self, alerts_cfg: dict, device_id: str, user: str, clock,
                 publish: Callable[[str, dict], None], notifiers: Sequence[Callable[[dict], None]] = ()):
        self.cfg = alerts_cfg
        self.device_id, self.user = device_id, user
        self.clock = clock
        self.publish = publish
        self.notifiers = list(notifiers)
        self.recent: deque[dict] = deque(maxlen=50)
        self.fired = {rule: 0 for rule in RULES}
        self._last: dict[str, float] = {}
        self._streak: list[dict] = []  # the current run of confident results of one negative emotion
        self._high_since: float | None = None
        self._off_since: float | None = None
        self._lock = threading.Lock()

    # -- inputs ------------------------------------------------------------------------------------
    def on_result(self, result: dict) -> dict | None:
        """The repeated-negative rule: the same negative emotion, confident, N results in a row."""
        n = self.cfg["negative_consecutive"]
        emotion, confidence = result.get("emotion"), result.get("confidence")
        with self._lock:
            confident = (emotion in self.cfg["negative_emotions"] and confidence is not None
                         and confidence >= self.cfg["negative_confidence"])
            if not confident or (self._streak and self._streak[-1]["emotion"] != emotion):
                self._streak = []
            if confident:
                self._streak.append(result)
            if not n or len(self._streak) < n:
                return None
            streak, self._streak = self._streak, []
        return self._fire("negative_emotion",
                          f"{emotion} in {len(streak)} results in a row (confidence ≥ "
                          f"{self.cfg['negative_confidence']:g})",
                          emotion=emotion, results=len(streak),
                          request_ids=[r.get("request_id") for r in streak],
                          confidence_min=min(r["confidence"] for r in streak))

    def on_second(self, t: float, skin_conductance: float | None, bpm: float | None, contact: float,
                  in_session: bool) -> dict | None:
        """Sustained high arousal (per-second population rule); no contact while a session runs."""
        fired = None
        minutes = self.cfg["arousal_high_minutes"]
        with self._lock:
            high = arousal_rule(skin_conductance, bpm) == "high"
            self._high_since = (self._high_since if self._high_since is not None else t) if high else None
            high_for = t - self._high_since if self._high_since is not None else 0.0
            off = in_session and contact < 0.5
            self._off_since = (self._off_since if self._off_since is not None else t) if off else None
            off_for = t - self._off_since if self._off_since is not None else 0.0
        if minutes and high_for >= minutes * 60:
            fired = self._fire("arousal_high", f"arousal high for {high_for / 60:.1f} minutes",
                               minutes=round(high_for / 60, 2), skin_conductance=skin_conductance, bpm=bpm)
            if fired is not None:
                with self._lock:
                    self._high_since = t
        k = self.cfg["no_contact_minutes"]
        if k and off_for >= k * 60:
            done = self._fire("no_contact", f"no skin contact for {off_for / 60:.1f} minutes during a session",
                              minutes=round(off_for / 60, 2))
            if done is not None:
                with self._lock:
                    self._off_since = t
                fired = fired or done
        return fired

    # -- firing ------------------------------------------------------------------------------------
    def _fire(self, rule: str, text: str, **fields: Any) -> dict | None:
        now = self.clock.monotonic()
        with self._lock:
            last = self._last.get(rule)
            if last is not None and now - last < self.cfg["min_interval_s"]:
                return None  # rate-limited: the person was told a moment ago
            self._last[rule] = now
            self.fired[rule] += 1
        message = alert_message(self.device_id, self.user, rule, self.clock.wall(), text, **fields)
        self.recent.appendleft(message)
        log.warning("alert %s: %s", rule, text)
        try:
            self.publish(self.cfg["topic"], message)
        except Exception:  # e.g. a full disk: the other channels still get it
            log.exception("could not queue alert %s for MQTT", rule)
        for notify in self.notifiers:
            try:
                notify(message)
            except Exception:
                log.exception("alert notifier failed")
        return message
