"""The hub between the running device and the people watching it.

It listens to the sampler's per-second records and to every result, keeps the last two minutes, runs the
alert rules, publishes Home Assistant state, and fans events out to subscribers (the dashboard's event
streams). Fan-out never blocks: each subscriber has a bounded queue, and one that falls behind is
dropped, not waited for, so a slow phone cannot stall the sampler or the other viewers."""
from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import pi
from pi.alerts.rules import AlertEngine
from pi.messaging import homeassistant
from pi.personal.fusion import arousal_rule

log = logging.getLogger(__name__)

HISTORY_S = 120  # seconds of physiology the page shows


class _StampedQueue(queue.Queue):
    """The hub's record queue: each record is stamped with the wall time the sampler handed it over, so the
    `second` event can say when it was made (`emitted`) and a viewer can measure the latency to itself."""

    def put(self, item, block: bool = True, timeout: float | None = None) -> None:
        super().put((time.time(), item), block, timeout)


class Subscriber:
    """One event stream's bounded queue; `dropped` once it fell behind (its stream then ends)."""

    def __init__(self, size: int):
        self.queue: queue.Queue[tuple[str, str] | None] = queue.Queue(maxsize=size)
        self.dropped = False


def _round(value: Any, digits: int) -> Any:
    return round(value, digits) if isinstance(value, float) else value


class Hub:
    def __init__(self, daemon, queue_size: int = 64):
        self.daemon = daemon
        self.device = daemon.device
        self.cfg = daemon.cfg
        self.clock = self.device.clock
        self.queue_size = queue_size
        self.seconds: deque[dict] = deque(maxlen=HISTORY_S)
        self.last_result: dict | None = None
        self.started_wall = time.time()
        self._subs: set[Subscriber] = set()
        self._subs_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._records: queue.Queue | None = None
        self._last_status: str | None = None
        self._next_ha = 0.0
        self.email = None
        self.alerts: AlertEngine | None = None
        if self.cfg["alerts"]["enabled"]:
            notifiers = [self._on_alert]
            if self.cfg["email"]["enabled"]:
                from pi.alerts.mail import EmailNotifier

                self.email = EmailNotifier(self.cfg["email"])
                notifiers.append(self.email)
            self.alerts = AlertEngine(self.cfg["alerts"], self.device.device_id, self.device.user, self.clock,
                                      self.device.publisher.publish, notifiers)
        self.device.result_listeners.append(self._on_result)

    # -- lifecycle (Daemon.services) ---------------------------------------------------------------
    def start(self) -> None:
        if self.cfg["homeassistant"]["enabled"]:
            for topic, payload in homeassistant.discovery_messages(self.cfg, pi.__version__):
                self.device.publisher.publish(topic, payload, retain=True)
            log.info("Home Assistant discovery published under %s/", self.cfg["homeassistant"]["discovery_prefix"])
        self._records = self.device._listen(_StampedQueue())
        self._thread = threading.Thread(target=self._run, name="hub", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(3)
        if self._records is not None:
            self.device._unlisten(self._records)
            self._records = None
        with self._subs_lock:
            subs, self._subs = list(self._subs), set()
        for sub in subs:
            self._close(sub)
        if self.email is not None:
            self.email.close()

    # -- subscribers ---------------------------------------------------------------------------------
    def subscribe(self) -> Subscriber | None:
        """A new event stream, or None when web.max_clients are already served."""
        with self._subs_lock:
            if self._stop.is_set() or len(self._subs) >= self.cfg["web"]["max_clients"]:
                return None
            sub = Subscriber(self.queue_size)
            self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        with self._subs_lock:
            self._subs.discard(sub)

    @property
    def clients(self) -> int:
        with self._subs_lock:
            return len(self._subs)

    def broadcast(self, event: str, data: dict) -> None:
        """Queue an event for every stream; a stream whose queue is full is dropped on the spot."""
        line = json.dumps(data, separators=(",", ":"), allow_nan=False)
        with self._subs_lock:
            subs = list(self._subs)
        for sub in subs:
            try:
                sub.queue.put_nowait((event, line))
            except queue.Full:
                log.warning("dropping a dashboard client that fell %d events behind", self.queue_size)
                self.unsubscribe(sub)
                self._close(sub)

    @staticmethod
    def _close(sub: Subscriber) -> None:
        sub.dropped = True
        try:
            sub.queue.put_nowait(None)
        except queue.Full:
            pass  # its reader sees `dropped` after the event it is on

    # -- inputs ----------------------------------------------------------------------------------------
    def _on_result(self, result: dict) -> None:
        """Job thread: every result, as published."""
        self.last_result = result
        self.broadcast("result", result)
        if self.alerts is not None:
            self.alerts.on_result(result)

    def _on_alert(self, alert: dict) -> None:
        self.broadcast("alert", alert)

    def _run(self) -> None:
        assert self._records is not None
        while not self._stop.is_set():
            try:
                stamped = self._records.get(timeout=0.5)
            except queue.Empty:
                stamped = None
            try:
                if stamped is not None:
                    self._on_second(*stamped)
                self._maybe_status()
                self._maybe_home_assistant()
            except Exception:  # the hub's bug must not end the live view for good
                log.exception("hub failed on a record")

    def _on_second(self, emitted: float, record) -> None:
        d = {k: _round(v, 4) for k, v in record.as_dict().items()}
        d["emitted"] = round(emitted, 4)  # wall time the sampler handed the record over
        d["arousal"] = arousal_rule(record.skin_conductance, record.gated_bpm)  # as the alert rule sees it
        job = self.job()
        d["job"] = job
        self.seconds.append(d)
        self.broadcast("second", d)
        if self.alerts is not None:
            in_session = job is not None and job["kind"] in ("collect", "detect")
            # only a rate that passes the quality gate: a moving wrist must not raise an arousal alert
            self.alerts.on_second(record.t, record.skin_conductance, record.gated_bpm, record.contact, in_session)

    def _maybe_status(self) -> None:
        status = self.status()
        key = json.dumps({k: v for k, v in status.items() if k not in ("uptime_s", "time", "job")}, sort_keys=True)
        job_kind = (status["job"] or {}).get("kind")
        key += str(job_kind)
        if key != self._last_status:
            self._last_status = key
            self.broadcast("status", status)

    def _maybe_home_assistant(self) -> None:
        ha = self.cfg["homeassistant"]
        now = self.clock.monotonic()
        if not ha["enabled"] or now < self._next_ha or not self.device.publisher.connected.is_set():
            return  # only while connected: stale live values must not pile up in the outbox
        self._next_ha = now + ha["state_every_s"]
        message = homeassistant.state_message(self.device.device_id, self.clock.wall(), self.last_result,
                                              self.seconds[-1] if self.seconds else None,
                                              self.device.publisher.pending)
        self.device.publisher.publish(ha["state_topic"], message, retain=True)

    # -- views -----------------------------------------------------------------------------------------
    def job(self) -> dict | None:
        """The job the daemon is running: kind, label or request_id, elapsed and planned clock seconds."""
        active = self.daemon.active
        if active is None:
            return None
        command, started = active
        kind = command.kind
        duration = getattr(command, "duration_s", None) if kind == "collect" else None
        if kind == "detect":
            duration = getattr(command, "window_s", None) or self.cfg["detect"]["window_s"]
        return {"kind": kind, "label": getattr(command, "label", None),
                "request_id": getattr(command, "request_id", None),
                "elapsed_s": round(self.clock.monotonic() - started, 1), "duration_s": duration}

    def status(self) -> dict:
        """What the dashboard's status panel shows (and GET /api/status returns)."""
        device, cfg = self.device, self.cfg
        publisher = device.publisher
        last = self.seconds[-1] if self.seconds else None
        model = device.registry.current()
        evaluation = model.data.get("evaluation", {}) if model is not None else {}
        hat_state = "no data yet" if last is None else ("i2c errors" if last["i2c_errors"] else "ok")
        if not device.hw.sampler.running and last is not None:
            hat_state = "sampler stopped"
        return {
            "device_id": device.device_id, "user": device.user, "version": pi.__version__,
            "time": time.time(), "uptime_s": round(time.time() - self.started_wall, 1),
            "broker": {"connected": publisher.connected.is_set(), "host": cfg["mqtt"]["host"],
                       "port": cfg["mqtt"]["port"]},
            "outbox": {"pending": publisher.pending, "dropped": publisher.outbox.dropped},
            "hat": {"state": hat_state, "simulated": device.hw.simulated,
                    "i2c_errors_last_s": None if last is None else last["i2c_errors"]},
            "camera": {"present": device.hw.camera is not None, "backend": device.hw.camera_name},
            "face_model": {"loaded": device.face is not None, "file": Path(cfg["face"]["model"]).name},
            "personal_model": {"user": device.user, "version": None if model is None else model.version,
                               "loso_accuracy": evaluation.get("accuracy"),
                               "loso_macro_f1": evaluation.get("macro_f1")},
            "job": self.job(), "queued": self.daemon.jobs.qsize(),
            "alerts": list(self.alerts.recent)[:10] if self.alerts is not None else [],
            "clients": self.clients,
            "emotions": cfg["detect"]["emotions"], "labels": cfg["collect"]["labels"],
            "window_s": cfg["detect"]["window_s"],
        }
