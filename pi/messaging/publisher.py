"""Publishing over MQTT with store and forward, behind one interface for two transports.

`publish()` only writes the message to the persistent `Outbox`; a sender thread hands stored messages to
the transport in order while connected (at most `inflight` unacknowledged) and deletes each one when its
PUBACK arrives (QoS 1). A broker that is down at start-up or goes away, or a process that is killed, loses
nothing accepted: what is left is sent after reconnecting, or by the next process that opens the outbox.
Subscriptions (`handlers`) are renewed on every reconnect, and a retained online/offline status with a last
will tells the backend whether the device is there.

Transports: `MqttPublisher` (paho-mqtt 2.x, the default: one code path for every broker, TLS included) and
`AwsIotSdkPublisher` (AWSIoTPythonSDK v1, in maintenance mode; its offline queue lives in memory only, so
it is switched off and our disk outbox sits in front of it). `make_publisher()` picks one from the config.
"""
from __future__ import annotations

import logging
import random
import threading
import time
from abc import ABC, abstractmethod
from typing import Callable

import paho.mqtt.client as mqtt

from pi.errors import PublishError
from pi.messaging.messages import encode, status_message
from pi.messaging.outbox import Outbox, Pending

log = logging.getLogger(__name__)

MAX_PAYLOAD = 128 * 1024  # AWS IoT Core's limit; a useful bound for any broker


class OutboxPublisher(ABC):
    """The transport-independent part: outbox, ordered sender, acknowledgements, status, handlers."""

    def __init__(self, mqtt_cfg: dict, device_id: str, clock, outbox: Outbox, inflight: int = 20):
        self.cfg = mqtt_cfg
        self.device_id = device_id
        self.clock = clock
        self.outbox = outbox
        self.qos = mqtt_cfg["qos"]
        self.inflight = inflight
        self.handlers: dict[str, Callable[[bytes], None]] = {}  # topic -> handler, set before start()
        self.connected = threading.Event()
        self.ready = threading.Event()  # connected and every handler's subscription acknowledged
        self.published = 0
        self._inflight: dict[int, int] = {}  # transport message id -> outbox row id
        self._acked_early: set[int] = set()
        self._last_handed = 0  # outbox id of the last message handed to the transport by this process
        self._lock = threading.Lock()  # guards the bookkeeping only; never held while calling the transport
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._sender: threading.Thread | None = None
        self.tls_context = None
        if mqtt_cfg.get("tls"):
            from pi.messaging.tls import client_context

            self.tls_context = client_context(mqtt_cfg["ca_file"], mqtt_cfg["cert_file"], mqtt_cfg["key_file"],
                                              mqtt_cfg["alpn"])

    # -- transport hooks -------------------------------------------------------------------------------
    @abstractmethod
    def _open(self) -> None:
        """Start connecting in the background (and keep reconnecting)."""

    @abstractmethod
    def _hand(self, row: Pending) -> int | None:
        """Give one stored message to the transport; its message id, or None if it refused."""

    @abstractmethod
    def _send_status(self, state: str, **extra) -> None:
        """Publish the retained status directly (it describes the connection, so it is not queued)."""

    @abstractmethod
    def _close(self) -> None:
        """Disconnect and stop the transport's threads."""

    # -- shared behaviour ------------------------------------------------------------------------------
    def start(self, wait_s: float = 5.0) -> bool:
        """Connect in the background; return whether the broker answered within `wait_s`."""
        self._sender = threading.Thread(target=self._send_loop, name="mqtt-sender", daemon=True)
        self._sender.start()
        if self.tls_context is not None:  # both transports' own errors hide the reason: ask TLS directly
            from pi.messaging.tls import probe

            why = probe(self.cfg["host"], self.cfg["port"], self.tls_context)
            if why:
                log.error("MQTT over TLS to %s:%s: %s", self.cfg["host"], self.cfg["port"], why)
        self._open()
        if not self.connected.wait(wait_s):
            log.warning("MQTT broker %s:%s not reachable yet; messages wait in the outbox and are sent when "
                        "it is", self.cfg["host"], self.cfg["port"])
            return False
        return True

    def _connected(self) -> None:
        log.info("MQTT connected to %s:%s", self.cfg["host"], self.cfg["port"])
        self.connected.set()
        self._send_status("online", outbox_pending=len(self.outbox), dropped=self.outbox.dropped)
        self._wake.set()

    def _disconnected(self, reason) -> None:
        self.connected.clear()
        self.ready.clear()
        if reason and not self._stop.is_set():
            log.warning("MQTT connection lost (%s); reconnecting with back-off", reason)

    def _message(self, topic: str, payload: bytes) -> None:
        handler = self.handlers.get(topic)
        if handler is not None:
            try:
                handler(payload)
            except Exception:  # an exception would end the transport's network thread for good
                log.exception("handler for %s failed", topic)

    def _acked(self, mid: int) -> None:
        with self._lock:
            row_id = self._inflight.pop(mid, None)
            if row_id is None:
                self._acked_early.add(mid)  # the PUBACK overtook the sender's bookkeeping (or was a status)
        if row_id is not None:
            self.outbox.delete(row_id)
            self._wake.set()

    def publish(self, topic: str, message: dict, retain: bool = False) -> None:
        """Accept a message: it is on disk when this returns, and will be sent in order."""
        payload = encode(message)
        if len(payload) > MAX_PAYLOAD:
            raise PublishError(f"{message.get('type', 'message')} for {topic} is {len(payload)} bytes, over "
                               f"the {MAX_PAYLOAD}-byte limit")
        self.outbox.put(topic, payload, self.qos, retain, message.get("type", "other"))
        self.published += 1
        self._wake.set()

    def _send_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(0.2)
            self._wake.clear()
            if not self.connected.is_set():
                continue
            try:
                self._send_batch()
            except Exception:  # e.g. a full disk: log, keep the thread, retry on the next wake
                log.exception("MQTT sender failed; retrying")
                self._stop.wait(1.0)

    def _send_batch(self) -> None:
        with self._lock:
            room, last = self.inflight - len(self._inflight), self._last_handed
        for row in self.outbox.after(last, room) if room > 0 else ():
            mid = self._hand(row)
            if mid is None:
                break
            with self._lock:
                self._last_handed = row.id
                acked = row.qos == 0 or mid in self._acked_early
                self._acked_early.discard(mid)
                if not acked:
                    self._inflight[mid] = row.id
            if acked:
                self.outbox.delete(row.id)
        with self._lock:
            # early PUBACKs were consumed above; anything left belongs to status messages, and keeping it
            # would wrongly ack a data message once the 16-bit message ids wrap around
            self._acked_early.clear()

    @property
    def pending(self) -> int:
        """Messages accepted but not yet acknowledged by the broker (all of them safely on disk)."""
        return len(self.outbox)

    def flush(self, timeout: float) -> int:
        """Wait up to `timeout` real seconds for every PUBACK; return how many are still outstanding."""
        deadline = time.monotonic() + timeout
        while self.pending and time.monotonic() < deadline:
            self._wake.set()
            time.sleep(0.02)
        return self.pending

    def stop(self, timeout: float = 1.0) -> int:
        """Flush, publish 'offline' (retained), disconnect. Returns messages left in the outbox."""
        left = self.flush(timeout)
        self._stop.set()
        if self.connected.is_set():
            self._send_status("offline", reason="stopped", outbox_pending=left, dropped=self.outbox.dropped)
        self._wake.set()
        if self._sender is not None:
            self._sender.join(2)
        self._close()
        return left

    def _status_payload(self, state: str, **extra) -> bytes:
        return encode(status_message(self.device_id, state, self.clock.wall(), **extra))


class MqttPublisher(OutboxPublisher):
    """paho-mqtt 2.x transport (plain TCP or TLS), for any broker including AWS IoT Core."""

    def __init__(self, mqtt_cfg: dict, device_id: str, clock, outbox: Outbox, inflight: int = 20):
        super().__init__(mqtt_cfg, device_id, clock, outbox, inflight)
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device_id,
                                  protocol=mqtt.MQTTv311, clean_session=False)
        self.client.max_inflight_messages_set(inflight)
        if mqtt_cfg.get("username"):
            self.client.username_pw_set(mqtt_cfg["username"], mqtt_cfg.get("password"))
        if self.tls_context is not None:
            self.client.tls_set_context(self.tls_context)
        self.client.reconnect_delay_set(1, int(mqtt_cfg["reconnect_max_delay"]))
        self.client.will_set(mqtt_cfg["status_topic"], self._status_payload("offline", reason="connection lost"),
                             qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = lambda c, u, msg: self._message(msg.topic, msg.payload)
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = lambda c, u, mid, rc=None, p=None: self._acked(mid)

    def _open(self) -> None:
        self.client.connect_async(self.cfg["host"], self.cfg["port"], keepalive=self.cfg["keepalive"])
        self.client.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties=None):
        if reason_code.is_failure:
            log.error("MQTT broker refused the connection: %s", reason_code)
            return
        if self.handlers:
            client.subscribe([(topic, 1) for topic in self.handlers])
        else:
            self.ready.set()
        self._connected()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties=None):
        # Jitter: paho doubles the delay from its minimum up to the maximum; drawing a new minimum for each
        # outage spreads a fleet's reconnects after a broker restart instead of synchronising them.
        client.reconnect_delay_set(random.uniform(0.5, 1.5), int(self.cfg["reconnect_max_delay"]))
        self._disconnected(reason_code if reason_code != 0 else None)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties=None):
        if any(rc.is_failure for rc in reason_codes):
            log.error("MQTT broker refused a subscription: %s", reason_codes)
        self.ready.set()

    def _hand(self, row: Pending) -> int | None:
        info = self.client.publish(row.topic, row.payload, qos=row.qos, retain=row.retain)
        # NO_CONN: paho keeps the QoS 1 message and sends it itself after reconnecting
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            log.error("paho refused message %d for %s: %s", row.id, row.topic, mqtt.error_string(info.rc))
            return None
        return info.mid

    def _send_status(self, state: str, **extra) -> None:
        info = self.client.publish(self.cfg["status_topic"], self._status_payload(state, **extra), qos=1,
                                   retain=True)
        if state == "offline":
            try:
                info.wait_for_publish(1.0)
            except (RuntimeError, ValueError):
                pass

    def _close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class AwsIotSdkPublisher(OutboxPublisher):
    """AWSIoTPythonSDK v1 transport (mutual TLS on 8883, or 443 with ALPN, which the SDK sets itself).

    The SDK's own offline queue is disabled: it is in memory only, and our outbox already holds every
    message on disk. Its WebSocket mode is not offered: it calls ssl.wrap_socket, gone in Python 3.12.
    """

    def __init__(self, mqtt_cfg: dict, device_id: str, clock, outbox: Outbox, inflight: int = 20):
        super().__init__(mqtt_cfg, device_id, clock, outbox, inflight)
        try:
            from AWSIoTPythonSDK.MQTTLib import AWSIoTMQTTClient
        except ImportError as exc:
            raise PublishError("mqtt.transport is awsiot but AWSIoTPythonSDK is not installed: "
                               "pip install 'emotion-edge[aws]'") from exc
        c = AWSIoTMQTTClient(device_id, cleanSession=False)
        c.configureEndpoint(mqtt_cfg["host"], mqtt_cfg["port"])
        c.configureCredentials(mqtt_cfg["ca_file"], mqtt_cfg["key_file"], mqtt_cfg["cert_file"])
        c.configureAutoReconnectBackoffTime(1, int(mqtt_cfg["reconnect_max_delay"]), 20)
        c.configureOfflinePublishQueueing(0)  # disabled: the disk outbox is the queue
        c.configureDrainingFrequency(10)
        c.configureConnectDisconnectTimeout(10)
        c.configureMQTTOperationTimeout(10)
        # the SDK's vendored paho 1.x takes str or bytearray payloads, not bytes
        c.configureLastWill(mqtt_cfg["status_topic"],
                            bytearray(self._status_payload("offline", reason="connection lost")), 1)
        c.onOnline = self._on_online
        c.onOffline = lambda: self._disconnected("offline")
        self.client = c
        self._opener: threading.Thread | None = None
        self._ever_connected = False

    def _open(self) -> None:
        def connect_until_stopped():
            delay = 1.0
            while not self._stop.is_set():
                try:
                    self.client.connect(self.cfg["keepalive"])
                    return  # from here the SDK reconnects by itself
                except Exception as exc:  # the SDK raises bare exceptions for TLS and timeouts alike
                    log.error("AWS IoT SDK cannot connect to %s:%s: %s: %s", self.cfg["host"], self.cfg["port"],
                              type(exc).__name__, exc)
                    self._stop.wait(delay)
                    delay = min(delay * 2, self.cfg["reconnect_max_delay"])

        self._opener = threading.Thread(target=connect_until_stopped, name="awsiot-connect", daemon=True)
        self._opener.start()

    def _on_online(self) -> None:
        first = not self._ever_connected
        self._ever_connected = True
        if first:  # after a reconnect the SDK resubscribes by itself (and refuses our calls while it does)
            for topic in self.handlers:
                try:
                    self.client.subscribeAsync(topic, 1, messageCallback=lambda c, u, msg: self._message(
                        msg.topic, msg.payload))
                except Exception as exc:
                    log.error("AWS IoT SDK could not subscribe to %s: %s", topic, exc)
        self.ready.set()
        self._connected()

    def _hand(self, row: Pending) -> int | None:
        try:
            return self.client.publishAsync(row.topic, bytearray(row.payload), row.qos, ackCallback=self._acked)
        except Exception as exc:
            log.warning("AWS IoT SDK could not publish message %d: %s", row.id, exc)
            return None

    def _send_status(self, state: str, **extra) -> None:
        payload = bytearray(self._status_payload(state, **extra))
        try:
            # the SDK's publish has no retain flag; inside its callbacks only async calls are allowed
            if state == "online":
                self.client.publishAsync(self.cfg["status_topic"], payload, 1)
            else:
                self.client.publish(self.cfg["status_topic"], payload, 1)
        except Exception as exc:
            log.warning("AWS IoT SDK could not publish the %s status: %s", state, exc)

    def _close(self) -> None:
        if not self._ever_connected:
            return  # nothing to close, and the SDK would wait out its disconnect timeout
        try:
            self.client.disconnect()
        except Exception as exc:
            log.warning("AWS IoT SDK disconnect: %s", exc)


def make_publisher(mqtt_cfg: dict, device_id: str, clock, outbox: Outbox, inflight: int = 20) -> OutboxPublisher:
    cls = AwsIotSdkPublisher if mqtt_cfg["transport"] == "awsiot" else MqttPublisher
    return cls(mqtt_cfg, device_id, clock, outbox, inflight)
