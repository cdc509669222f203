"""`emotion-edge run`: the service. Detections on button presses and MQTT commands, collect sessions on
command, a systemd watchdog fed from the main loop, a clean stop on SIGTERM within two seconds."""
from __future__ import annotations

import logging
import queue
import signal
import threading
import time

from drivers.sim.button import SimulatedButton
from pi.errors import CommandError, EmotionEdgeError, HardwareError
from pi.messaging import messages
from pi.messaging.commands import Command, Feedback, parse_command, parse_feedback
from pi.service.device import Device
from pi.service.systemd import notify, watchdog_interval_s

log = logging.getLogger(__name__)


class Daemon:
    def __init__(self, device: Device):
        self.device = device
        self.cfg = device.cfg
        self.jobs: queue.Queue[Command | Feedback] = queue.Queue(maxsize=32)
        self.stop_event = threading.Event()
        self.session_stop = threading.Event()  # ends a running collect session early
        self.button = None
        self.detections = 0
        # started after the device, stopped before it (the dashboard and alert hub: pi.web, wired by the CLI)
        self.services: list = []
        self.active: tuple[object, float] | None = None  # the job running now, and its clock start

    # -- inputs --------------------------------------------------------------------------------------
    def on_command(self, payload: bytes) -> None:
        """MQTT thread: parse, then queue; bad commands go to the error topic and are otherwise ignored."""
        try:
            command = parse_command(payload, self.cfg["collect"]["labels"],
                                    max_window_s=300.0)
        except CommandError as exc:
            log.warning("rejected command: %s", exc)
            self._report_error(str(exc), "command", payload)
            return
        if command.kind == "stop":
            self.session_stop.set()
            return
        self._enqueue(command)

    def on_feedback(self, payload: bytes) -> None:
        """MQTT thread: a correction is validated here and applied in the job loop (one writer)."""
        try:
            feedback = parse_feedback(payload, self.cfg["detect"]["emotions"])
        except CommandError as exc:
            log.warning("rejected feedback: %s", exc)
            self._report_error(str(exc), "feedback", payload)
            return
        self._enqueue(feedback)

    def on_button(self) -> None:
        log.info("button pressed")
        self._enqueue(Command("detect"))

    def submit(self, job: Command | Feedback) -> bool:
        """Queue an already parsed job from another front end (the dashboard); False when the queue is full."""
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            return False
        return True

    def stop_session(self) -> None:
        """End a running collect session early, as the MQTT `stop` command does."""
        self.session_stop.set()

    def _enqueue(self, command: Command) -> None:
        try:
            self.jobs.put_nowait(command)
        except queue.Full:
            self._report_error("busy: 32 jobs already waiting", "command", b"")

    def _report_error(self, error: str, source: str, payload: bytes) -> None:
        message = messages.error_message(self.device.device_id, self.device.clock.wall(), error, source,
                                         payload[:200].decode("utf-8", "replace"))
        try:
            self.device.publisher.publish(self.cfg["mqtt"]["error_topic"], message)
        except EmotionEdgeError as exc:
            log.error("could not report an error event: %s", exc)

    # -- main loop -----------------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop_event.set())

    def attach_button(self) -> None:
        if not self.cfg["button"]["enabled"]:
            return
        from drivers.button import DetectButton

        b = self.cfg["button"]
        button_class = SimulatedButton if self.device.hw.simulated else DetectButton
        try:
            self.button = button_class(b["pin"], self.on_button, self.device.hw.pin_factory, b["bounce_s"])
        except Exception as exc:  # gpiozero raises its own tree (pin in use, no pin factory, ...)
            raise HardwareError(f"cannot use GPIO{b['pin']} for the button: {type(exc).__name__}: {exc}") from None

    def run(self, max_seconds: float | None = None) -> None:
        """Serve until SIGTERM/SIGINT (or `max_seconds` of clock time, for demos and tests)."""
        self.device.publisher.handlers.update({self.cfg["mqtt"]["command_topic"]: self.on_command,
                                               self.cfg["mqtt"]["feedback_topic"]: self.on_feedback})
        self.attach_button()
        self.device.start()
        for service in self.services:
            service.start()
        notify("READY=1")
        log.info("emotion-edge running as %s", self.device.device_id)
        watchdog = watchdog_interval_s()
        clock = self.device.clock
        last_ping = [0.0]

        def ping() -> None:  # from the main loop and from inside jobs: only a hung loop stops the pings
            if watchdog is not None and time.monotonic() - last_ping[0] >= watchdog:
                notify("WATCHDOG=1")
                last_ping[0] = time.monotonic()

        self.device.heartbeat = ping
        started = clock.monotonic()
        press_every = self.cfg["sim"]["button_every_s"] if self.device.hw.person is not None else 0
        next_press = started + press_every if press_every else None
        try:
            while not self.stop_event.is_set():
                ping()
                now = clock.monotonic()
                if max_seconds is not None and now - started >= max_seconds:
                    break
                if next_press is not None and now >= next_press and isinstance(self.button, SimulatedButton):
                    self.button.press()
                    next_press += press_every
                try:
                    command = self.jobs.get(timeout=min(0.2, watchdog or 0.2))
                except queue.Empty:
                    continue
                self._run_job(command)
        finally:
            notify("STOPPING=1")
            for service in reversed(self.services):
                try:
                    service.stop()
                except Exception:  # one service failing to stop must not keep the device from stopping
                    log.exception("stopping %s failed", type(service).__name__)
            if self.button is not None:
                self.button.close()
            left = self.device.stop(flush_timeout=1.0)
            log.info("stopped; %d message(s) were not yet acknowledged by the broker", left)

    def _run_job(self, command: Command | Feedback) -> None:
        self.active = (command, self.device.clock.monotonic())
        try:
            if isinstance(command, Feedback):
                report = self.device.apply_feedback(command.request_id, command.label)
                log.info("feedback for %s: %s", command.request_id, report)
            elif command.kind == "detect":
                self.device.detect(command.window_s, command.request_id, stop=self.stop_event)
                self.detections += 1
            elif command.kind == "collect":
                self.session_stop.clear()
                either = _AnyEvent(self.stop_event, self.session_stop)
                summary = self.device.collect(command.label, command.duration_s, stop=either)
                log.info("collect session %s ended: %d records", summary.session_id, summary.records)
        except EmotionEdgeError as exc:
            kind = getattr(command, "kind", "feedback")
            log.error("%s job failed: %s", kind, exc)
            self._report_error(str(exc), kind, b"")
        except Exception as exc:  # a bug or a full disk must cost this job, not the service
            kind = getattr(command, "kind", "feedback")
            log.exception("%s job failed unexpectedly", kind)
            self._report_error(f"internal error: {type(exc).__name__}: {exc}", kind, b"")
        finally:
            self.active = None


class _AnyEvent:
    """Looks like a threading.Event that is set when any of its events is."""

    def __init__(self, *events: threading.Event):
        self.events = events

    def is_set(self) -> bool:
        return any(e.is_set() for e in self.events)
