"""The MQTT transports behind one small interface, so the outbox bookkeeping does not care which client
library moves the bytes (and can be tested against `pi.messaging.fake.FakeTransport`).

A transport connects in the background and keeps reconnecting, hands messages to the broker and reports
each PUBACK by message id, subscribes when asked, and tells its listener (the publisher) what happens.
Every callback into the listener is guarded: an exception there is logged and never ends the client
library's network thread (a thread that dies silently leaves a device "online" that answers nothing).

- `MqttTransport`: paho-mqtt 2.x, plain TCP or TLS, any broker including AWS IoT Core.
- `AwsIotTransport`: AWSIoTPythonSDK v1 (maintenance mode; its in-memory offline queue is switched off,
  the disk outbox is the queue; its WebSocket path calls ssl.wrap_socket, gone in Python 3.12).
"""
from __future__ import annotations

import logging
import random
import ssl
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Protocol

import paho.mqtt.client as mqtt

from pi.errors import PublishError

log = logging.getLogger(__name__)


class TransportListener(Protocol):
    """What a transport reports to (the publisher). Called from the transport's network thread."""

    def will(self) -> tuple[str, bytes]:
        """The last will (topic, payload) for the connection attempt about to be made."""
        ...

    def on_connected(self) -> None:
        """The broker accepted the connection (CONNACK success)."""
        ...

    def on_subscribed(self) -> None:
        """The subscriptions asked for in `on_connected` are in place."""
        ...

    def on_disconnected(self, reason: str | None) -> None:
        """The connection is gone; `reason` is None for our own disconnect."""
        ...

    def on_acked(self, mid: int) -> None:
        """The broker acknowledged (PUBACK) the message that `publish` returned `mid` for."""
        ...

    def on_message(self, topic: str, payload: bytes) -> None:
        """A message arrived on a subscribed topic."""
        ...


def guarded(what: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn`, but an exception is logged instead of propagating into the client library's thread."""

    def call(*args: Any, **kwargs: Any) -> Any:  # the AWS SDK passes its ack's mid by keyword
        try:
            return fn(*args, **kwargs)
        except Exception:
            log.exception("MQTT %s handler failed (the connection is kept)", what)
            return None

    return call


class Transport(ABC):
    """An MQTT client as the outbox publisher needs it. `bind()` a listener before `connect()`."""

    listener: TransportListener

    def bind(self, listener: TransportListener) -> None:
        self.listener = listener

    @abstractmethod
    def connect(self) -> None:
        """Start connecting in the background and keep reconnecting. Refusals back off too, doubling up to
        `mqtt.reconnect_max_delay`; only a connection the broker accepted resets the back-off."""

    @abstractmethod
    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> int | None:
        """Hand one message over; its message id (its PUBACK comes to `listener.on_acked`), or None if the
        client refused it (try again later)."""

    @abstractmethod
    def publish_status(self, topic: str, payload: bytes, wait_s: float = 0.0) -> None:
        """Publish a retained QoS 1 status directly, best effort; wait up to `wait_s` for it to leave."""

    @abstractmethod
    def subscribe(self, topics: list[str]) -> None:
        """Subscribe (QoS 1) for the current connection; `listener.on_subscribed` follows."""

    @abstractmethod
    def disconnect(self) -> None:
        """Disconnect cleanly (no will) and stop the network thread."""

    @abstractmethod
    def alive(self) -> bool:
        """Whether the network thread still runs (False after an unexpected death: restart the process)."""


class MqttTransport(Transport):
    """paho-mqtt 2.x. The will is re-stamped before every connection attempt (`on_pre_connect`)."""

    def __init__(self, mqtt_cfg: dict, client_id: str, tls_context: ssl.SSLContext | None = None,
                 inflight: int = 20):
        self.cfg = mqtt_cfg
        self.max_delay = int(mqtt_cfg["reconnect_max_delay"])
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv311, clean_session=False)
        self.client.max_inflight_messages_set(inflight)
        if mqtt_cfg.get("username"):
            self.client.username_pw_set(mqtt_cfg["username"], mqtt_cfg.get("password"))
        if tls_context is not None:
            self.client.tls_set_context(tls_context)
        self.client.reconnect_delay_set(1, self.max_delay)
        self._accepted = False  # the current connection got a successful CONNACK
        self._started = False
        self.client.on_pre_connect = guarded("pre-connect", self._on_pre_connect)
        self.client.on_connect = guarded("connect", self._on_connect)
        self.client.on_disconnect = guarded("disconnect", self._on_disconnect)
        self.client.on_subscribe = guarded("subscribe", self._on_subscribe)
        self.client.on_message = guarded(
            "message", lambda c, u, msg: self.listener.on_message(msg.topic, bytes(msg.payload)))
        self.client.on_publish = guarded(
            "acknowledgement", lambda c, u, mid, rc=None, p=None: self.listener.on_acked(mid))

    def connect(self) -> None:
        self._started = True
        self.client.connect_async(self.cfg["host"], self.cfg["port"], keepalive=self.cfg["keepalive"])
        self.client.loop_start()

    def _on_pre_connect(self, client: mqtt.Client, userdata: Any) -> None:
        topic, payload = self.listener.will()
        client.will_set(topic, payload, qos=1, retain=True)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                    properties: Any = None) -> None:
        if reason_code.is_failure:
            log.error("MQTT broker refused the connection: %s", reason_code)
            return  # the back-off keeps growing: paho resets it only on a successful CONNACK
        self._accepted = True
        self.listener.on_connected()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                       properties: Any = None) -> None:
        if self._accepted:
            # A lost accepted connection starts a new outage: draw a new starting delay (jitter spreads a
            # fleet's reconnects after a broker restart). Not after a refusal: setting the delay resets
            # paho's back-off, and a refused device would retry every second forever.
            self._accepted = False
            client.reconnect_delay_set(random.uniform(0.5, 1.5), self.max_delay)  # type: ignore[arg-type]
        self.listener.on_disconnected(str(reason_code) if reason_code != 0 else None)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any,
                      properties: Any = None) -> None:
        if any(rc.is_failure for rc in reason_codes):
            log.error("MQTT broker refused a subscription: %s", reason_codes)
        self.listener.on_subscribed()

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> int | None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        # NO_CONN: paho keeps the QoS 1 message and sends it itself after reconnecting
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            log.error("paho refused a message for %s: %s", topic, mqtt.error_string(info.rc))
            return None
        return info.mid

    def publish_status(self, topic: str, payload: bytes, wait_s: float = 0.0) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=True)
        if wait_s:
            try:
                info.wait_for_publish(wait_s)
            except (RuntimeError, ValueError):
                pass

    def subscribe(self, topics: list[str]) -> None:
        if topics:
            self.client.subscribe([(topic, 1) for topic in topics])
        else:
            self.listener.on_subscribed()

    def disconnect(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self._started = False

    def alive(self) -> bool:
        # paho keeps its loop_start() thread in `_thread` and clears it when the thread ends (paho 1.x/2.x)
        return not self._started or getattr(self.client, "_thread", None) is not None


class AwsIotTransport(Transport):
    """AWSIoTPythonSDK v1 (mutual TLS on 8883, or 443 with ALPN, which the SDK sets itself).

    The SDK reconnects by itself after the first connection, with its own back-off, and resubscribes by
    itself too (refusing our calls while it does), so `subscribe` acts on the first connection only. Its
    will is replaced (configureLastWill) when the connection drops, before the SDK reconnects."""

    def __init__(self, mqtt_cfg: dict, client_id: str):
        try:
            from AWSIoTPythonSDK.MQTTLib import AWSIoTMQTTClient
        except ImportError as exc:
            raise PublishError("mqtt.transport is awsiot but AWSIoTPythonSDK is not installed: "
                               "pip install 'emotion-edge[aws]'") from exc
        self.cfg = mqtt_cfg
        c = AWSIoTMQTTClient(client_id, cleanSession=False)
        c.configureEndpoint(mqtt_cfg["host"], mqtt_cfg["port"])
        c.configureCredentials(mqtt_cfg["ca_file"], mqtt_cfg["key_file"], mqtt_cfg["cert_file"])
        c.configureAutoReconnectBackoffTime(1, int(mqtt_cfg["reconnect_max_delay"]), 20)
        c.configureOfflinePublishQueueing(0)  # disabled: the disk outbox is the queue
        c.configureDrainingFrequency(10)
        c.configureConnectDisconnectTimeout(10)
        c.configureMQTTOperationTimeout(10)
        c.onOnline = guarded("online", self._on_online)
        c.onOffline = guarded("offline", self._on_offline)
        self.client = c
        self._stop = threading.Event()
        self._opener: threading.Thread | None = None
        self._ever_connected = False
        self._subscribed_once = False

    def _set_will(self) -> None:
        topic, payload = self.listener.will()
        self.client.configureLastWill(topic, bytearray(payload), 1)  # its vendored paho wants bytearray

    def connect(self) -> None:
        def connect_until_stopped() -> None:
            delay = 1.0
            while not self._stop.is_set():
                try:
                    self._set_will()
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
        self._ever_connected = True
        self.listener.on_connected()

    def _on_offline(self) -> None:
        if not self._stop.is_set():
            self._set_will()  # the SDK's next CONNECT carries a will stamped now, not at the first connect
        self.listener.on_disconnected(None if self._stop.is_set() else "offline")

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> int | None:
        try:  # the SDK's publish has no retain flag
            return self.client.publishAsync(topic, bytearray(payload), qos, ackCallback=guarded(
                "acknowledgement", self.listener.on_acked))
        except Exception as exc:
            log.warning("AWS IoT SDK could not publish to %s: %s", topic, exc)
            return None

    def publish_status(self, topic: str, payload: bytes, wait_s: float = 0.0) -> None:
        try:  # inside the SDK's callbacks only async calls are allowed
            if wait_s:
                self.client.publish(topic, bytearray(payload), 1)
            else:
                self.client.publishAsync(topic, bytearray(payload), 1)
        except Exception as exc:
            log.warning("AWS IoT SDK could not publish a status: %s", exc)

    def subscribe(self, topics: list[str]) -> None:
        if not self._subscribed_once:
            self._subscribed_once = True
            for topic in topics:
                try:
                    self.client.subscribeAsync(topic, 1, messageCallback=guarded(
                        "message", lambda c, u, msg: self.listener.on_message(msg.topic, bytes(msg.payload))))
                except Exception as exc:
                    log.error("AWS IoT SDK could not subscribe to %s: %s", topic, exc)
        self.listener.on_subscribed()

    def disconnect(self) -> None:
        self._stop.set()
        if not self._ever_connected:
            return  # nothing to close, and the SDK would wait out its disconnect timeout
        try:
            self.client.disconnect()
        except Exception as exc:
            log.warning("AWS IoT SDK disconnect: %s", exc)

    def alive(self) -> bool:
        if not self._ever_connected or self._stop.is_set():
            return True
        try:  # the SDK's vendored paho keeps its network thread in `_thread` (the SDK is frozen)
            paho = self.client._mqtt_core._internal_async_client._paho_client
        except AttributeError:
            return True
        return getattr(paho, "_thread", None) is not None
