"""Publishing over MQTT with store and forward: the outbox bookkeeping, independent of the client library.

`publish()` only writes the message to the persistent `Outbox` (durable when it returns); a sender thread
hands stored messages to the `Transport` in order while connected (at most `inflight` unacknowledged). A
PUBACK only marks its row done in memory: the network thread never touches the disk, so a full disk
cannot kill it. The sender deletes acknowledged rows in batches. A broker that is down at start-up or goes
away, or a process that is killed, loses nothing accepted: what is left is sent after reconnecting, or by
the next process that opens the outbox. Subscriptions (`handlers`) are renewed on every reconnect, and a
retained online/offline status with a last will tells the backend whether the device is there.

Status timestamps: the will is stamped just before each connection attempt, and every status sent during
that connection carries the same stamp, so the will is never older than the last status before it (a
consumer should still order by broker receipt where it can, e.g. IoT Core's rule `timestamp()`).

Transports (pi.messaging.transport): paho-mqtt 2.x (the default) and AWSIoTPythonSDK v1; tests use
pi.messaging.fake.FakeTransport. `make_publisher()` picks one from the config.
"""
from __future__ import annotations

import logging
import sqlite3
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

from pi.clock import Clock
from pi.errors import PublishError
from pi.messaging.messages import encode, status_message
from pi.messaging.outbox import Outbox, OutboxError
from pi.messaging.transport import AwsIotTransport, MqttTransport, Transport

log = logging.getLogger(__name__)

MAX_PAYLOAD = 128 * 1024  # AWS IoT Core's limit; a useful bound for any broker


class OutboxPublisher:
    """Outbox, ordered sender, acknowledgements, status and handlers, over any `Transport`."""

    def __init__(self, mqtt_cfg: dict, device_id: str, clock: Clock, outbox: Outbox, transport: Transport,
                 inflight: int = 20, tls_context: ssl.SSLContext | None = None):
        self.cfg = mqtt_cfg
        self.device_id = device_id
        self.clock = clock
        self.outbox = outbox
        self.transport = transport
        self.qos = mqtt_cfg["qos"]
        self.inflight = inflight
        self.tls_context = tls_context  # only to probe why a TLS connection fails
        self.handlers: dict[str, Callable[[bytes], None]] = {}  # topic -> handler, set before start()
        self.connected = threading.Event()
        self.ready = threading.Event()  # connected and every handler's subscription acknowledged
        self.published = 0
        self.storage_error: str | None = None  # why storage last failed (outbox or store); None once it works
        self._outbox_refused = False  # whether storage_error is the outbox's own
        self._inflight: dict[int, int] = {}  # transport message id -> outbox row id
        self._acked_early: set[int] = set()
        self._done: list[int] = []  # acknowledged row ids, deleted in batches by the sender
        self._last_handed = 0  # outbox id of the last message handed to the transport by this process
        self._connection_stamp = clock.wall()  # when the current (or next) connection attempt began
        self._lock = threading.Lock()  # guards the bookkeeping only; never held while calling the transport
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._sender: threading.Thread | None = None
        transport.bind(self)

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self, wait_s: float = 5.0) -> bool:
        """Connect in the background; return whether the broker answered within `wait_s`."""
        self._sender = threading.Thread(target=self._send_loop, name="mqtt-sender", daemon=True)
        self._sender.start()
        if self.tls_context is not None:  # both transports' own errors hide the reason: ask TLS directly
            from pi.messaging.tls import probe

            why = probe(self.cfg["host"], self.cfg["port"], self.tls_context)
            if why:
                log.error("MQTT over TLS to %s:%s: %s", self.cfg["host"], self.cfg["port"], why)
        self.transport.connect()
        if not self.connected.wait(wait_s):
            log.warning("MQTT broker %s:%s not reachable yet; messages wait in the outbox and are sent when "
                        "it is", self.cfg["host"], self.cfg["port"])
            return False
        return True

    def alive(self) -> bool:
        """False once the transport's network thread or our sender thread has died (not merely offline):
        the service cannot recover by itself, so its watchdog should let systemd restart it."""
        sender_ok = self._sender is None or self._sender.is_alive() or self._stop.is_set()
        return sender_ok and self.transport.alive()

    def stop(self, timeout: float = 1.0) -> int:
        """Flush, publish 'offline' (retained), disconnect. Returns messages left in the outbox."""
        left = self.flush(timeout)
        self._stop.set()
        if self.connected.is_set():
            self.transport.publish_status(self.cfg["status_topic"], self._status_payload(
                "offline", self.clock.wall(), reason="stopped", outbox_pending=left, dropped=self.outbox.dropped),
                wait_s=1.0)
        self._wake.set()
        if self._sender is not None:
            self._sender.join(2)
        self._delete_done()
        self.transport.disconnect()
        return left

    # -- the transport's listener (called from its network thread: memory only, never the disk) --------
    def will(self) -> tuple[str, bytes]:
        self._connection_stamp = self.clock.wall()
        return self.cfg["status_topic"], self._status_payload("offline", self._connection_stamp,
                                                              reason="connection lost")

    def on_connected(self) -> None:
        log.info("MQTT connected to %s:%s", self.cfg["host"], self.cfg["port"])
        self.connected.set()
        self.transport.subscribe(list(self.handlers))
        self._send_online()
        self._wake.set()

    def on_subscribed(self) -> None:
        self.ready.set()

    def on_disconnected(self, reason: str | None) -> None:
        self.connected.clear()
        self.ready.clear()
        if reason and not self._stop.is_set():
            log.warning("MQTT connection lost (%s); reconnecting with back-off", reason)

    def on_message(self, topic: str, payload: bytes) -> None:
        handler = self.handlers.get(topic)
        if handler is not None:
            try:
                handler(payload)
            except Exception:  # an exception would end the transport's network thread for good
                log.exception("handler for %s failed", topic)

    def on_acked(self, mid: int) -> None:
        with self._lock:
            row_id = self._inflight.pop(mid, None)
            if row_id is None:
                self._acked_early.add(mid)  # the PUBACK overtook the sender's bookkeeping (or was a status)
            else:
                self._done.append(row_id)
        self._wake.set()

    # -- publishing ------------------------------------------------------------------------------------
    def publish(self, topic: str, message: dict, retain: bool = False) -> None:
        """Accept a message: it is on disk when this returns, and will be sent in order. Raises
        PublishError (OutboxError when the outbox cannot store it, e.g. a full disk)."""
        payload = encode(message)
        if len(payload) > MAX_PAYLOAD:
            raise PublishError(f"{message.get('type', 'message')} for {topic} is {len(payload)} bytes, over "
                               f"the {MAX_PAYLOAD}-byte limit")
        try:
            self.outbox.put(topic, payload, self.qos, retain, message.get("type", "other"))
        except OutboxError as exc:
            self.report_storage(str(exc), outbox=True)
            raise
        if self.storage_error is not None and self._outbox_refused:
            self.report_storage(None)  # the outbox stores again (a failing local store is the job's to clear)
        self.published += 1
        self._wake.set()

    def publish_direct(self, topic: str, message: dict) -> bool:
        """Send without the outbox, best effort (lost if offline): for reports about a failing outbox."""
        payload = encode(message)
        return self.connected.is_set() and self.transport.publish(topic, payload, self.qos, False) is not None

    def report_storage(self, error: str | None, outbox: bool = False) -> None:
        """Record a storage failure (None: storage works again) and put it in the status right away.
        `outbox`: the outbox itself refused, so its next successful write clears the failure; a failure of
        the local store is cleared only by a job that completes."""
        self._outbox_refused = outbox and error is not None
        if error == self.storage_error:
            return
        self.storage_error = error
        if error:
            log.error("storage failing: %s", error)
        else:
            log.info("storage works again")
        if self.connected.is_set():
            self._send_online()

    def _send_online(self) -> None:
        try:
            pending, dropped = self.pending, self.outbox.dropped
        except sqlite3.Error as exc:  # the status must still go out
            pending, dropped = None, None
            log.error("cannot read the outbox for the status: %s", exc)
        self.transport.publish_status(self.cfg["status_topic"], self._status_payload(
            "online", self._connection_stamp, outbox_pending=pending, dropped=dropped,
            storage_error=self.storage_error))

    def _status_payload(self, state: str, wall: float, **extra: Any) -> bytes:
        return encode(status_message(self.device_id, state, wall, **extra))

    # -- the sender thread -----------------------------------------------------------------------------
    def _send_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(0.2)
            self._wake.clear()
            try:
                self._delete_done()
                if self.connected.is_set():
                    self._send_batch()
            except Exception:  # log, keep the thread, retry on the next wake
                log.exception("MQTT sender failed; retrying")
                self._stop.wait(1.0)

    def _send_batch(self) -> None:
        with self._lock:
            room, last = self.inflight - len(self._inflight), self._last_handed
        for row in self.outbox.after(last, room) if room > 0 else ():
            mid = self.transport.publish(row.topic, row.payload, row.qos, row.retain)
            if mid is None:
                break
            with self._lock:
                self._last_handed = row.id
                if row.qos == 0 or mid in self._acked_early:
                    self._acked_early.discard(mid)
                    self._done.append(row.id)
                else:
                    self._inflight[mid] = row.id
        with self._lock:
            # early PUBACKs were consumed above; anything left belongs to status messages, and keeping it
            # would wrongly ack a data message once the 16-bit message ids wrap around
            self._acked_early.clear()

    def _delete_done(self) -> None:
        """Delete acknowledged rows in one commit. If the disk refuses, they stay listed and are retried
        (never sent again by this process; a later process may send them again: at-least-once)."""
        with self._lock:
            done, self._done = self._done, []
        if not done:
            return
        try:
            self.outbox.delete_many(done)
        except sqlite3.Error as exc:
            with self._lock:
                self._done[:0] = done
            self.report_storage(f"outbox {self.outbox.path.name} cannot delete acknowledged messages: {exc}")

    @property
    def pending(self) -> int:
        """Messages accepted but not yet acknowledged by the broker (all of them safely on disk)."""
        with self._lock:
            done = len(self._done)
        return len(self.outbox) - done

    def flush(self, timeout: float) -> int:
        """Wait up to `timeout` real seconds for every PUBACK; return how many are still outstanding."""
        deadline = time.monotonic() + timeout
        while self.pending and time.monotonic() < deadline:
            self._wake.set()
            time.sleep(0.02)
        return self.pending


def make_publisher(mqtt_cfg: dict, device_id: str, clock: Clock, outbox: Outbox, inflight: int = 20
                   ) -> OutboxPublisher:
    """The publisher over the configured transport (`mqtt.transport`: paho or awsiot)."""
    tls_context = None
    if mqtt_cfg.get("tls"):
        from pi.messaging.tls import client_context

        tls_context = client_context(mqtt_cfg["ca_file"], mqtt_cfg["cert_file"], mqtt_cfg["key_file"],
                                     mqtt_cfg["alpn"])
    transport: Transport
    if mqtt_cfg["transport"] == "awsiot":
        transport = AwsIotTransport(mqtt_cfg, device_id)
    else:
        transport = MqttTransport(mqtt_cfg, device_id, tls_context, inflight)
    return OutboxPublisher(mqtt_cfg, device_id, clock, outbox, transport, inflight, tls_context)
