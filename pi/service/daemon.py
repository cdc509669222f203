"""`emotion-edge run`: the service. Detections on button presses and MQTT commands, collect sessions on
command, a systemd watchdog fed from the main loop while the MQTT loop lives, a clean stop on SIGTERM
within two seconds. A failing job (a full disk included) costs that job and an error message, never the
service or its connection."""
from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Union

from drivers.sim.button import SimulatedButton
from pi import sqlite as db_setup
from pi.errors import CommandError, EmotionEdgeError, HardwareError
from pi.messaging import messages
from pi.messaging.commands import Collect, Detect, Feedback, Job, Stop, parse_command, parse_feedback
from pi.messaging.outbox import OutboxError
from pi.service.device import Device
from pi.service.systemd import notify, watchdog_interval_s

if TYPE_CHECKING:
    from drivers.button import DetectButton

log = logging.getLogger(__name__)


class Daemon:
    def __init__(self, device: Device):
        self.device = device
        self.cfg = device.cfg
        self.jobs: queue.Queue[Job] = queue.Queue(maxsize=32)
        self.stop_event = threading.Event()
        self.session_stop = threading.Event()  # ends a running collect session early
        self.button: Union[DetectButton, SimulatedButton, None] = None
        self.detections = 0
        self.mqtt_dead = False  # set once the MQTT loop is found dead: the watchdog is no longer fed
        # started after the device, stopped before it (the dashboard and alert hub: pi.web, wired by the CLI)
        self.services: list = []
        self.active: tuple[Job, float] | None = None  # the job running now, and its clock start

    # -- inputs --------------------------------------------------------------------------------------
    def _parsed(self, parse: Callable[[], Any], source: str, payload: bytes) -> Any:
        """The parsed payload, or None after answering on the error topic: every rejection gets a reply,
        a parser bug included (it must not vanish into the MQTT thread's log)."""
        try:
            return parse()
        except CommandError as exc:
            log.warning("rejected %s: %s", source, exc)
            self._report_error(str(exc), source, payload)
        except Exception as exc:
            log.exception("rejected %s: the parser failed", source)
            self._report_error(f"{source} could not be parsed: {type(exc).__name__}: {exc}", source, payload)
        return None

    def on_command(self, payload: bytes) -> None:
        """MQTT thread: parse, then queue; bad commands go to the error topic and are otherwise ignored."""
        command = self._parsed(lambda: parse_command(payload, self.cfg["collect"]["labels"]), "command", payload)
        if command is None:
            return
        if isinstance(command, Stop):
            self.session_stop.set()
            return
        self._enqueue(command)

    def on_feedback(self, payload: bytes) -> None:
        """MQTT thread: a correction is validated here and applied in the job loop (one writer)."""
        feedback = self._parsed(lambda: parse_feedback(payload, self.cfg["detect"]["emotions"]), "feedback",
                                payload)
        if feedback is not None:
            self._enqueue(feedback)

    def on_button(self) -> None:
        log.info("button pressed")
        self._enqueue(Detect())

    def submit(self, job: Job) -> bool:
        """Queue an already parsed job from another front end (the dashboard); False when the queue is full."""
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            return False
        return True

    def stop_session(self) -> None:
        """End a running collect session early, as the MQTT `stop` command does."""
        self.session_stop.set()

    def _enqueue(self, job: Job) -> None:
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            self._report_error("busy: 32 jobs already waiting", job.kind, b"")

    def _report_error(self, error: str, source: str, payload: bytes) -> None:
        """Through the outbox; when the outbox itself refuses (a full disk), sent directly, best effort."""
        message = messages.error_message(self.device.device_id, self.device.clock.wall(), error, source,
                                         payload[:200].decode("utf-8", "replace"))
        topic = self.cfg["mqtt"]["error_topic"]
        try:
            self.device.publisher.publish(topic, message)
        except OutboxError as exc:
            if not self.device.publisher.publish_direct(topic, message):
                log.error("could not report an error event (%s), not even directly: %s", error, exc)
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

        def ping() -> None:  # from the main loop and from inside jobs: a hung loop stops the pings, and so
            # does a dead MQTT loop (a device that is "online" but deaf to commands): systemd restarts us
            if watchdog is None or time.monotonic() - last_ping[0] < watchdog:
                return
            if not self.device.publisher.alive():
                if not self.mqtt_dead:
                    self.mqtt_dead = True
                    log.critical("the MQTT network loop has died; no longer feeding the watchdog")
                return
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

    def _run_job(self, job: Job) -> None:
        publisher = self.device.publisher
        self.active = (job, self.device.clock.monotonic())
        try:
            if isinstance(job, Feedback):
                report = self.device.apply_feedback(job.request_id, job.label)
                log.info("feedback for %s: %s", job.request_id, report)
            elif isinstance(job, Detect):
                self.device.detect(job.window_s, job.request_id, stop=self.stop_event)
                self.detections += 1
            elif isinstance(job, Collect):
                self.session_stop.clear()
                either = _AnyEvent(self.stop_event, self.session_stop)
                summary = self.device.collect(job.label, job.duration_s, stop=either)
                log.info("collect session %s ended: %d records", summary.session_id, summary.records)
        except EmotionEdgeError as exc:
            log.error("%s job failed: %s", job.kind, exc)
            self._report_error(str(exc), job.kind, b"")
        except Exception as exc:  # a bug or a full disk must cost this job, not the service
            if db_setup.is_disk_full(exc):
                log.error("%s job failed: the disk is full (%s)", job.kind, exc)
                publisher.report_storage(f"{job.kind} failed: {exc}")
                self._report_error(f"{job.kind} failed: the disk is full ({exc})", job.kind, b"")
            else:
                log.exception("%s job failed unexpectedly", job.kind)
                self._report_error(f"internal error: {type(exc).__name__}: {exc}", job.kind, b"")
        else:
            if publisher.storage_error is not None:
                publisher.report_storage(None)  # the job wrote everything it had to: storage works again
        finally:
            self.active = None


class _AnyEvent(threading.Event):
    """A threading.Event that reads as set when any of its events is (only is_set() is combined)."""

    def __init__(self, *events: threading.Event):
        super().__init__()
        self.events = events

    def is_set(self) -> bool:
        return any(e.is_set() for e in self.events)
