"""MQTT over paho-mqtt 2.x: QoS 1 publishing, a retained online/offline status with a last will, and the
subscriptions of `handlers` (renewed on every reconnect: paho does not restore subscriptions by itself).

Store and forward: `publish()` only writes the message to the persistent `Outbox`; a sender thread hands
stored messages to paho in order while connected (at most `inflight` unacknowledged) and deletes each one
when its PUBACK arrives. A broker that is down at start-up, goes away, or a process that is killed loses
nothing accepted: what is left is sent after reconnecting, or by the next process that opens the outbox.
The connection is made in the background with paho's reconnect back-off (1 s doubling up to
`mqtt.reconnect_max_delay`).
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

import paho.mqtt.client as mqtt

from pi.errors import PublishError
from pi.messages import encode, status_message
from pi.outbox import Outbox

log = logging.getLogger(__name__)

MAX_PAYLOAD = 128 * 1024  # AWS IoT Core's limit; a useful bound for any broker


class MqttPublisher:
    def __init__(self, mqtt_cfg: dict, device_id: str, clock, outbox: Outbox, inflight: int = 20):
        self.cfg = mqtt_cfg
        self.device_id = device_id
        self.clock = clock
        self.handlers: dict[str, Callable[[bytes], None]] = {}  # topic -> handler, set before start()
        self.qos = mqtt_cfg["qos"]
        self.outbox = outbox
        self.inflight = inflight
        self._inflight: dict[int, int] = {}  # paho mid -> outbox row id
        self._last_handed = 0  # outbox id of the last message handed to paho by this process
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._sender: threading.Thread | None = None
        self.connected = threading.Event()
        self.ready = threading.Event()  # connected and every handler's subscription acknowledged
        self._acked_early: set[int] = set()
        self._lock = threading.Lock()
        self.published = 0
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device_id,
                                  protocol=mqtt.MQTTv311, clean_session=False)
        self.client.max_inflight_messages_set(inflight)
        if mqtt_cfg.get("username"):
            self.client.username_pw_set(mqtt_cfg["username"], mqtt_cfg.get("password"))
        self.client.reconnect_delay_set(1, int(mqtt_cfg["reconnect_max_delay"]))
        will = encode(status_message(device_id, "offline", clock.wall(), reason="connection lost"))
        self.client.will_set(mqtt_cfg["status_topic"], will, qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self._on_publish

    # -- connection ----------------------------------------------------------------------------------
    def start(self, wait_s: float = 5.0) -> bool:
        """Connect in the background; return whether the broker answered within `wait_s`."""
        host, port = self.cfg["host"], self.cfg["port"]
        self.client.connect_async(host, port, keepalive=self.cfg["keepalive"])
        self.client.loop_start()
        self._sender = threading.Thread(target=self._send_loop, name="mqtt-sender", daemon=True)
        self._sender.start()
        if not self.connected.wait(wait_s):
            log.warning("MQTT broker %s:%s not reachable yet; messages are queued and sent when it is",
                        host, port)
            return False
        return True

    def _on_connect(self, client, userdata, flags, reason_code, properties=None):
        if reason_code.is_failure:
            log.error("MQTT broker refused the connection: %s", reason_code)
            return
        log.info("MQTT connected to %s:%s", self.cfg["host"], self.cfg["port"])
        self.connected.set()
        if self.handlers:
            client.subscribe([(topic, 1) for topic in self.handlers])
        else:
            self.ready.set()
        status = status_message(self.device_id, "online", self.clock.wall(), outbox_pending=len(self.outbox),
                                dropped=self.outbox.dropped)
        client.publish(self.cfg["status_topic"], encode(status), qos=1, retain=True)
        self._wake.set()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties=None):
        if any(rc.is_failure for rc in reason_codes):
            log.error("MQTT broker refused a subscription: %s", reason_codes)
        self.ready.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties=None):
        self.connected.clear()
        self.ready.clear()
        if reason_code != 0:
            log.warning("MQTT connection lost (%s); reconnecting with back-off", reason_code)

    def _on_message(self, client, userdata, message):
        handler = self.handlers.get(message.topic)
        if handler is not None:
            handler(message.payload)

    def _on_publish(self, client, userdata, mid, reason_code=None, properties=None):
        with self._lock:
            row_id = self._inflight.pop(mid, None)
            if row_id is None:
                self._acked_early.add(mid)  # PUBACK overtook the sender's bookkeeping (or a status message)
        if row_id is not None:
            self.outbox.delete(row_id)
            self._wake.set()

    # -- publishing ----------------------------------------------------------------------------------
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
            with self._lock:
                room, last = self.inflight - len(self._inflight), self._last_handed
            for row in self.outbox.after(last, room) if room > 0 else ():
                # Never call paho while holding self._lock: paho calls _on_publish under its own lock.
                info = self.client.publish(row.topic, row.payload, qos=row.qos, retain=row.retain)
                if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                    log.error("paho refused message %d for %s: %s", row.id, row.topic, mqtt.error_string(info.rc))
                    break
                # NO_CONN: paho keeps the QoS 1 message and sends it itself after reconnecting
                with self._lock:
                    self._last_handed = row.id
                    acked = row.qos == 0 or info.mid in self._acked_early
                    self._acked_early.discard(info.mid)
                    if not acked:
                        self._inflight[info.mid] = row.id
                if acked:
                    self.outbox.delete(row.id)

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
        """Publish 'offline' (retained), flush, disconnect. Returns messages left unacknowledged."""
        left = self.flush(timeout)
        if self.connected.is_set():
            info = self.client.publish(self.cfg["status_topic"],
                                       encode(status_message(self.device_id, "offline", self.clock.wall(),
                                                             reason="stopped", outbox_pending=left,
                                                             dropped=self.outbox.dropped)), qos=1, retain=True)
            try:
                info.wait_for_publish(min(timeout, 1.0))
            except (RuntimeError, ValueError):
                pass
        self._stop.set()
        self._wake.set()
        if self._sender is not None:
            self._sender.join(2)
        self.client.disconnect()
        self.client.loop_stop()
        return left
