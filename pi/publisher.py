"""MQTT over paho-mqtt 2.x: QoS 1 publishing, a retained online/offline status with a last will, and the
subscriptions of `handlers` (renewed on every reconnect: paho does not restore subscriptions by itself).

The connection is made in the background with paho's own reconnect back-off, so a broker that is down at
start-up or goes away later costs no accepted message: paho queues QoS 1 messages in memory until it is
back, and `flush()` reports how many are still waiting for their PUBACK.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

import paho.mqtt.client as mqtt

from pi.errors import PublishError
from pi.messages import encode, status_message

log = logging.getLogger(__name__)

MAX_PAYLOAD = 128 * 1024  # AWS IoT Core's limit; a useful bound for any broker


class MqttPublisher:
    def __init__(self, mqtt_cfg: dict, device_id: str, clock):
        self.cfg = mqtt_cfg
        self.device_id = device_id
        self.clock = clock
        self.handlers: dict[str, Callable[[bytes], None]] = {}  # topic -> handler, set before start()
        self.qos = mqtt_cfg["qos"]
        self.connected = threading.Event()
        self.ready = threading.Event()  # connected and every handler's subscription acknowledged
        self._pending: dict[int, mqtt.MQTTMessageInfo] = {}
        self._acked_early: set[int] = set()
        self._lock = threading.Lock()
        self.published = 0
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device_id,
                                  protocol=mqtt.MQTTv311, clean_session=False)
        self.client.max_queued_messages_set(0)  # unlimited in-memory queue while offline
        self.client.max_inflight_messages_set(50)
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
        status = status_message(self.device_id, "online", self.clock.wall())
        client.publish(self.cfg["status_topic"], encode(status), qos=1, retain=True)

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
            if self._pending.pop(mid, None) is None:
                self._acked_early.add(mid)  # PUBACK overtook publish()'s bookkeeping

    # -- publishing ----------------------------------------------------------------------------------
    def publish(self, topic: str, message: dict, retain: bool = False) -> None:
        payload = encode(message)
        if len(payload) > MAX_PAYLOAD:
            raise PublishError(f"{message.get('type', 'message')} for {topic} is {len(payload)} bytes, over "
                               f"the {MAX_PAYLOAD}-byte limit")
        # Not under self._lock: paho calls _on_publish while holding its own lock (lock-order inversion).
        info = self.client.publish(topic, payload, qos=self.qos, retain=retain)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            raise PublishError(f"paho refused to queue a message for {topic}: {mqtt.error_string(info.rc)}")
        with self._lock:
            self.published += 1
            # NO_CONN: paho keeps the QoS 1 message and sends it after reconnecting
            if self.qos > 0:
                if info.mid in self._acked_early:
                    self._acked_early.discard(info.mid)
                else:
                    self._pending[info.mid] = info

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def flush(self, timeout: float) -> int:
        """Wait up to `timeout` real seconds for every PUBACK; return how many are still outstanding."""
        deadline = time.monotonic() + timeout
        while self.pending and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.pending

    def stop(self, timeout: float = 1.0) -> int:
        """Publish 'offline' (retained), flush, disconnect. Returns messages left unacknowledged."""
        left = self.flush(timeout)
        if self.connected.is_set():
            info = self.client.publish(self.cfg["status_topic"],
                                       encode(status_message(self.device_id, "offline", self.clock.wall(),
                                                             reason="stopped")), qos=1, retain=True)
            try:
                info.wait_for_publish(min(timeout, 1.0))
            except (RuntimeError, ValueError):
                pass
        self.client.disconnect()
        self.client.loop_stop()
        return left
