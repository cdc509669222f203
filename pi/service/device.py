"""The device: per-second physiology flows from the sampler to whichever sessions are listening.

    drivers -> Sampler (per-second records) -> collect session -> store + iotsensors/train
                                            -> detection      -> face pipeline + fusion
                                                               -> iotsensors/infer, iotsensors/infer/result
The sampler runs continuously while the device is started; sessions subscribe to its records.
"""
from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
import uuid
import warnings
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from pi.errors import (
    CameraError,
    CommandError,
    EmotionEdgeError,
    ModelError,
    NoFaceModelWarning,
    NoRegistrarWarning,
    RegistrarError,
)
from pi.messaging import messages
from pi.messaging.outbox import Outbox
from pi.messaging.publisher import OutboxPublisher, make_publisher
from pi.personal import fusion
from pi.personal import model as physio_model
from pi.personal.feedback import apply_feedback, fused_distribution
from pi.physiology.sampler import SecondRecord
from pi.service.hardware import Hardware
from pi.service.lock import DataDirLock
from pi.service.store import LocalStore

if TYPE_CHECKING:
    from pi.vision.face import FacePipeline

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CollectSummary:
    session_id: str
    label: str
    records: int
    pending: int  # messages still in the outbox (unacknowledged) when the session ended


def new_id() -> str:
    return uuid.uuid4().hex[:16]


def load_face_pipeline(cfg: dict) -> FacePipeline | None:
    """The face pipeline, or None with a NoFaceModelWarning when the model is missing or unloadable; a
    broken registrar alone leaves the Haar framing (NoRegistrarWarning)."""
    from pi.vision.face import FaceDetector, FacePipeline
    from pi.vision.fer import ExpressionClassifier, FaceViews, read_metadata

    face = cfg["face"]
    views = FaceViews(tuple(face["view_scales"]), face["flip_average"], face["normalised_view"])
    try:
        classifier = ExpressionClassifier.from_metadata(face["model"], face["metadata"], face["threads"])
        in_graph = read_metadata(face["metadata"]).get("views_in_graph")
        if in_graph and views.zooms > 1:
            log.warning("face.view_scales/flip_average add %d run-time views to a model that already averages "
                        "%d views in its graph (models/fer.json views_in_graph): zooms compound and each "
                        "frame costs %d invokes", views.zooms, in_graph["count"], views.count)
        if face["normalise"] != "none" and views.normalised != "none":
            log.warning("face.normalise=%s already normalises the crop, so face.normalised_view=%s classifies "
                        "a nearly identical face a second time; set one of them to none", face["normalise"],
                        views.normalised)
        try:
            detector = FaceDetector.from_config(face)
        except RegistrarError as exc:
            warnings.warn(f"face registrar unavailable ({exc}); faces are cut by the Haar box in FER2013's "
                          f"framing (face.align none)", NoRegistrarWarning, stacklevel=2)
            detector = FaceDetector.from_config({**face, "align": "none"})
        return FacePipeline(detector, classifier, views)
    except ModelError as exc:
        warnings.warn(f"face model unavailable ({exc}); detections use physiology alone", NoFaceModelWarning,
                      stacklevel=2)
        return None


class Device:
    def __init__(self, cfg: dict, hardware: Hardware, publisher: OutboxPublisher, store: LocalStore,
                 face_pipeline=None):
        self.cfg = cfg
        self.hw = hardware
        self.clock = hardware.clock
        self.publisher = publisher
        self.store = store
        self.face = face_pipeline
        self.device_id = cfg["device"]["id"]
        self.user = cfg["device"]["user"]
        self.registry = physio_model.ModelRegistry(cfg["device"]["data_dir"], self.user)
        self.data_dir_lock: DataDirLock | None = None  # this process's claim on the data directory, released by stop()
        self._listeners: list[queue.Queue] = []
        # the personal model's features look back HISTORY_S seconds (20 min), across detections and sessions
        self._history: deque[SecondRecord] = deque(maxlen=physio_model.HISTORY_S)
        self._lock = threading.Lock()
        self.heartbeat = lambda: None  # called while waiting for records: the daemon feeds its watchdog here
        self.result_listeners: list[Callable[[dict], None]] = []  # told of every result (dashboard, alerts)
        hardware.sampler.on_second = self._dispatch

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self, broker_wait_s: float = 5.0) -> None:
        self.publisher.start(broker_wait_s)
        self.report_unfinished_sessions()
        self.hw.sampler.start()

    def stop(self, flush_timeout: float = 1.0) -> int:
        """Stop sampling, flush and disconnect, close everything; return messages left in the outbox."""
        self.hw.sampler.stop()
        left = self.publisher.stop(flush_timeout)
        self.publisher.outbox.close()
        self.hw.close()
        self.store.close()
        if self.data_dir_lock is not None:
            self.data_dir_lock.release()
        return left

    def _dispatch(self, record: SecondRecord) -> None:
        with self._lock:
            self._history.append(record)
            listeners = list(self._listeners)
        for q in listeners:
            q.put(record)

    def _listen(self, q: queue.Queue | None = None) -> queue.Queue:
        """Start receiving per-second records on `q` (a new unbounded queue by default)."""
        q = queue.Queue() if q is None else q
        with self._lock:
            self._listeners.append(q)
        return q

    def _unlisten(self, q: queue.Queue) -> None:
        with self._lock:
            self._listeners.remove(q)

    def _next_second(self, q: queue.Queue, stop: threading.Event | None, give_up_s: float | None = None):
        """The next per-second record; None if stopped (or after `give_up_s` real seconds without one).
        Raises if the sampler thread has died, so no session waits forever on silence."""
        deadline = None if give_up_s is None else time.monotonic() + give_up_s
        while not (stop is not None and stop.is_set()):
            self.heartbeat()
            try:
                return q.get(timeout=0.05)
            except queue.Empty:
                if not self.hw.sampler.running:
                    raise EmotionEdgeError("the sampler stopped; no physiology is arriving") from None
                if deadline is not None and time.monotonic() > deadline:
                    return None
        return None

    def warm_up(self, max_s: float = 10.0) -> None:
        """Wait (clock time) until the heart-rate estimator has a rate, so a fresh start's first seconds
        carry a BPM (it needs a reference of a few beats: about 6 s at 60 BPM); gives up after `max_s` (no
        finger, no ear clip) and lets the records say so."""
        q = self._listen()
        try:
            for _ in range(int(max_s)):
                record = self._next_second(q, None)
                if record is None or record.bpm is not None:
                    break
        finally:
            self._unlisten(q)

    # -- collect -------------------------------------------------------------------------------------
    def collect(self, label: str, duration_s: float, stop: threading.Event | None = None) -> CollectSummary:
        """Publish one labelled record per second for `duration_s` clock seconds (or until `stop`)."""
        session_id = new_id()
        log.info("collect session %s: label %s for %g s", session_id, label, duration_s)
        # recorded as running first: if this process dies mid-session, the next start reports it
        self.store.begin_session(session_id, self.user, label, duration_s, self.clock.wall())
        q = self._listen()
        seq, target, state = 0, int(round(duration_s)), "failed"
        try:
            while seq < target:
                record = self._next_second(q, stop)
                if record is None:
                    break
                message = messages.train_record(self.device_id, self.user, session_id, seq, label, record)
                self.store.add_record(message)
                self.publisher.publish(self.cfg["mqtt"]["train_topic"], message)
                seq += 1
            state = "completed" if seq >= target else "stopped"
        finally:
            self._unlisten(q)
            self._end_session(session_id, seq, state)
        return CollectSummary(session_id, label, seq, self.publisher.pending)

    def _end_session(self, session_id: str, records: int, state: str) -> None:
        try:
            self.store.end_session(session_id, records, state)
        except sqlite3.Error as exc:  # e.g. a full disk: the next start reports the session as cut short
            log.error("could not record the end of collect session %s: %s", session_id, exc)

    def report_unfinished_sessions(self) -> list[dict]:
        """Tell the requester (error topic, log) about collect sessions an earlier process did not finish:
        they are not resumed (the person may have moved on), and what they stored is kept."""
        sessions = self.store.unfinished_sessions()
        for s in sessions:
            why = (f"collect session {s['session_id']} (label {s['label']}, {s['duration_s']:g} s, started "
                   f"{messages.iso_utc(s['started'])}) was cut short by a restart after {s['records']} of "
                   f"{int(round(s['duration_s']))} records; it is not resumed: start a new one")
            log.warning("%s", why)
            self.publisher.publish(self.cfg["mqtt"]["error_topic"], messages.error_message(
                self.device_id, self.clock.wall(), why, "collect", s["session_id"]))
            self.store.end_session(s["session_id"], s["records"], "interrupted")
        return sessions

    # -- personal models ---------------------------------------------------------------------------
    def apply_feedback(self, request_id: str, label: str) -> dict:
        """Record a carer's correction and, when enough have come, refit (installing only improvements)."""
        return apply_feedback(self.cfg, self.store, self.registry, request_id, label, self.clock.wall())

    # -- detect --------------------------------------------------------------------------------------
    def _grab_face(self, notes: list[str], face_probs: list) -> int:
        """Grab one frame and classify its face into `face_probs`; return 1 if a frame came, else 0."""
        camera = self.hw.camera
        if camera is None:
            return 0
        try:
            frame = camera.read()
        except CameraError as exc:
            if not any(n.startswith("camera failed") for n in notes):
                notes.append(f"camera failed: {exc}")
                log.warning("camera failed during detection: %s; continuing on physiology", exc)
            return 0
        if self.face is not None:
            result = self.face.analyse(frame)
            if result.probabilities is not None:
                face_probs.append(result.probabilities)
        return 1

    def detect(self, window_s: float | None = None, request_id: str | None = None,
               stop: threading.Event | None = None) -> dict | None:
        """Sample a window, grab frames, publish the window and the result; return the result message."""
        window_s = window_s or self.cfg["detect"]["window_s"]
        if request_id is not None and self.store.detection(request_id) is not None:
            raise CommandError(f"request_id {request_id!r} was already used on this device; ids must be unique")
        request_id = request_id or new_id()
        n_frames = self.cfg["camera"]["frames_per_window"] if self.hw.camera is not None else 0
        frame_times = [(k + 0.5) * window_s / n_frames for k in range(n_frames)]
        log.info("detection %s: %g s window, %d frame(s)", request_id, window_s, n_frames)
        q = self._listen()
        seconds: list[SecondRecord] = []
        notes: list[str] = []
        face_probs: list[np.ndarray] = []
        frames = 0
        start = self.clock.monotonic()
        try:
            while len(seconds) < int(round(window_s)):
                while frame_times and self.clock.monotonic() - start >= frame_times[0]:
                    frame_times.pop(0)
                    frames += self._grab_face(notes, face_probs)
                record = self._next_second(q, stop, give_up_s=0.05)  # short: frames are due in between
                if record is None:
                    if stop is not None and stop.is_set():
                        return None
                    continue
                seconds.append(record)
        finally:
            self._unlisten(q)
        for _ in frame_times:  # frames scheduled in the last instant of the window
            frames += self._grab_face(notes, face_probs)
        return self._conclude(request_id, seconds, frames, face_probs, notes)

    def _conclude(self, request_id, seconds, frames, face_probs, notes) -> dict:
        summary = summarise(seconds)
        emotions = self.cfg["detect"]["emotions"]
        face_classes = self.face.classes if self.face is not None else ()
        mean_face = np.mean(face_probs, axis=0) if face_probs else None
        face = fusion.to_emotions(mean_face, face_classes, emotions) if mean_face is not None else None
        with self._lock:
            tail = list(self._history) or list(seconds)
        features = physio_model.window_features([s.skin_conductance for s in tail], [s.gated_bpm for s in tail])
        model = self.registry.current()
        weights = fusion.source_weights(self.cfg["fusion"])
        fused, sources = fused_distribution(face, features, model, emotions, weights)
        emotion, confidence = fusion.decide(fused, emotions, self.cfg["detect"]["uncertain_below"])
        if self.hw.camera is None:
            notes.append("no camera")
        elif self.face is None:
            notes.append("no face model")
        elif frames and not face_probs:
            notes.append("no face found in any frame")
        if model is None:
            notes.append("no personal physiology model yet (emotion-edge fit)")
        physiology_ok = summary["skin_conductance_mean"] is not None or summary["bpm_mean"] is not None
        result = {
            "emotion": emotion, "confidence": confidence,
            "basis": "+".join(sources) or "none",
            "face_available": "face" in sources, "physiology_available": physiology_ok,
            "physiology_model_version": model.version if model is not None else None,
            "frames": frames, "faces_found": len(face_probs),
            "skin_conductance_mean": summary["skin_conductance_mean"], "bpm_mean": summary["bpm_mean"],
            "arousal": fusion.arousal_rule(summary["skin_conductance_mean"], summary["bpm_mean"]),
            "arousal_rule": fusion.AROUSAL_RULE_NAME,
            "notes": "; ".join(notes) or None,
        }
        for i, name in enumerate(emotions):
            result[f"p_{name}"] = None if fused is None else float(fused[i])
            physio = sources.get("physiology")
            result[f"physio_{name}"] = None if physio is None else float(physio[i])
        values = features if features is not None else [None] * len(physio_model.FEATURES)
        for name, value in zip(physio_model.FEATURES, values):
            summary[f"feature_{name}"] = None if value is None else float(value)
        window = messages.window_message(self.device_id, self.user, request_id, seconds, summary, frames,
                                         len(face_probs), self.hw.camera_name)
        wall = self.clock.wall()
        result_msg = messages.result_message(self.device_id, self.user, request_id, wall, result, face_classes,
                                             mean_face)
        self.store.add_detection(window, result_msg)
        self.publisher.publish(self.cfg["mqtt"]["infer_topic"], window)
        self.publisher.publish(self.cfg["mqtt"]["result_topic"], result_msg)
        log.info("detection %s: %s (confidence %s, basis %s)", request_id, emotion,
                 None if confidence is None else round(confidence, 3), result["basis"])
        for listener in list(self.result_listeners):
            try:
                listener(result_msg)
            except Exception:  # a listener's bug must not cost the detection, which is already published
                log.exception("result listener failed")
        return result_msg


def summarise(seconds: list[SecondRecord]) -> dict:
    """Window physiology: mean conductance and BPM over the seconds that have them, conductance slope.

    A second's BPM counts only if its beat intervals pass the quality gate (HR_QUALITY_MIN): a wrist or ear
    in motion gives a rate that looks plausible and is wrong, so it is left out rather than averaged in.
    """
    scl = [(s.t, s.skin_conductance) for s in seconds if s.skin_conductance is not None]
    bpm = [b for b in (s.gated_bpm for s in seconds) if b is not None]
    slope = None
    if len(scl) >= 3:
        t, g = np.array(scl).T
        slope = float(np.polyfit(t - t[0], g, 1)[0])
    return {
        "skin_conductance_mean": float(np.mean([g for _, g in scl])) if scl else None,
        "bpm_mean": float(np.mean(bpm)) if bpm else None,
        "skin_conductance_slope": slope,
        "seconds_ok": sum(s.quality == "ok" for s in seconds),
    }


def open_store(cfg: dict) -> LocalStore:
    return LocalStore(Path(cfg["device"]["data_dir"]) / "records.sqlite")


def create(cfg: dict, simulate: bool, **hardware_overrides) -> Device:
    """Wire a Device from a validated config: hardware (real or simulated), MQTT, store, face model."""
    from pi.service.hardware import build
    from pi.service.lock import DataDirLock

    lock = DataDirLock(cfg["device"]["data_dir"]).acquire()
    try:
        hardware = build(cfg, simulate, **hardware_overrides)
    except BaseException:
        lock.release()
        raise
    outbox = Outbox(Path(cfg["device"]["data_dir"]) / "outbox.sqlite", cfg["mqtt"]["outbox_max_messages"])
    publisher = make_publisher(cfg["mqtt"], cfg["device"]["id"], hardware.clock, outbox, cfg["mqtt"]["inflight"])
    face = load_face_pipeline(cfg) if hardware.camera is not None else None
    device = Device(cfg, hardware, publisher, open_store(cfg), face)
    device.data_dir_lock = lock
    return device
